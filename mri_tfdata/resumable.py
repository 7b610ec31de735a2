"""One training phase's fit, resumable after a kill: backups, history files, TensorBoard, NaN stop."""

import contextlib
import json
import math

import keras
from absl import logging

from mri_tfdata import reports, workdir
from mri_tfdata.errors import UserError


class HistoryLog(keras.callbacks.Callback):
    """Writes history.json/.csv after every epoch, across restarts and phases.

    Rows are keyed by the absolute epoch, and an epoch being (re)started drops any row at or after
    it, so a run killed between logging an epoch and backing it up still ends with each epoch once.
    """

    def __init__(self, out_dir, phase: str):
        super().__init__()
        self._out_dir = out_dir
        self._phase = phase

    def _rows(self) -> list[dict]:
        path = self._out_dir / "history.json"
        if not path.exists():
            return []
        columns = json.loads(path.read_text())
        return [dict(zip(columns, values)) for values in zip(*columns.values())]

    def _write(self, rows: list[dict]) -> None:
        keys = ["epoch", "phase"] + sorted({k for r in rows for k in r} - {"epoch", "phase"})
        reports.write_history({k: [r.get(k) for r in rows] for k in keys}, self._out_dir)

    def on_epoch_begin(self, epoch, logs=None):
        self._write([r for r in self._rows() if r["epoch"] <= epoch])

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "phase": self._phase}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self._write([r for r in self._rows() if r["epoch"] <= epoch] + [row])


def _callbacks(run: workdir.RunDir, phase: str) -> list[keras.callbacks.Callback]:
    return [
        keras.callbacks.TerminateOnNaN(),
        HistoryLog(run.path, phase),
        # double_checkpoint: a kill while the weights file is written leaves the previous epoch's.
        keras.callbacks.BackupAndRestore(str(run.backup_dir(phase)), double_checkpoint=True),
        keras.callbacks.TensorBoard(log_dir=str(run.path / "logs"), update_freq="epoch"),
    ]


def backed_up_epochs(run: workdir.RunDir, phase: str) -> int:
    """Epochs of `phase` that BackupAndRestore has saved (0 when none)."""
    path = run.backup_dir(phase) / "training_metadata.json"
    return json.loads(path.read_text())["epoch"] if path.exists() else 0


def _check_finite(run: workdir.RunDir, learning_rate: float) -> None:
    history = json.loads((run.path / "history.json").read_text())
    bad = [e for e, loss in zip(history["epoch"], history["loss"])
           if loss is None or not math.isfinite(loss)]
    if bad:
        raise UserError(
            f"Training stopped in epoch {bad[0]}: the loss became NaN or infinite, so the weights "
            f"are unusable. The learning rate ({learning_rate:g}) is probably too high: rerun with "
            "a lower one (e.g. --learning_rate=1e-4, --overwrite) and keep "
            "--standardize_features on with --weights=none.")


@contextlib.contextmanager
def phase(net: keras.Model, run: workdir.RunDir, name: str, *, learning_rate: float,
          max_steps_per_epoch: int = 0):
    """Yields the callbacks for the fit of one phase; the fit resumes from the phase's backup.

    Usage: `with phase(net, run, "head", learning_rate=lr) as callbacks: net.fit(...,
    callbacks=callbacks)`. The same context serves the end-to-end fit of the classifier and the
    fast path's fit of the head alone: same backups, history rows and NaN check.

    Args:
      net: the model about to be fitted.
      run: the workdir (history files, backup/<phase>/, logs/).
      name: the phase; names the backup and the history rows.
      learning_rate: the phase's learning rate, named in the NaN message.
      max_steps_per_epoch: > 0 caps the batches of every epoch (smoke runs).

    Raises:
      UserError: after the fit, when the loss became NaN or infinite.
    """
    done = backed_up_epochs(run, name)
    if done:
        logging.info("Resuming phase %s from its backup: %d epoch(s) already finished.", name, done)
    # BackupAndRestore sets this private attribute when it restores; it would otherwise carry a
    # restored epoch of the head phase into the fine-tuning fit.
    net._initial_epoch = None
    previous = keras.config.max_steps_per_epoch()
    keras.config.set_max_steps_per_epoch(max_steps_per_epoch or None)
    try:
        yield _callbacks(run, name)
    finally:
        keras.config.set_max_steps_per_epoch(previous)
    _check_finite(run, learning_rate)
