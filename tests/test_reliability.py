"""What users can break, and what they get: a correct result, a named skip, or one paragraph."""

import errno

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from mri_tfdata.cli import runner
from mri_tfdata.core import atomic
from mri_tfdata.core.errors import ParameterError, UserError
from mri_tfdata.data import dataspec, sources
from mri_tfdata.model import feature_cache as feature_files
from mri_tfdata.model.architecture import ModelSpec
from mri_tfdata.training import resumable, trainer, workdir

SPEC = ModelSpec(image_size=32, weights="none", head_units=(16,))


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


def _train(data, workdir_path, feature_cache, model_spec=SPEC, **config):
    config = trainer.TrainConfig(**{"batch_size": 4, "epochs": 2,
                                     "feature_cache": str(feature_cache), **config})
    keras.mixed_precision.set_global_policy("float32")
    return trainer.train(data=data, model_spec=model_spec, config=config,
                          workdir_path=workdir_path, strategy=tf.distribute.get_strategy(),
                          precision_policy="float32")


@pytest.mark.integration
def test_a_run_that_fails_at_start_leaves_no_trace_and_the_fix_then_runs(data, tmp_path,
                                                                          feature_cache):
    run = tmp_path / "run"
    bad_weights = ModelSpec(image_size=32, weights=str(tmp_path / "missing.h5"), head_units=(16,))
    with pytest.raises(UserError, match="neither 'imagenet', 'none' nor an existing file"):
        _train(data, run, feature_cache, model_spec=bad_weights)
    with pytest.raises(UserError, match="Invalid split"):
        _train(data, run, feature_cache, test_split="tset")
    assert not run.exists()  # Nothing claims the folder: the corrected command just runs.
    result = _train(data, run, feature_cache, epochs=1, learning_rate=1e-6)
    assert not result.resumed and result.metrics["num_examples"] == 8
    # A run diverging is a failure with the cause, not a finished run with chance accuracy.
    with pytest.raises(UserError, match="Training failed: the loss (diverged|became NaN).*"
                                        "learning rate \\(1e\\+06\\)"):
        _train(data, tmp_path / "diverged", feature_cache, learning_rate=1e6, epochs=3)


@pytest.mark.integration
def test_a_missing_class_is_refused_unless_allowed_and_then_recorded(tmp_path, feature_cache):
    import shutil

    from mri_tfdata.data import synthetic

    root = synthetic.write_synthetic_dataset(tmp_path / "tree", train_per_class=8,
                                             test_per_class=2, image_size=32)
    shutil.rmtree(root / "Training" / "pituitary")
    data = dataspec.DataSpec(source="folder", data_dir=str(root))
    with pytest.raises(UserError, match="no example of pituitary.*allow_missing_classes=True"):
        _train(data, tmp_path / "run", feature_cache)
    assert not (tmp_path / "run").exists()
    result = _train(data, tmp_path / "run", feature_cache, epochs=1, allow_missing_classes=True)
    assert result.metrics["training_examples_per_class"]["pituitary"] == 0
    assert result.metrics["training_examples_per_class"]["glioma"] > 0


def _source(names, labels=None):
    labels = np.arange(len(names)) % 4 if labels is None else np.asarray(labels)
    return sources.Source(dataset=None, num_examples=len(names), class_names=("a", "b", "c", "d"),
                          cache_id="x", description="test split",
                          index=lambda: (tuple(names), labels))


def test_overlapping_or_too_small_splits_name_the_parameters_and_a_command_its_flags():
    train = _source([f"f{i}" for i in range(8)])
    dataspec.check_splits({"train_split": ("train[:60%]", train)}, batch_size=8)
    with pytest.raises(ParameterError, match="fewer than one batch of batch_size=16; lower "
                                             "batch_size.") as small:
        dataspec.check_splits({"train_split": ("train", train)}, batch_size=16)
    overlapping = _source(["f7", "f8"])
    overlap = "train_split='train\\[:60%\\]' and validation_split='train\\[50%:\\]' share 1"
    with pytest.raises(ParameterError, match=overlap) as shared:
        dataspec.check_splits({"train_split": ("train[:60%]", train),
                               "validation_split": ("train[50%:]", overlapping)}, batch_size=4)
    # Validating on the test split itself (configs/reference.flags) trains on neither.
    test = _source(["t1", "t2"])
    dataspec.check_splits({"train_split": ("train", train), "validation_split": ("test", test),
                           "test_split": ("test", test)}, batch_size=4)
    with pytest.raises(ParameterError, match="train_split='train' and test_split='test' share 1"):
        dataspec.check_splits({"train_split": ("train", train),
                               "test_split": ("test", _source(["t1", "f0"]))}, batch_size=4)
    # A command whose flags set these parameters names the flags instead, and exits with 2.
    command = flags.FlagValues()
    for name in ("train_split", "validation_split"):
        flags.DEFINE_string(name, None, "", flag_values=command)
    flags.DEFINE_integer("batch_size", 32, "", flag_values=command)
    assert str(runner.in_flag_terms(small.value, command)).endswith(
        "fewer than one batch of --batch_size=16; lower --batch_size.")
    restated = runner.in_flag_terms(shared.value, command)
    assert str(restated).startswith("--train_split='train[:60%]' and "
                                    "--validation_split='train[50%:]' share 1 example(s)")
    assert "e.g. --train_split='train[:90%]' --validation_split='train[90%:]'." in str(restated)
    assert restated.exit_code == 2


def test_a_feature_cache_file_with_other_numbers_is_not_served(tmp_path):
    key = feature_files.CacheKey(name="x", digest="d" * 16)
    path = tmp_path / key.filename
    values = np.ones((3, 2048), np.float32)
    feature_files._write_cache_file(path, values, np.arange(3), key)
    assert feature_files._read_valid(path, key, expected_count=3) is not None
    # A valid .npz with the same metadata and other numbers (e.g. written by a buggy tool).
    with np.load(path) as stored:
        meta = stored["meta"]
    np.savez(path, features=values * 2, labels=np.arange(3), meta=meta)
    assert feature_files._read_valid(path, key, expected_count=3) is None


def test_a_full_disk_is_one_paragraph_naming_the_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(atomic.DiskError, match=f"Cannot write {tmp_path / 'f.npz'}: No space "
                                               "left on device. Free disk space"):
        feature_files._write_cache_file(tmp_path / "f.npz", np.ones((1, 2048)), np.zeros(1),
                                   feature_files.CacheKey("x", "d"))
    assert list(tmp_path.iterdir()) == []  # No temp file left behind.


def test_an_epoch_backup_that_would_not_fit_on_the_disk_stops_the_run_clearly(tmp_path,
                                                                               monkeypatch):
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, activation="softmax")])
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    run = workdir.open_run(tmp_path / "run", settings={})
    monkeypatch.setattr(resumable.shutil, "disk_usage", lambda path: type(
        "Usage", (), {"free": 1000})())
    x, y = np.zeros((8, 4), np.float32), np.zeros(8)
    with pytest.raises(atomic.DiskError, match="Only 0 MB are free in .*backup.*rerun the same"):
        with resumable.phase(net, run, "head", learning_rate=1e-3) as callbacks:
            net.fit(x, y, epochs=2, callbacks=callbacks, verbose=0)
    run.close()
    # The first backup fitted; the second would not: the last good one stays for the rerun.
    assert sorted(p.name for p in (tmp_path / "run" / "backup" / "head").iterdir()) == [
        "epoch-0001.npz", "epoch-0001.npz.sha256"]


def test_an_unusable_cache_folder_is_named(data, tmp_path):
    with pytest.raises(UserError, match="Cannot create the image cache folder /dev/null/x"):
        _train(data, tmp_path / "run", "off", cache="/dev/null/x", epochs=1)


def test_a_file_name_with_a_newline_cannot_forge_a_log_line(tmp_path, caplog):
    import logging

    from mri_tfdata.data import synthetic

    root = synthetic.write_synthetic_dataset(tmp_path / "tree", train_per_class=2,
                                             test_per_class=1, image_size=32)
    forged = root / "Training" / "glioma" / "x.jpg\nWARNING all images are fine.jpg"
    forged.write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        sources.load_folder_source(root, split="train")
    skipped = [r.getMessage() for r in caplog.records if "Skipping" in r.getMessage()]
    assert len(skipped) == 1 and "\n" not in skipped[0] and "\\n" in skipped[0]


@pytest.mark.parametrize("error, reason", [
    (tf.errors.ResourceExhaustedError, "No space left on device"),
    (tf.errors.PermissionDeniedError, "Read-only file system")])
def test_an_export_onto_a_full_or_read_only_disk_is_one_paragraph_naming_the_folder(
        tmp_path, monkeypatch, error, reason):
    import types

    from mri_tfdata.serving import export, model_file

    inputs = keras.Input((8, 8, 3), dtype="uint8")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    tiny = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    monkeypatch.setattr(model_file, "load_classifier", lambda path: types.SimpleNamespace(
        model=tiny, class_names=("a", "b"), conformal=None))

    def fail(archive, path, **kwargs):
        raise error(None, None, f"{path}/variables/variables_temp/part-00000-of-00001.data-00000"
                    f"-of-00001; {reason}\n\t [[{{{{node SaveV2}}}}]]")
    # ExportArchive() is the backend's subclass, whose write_out runs SaveV2.
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", fail)
    out = tmp_path / "export"
    with pytest.raises(atomic.DiskError) as raised:
        export.export_model(tmp_path / "model.keras", out)
    message = str(raised.value)
    assert message.startswith(f"Cannot write {out}: ") and reason in message, message
    assert "\n" not in message and "[[" not in message
    assert list(tmp_path.iterdir()) == []  # no export, and no temp folder left behind
