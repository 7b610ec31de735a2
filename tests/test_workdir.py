"""Tests for mri_tfdata.training.workdir: fresh start, resume, refusals, damaged state, the lock."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mri_tfdata.core.errors import UserError
from mri_tfdata.training import workdir

SETTINGS = {"train": {"epochs": 3}, "model": {"image_size": 64}}


def _open(path, **kwargs):
    run = workdir.open_run(path, **kwargs)
    run.close()
    return run


def test_fresh_then_resume_with_same_settings(tmp_path):
    run = workdir.open_run(tmp_path / "run", settings=SETTINGS)
    assert not run.resuming and run.path.is_dir()
    run.mark_phase_done("head")
    run.close()
    again = _open(tmp_path / "run", settings=json.loads(json.dumps(SETTINGS)))
    assert again.resuming and again.phase_done("head") and not again.phase_done("fine_tune")


def test_unfinished_run_with_other_settings_is_refused_naming_each_flag(tmp_path):
    _open(tmp_path / "run", settings=SETTINGS)
    other = {"train": {"epochs": 5}, "model": {"image_size": 64}}
    for refuse in (workdir.check, workdir.open_run):
        with pytest.raises(UserError,
                           match=r"other settings: epochs \(3 -> 5\)\. .*overwrite=True"):
            refuse(tmp_path / "run", settings=other)
    assert not _open(tmp_path / "run", settings=other, overwrite=True).resuming


def test_finished_run_needs_overwrite_which_keeps_foreign_files(tmp_path):
    run = workdir.open_run(tmp_path / "run", settings=SETTINGS)
    (run.path / "model.keras").write_text("old model")
    (run.path / "logs").mkdir()
    (run.path / "notes.txt").write_text("the user's own file")
    run.mark_finished()
    run.close()
    with pytest.raises(workdir.AlreadyFinished, match="already holds this run, finished"):
        workdir.check(tmp_path / "run", settings=SETTINGS)
    other = {**SETTINGS, "changed": 1}
    with pytest.raises(UserError, match="already holds a finished run.*changed.*overwrite=True"):
        workdir.check(tmp_path / "run", settings=other)
    fresh = _open(tmp_path / "run", settings=SETTINGS, overwrite=True)
    assert not fresh.resuming
    assert not (fresh.path / "model.keras").exists() and not (fresh.path / "logs").exists()
    assert (fresh.path / "notes.txt").read_text() == "the user's own file"


def test_non_empty_folder_without_a_run_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not empty.*thesis.tex.*holds no training run"):
            workdir.open_run(tmp_path, settings=SETTINGS, overwrite=overwrite)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]  # Nothing written there.


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '{"status": "running"}'])
def test_a_damaged_run_file_is_refused_by_name_unless_overwritten(tmp_path, content):
    _open(tmp_path / "run", settings=SETTINGS)
    (tmp_path / "run" / workdir.RUN_FILE).write_text(content)
    (tmp_path / "run" / workdir.RUN_FILE_COPY).write_text(content)
    with pytest.raises(UserError, match=r"run\.json is damaged.*copy.*overwrite=True"):
        workdir.check(tmp_path / "run", settings=SETTINGS)
    assert not _open(tmp_path / "run", settings=SETTINGS, overwrite=True).resuming


def test_a_second_live_run_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    first = workdir.open_run(tmp_path / "run", settings=SETTINGS)
    with pytest.raises(UserError, match=f"Another run \\(process {os.getpid()}\\) is using"):
        workdir.open_run(tmp_path / "run", settings=SETTINGS)
    first.close()
    # A process that holds the lock and is killed: the kernel releases its lock.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mri_tfdata.training import workdir; "
         f"workdir.open_run({str(tmp_path / 'run')!r}, settings={SETTINGS!r}); "
         "print('locked', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"process {holder.pid}"):
            workdir.open_run(tmp_path / "run", settings=SETTINGS)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10
    assert _open(tmp_path / "run", settings=SETTINGS).resuming
    assert time.time() < deadline


def test_a_read_only_workdir_is_one_paragraph_naming_it(tmp_path):
    if os.geteuid() == 0:
        # root writes anywhere; a path under a file fails the same way for everyone.
        target = tmp_path / "file" / "run"
        (tmp_path / "file").write_text("not a folder")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = tmp_path / "ro" / "run"
    with pytest.raises(UserError, match=f"Cannot create the workdir {target}"):
        workdir.open_run(target, settings=SETTINGS)


def test_a_run_that_ends_leaves_no_lock_file_and_keeps_refusing_concurrent_runs(tmp_path):
    first = workdir.open_run(tmp_path / "run", settings=SETTINGS)
    assert (tmp_path / "run" / workdir.LOCK_FILE).exists()
    with pytest.raises(UserError, match="Another run"):
        workdir.open_run(tmp_path / "run", settings=SETTINGS)
    first.close()
    assert not (tmp_path / "run" / workdir.LOCK_FILE).exists()
    # A run that fails while opening (here: other settings under the lock) removes it too.
    second = workdir.open_run(tmp_path / "run", settings=SETTINGS)
    second.close()
    with pytest.raises(UserError, match="other settings"):
        workdir.open_run(tmp_path / "run", settings={**SETTINGS, "model": {"image_size": 96}})
    assert not (tmp_path / "run" / workdir.LOCK_FILE).exists()


def test_a_lock_taken_on_a_removed_lock_file_is_taken_again_on_the_new_one(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    stale = os.open(tmp_path / "run" / workdir.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    real_flock = workdir.fcntl.flock
    calls = []

    def flock_then_remove(fd, operation):
        # Between this run's open and its lock, the previous holder finishes: removes the file.
        real_flock(fd, operation)
        if not calls:
            (tmp_path / "run" / workdir.LOCK_FILE).unlink()
        calls.append(fd)

    monkeypatch.setattr(workdir.fcntl, "flock", flock_then_remove)
    run = workdir.open_run(tmp_path / "run", settings=SETTINGS)
    assert len(calls) == 2 and os.fstat(run.lock_fd).st_ino == os.stat(
        tmp_path / "run" / workdir.LOCK_FILE).st_ino
    run.close()
    os.close(stale)


def test_a_killed_writes_temps_are_removed_on_open_and_a_finished_runs_scratch_on_rerun(tmp_path):
    run = workdir.open_run(tmp_path / "run", settings=SETTINGS)
    run.close()
    # As a kill inside atomic.write_atomic / publish leaves them.
    (run.path / ".run.json.x1y2z3.tmp").write_text("{")
    (run.path / "backup" / "head").mkdir(parents=True)
    (run.path / "backup" / "head" / ".epoch-0001.npz.abc.tmp").write_text("")
    (run.path / ".my-own.tmp").write_text("the user's")
    again = workdir.open_run(tmp_path / "run", settings=SETTINGS)
    assert again.resuming
    assert not (run.path / ".run.json.x1y2z3.tmp").exists()
    assert not list((run.path / "backup" / "head").iterdir())
    assert (run.path / ".my-own.tmp").exists()
    # Killed after being recorded finished, before its scratch folders went.
    (run.path / "checkpoints").mkdir()
    again.mark_finished()
    again.close()
    with pytest.raises(workdir.AlreadyFinished):
        workdir.check(run.path, settings=SETTINGS)
    workdir.tidy_finished(run.path)
    assert not (run.path / "checkpoints").exists() and not (run.path / "backup").exists()
    assert not (run.path / workdir.LOCK_FILE).exists()


def test_a_run_file_damaged_but_readable_is_named_and_its_copy_used(tmp_path, caplog):
    run = _open(tmp_path / "run", settings=SETTINGS)
    run.mark_phase_done("head")
    run.close()
    run_file = tmp_path / "run" / workdir.RUN_FILE
    # Still JSON, still a record: only the checksum tells.
    run_file.write_text(run_file.read_text().replace('"head"', '"hexd"'))
    with caplog.at_level("WARNING"):
        again = _open(tmp_path / "run", settings=SETTINGS)
    assert again.resuming and again.phase_done("head")
    assert "run.json' is damaged" in caplog.text and "run.json.copy" in caplog.text
