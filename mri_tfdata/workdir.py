"""A training run's output directory: start afresh, resume an unfinished run, or refuse to clobber.

Re-running the same command into a workdir whose run was interrupted resumes it (Keras
BackupAndRestore state under backup/). A finished run is never overwritten unless asked for with
`overwrite=True`, which removes only the files a run writes (OUTPUTS); anything else in the
folder is left alone. A non-empty folder that holds no run is refused, so that a mistyped
--workdir cannot mix outputs into, say, a home directory.
"""

import dataclasses
import datetime
import json
import pathlib
import shutil

from absl import logging

from mri_tfdata import atomic
from mri_tfdata.errors import UserError

RUN_FILE = "run.json"
# Everything a run writes into its workdir; --overwrite removes these and nothing else.
OUTPUTS = (RUN_FILE, "flags.txt", "model.keras", "export", "history.json", "history.csv",
           "metrics.json", "loss.png", "accuracy.png", "confusion_matrix.png", "logs", "backup",
           "checkpoints")


@dataclasses.dataclass
class RunDir:
    """An output directory prepared for a run.

    Attributes:
      path: the directory.
      resuming: True when an unfinished run with the same settings is being continued.
      record: the contents of run.json (settings, status, phases finished).
    """

    path: pathlib.Path
    resuming: bool
    record: dict

    def backup_dir(self, phase: str) -> pathlib.Path:
        """BackupAndRestore's directory for one training phase."""
        return self.path / "backup" / phase

    def phase_done(self, phase: str) -> bool:
        return phase in self.record.get("phases_done", [])

    def mark_phase_done(self, phase: str) -> None:
        """Records that `phase` finished, so a restarted run skips it."""
        self.record.setdefault("phases_done", []).append(phase)
        self._write()

    def mark_finished(self) -> None:
        """Records that every output is written; a rerun then needs --overwrite."""
        self.record["status"] = "finished"
        self.record["finished"] = _now()
        self._write()

    def _write(self) -> None:
        atomic.write_json(self.path / RUN_FILE, self.record)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _is_worker_dir(name: str) -> bool:
    # Non-chief multi-worker replicas keep their own scratch folder inside the chief's workdir.
    return name.startswith("worker-")


def prepare(path, *, settings: dict, overwrite: bool = False) -> RunDir:
    """Creates or reopens a workdir for a run with `settings`.

    Args:
      path: the workdir.
      settings: everything that defines the run (JSON-serialisable); an unfinished run resumes only
        when its recorded settings are equal.
      overwrite: start afresh even over a finished or different run, deleting its OUTPUTS.

    Returns:
      The RunDir.

    Raises:
      UserError: the folder holds a finished run (without overwrite), an unfinished run with other
        settings (without overwrite), or files that are not a run's.
    """
    path = pathlib.Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--workdir={path} is a file; pass a directory (it is created if missing).")
    run_file = path / RUN_FILE
    record = json.loads(run_file.read_text()) if run_file.exists() else None
    if record is None and path.exists():
        others = sorted(p.name for p in path.iterdir() if not _is_worker_dir(p.name))
        if others:
            raise UserError(
                f"--workdir={path} is not empty ({', '.join(others[:5])}"
                f"{', ...' if len(others) > 5 else ''}) and holds no training run. Pass a new or "
                "empty directory; existing files are never overwritten.")
    if record is not None:
        same = record.get("settings") == json.loads(json.dumps(settings))
        if record.get("status") == "finished" and not overwrite:
            raise UserError(
                f"--workdir={path} already holds a finished run (see {path / 'metrics.json'}). "
                "Pass another --workdir, or add --overwrite to replace its outputs.")
        if record.get("status") != "finished" and not same and not overwrite:
            changed = sorted(k for k in set(settings) | set(record.get("settings", {}))
                             if settings.get(k) != record.get("settings", {}).get(k))
            raise UserError(
                f"--workdir={path} holds an unfinished run with other settings (changed: "
                f"{', '.join(changed)}). Rerun with the same flags to resume it (see "
                f"{path / 'flags.txt'}), pass another --workdir, or add --overwrite to start "
                "afresh.")
        if overwrite:
            for name in OUTPUTS:
                target = path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            logging.info("--overwrite: removed the previous run's outputs from %s.", path)
        else:
            logging.info("Resuming the unfinished run in %s.", path)
            return RunDir(path=path, resuming=True, record=record)
    path.mkdir(parents=True, exist_ok=True)
    run = RunDir(path=path, resuming=False,
                 record={"status": "running", "started": _now(), "settings": settings,
                         "phases_done": []})
    run._write()
    return run
