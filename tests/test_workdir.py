"""Tests for mri_tfdata.workdir: fresh start, resume, refusal to clobber, --overwrite."""

import json

import pytest

from mri_tfdata import workdir
from mri_tfdata.errors import UserError

SETTINGS = {"train": {"epochs": 3}, "model": {"image_size": 64}}


def test_fresh_then_resume_with_same_settings(tmp_path):
    run = workdir.prepare(tmp_path / "run", settings=SETTINGS)
    assert not run.resuming and run.path.is_dir()
    run.mark_phase_done("head")
    again = workdir.prepare(tmp_path / "run", settings=json.loads(json.dumps(SETTINGS)))
    assert again.resuming and again.phase_done("head") and not again.phase_done("fine_tune")


def test_unfinished_run_with_other_settings_is_refused(tmp_path):
    workdir.prepare(tmp_path / "run", settings=SETTINGS)
    other = {"train": {"epochs": 5}, "model": {"image_size": 64}}
    with pytest.raises(UserError, match=r"other settings \(changed: train\).*--overwrite"):
        workdir.prepare(tmp_path / "run", settings=other)
    assert not workdir.prepare(tmp_path / "run", settings=other, overwrite=True).resuming


def test_finished_run_needs_overwrite_which_keeps_foreign_files(tmp_path):
    run = workdir.prepare(tmp_path / "run", settings=SETTINGS)
    (run.path / "model.keras").write_text("old model")
    (run.path / "logs").mkdir()
    (run.path / "notes.txt").write_text("the user's own file")
    run.mark_finished()
    with pytest.raises(UserError, match="already holds a finished run.*--overwrite"):
        workdir.prepare(tmp_path / "run", settings=SETTINGS)
    fresh = workdir.prepare(tmp_path / "run", settings=SETTINGS, overwrite=True)
    assert not fresh.resuming
    assert not (fresh.path / "model.keras").exists() and not (fresh.path / "logs").exists()
    assert (fresh.path / "notes.txt").read_text() == "the user's own file"


def test_non_empty_folder_without_a_run_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not empty.*thesis.tex.*holds no training run"):
            workdir.prepare(tmp_path, settings=SETTINGS, overwrite=overwrite)
    assert (tmp_path / "thesis.tex").read_text() == "precious"
    assert not (tmp_path / workdir.RUN_FILE).exists()
