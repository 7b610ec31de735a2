"""Tests for mri_tfdata.core.atomic: files written whole get the permissions of the user's umask."""

import os
import stat

import pytest

from mri_tfdata.core import atomic


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_written_files_get_the_umask_permissions_not_the_temp_files(tmp_path, umask):
    written = [atomic.write_atomic(tmp_path / "metrics.json", "{}"),
               atomic.write_json(tmp_path / "history.json", {"loss": [1.0]}),
               atomic.write_atomic(tmp_path / "plot.png", lambda f: f.write(b"\x89PNG"))]
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives, the reference
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask == stat.S_IMODE(
            plain.stat().st_mode), path
    assert atomic.current_umask() == umask


def test_the_synthetic_dataset_folder_gets_the_umask_permissions(tmp_path, umask):
    from mri_tfdata.data import synthetic

    root = synthetic.write_synthetic_dataset(tmp_path / "synthetic", train_per_class=2,
                                             test_per_class=1, image_size=16)
    assert stat.S_IMODE(root.stat().st_mode) == 0o777 & ~umask


def test_check_writable_creates_the_folder_or_names_the_path_it_cannot_write(tmp_path,
                                                                              monkeypatch):
    import errno
    import tempfile

    import pytest

    out = tmp_path / "new" / "deeper" / "out.csv"
    atomic.check_writable(out)
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []  # the probe is gone
    (tmp_path / "a_file").write_text("")
    blocked = tmp_path / "a_file" / "out.csv"
    with pytest.raises(atomic.DiskError, match=f"Cannot write {blocked}: Not a directory"):
        atomic.check_writable(blocked)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    with pytest.raises(atomic.DiskError, match=f"Cannot write {out}: No space left on device"):
        atomic.check_writable(out)


def test_an_hdf5_file_left_open_by_a_failed_write_is_closed_and_removed(tmp_path):
    # Keras's save_weights leaves its file open when a write fails (a full disk); the open file
    # is flushed again at exit, fails again, and HDF5's teardown then crashes the process.
    import h5py
    import numpy as np

    message = ("Can't synchronously write data (file write failed: time = ..., filename = 'x', "
               "file descriptor = 4, errno = 28, error message = 'No space left on device', "
               "buf = 0x1, total write size = 670880, offset = 20525056)")

    def write_then_fail(tmp):
        store = h5py.File(tmp, "w")  # never closed, as Keras's H5IOStore on an error
        store.create_group("layers").create_dataset("kernel", data=np.ones((64, 64)))
        store.flush()
        raise OSError(message)

    target = tmp_path / "head.weights.h5"
    with pytest.raises(atomic.DiskError) as refused:
        atomic.publish(target, write_then_fail, suffix=".weights.h5")
    assert str(refused.value).startswith(f"Cannot write {target}: No space left on device. ")
    assert list(tmp_path.iterdir()) == []
    still_open = [os.fsdecode(i.name) for i in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)]
    assert not any(name.startswith(str(tmp_path)) for name in still_open), still_open
