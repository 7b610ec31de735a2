"""One training phase's fit, resumable after a kill: backups, history, TensorBoard, NaN stop."""

import contextlib
import csv
import json
import math
import pathlib
import re
import shutil

import keras
from absl import logging

from mri_tfdata.core import atomic, faults
from mri_tfdata.core.errors import UserError
from mri_tfdata.evaluation import reports
from mri_tfdata.training import state_files, workdir

HEAD_PHASE = "head"
FINE_TUNE_PHASE = "fine_tune"
PHASES = (HEAD_PHASE, FINE_TUNE_PHASE)  # In their order in a run.

_BACKUP = re.compile(r"epoch-(\d+)\.npz")
# A loss this many times the loss of guessing uniformly (ln C) means training diverged.
_DIVERGED = 10.0


def _epochs_backed_up(backup_dir: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """(finished epochs, file) of every backup, newest first."""
    found = [(int(m.group(1)), p) for p in backup_dir.glob("epoch-*.npz")
             if (m := _BACKUP.fullmatch(p.name))]
    return sorted(found, reverse=True)


class EpochBackup(keras.callbacks.Callback):
    """Backs up the training state after every epoch; a restarted fit resumes from it bitwise.

    The state is every model variable (weights, statistics, dropout seed states) and every
    optimizer variable (step count, hence the schedule's position; moments), in a checksummed npz
    file per epoch (epoch-0007.npz after 7 epochs, state_files), published whole by a rename. The
    newest file whose checksum holds wins; a damaged one is named and an earlier one used. So a
    kill at any moment, or a damaged file, costs at most the epochs after the backup used. Each
    epoch's data order comes from (seed, epoch) (data/epoch_order), not from the fit's history.
    """

    def __init__(self, backup_dir: pathlib.Path, *, keep: int = 2):
        super().__init__()
        self._dir = pathlib.Path(backup_dir)
        self._keep = keep

    def on_train_begin(self, logs=None):
        backups = _epochs_backed_up(self._dir)
        for epochs, path in backups:
            try:
                state_files.load(self.model, path, with_optimizer=True)
            except state_files.DamagedState as e:
                logging.warning("The backup %r is damaged (%s); trying an earlier one.",
                                str(path), e)
                continue
            logging.info("Resuming from %r: %d epoch(s) already finished.", str(path), epochs)
            self.model._initial_epoch = epochs
            return
        if backups:
            logging.warning("No backup in %r is valid; the phase starts afresh.", str(self._dir))

    def _check_space(self) -> None:
        newest = _epochs_backed_up(self._dir)
        need = (newest[0][1].stat().st_size if newest else
                sum(math.prod(v.shape) * 4 for v in self.model.weights) * 3)
        free = shutil.disk_usage(self._dir).free
        if free < 1.5 * need:
            raise atomic.DiskError(
                f"Only {free / 1e6:.0f} MB are free in {self._dir}, not enough for the next epoch "
                f"backup (~{need / 1e6:.0f} MB). Free disk space, then rerun the same command: "
                "the run resumes from its last backup.")

    def on_epoch_end(self, epoch, logs=None):
        path = self._dir / f"epoch-{epoch + 1:04d}.npz"
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise atomic.disk_error(self._dir, e, what="create the backup folder") from None
        self._check_space()
        try:
            state_files.save(self.model, path, with_optimizer=True)
        except atomic.DiskError as e:
            state_files.remove(path)
            raise atomic.DiskError(
                f"{e} The epochs backed up before in {self._dir} are kept: once there is room, "
                "rerun the same command and the run resumes from its last backup.") from None
        faults.point("epoch_backed_up")
        for _, old in _epochs_backed_up(self._dir)[self._keep:]:
            state_files.remove(old)


def _history_rows(out_dir: pathlib.Path) -> list[dict]:
    """The rows logged so far: from history.json, else from history.csv; none when neither exists.

    Raises:
      UserError: both files exist and neither can be read.
    """
    json_path, csv_path = out_dir / "history.json", out_dir / "history.csv"
    if not json_path.exists() and not csv_path.exists():
        return []
    try:
        columns = json.loads(json_path.read_text())
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
    except (OSError, ValueError, AttributeError, TypeError) as e:
        logging.warning("%r is damaged (%s); reading the history from %r.", str(json_path), e,
                        str(csv_path))
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: (v if k == "phase" else int(v) if k == "epoch" else float(v))
                 for k, v in row.items()} for row in rows]
    except (OSError, ValueError, TypeError) as e:
        raise UserError(
            f"The training history in {json_path} and {csv_path} is damaged ({e}). Start the run "
            "afresh with overwrite=True, or give another workdir.") from None


def _columns(rows: list[dict]) -> dict:
    keys = ["epoch", "phase"] + sorted({k for r in rows for k in r} - {"epoch", "phase"})
    return {k: [r.get(k) for r in rows] for k in keys} if rows else {}


def read_history(out_dir) -> dict:
    """The history logged so far, as column lists (history.json's layout); see _history_rows."""
    return _columns(_history_rows(pathlib.Path(out_dir)))


class HistoryLog(keras.callbacks.Callback):
    """Writes history.json/.csv after every epoch, across restarts and phases.

    Rows are keyed by the absolute epoch, and an epoch being (re)started drops any row at or after
    it, so a run killed between logging an epoch and backing it up still ends with each epoch once.
    """

    def __init__(self, out_dir, phase: str):
        super().__init__()
        self._out_dir = pathlib.Path(out_dir)
        self._phase = phase

    def _write(self, rows: list[dict]) -> None:
        reports.write_history(_columns(rows) or {"epoch": [], "phase": []}, self._out_dir)

    def on_epoch_begin(self, epoch, logs=None):
        self._write([r for r in _history_rows(self._out_dir) if r["epoch"] <= epoch])

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "phase": self._phase}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self._write([r for r in _history_rows(self._out_dir) if r["epoch"] <= epoch] + [row])


def _callbacks(run: workdir.RunDir, phase: str) -> list[keras.callbacks.Callback]:
    return [
        keras.callbacks.TerminateOnNaN(),
        # Before the backup: a kill between the two leaves a logged epoch that is redone, and the
        # redone epoch replaces its row.
        HistoryLog(run.path, phase),
        EpochBackup(run.backup_dir(phase)),
        keras.callbacks.TensorBoard(log_dir=str(run.path / "logs"), update_freq="epoch"),
    ]


def _check_converged(run: workdir.RunDir, learning_rate: float, num_classes: int) -> None:
    rows = _history_rows(run.path)
    chance = math.log(max(num_classes, 2))
    bad = [r for r in rows if r["loss"] is None or not math.isfinite(r["loss"])]
    diverged = rows and rows[-1]["loss"] is not None and rows[-1]["loss"] > _DIVERGED * chance
    if bad or diverged:
        what = (f"the loss became NaN or infinite in epoch {bad[0]['epoch']}" if bad else
                f"the loss diverged: it ended at {rows[-1]['loss']:.3g}, far above the "
                f"{chance:.2f} of guessing among {num_classes} classes")
        raise UserError(
            f"Training failed: {what}, so the weights are unusable. The learning rate "
            f"({learning_rate:g}) is probably too high: rerun with a lower one (e.g. "
            "learning_rate=1e-4, overwrite=True), and keep standardize_features=True with "
            "weights='none'.")


@contextlib.contextmanager
def phase(net: keras.Model, run: workdir.RunDir, name: str, *, learning_rate: float):
    """Yields the callbacks for the fit of one phase; the fit resumes from the phase's backup.

    Usage: `with phase(net, run, "head", learning_rate=lr) as callbacks: net.fit(...,
    callbacks=callbacks)`. The same context serves the end-to-end fit of the classifier and the
    fast path's fit of the head alone: same backups, history rows and checks.

    Args:
      net: the model about to be fitted.
      run: the workdir (history files, backup/<phase>/, logs/).
      name: the phase; names the backup and the history rows.
      learning_rate: the phase's learning rate, named in the failure message.

    Raises:
      UserError: after the fit, when the loss became NaN or infinite or diverged.
    """
    # EpochBackup sets this private attribute when it restores; it would otherwise carry a
    # restored epoch of the head phase into the fine-tuning fit.
    net._initial_epoch = None
    yield _callbacks(run, name)
    _check_converged(run, learning_rate, num_classes=int(net.output_shape[-1]))


def _checkpoint(run: workdir.RunDir, name: str) -> pathlib.Path:
    return run.path / "checkpoints" / f"{name}.npz"


def end_phase(net: keras.Model, run: workdir.RunDir, name: str) -> None:
    """Keeps the phase's final state and records it as done, so a restart never redoes it.

    Each step is durable before the next removes anything: the state (checksummed), then the
    record, then the phase's backups, which a kill before the record still resumes from (at their
    last epoch).
    """
    try:
        _checkpoint(run, name).parent.mkdir(exist_ok=True)
    except OSError as e:
        raise atomic.disk_error(_checkpoint(run, name).parent, e, what="create") from None
    state_files.save(net, _checkpoint(run, name), with_optimizer=False)
    faults.point("phase_weights_saved")
    run.mark_phase_done(name)
    faults.point("phase_recorded")
    shutil.rmtree(run.backup_dir(name), ignore_errors=True)


def load_finished_phase(net: keras.Model, run: workdir.RunDir) -> None:
    """After a restart, loads the state of the last of PHASES that finished, if any.

    A finished phase whose state is missing or damaged is named and recorded as not done (with
    every phase after it), so it is trained again from the phase before it, or afresh.
    """
    finished = [name for name in PHASES if run.phase_done(name)]
    for name in reversed(finished):
        path = _checkpoint(run, name)
        try:
            state_files.load(net, path, with_optimizer=False)
        except state_files.DamagedState as e:
            logging.warning("The state of the finished %r phase, %r, is damaged (%s); that phase "
                            "is trained again.", name, str(path), e)
            run.mark_phases_undone(PHASES[PHASES.index(name):])
            continue
        logging.info("Phase %s finished earlier; its state is loaded from %s.", name, path)
        return
    if finished:
        logging.warning("No finished phase's state is valid: training starts afresh.")
