"""Resuming a phase from its epoch backup ends bitwise where the uninterrupted fit ends; damaged
state files are named and skipped; a full disk is one paragraph."""

import errno
import logging

import keras
import numpy as np
import pytest

from mri_tfdata.core import atomic
from mri_tfdata.model import architecture, head_fit
from mri_tfdata.training import resumable, state_files, workdir

EPOCHS = 3


class _StopAfter(keras.callbacks.Callback):
    """Stops the fit after `epochs` epochs (after the backup), as a kill right then would."""

    def __init__(self, epochs):
        super().__init__()
        self._epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self._epochs:
            self.model.stop_training = True


def _fit(run, *, stop_after=None):
    keras.utils.set_random_seed(7)
    head = architecture.build_head(hidden_units=(8,), dropout=0.5, standardize=True,
                                   num_classes=3)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(24, 2048)).astype(np.float32)
    labels = np.arange(24) % 3
    with resumable.phase(head, run, resumable.HEAD_PHASE, learning_rate=1e-2) as callbacks:
        if stop_after:
            callbacks = [*callbacks, _StopAfter(stop_after)]
        history = head_fit.fit_head(
            head, features, labels, validation=(features[:6], labels[:6]), learning_rate=1e-2,
            epochs=EPOCHS, batch_size=4, schedule="cosine", label_smoothing=0.1, seed=3,
            callbacks=callbacks, verbose=0)
    return head, history.history


@pytest.mark.parametrize("killed_after", range(1, EPOCHS))
def test_a_head_fit_resumed_after_any_epoch_ends_bitwise_where_the_whole_fit_ends(
        tmp_path, killed_after):
    whole, whole_history = _fit(workdir.open_run(tmp_path / "whole", settings={}))
    run = workdir.open_run(tmp_path / "resumed", settings={})
    _fit(run, stop_after=killed_after)
    resumed, resumed_history = _fit(run)
    for a, b in zip(whole.variables, resumed.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    for a, b in zip(whole.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    assert resumed_history["val_accuracy"][-1] == whole_history["val_accuracy"][-1]
    assert resumed_history["loss"][-1] == whole_history["loss"][-1]


def test_a_loaded_state_is_what_the_model_computes_with(tmp_path):
    # A finished phase's state loaded into a freshly built classifier (as a rerun does): the
    # standardization in memory must be the loaded one, not the one the model was built with.
    keras.utils.set_random_seed(7)
    features = np.random.default_rng(0).normal(3.0, 5.0, size=(16, 2048)).astype(np.float32)

    def head():
        return architecture.build_head(hidden_units=(8,), standardize=True, num_classes=3)

    trained = head()
    architecture.adapt_standardization(trained, features)
    state_files.save(trained, tmp_path / "head.npz", with_optimizer=False)
    fresh = head()
    state_files.load(fresh, tmp_path / "head.npz", with_optimizer=False)
    np.testing.assert_array_equal(fresh.predict(features, verbose=0),
                                  trained.predict(features, verbose=0))


def test_a_damaged_backup_is_named_and_the_one_before_is_used(tmp_path, caplog):
    run = workdir.open_run(tmp_path / "run", settings={})
    _fit(run, stop_after=2)
    newest = run.backup_dir(resumable.HEAD_PHASE) / "epoch-0002.npz"
    content = bytearray(newest.read_bytes())
    content[-3000:-1000] = bytes(b ^ 0xFF for b in content[-3000:-1000])  # still a zip
    newest.write_bytes(bytes(content))
    with caplog.at_level(logging.INFO, logger="absl"):
        _fit(run)
    assert "epoch-0002.npz' is damaged" in caplog.text
    assert "epoch-0001.npz'" in caplog.text and "1 epoch(s) already finished" in caplog.text


def test_no_valid_backup_starts_the_phase_afresh_with_one_line(tmp_path, caplog):
    run = workdir.open_run(tmp_path / "run", settings={})
    _fit(run, stop_after=1)
    state_files.checksum_path(run.backup_dir("head") / "epoch-0001.npz").write_text("0" * 64)
    with caplog.at_level(logging.INFO, logger="absl"):
        _fit(run)
    assert "the phase starts afresh" in caplog.text
    assert "overwrite" not in caplog.text


def test_a_full_disk_at_a_backup_is_one_paragraph_keeping_the_backups_before(tmp_path,
                                                                            monkeypatch):
    run = workdir.open_run(tmp_path / "run", settings={})
    _fit(run, stop_after=1)
    real = atomic.write_atomic

    def full(path, content):
        if str(path).endswith("epoch-0002.npz"):
            raise atomic.disk_error(path, OSError(errno.ENOSPC, "No space left on device"))
        return real(path, content)

    monkeypatch.setattr(atomic, "write_atomic", full)
    with pytest.raises(atomic.DiskError) as raised:
        _fit(run)
    message = str(raised.value)
    assert "epoch-0002.npz" in message and "No space left" in message and "\n" not in message
    backups = run.backup_dir("head")
    assert sorted(p.name for p in backups.iterdir()) == ["epoch-0001.npz",
                                                         "epoch-0001.npz.sha256"]
