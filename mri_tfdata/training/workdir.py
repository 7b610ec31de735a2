"""A training run's output directory: start afresh, resume an unfinished run, or refuse to clobber.

Re-running the same command into a workdir whose run was interrupted resumes it. A finished run is
never overwritten unless asked for with `overwrite=True`, which removes only the files a run
writes (OUTPUTS); anything else in the folder is left alone. A non-empty folder that holds no run
is refused, so that a mistyped --workdir cannot mix outputs into, say, a home directory. While a
run uses its workdir it holds a lock on it, so a second run into the same folder is refused; the
kernel releases the lock when the process dies, however it dies.
"""

import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import pathlib
import shutil

from absl import logging

from mri_tfdata.core import atomic
from mri_tfdata.core.errors import UserError

RUN_FILE = "run.json"
# A second copy of the record: a damaged run.json (its sha256 in run.json.sha256 disagrees) is
# replaced by it.
RUN_FILE_COPY = "run.json.copy"
LOCK_FILE = ".lock"
# Everything a run writes into its workdir; --overwrite removes these and nothing else.
OUTPUTS = (RUN_FILE, RUN_FILE + ".sha256", RUN_FILE_COPY, RUN_FILE_COPY + ".sha256",
           "flags.txt", "model.keras", "export", "history.json", "history.csv",
           "metrics.json", "loss.png", "accuracy.png", "confusion_matrix.png", "logs", "backup",
           "checkpoints", "report.html")


# Folders of state a run needs only until it is finished.
SCRATCH = ("backup", "checkpoints")


class AlreadyFinished(Exception):
    """The workdir holds a finished run with the same settings: there is nothing to do."""


@dataclasses.dataclass
class RunDir:
    """An output directory opened for a run, and locked by it.

    Attributes:
      path: the directory.
      resuming: True when an unfinished run with the same settings is being continued.
      record: the contents of run.json (settings, status, phases finished).
    """

    path: pathlib.Path
    resuming: bool
    record: dict
    lock_fd: int | None = None  # held open for the life of the process

    def backup_dir(self, phase: str) -> pathlib.Path:
        """The resumable backups of one training phase."""
        return self.path / "backup" / phase

    def phase_done(self, phase: str) -> bool:
        return phase in self.record.get("phases_done", [])

    def mark_phase_done(self, phase: str) -> None:
        """Records that `phase` finished, so a restarted run skips it."""
        self.record.setdefault("phases_done", []).append(phase)
        self._write()

    def mark_phases_undone(self, phases) -> None:
        """Records that `phases` must be trained again (their saved state is damaged)."""
        self.record["phases_done"] = [p for p in self.record.get("phases_done", [])
                                      if p not in phases]
        self._write()

    def mark_finished(self) -> None:
        """Records that every output is written; a rerun then needs --overwrite."""
        self.record["status"] = "finished"
        self.record["finished"] = _now()
        self._write()

    def _write(self) -> None:
        content = (json.dumps(self.record, indent=2, allow_nan=True) + "\n").encode()
        digest = hashlib.sha256(content).hexdigest() + "\n"
        for name in (RUN_FILE, RUN_FILE_COPY):  # One at a time: a kill leaves one whole.
            (self.path / f"{name}.sha256").unlink(missing_ok=True)
            atomic.write_atomic(self.path / name, content)
            atomic.write_atomic(self.path / f"{name}.sha256", digest)

    def close(self) -> None:
        """Releases the workdir's lock and removes its lock file: a run's folder ends without it.

        The process ending releases the lock too, but leaves the file (which the next run takes
        over)."""
        if self.lock_fd is not None:
            _unlock(self.path, self.lock_fd)
            self.lock_fd = None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _is_worker_dir(name: str) -> bool:
    # Non-chief multi-worker replicas keep their own scratch folder inside the chief's workdir.
    return name.startswith("worker-")


def _verified_record(run_file: pathlib.Path) -> dict:
    """The record in `run_file`, checked against its sha256 when one was written with it.

    Raises:
      ValueError: unreadable, not a record, or its checksum disagrees.
    """
    try:
        content = run_file.read_bytes()
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None
    digest = run_file.with_name(run_file.name + ".sha256")
    if digest.exists():
        try:
            expected = digest.read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read its checksum ({e.strerror or e})") from None
        if hashlib.sha256(content).hexdigest() != expected:
            raise ValueError("its sha256 differs from the one written with it")
    record = json.loads(content)
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ValueError("not a run record")
    return record


def _read_record(path: pathlib.Path, *, overwrite: bool) -> dict | None:
    """run.json's contents (else its copy's, naming the damaged file), None when there is none.

    A record that is damaged in both files is refused by name, unless the run is to be
    overwritten anyway."""
    run_file = path / RUN_FILE
    if not run_file.exists():
        return None
    try:
        return _verified_record(run_file)
    except ValueError as e:
        damage = e
    try:
        record = _verified_record(path / RUN_FILE_COPY)
    except ValueError:
        if overwrite:
            return {"status": "damaged", "settings": {}}
        raise UserError(
            f"{run_file} is damaged ({damage}) and so is its copy {path / RUN_FILE_COPY}, so the "
            f"state of the run in workdir={path} is unknown. Restore one of them, or give another "
            "workdir (overwrite=True would start this one afresh).") from None
    logging.warning("%r is damaged (%s); its copy %r is used.", str(run_file), damage,
                    str(path / RUN_FILE_COPY))
    return record


def _differences(recorded, wanted, prefix: str = "") -> list[str]:
    """`name (old -> new)` for every setting that differs, however deeply nested."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        return [d for key in sorted(set(recorded) | set(wanted))
                for d in _differences(recorded.get(key), wanted.get(key), key)]
    if recorded == wanted:
        return []
    return [f"{prefix} ({recorded!r} -> {wanted!r})"]


def check(path, *, settings: dict, overwrite: bool = False) -> None:
    """Refuses early, writing nothing, a workdir the run could not use.

    Raises:
      UserError: the folder is a file, holds a finished run (without overwrite), an unfinished run
        with other settings (without overwrite), a damaged run.json, or files that are not a run's.
    """
    path = pathlib.Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"workdir={path} is a file; give a directory (it is created if missing).")
    record = _read_record(path, overwrite=overwrite)
    if record is None and path.exists():
        others = sorted(p.name for p in path.iterdir()
                        if not _is_worker_dir(p.name) and p.name != LOCK_FILE)
        if others:
            raise UserError(
                f"workdir={path} is not empty ({', '.join(others[:5])}"
                f"{', ...' if len(others) > 5 else ''}) and holds no training run. Pass a new or "
                "empty directory; existing files are never overwritten.")
    if record is None or overwrite:
        return
    changed = _differences(record["settings"], json.loads(json.dumps(settings)))
    if record.get("status") == "finished":
        if not changed:
            raise AlreadyFinished(
                f"workdir={path} already holds this run, finished (see {path / 'metrics.json'}); "
                "there is nothing to do.")
        raise UserError(
            f"workdir={path} already holds a finished run (see {path / 'metrics.json'}) with "
            f"other settings: {'; '.join(changed)}. Give another workdir, or overwrite=True to "
            "replace its outputs.")
    if changed:
        raise UserError(
            f"workdir={path} holds an unfinished run with other settings: "
            f"{'; '.join(changed)}. Rerun with its settings to resume it (see "
            f"{path / 'flags.txt'}), give another workdir, or overwrite=True to start afresh.")


def _is_stale_temp(name: str) -> bool:
    """A temp file or folder of atomic.write_atomic/publish, left by a process that was killed."""
    return name.startswith(".") and (".tmp" in name or name.endswith(".old"))


def _remove_stale_temps(path: pathlib.Path) -> None:
    """Removes the temps of a killed run's state writes, in the workdir and its scratch folders.

    Call under the lock: a live run's temps are its own."""
    folders = [path] + [d for name in SCRATCH for d in [path / name, *(path / name).glob("*")]
                        if d.is_dir()]
    for folder in folders:
        for leftover in folder.iterdir():
            if not _is_stale_temp(leftover.name):
                continue
            if folder == path and not any(leftover.name.startswith(f".{o}.") for o in OUTPUTS):
                continue  # Not a file of ours.
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def tidy_finished(path) -> None:
    """Removes what a run killed after being recorded finished may have left: scratch folders
    and temps (under the lock; a read-only folder is left as it is)."""
    path = pathlib.Path(path).expanduser()
    try:
        fd = _lock(path)
    except UserError:
        return
    try:
        _remove_stale_temps(path)
        for name in SCRATCH:
            shutil.rmtree(path / name, ignore_errors=True)
    except OSError:
        pass
    finally:
        _unlock(path, fd)


def _lock(path: pathlib.Path) -> int:
    """Takes the workdir's lock, or refuses when a live process holds it.

    The lock is the one on the file now at `path`/.lock: a lock taken on a file that its holder
    removed on finishing (see _unlock) protects nothing, so it is taken again on the new file.
    """
    lock_path = path / LOCK_FILE
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise atomic.disk_error(lock_path, e, what="create the lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 100, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"Another run (process {holder}) is using workdir={path} right now. Wait for it "
                "to finish, stop it, or give another workdir.") from None
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _unlock(path: pathlib.Path, fd: int) -> None:
    """Removes the lock file, then releases the lock (in this order, so that no other run can
    lock the file in between and lose it)."""
    try:
        (path / LOCK_FILE).unlink(missing_ok=True)
    except OSError:  # A read-only folder: the file stays, and the next run takes it over.
        pass
    os.close(fd)


def open_run(path, *, settings: dict, overwrite: bool = False) -> RunDir:
    """Creates or reopens a workdir for a run with `settings`, and locks it.

    Call once the data and the model are known to be good, so that a run failing at start-up
    leaves no trace (see `check` for the early refusal).

    Args:
      path: the workdir.
      settings: everything that defines the run (JSON-serialisable); an unfinished run resumes only
        when its recorded settings are equal.
      overwrite: start afresh even over a finished or different run, deleting its OUTPUTS.

    Returns:
      The RunDir.

    Raises:
      UserError: as `check`, or another live run holds the workdir.
    """
    path = pathlib.Path(path).expanduser()
    check(path, settings=settings, overwrite=overwrite)  # Before the lock file is created.
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise atomic.disk_error(path, e, what="create the workdir") from None
    lock_fd = _lock(path)
    try:
        return _open_locked(path, lock_fd, settings=settings, overwrite=overwrite)
    except BaseException:
        _unlock(path, lock_fd)
        raise


def _open_locked(path: pathlib.Path, lock_fd: int, *, settings: dict, overwrite: bool) -> RunDir:
    # Checked again under the lock: another run may have started or finished meanwhile.
    check(path, settings=settings, overwrite=overwrite)
    _remove_stale_temps(path)
    record = _read_record(path, overwrite=overwrite)
    if record is not None and not overwrite:
        logging.info("Resuming the unfinished run in %s.", path)
        return RunDir(path=path, resuming=True, record=record, lock_fd=lock_fd)
    if record is not None:
        for name in OUTPUTS:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        logging.info("overwrite=True: removed the previous run's outputs from %s.", path)
    run = RunDir(path=path, resuming=False, lock_fd=lock_fd,
                 record={"status": "running", "started": _now(), "settings": settings,
                         "phases_done": []})
    run._write()
    return run
