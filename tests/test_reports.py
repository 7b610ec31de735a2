"""Tests for reports and probability_metrics: metrics against direct computations, plots."""

import csv
import json

import numpy as np
import pytest

from mri_tfdata.evaluation import probability_metrics, reports

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
                                 names=["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
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


def _fixed_predictions(n=300, seed=0):
    """Labels and softmax probabilities that carry some signal, some noise and some ties."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4)) + 1.5 * np.eye(4)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities[:10] = [0.25, 0.25, 0.25, 0.25]  # tied scores and a confidence of exactly 0.25
    probabilities[10:12] = [0.0, 0.0, 1.0, 0.0]  # a confidence of exactly 1
    return labels, probabilities


def _pairwise_auc(positive_scores, negative_scores):
    """The AUC as the probability that a positive outscores a negative (ties count half)."""
    difference = positive_scores[:, None] - negative_scores[None, :]
    return float(np.mean((difference > 0) + 0.5 * (difference == 0)))


def test_auc_ece_brier_sensitivity_specificity_agree_with_direct_computations():
    labels, probabilities = _fixed_predictions()
    m = reports.classification_metrics(labels, probabilities, NAMES)
    predictions = probabilities.argmax(axis=1)
    aucs = []
    for c, name in enumerate(NAMES):
        aucs.append(_pairwise_auc(probabilities[labels == c, c], probabilities[labels != c, c]))
        assert m["per_class"][name]["roc_auc"] == pytest.approx(aucs[-1], abs=1e-12)
        positive, predicted = labels == c, predictions == c
        assert m["per_class"][name]["sensitivity"] == pytest.approx(
            np.sum(positive & predicted) / np.sum(positive))
        assert m["per_class"][name]["specificity"] == pytest.approx(
            np.sum(~positive & ~predicted) / np.sum(~positive))
    assert m["macro_avg"]["roc_auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert 0.6 < m["macro_avg"]["roc_auc"] < 0.95  # the data have signal, and noise

    # ECE with 15 bins (a, b], written out as a loop.
    confidence, correct = probabilities.max(axis=1), predictions == labels
    ece = 0.0
    for m_bin in range(15):
        low, high = m_bin / 15, (m_bin + 1) / 15
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert m["ece_bins"] == 15
    assert m["expected_calibration_error"] == pytest.approx(ece, abs=1e-12)
    assert m["expected_calibration_error"] > 0.01

    brier = np.mean(np.sum((probabilities - np.eye(4)[labels]) ** 2, axis=1))
    assert m["brier_score"] == pytest.approx(brier, abs=1e-12)
    assert m["undefined"] == {}


def test_reliability_bins_are_those_of_sklearn_calibration_curve():
    from sklearn.calibration import calibration_curve

    labels, probabilities = _fixed_predictions(seed=1)
    bins = probability_metrics.reliability_bins(labels, probabilities)
    correct = probabilities.argmax(axis=1) == labels
    accuracy, confidence = calibration_curve(correct, probabilities.max(axis=1), n_bins=15)
    filled = bins["count"] > 0
    np.testing.assert_allclose(bins["accuracy"][filled], accuracy)
    np.testing.assert_allclose(bins["confidence"][filled], confidence)
    assert bins["count"].sum() == len(labels) and bins["count"][-1] >= 2  # confidences of 1


def test_undefined_metrics_are_null_with_a_reason_never_nan():
    # No pituitary image: its sensitivity and AUC, and so the macro AUC, are undefined.
    labels = np.array([0, 1, 2, 2])
    probabilities = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1],
                              [0.1, 0.1, 0.6, 0.2], [0.1, 0.1, 0.2, 0.6]])
    m = reports.classification_metrics(labels, probabilities, NAMES)
    json.dumps(m, allow_nan=False)
    pituitary = m["per_class"]["pituitary"]
    assert pituitary["roc_auc"] is None and pituitary["sensitivity"] is None
    assert pituitary["specificity"] == pytest.approx(3 / 4)
    assert m["macro_avg"]["roc_auc"] is None
    assert set(m["undefined"]) == {"per_class.pituitary.roc_auc",
                                   "per_class.pituitary.sensitivity", "macro_avg.roc_auc"}
    assert "no image of the split is pituitary" in m["undefined"]["per_class.pituitary.roc_auc"]
    assert m["per_class"]["notumor"]["roc_auc"] == pytest.approx(3.5 / 4)  # one tie of 0.2, half

    # One image: no AUC at all, and no specificity for its own class; ECE and Brier still hold.
    one = reports.classification_metrics([2], [[0.1, 0.1, 0.7, 0.1]], NAMES)
    json.dumps(one, allow_nan=False)
    assert all(v["roc_auc"] is None for v in one["per_class"].values())
    assert one["per_class"]["notumor"]["specificity"] is None
    assert one["per_class"]["notumor"]["sensitivity"] == 1.0
    assert "every image of the split is notumor" in one["undefined"]["per_class.notumor.roc_auc"]
    assert one["expected_calibration_error"] == pytest.approx(0.3)
    assert one["brier_score"] == pytest.approx(0.01 + 0.01 + 0.09 + 0.01)


def test_write_evaluation_writes_errors_and_the_new_plots(tmp_path):
    labels, probabilities = _fixed_predictions(n=40)
    names = [f"Testing/{NAMES[label]}/{i:03d}.jpg" for i, label in enumerate(labels)]
    reports.write_evaluation(tmp_path, labels=labels, probabilities=probabilities,
                             class_names=NAMES, names=names)
    with open(tmp_path / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    assert sorted(r["file"] for r in rows) == sorted(names[i] for i in wrong)
    for row in rows:
        i = names.index(row["file"])
        assert row["true_class"] == NAMES[labels[i]] != row["predicted_class"]
        assert row["predicted_class"] == NAMES[predictions[i]]
        assert float(row["probability"]) == pytest.approx(probabilities[i].max(), abs=1e-6)
    shown = [float(r["probability"]) for r in rows]
    assert shown == sorted(shown, reverse=True)  # the most confident mistakes first
    for plot in ("roc.png", "reliability.png", "confusion_matrix.png"):
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / plot).stat().st_size > 10_000


def test_plots_of_a_split_without_a_class(tmp_path):
    labels = np.array([0, 1, 2, 2])
    probabilities = np.eye(4)[[0, 1, 2, 3]]
    assert reports.plot_roc(labels, probabilities, NAMES, tmp_path / "roc.png").stat().st_size
    assert reports.plot_reliability(labels, probabilities, tmp_path / "r.png").stat().st_size


def test_summaries_hold_the_scalars_and_images(tmp_path):
    import tensorflow as tf

    from mri_tfdata.evaluation import summaries

    labels, probabilities = _fixed_predictions(n=40)
    metrics = reports.write_evaluation(tmp_path, labels=labels, probabilities=probabilities,
                                       class_names=NAMES, names=[str(i) for i in range(40)])
    summaries.write_evaluation(tmp_path / "logs" / "test", step=6, metrics=metrics,
                               plots={"roc": tmp_path / "roc.png",
                                      "confusion_matrix": tmp_path / "confusion_matrix.png"})
    found = {}
    for path in (tmp_path / "logs" / "test").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found[value.tag] = (event.step, value.metadata.plugin_data.plugin_name,
                                    tf.make_ndarray(value.tensor))
    assert found["epoch_accuracy"][:2] == (6, "scalars")
    assert float(found["epoch_accuracy"][2]) == pytest.approx(metrics["accuracy"])
    assert float(found["epoch_loss"][2]) == pytest.approx(metrics["loss"], rel=1e-6)
    assert float(found["roc_auc/glioma"][2]) == pytest.approx(
        metrics["per_class"]["glioma"]["roc_auc"])
    for tag in ("roc_auc/macro", "calibration/expected_calibration_error",
                "calibration/brier_score", "sensitivity/pituitary", "specificity/notumor"):
        assert found[tag][1] == "scalars"
    for tag in ("roc", "confusion_matrix"):
        step, plugin, image = found[tag]
        assert (step, plugin) == (6, "images")
        assert image[2][:4] == b"\x89PNG"  # width, height, then the PNG
