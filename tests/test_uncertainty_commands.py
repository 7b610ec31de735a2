"""End-to-end tests of intervals and prediction sets: training calibrates and stores them, a kill
loses nothing, evaluate prints them, predict and the SavedModel give the sets; flag errors."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

pytestmark = pytest.mark.integration

# 30 training images per class: a validation split of 12 (train[90%:]) calibrates the 90% sets
# (at least 9 images) but is too small for the 95% ones (at least 19).
TINY = ["--source=synthetic", "--synthetic_train_per_class=30", "--synthetic_test_per_class=3",
        "--image_size=32", "--weights=none", "--head_units=16", "--batch_size=8",
        "--precision=float32", "--strategy=default", "--cache=memory", "--epochs=2",
        "--bootstrap_resamples=200"]


def _run(module, *args, env=None):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=600, env=env)
    return proc.returncode, proc.stdout, " ".join(proc.stderr.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run killed right after model.keras is written, then run again to the end."""
    root = tmp_path_factory.mktemp("uncertainty")
    workdir = root / "run"
    args = [*TINY, f"--data_dir={root / 'synthetic'}", f"--feature_cache={root / 'features'}",
            f"--workdir={workdir}"]
    code, _, err = _run("mri_tfdata.train", *args,
                        env={**os.environ, "MRI_TFDATA_KILL_AT": "model_saved"})
    assert code == -signal.SIGKILL, err[-3000:]
    with zipfile.ZipFile(workdir / "model.keras") as archive:
        killed_metadata = json.loads(archive.read("mri_tfdata.json"))
    code, _, err = _run("mri_tfdata.train", *args)
    assert code == 0, err[-3000:]
    return root, workdir, killed_metadata, err


def test_training_stores_the_thresholds_and_names_the_level_it_skips(trained):
    _, workdir, killed_metadata, err = trained
    assert "No prediction sets at alpha 0.05" in err
    assert "needs at least 19 calibration images, but the validation split has 12" in err
    from mri_tfdata.serving import model_file

    saved = model_file.load_classifier(workdir / "model.keras")
    assert saved.conformal["score"] == "lac" and list(saved.conformal["alphas"]) == ["0.1"]
    assert saved.conformal["calibration_examples"] == 12
    # Calibrated before the kill, the same after the rerun: the run is deterministic from there.
    assert killed_metadata["conformal"]["alphas"] == saved.conformal["alphas"]


def test_metrics_json_holds_intervals_and_the_conformal_report(trained):
    _, workdir, _, _ = trained
    metrics = json.loads((workdir / "metrics.json").read_text())
    intervals = metrics["intervals"]
    assert (intervals["level"], intervals["resamples"], intervals["seed"]) == (0.95, 200, 0)
    assert intervals["method"] == "stratified bootstrap, percentile"
    low, high = intervals["accuracy"]
    assert low <= metrics["accuracy"] <= high
    for key in ("brier_score", "expected_calibration_error"):
        assert len(intervals[key]) == 2
    assert set(intervals["per_class"]) == set(metrics["class_names"])
    assert set(intervals["per_class"]["glioma"]) == {"sensitivity", "specificity", "roc_auc"}
    report = metrics["conformal"]
    assert report["calibration_split"] == "train[90%:]" and report["calibration_examples"] == 12
    assert list(report["levels"]) == ["0.9"] and "0.05" in report["skipped"]
    level = report["levels"]["0.9"]
    assert level["alpha"] == 0.1 and 0 <= level["coverage"] <= 1
    assert {"threshold", "coverage_interval", "mean_set_size", "referred_fraction",
            "accuracy_not_referred"} <= set(level)


def test_evaluate_prints_the_intervals_and_predict_gives_sets(trained, tmp_path):
    root, workdir, _, _ = trained
    code, out, err = _run("mri_tfdata.evaluate", f"--model={workdir / 'model.keras'}",
                          "--source=synthetic", "--synthetic_train_per_class=30",
                          "--synthetic_test_per_class=3", f"--data_dir={root / 'synthetic'}",
                          f"--out={tmp_path / 'eval'}", "--bootstrap_resamples=100",
                          f"--feature_cache={root / 'features'}")
    assert code == 0, err[-3000:]
    assert "accuracy" in out and "(95% CI " in out and "90% prediction sets: coverage" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["intervals"]["resamples"] == 100 and "0.9" in metrics["conformal"]["levels"]

    files = sorted((root / "synthetic").rglob("Testing/*/*.jpg"))[:4]
    code, out, err = _run("mri_tfdata.predict", f"--model={workdir / 'model.keras'}",
                          *map(str, files))
    assert code == 0, err[-3000:]
    from mri_tfdata.evaluation import conformal
    from mri_tfdata.serving import model_file

    saved = model_file.load_classifier(workdir / "model.keras")
    for line in map(json.loads, out.splitlines()):
        p = np.array(list(line["probabilities"].values()))
        members = conformal.prediction_sets(p[None], saved.conformal["alphas"]["0.1"])[0]
        assert line["prediction_set"] == [n for n, m in zip(saved.class_names, members) if m]
        assert line["refer"] == (len(line["prediction_set"]) != 1)
        assert line["prediction_set_coverage"] == 0.9
    code, out, err = _run("mri_tfdata.predict", f"--model={workdir / 'model.keras'}",
                          f"--output={tmp_path / 'p.csv'}", *map(str, files))
    assert code == 0, err[-3000:]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert len(rows) == 4 and all(r["refer"] in ("true", "false") for r in rows)
    assert all(r["refer"] == str(len([c for c in r["prediction_set"].split(";") if c]) != 1).lower()
               for r in rows)


@pytest.mark.parametrize("flag, message", [
    ("--conformal_alphas=1.5", "--conformal_alphas=1.5 must be distinct numbers strictly "
                               "between 0 and 1"),
    ("--conformal_alphas=0.1,0", "strictly between 0 and 1"),
    ("--conformal_alphas=ten", "strictly between 0 and 1"),
    ("--bootstrap_resamples=0", "--bootstrap_resamples=0 must be at least 1"),
])
def test_bad_uncertainty_flags_exit_2_before_anything_is_written(tmp_path, flag, message):
    code, _, err = _run("mri_tfdata.train", *TINY, f"--workdir={tmp_path / 'w'}", flag)
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "w").exists()


def test_evaluate_refuses_zero_resamples(tmp_path):
    code, _, err = _run("mri_tfdata.evaluate", "--model=none.keras", f"--out={tmp_path}",
                        "--bootstrap_resamples=0")
    assert code == 2 and "--bootstrap_resamples=0 must be at least 1" in err, err[-2000:]


def test_model_file_keeps_the_thresholds_and_loads_files_without_them(trained_classifier,
                                                                      tmp_path):
    from mri_tfdata.core.errors import UserError
    from mri_tfdata.serving import model_file

    path, classifier = trained_classifier
    assert model_file.load_classifier(path).conformal is None  # saved without thresholds
    calibration = {"score": "aps", "alphas": {"0.1": 0.93, "0.05": 0.97},
                   "calibration_examples": 571, "calibration_split": "train[90%:]"}
    names = ("a", "b", "c", "d")
    saved = model_file.save_classifier(classifier, tmp_path / "model.keras", class_names=names,
                                       conformal=calibration)
    assert model_file.load_classifier(saved).conformal == calibration
    damaged = tmp_path / "damaged.keras"
    model_file.save_classifier(classifier, damaged, class_names=names,
                               conformal={**calibration, "alphas": {"1.5": 0.9}})
    with pytest.raises(UserError, match="damaged mri_tfdata.json"):
        model_file.load_classifier(damaged)


def test_saved_model_returns_the_primary_level_sets(trained_classifier, tmp_path):
    import tensorflow as tf

    from mri_tfdata.evaluation import conformal
    from mri_tfdata.serving import export

    _, classifier = trained_classifier
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    plain = tmp_path / "plain"
    export.export_serving(classifier, plain, class_names=("a", "b", "c", "d"))
    probabilities = tf.saved_model.load(str(plain)).signatures["serve"](
        images=tf.constant(images))["probabilities"].numpy()
    for score in conformal.SCORES:
        # The primary level's threshold: mid-gap between two scores near the median, so that
        # sets differ between images, and a gap wider than float32's rounding (the graph's
        # scores are float32, these float64).
        middle = np.unique(conformal.class_scores(probabilities, score))
        wide = np.flatnonzero(np.diff(middle) > 1e-4)
        at = wide[np.argmin(np.abs(wide - len(middle) // 2))]
        threshold = float(middle[at:at + 2].mean())
        calibration = {"score": score, "alphas": {"0.2": threshold, "0.1": 1.0},
                       "calibration_examples": 50}
        export.export_serving(classifier, tmp_path / score, class_names=("a", "b", "c", "d"),
                              calibration=calibration)
        found = tf.saved_model.load(str(tmp_path / score)).signatures["serve"](
            images=tf.constant(images))
        np.testing.assert_allclose(found["probabilities"].numpy(), probabilities, atol=1e-6)
        expected = conformal.prediction_sets(probabilities, threshold, score)
        assert 0 < expected.sum() < expected.size
        np.testing.assert_array_equal(found["prediction_set"].numpy(), expected)
