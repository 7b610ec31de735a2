"""Tests for mri_tfdata.reports: metrics from known confusion matrices, history files, plots."""

import csv
import json

import numpy as np
import pytest

from mri_tfdata import reports

NAMES = ("glioma", "meningioma", "notumor", "pituitary")


def _probabilities_for(labels, predictions):
    """Confident one-hot-ish probabilities whose argmax is `predictions`."""
    probabilities = np.full((len(predictions), 4), 0.1 / 3)
    probabilities[np.arange(len(predictions)), predictions] = 0.9
    return probabilities


def test_metrics_of_known_predictions():
    # Rows: true class; columns: predicted class.
    matrix = np.array([[8, 2, 0, 0],
                       [1, 6, 1, 2],
                       [0, 0, 10, 0],
                       [0, 0, 0, 0]])
    labels = np.repeat(np.arange(4)[:, None], 4, axis=1).ravel().repeat(matrix.ravel())
    predictions = np.tile(np.arange(4), 4).repeat(matrix.ravel())
    m = reports.classification_metrics(labels, _probabilities_for(labels, predictions), NAMES)
    assert m["num_examples"] == 30 and m["confusion_matrix"] == matrix.tolist()
    assert m["accuracy"] == pytest.approx(24 / 30)
    glioma = m["per_class"]["glioma"]
    assert glioma["precision"] == pytest.approx(8 / 9)
    assert glioma["recall"] == pytest.approx(8 / 10)
    assert glioma["f1"] == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    assert glioma["support"] == 10
    mening = m["per_class"]["meningioma"]
    assert mening["precision"] == pytest.approx(6 / 8)
    assert mening["recall"] == pytest.approx(6 / 10)
    assert m["per_class"]["notumor"]["precision"] == pytest.approx(10 / 11)
    assert m["per_class"]["notumor"]["recall"] == 1.0
    # Predicted twice but never present: precision 0, recall 0 (no NaN in the JSON).
    pit = m["per_class"]["pituitary"]
    assert (pit["precision"], pit["recall"], pit["f1"], pit["support"]) == (0.0, 0.0, 0.0, 0)
    assert m["macro_avg"]["recall"] == pytest.approx((0.8 + 0.6 + 1.0 + 0.0) / 4)
    assert m["loss"] == pytest.approx(-(24 * np.log(0.9) + 6 * np.log(0.1 / 3)) / 30)


def test_classification_metrics_loss_matches_keras():
    import keras

    labels = np.array([0, 1, 2, 3, 1])
    probs = np.array([[0.7, 0.1, 0.1, 0.1],
                      [0.2, 0.5, 0.2, 0.1],
                      [0.0, 0.0, 1.0, 0.0],
                      [0.5, 0.2, 0.2, 0.1],
                      [0.25, 0.25, 0.25, 0.25]], np.float32)
    m = reports.classification_metrics(labels, probs, NAMES)
    expected = float(keras.losses.SparseCategoricalCrossentropy()(labels, probs))
    assert m["loss"] == pytest.approx(expected, rel=1e-5)
    # Argmax ties go to the first class, as numpy (and Keras' accuracy) do.
    assert m["confusion_matrix"][1][0] == 1
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_write_evaluation_history_and_plots(tmp_path):
    labels = np.array([0, 1, 2, 3])
    probs = np.eye(4, dtype=np.float32)
    m = reports.write_evaluation(tmp_path, labels=labels, probabilities=probs, class_names=NAMES,
                                 extra={"split": "test"})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["split"] == "test" and on_disk["accuracy"] == 1.0 == m["accuracy"]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    history = {"epoch": [1, 2, 3], "phase": ["head", "head", "fine_tune"],
               "loss": [1.2, 0.8, 0.5], "accuracy": [0.4, 0.6, 0.8],
               "val_loss": [1.1, 0.9, 0.7], "val_accuracy": [0.5, 0.6, 0.7]}
    reports.write_history(history, tmp_path)
    assert json.loads((tmp_path / "history.json").read_text()) == history
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["val_accuracy"]) for r in rows] == [0.5, 0.6, 0.7]
    paths = reports.plot_history(history, tmp_path)
    assert sorted(p.name for p in paths) == ["accuracy.png", "loss.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
