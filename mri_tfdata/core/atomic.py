"""Writes files whole or not at all: a reader, or a rerun after a kill, never sees half a file."""

import errno
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
from typing import BinaryIO, Callable, Union

from mri_tfdata.core.errors import UserError

Content = Union[bytes, str, Callable[[BinaryIO], None]]


class DiskError(UserError):
    """A file could not be written (full disk, read-only folder, missing permission)."""


def disk_error(path, error: OSError, what: str = "write") -> DiskError:
    """The one-paragraph error for an OSError while writing `path`, naming the path and the fix."""
    reason = error.strerror or str(error)
    # HDF5 (Keras's .weights.h5) wraps the system's reason in a line of buffers and offsets.
    system = re.search(r"error message = '([^']+)'", reason)
    reason = system.group(1) if system else reason
    return DiskError(f"Cannot {what} {path}: {reason}. Free disk space, fix the folder's "
                     "permissions, or point the run at another folder.")


def current_umask() -> int:
    """The process's umask, read without changing it (Linux's /proc; elsewhere set and reset)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permissions an ordinary new file gets: 0666 less the umask (mkstemp's are 0600)."""
    return 0o666 & ~current_umask()


def write_atomic(path, content: Content) -> pathlib.Path:
    """Writes `content` to `path` through a temp file beside it, fsync and a rename.

    Concurrent writers of the same content are harmless: each renames its own temp file, and the
    last rename wins.

    Args:
      path: the file to write; its folder must exist.
      content: bytes, text (UTF-8), or a function that writes into a binary file object (for
        np.savez, matplotlib's savefig, ...).

    Returns:
      `path` as a Path.

    Raises:
      DiskError: the file could not be written; nothing is left behind.
    """
    path = pathlib.Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise disk_error(path, e) from None
    try:
        # A temp file is private; the file it becomes is as readable as any other the user writes.
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise disk_error(path, e) from None
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable(path) -> None:
    """Checks, before long work, that the file `path` can be written: its folder is created if
    missing and a probe file is made (and removed) in it.

    Raises:
      DiskError: the folder cannot be created or written into (read-only, no permission, full),
        naming `path`.
    """
    path = pathlib.Path(path)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            # mkdir's own words ("File exists") would not say that a folder is a file.
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory") from None
        with tempfile.TemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe") as f:
            f.write(b"\0")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise disk_error(path, e) from None


def write_json(path, obj) -> pathlib.Path:
    """Writes `obj` as indented JSON (NaN allowed, as Python's json writes it), atomically."""
    return write_atomic(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(path, write: Callable[[pathlib.Path], None], *, suffix: str = "") -> pathlib.Path:
    """Has `write` create a file or folder at a temp path beside `path`, then renames it there.

    For what a library writes by path (Keras's .keras files, SavedModel folders): a kill while
    `write` runs leaves the previous version (or nothing), never a half-written one.

    Args:
      path: the final file or folder; an existing one is replaced.
      write: called with the temp path.
      suffix: ending the temp path must have (Keras insists on ".keras").

    Raises:
      DiskError: writing failed; the temp path is removed.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    _remove(tmp)
    try:
        write(tmp)
        if path.is_dir() and not path.is_symlink():
            # A folder cannot be replaced by a rename; move the old one aside first.
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except OSError as e:
        _close_hdf5_files(tmp)
        _remove(tmp)
        raise disk_error(path, e) from None
    except BaseException:
        _close_hdf5_files(tmp)
        _remove(tmp)
        raise
    return path


def _close_hdf5_files(path: pathlib.Path) -> None:
    """Closes the HDF5 files a failed write left open at `path` (Keras's save_weights does not
    close its file when a write fails).

    Left open, such a file is flushed again when its objects are freed or the process exits: on a
    full disk every flush fails, HDF5 cannot release the file and the process ends in a
    segmentation fault after the error paragraph. The file is being removed anyway, so its last
    writes go to /dev/null (its descriptor replaced), and then it closes. Imports nothing: only a
    process that already uses h5py can have such a file.
    """
    h5py = sys.modules.get("h5py")
    if h5py is None:
        return
    for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:
            if os.fsdecode(file_id.name) != str(path):
                continue
            sink = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(sink, file_id.get_vfd_handle())
            finally:
                os.close(sink)
            h5py.File(file_id).close()  # its datasets and groups, then the file
        except Exception:  # noqa: BLE001 -- a file that will not close stays as it was.
            pass
