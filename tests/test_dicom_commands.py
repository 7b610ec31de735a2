"""Integration tests of DICOM input through the commands: train on a DICOM folder, predict a
series with --series_summary, and no patient identifier in any output."""

import csv
import json
import subprocess
import sys

import dicom_files
import numpy as np
import pytest

from mri_tfdata.data import kaggle_layout

PLANTED = (dicom_files.PATIENT_NAME, dicom_files.PATIENT_ID, "Zyxwvutsrq", "QWERTY")


def _run(module, *args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def _no_identifier(text: str, where: str) -> None:
    for value in PLANTED:
        assert value not in text, f"{value!r} leaked into {where}"


def _dicom_tree(root):
    """64 px 12-bit DICOMs: 3 training and 2 test slices per class, plus bad files."""
    rng = np.random.default_rng(0)
    for split, count in (("Training", 3), ("Testing", 2)):
        for label, name in enumerate(kaggle_layout.CLASS_NAMES):
            for i in range(count):
                stored = (rng.integers(0, 400, (64, 64)) + 900 * label).astype(np.uint16)
                dicom_files.write(root / split / name / f"s{i}.dcm", stored, intercept=-1024,
                                  center=800, width=3000)
    dicom_files.write_broken(root / "Testing" / "glioma")
    return root


@pytest.mark.integration
def test_train_then_predict_a_series_with_summary_leaks_no_identifier(tmp_path):
    data = _dicom_tree(tmp_path / "data")
    workdir = tmp_path / "run"
    code, out, err = _run("mri_tfdata.train", "--source=folder", f"--data_dir={data}",
                          "--image_size=64", "--weights=none", "--head_units=8",
                          "--batch_size=4", "--epochs=1", "--precision=float32",
                          "--strategy=default", "--feature_cache=off", "--cache=memory",
                          "--train_split=train", "--validation_split=", f"--workdir={workdir}")
    assert code == 0, err[-3000:]
    assert "truncated.dcm" in err and "no pixel data" in err  # the bad files, named
    errors_csv = (workdir / "errors.csv").read_text()
    assert errors_csv.startswith("file,")
    for text, where in ((out + err, "the training log"), (errors_csv, "errors.csv")):
        _no_identifier(text, where)
    for path in workdir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".txt", ".html"):
            _no_identifier(path.read_text(errors="replace"), str(path))

    evaluation = tmp_path / "eval"
    code, out, err = _run("mri_tfdata.evaluate", f"--model={workdir / 'model.keras'}",
                          "--source=folder", f"--data_dir={data}", "--split=test",
                          "--batch_size=4", "--dicom_window=800,3000",
                          "--bootstrap_resamples=10", f"--out={evaluation}")
    assert code == 0, err[-3000:]
    assert "truncated.dcm" in err
    for path in evaluation.glob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".html"):
            _no_identifier(path.read_text(errors="replace"), str(path))
    _no_identifier(out + err, "mri-evaluate's log")

    # A series folder: a multi-frame file and single slices of one SeriesInstanceUID, a second
    # series, a damaged slice.
    scans = tmp_path / "scans"
    uid = "1.2.826.0.1.3680043.8.498.1"
    stack = np.stack([dicom_files.ramp(64, 64) // (i + 1) for i in range(3)])
    dicom_files.write(scans / "series1" / "multi.dcm", stack, series_uid=uid)
    for i in range(2):
        dicom_files.write(scans / "series1" / f"IM{i}", dicom_files.ramp(64, 64), series_uid=uid)
    dicom_files.write(scans / "series2" / "a.dcm", dicom_files.ramp(64, 64), series_uid="1.2.3")
    broken = dicom_files.write_broken(scans / "series2")
    model = workdir / "model.keras"

    code, out, err = _run("mri_tfdata.predict", f"--model={model}", "--series_summary",
                          "--dicom_window=100,400", str(scans))
    assert code == 1, err[-3000:]  # the damaged files
    lines = [json.loads(line) for line in out.splitlines()]
    slices = [r for r in lines if "file" in r]
    summaries = {r["series"]: r for r in lines if "series" in r}
    files = {r["file"] for r in slices}
    assert {f"{scans / 'series1' / 'multi.dcm'}#{i}" for i in (1, 2, 3)} <= files
    assert str(scans / "series1" / "IM0") in files
    assert {str(p) for p in broken.values()} <= {r["file"] for r in slices if "error" in r}
    assert summaries[uid]["slices"] == 5 and sum(summaries[uid]["votes"].values()) == 5
    assert summaries[uid]["class"] in kaggle_layout.CLASS_NAMES
    # The highest mean probability over the series' slices.
    probabilities = np.array([[r["probabilities"][c] for c in kaggle_layout.CLASS_NAMES]
                              for r in slices if "probabilities" in r and "series1" in r["file"]])
    assert summaries[uid]["class"] == kaggle_layout.CLASS_NAMES[
        int(np.argmax(probabilities.mean(axis=0)))]
    assert summaries["1.2.3"]["slices"] == 1
    # Each broken file is its own series (its own UID, or its folder when unreadable).
    assert sum(s["unreadable"] for s in summaries.values()) == 4
    _no_identifier(out + err, "predict's output and log")

    for suffix in (".csv", ".jsonl"):
        output = tmp_path / f"predictions{suffix}"
        code, out, err = _run("mri_tfdata.predict", f"--model={model}", "--series_summary",
                              f"--output={output}", str(scans))
        assert code == 1, err[-3000:]
        series_file = tmp_path / f"predictions_series{suffix}"
        for text, where in ((output.read_text(), output), (series_file.read_text(), series_file),
                            (out + err, "predict's log")):
            _no_identifier(text, str(where))
        if suffix == ".csv":
            rows = list(csv.DictReader(series_file.open()))
            assert {uid, "1.2.3"} <= {row["series"] for row in rows}

    code, _, err = _run("mri_tfdata.predict", f"--model={model}", "--dicom_window=40",
                        str(scans))
    assert code == 2 and "--dicom_window" in err and "Traceback" not in err
