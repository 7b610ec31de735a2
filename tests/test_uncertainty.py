"""Tests of the bootstrap intervals (evaluation/bootstrap.py) and conformal prediction sets
(evaluation/conformal.py): against reference computations, their parameters' errors."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk_metrics

from mri_tfdata.core.errors import ParameterError, UserError
from mri_tfdata.evaluation import bootstrap, conformal, reports

NAMES = ("glioma", "meningioma", "notumor", "pituitary")


def _predictions(n=1311, accuracy=0.93, seed=0, counts=(300, 306, 405, 300)):
    """Labels in the Kaggle test split's class counts and probabilities right `accuracy` of the
    time in every class (so a stratified and a plain binomial interval agree)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), counts)[:n]
    logits = rng.normal(size=(len(labels), 4))
    right = rng.random(len(labels)) < accuracy
    top = np.where(right, labels, (labels + rng.integers(1, 4, len(labels))) % 4)
    logits[np.arange(len(labels)), top] += 4.0
    p = np.exp(logits)
    return labels, p / p.sum(axis=1, keepdims=True)


def _wilson(successes, n, level=0.95):
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_accuracy_interval_agrees_with_wilson_near_093():
    labels, p = _predictions()
    accuracy = np.mean(p.argmax(axis=1) == labels)
    assert 0.91 < accuracy < 0.95
    low, high = bootstrap.metric_intervals(labels, p, NAMES, resamples=1000, seed=0)["accuracy"]
    wilson = _wilson(np.sum(p.argmax(axis=1) == labels), len(labels))
    assert abs(low - wilson[0]) < 0.005 and abs(high - wilson[1]) < 0.005, (low, high, wilson)


def test_intervals_are_reproducible_with_the_seed_and_hold_the_point_estimates():
    labels, p = _predictions(seed=1)
    first = bootstrap.metric_intervals(labels, p, NAMES, resamples=200, seed=3)
    assert first == bootstrap.metric_intervals(labels, p, NAMES, resamples=200, seed=3)
    assert first != bootstrap.metric_intervals(labels, p, NAMES, resamples=200, seed=4)
    point = reports.classification_metrics(labels, p, NAMES)
    for key in ("accuracy", "brier_score", "expected_calibration_error"):
        assert first[key][0] <= point[key] <= first[key][1], key
    assert first["macro_avg"]["roc_auc"][0] <= point["macro_avg"]["roc_auc"] \
        <= first["macro_avg"]["roc_auc"][1]
    for name in NAMES:
        for key in ("sensitivity", "specificity", "roc_auc"):
            low, high = first["per_class"][name][key]
            assert low <= point["per_class"][name][key] <= high, (name, key)
    assert (first["level"], first["method"], first["resamples"], first["seed"]) == (
        0.95, "stratified bootstrap, percentile", 200, 3)


def test_stratification_keeps_the_class_counts():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(4), [5, 9, 1, 30]))
    weights = bootstrap.stratified_weights(labels, resamples=50, seed=0)
    for c, count in enumerate([5, 9, 1, 30]):
        np.testing.assert_array_equal(weights[:, labels == c].sum(axis=1), count)
    assert weights.min() >= 0 and np.all(weights == np.round(weights))
    assert len({tuple(row) for row in weights}) > 40  # the draws do differ


def test_resampled_auc_equals_scikit_learn_on_the_drawn_images_with_ties():
    labels, p = _predictions(n=400, counts=(100, 100, 100, 100), seed=2)
    scores = np.round(p[:, 1], 1)  # many ties
    weights = bootstrap.stratified_weights(labels, resamples=5, seed=0)
    aucs = bootstrap.weighted_auc(weights, labels == 1, scores)
    for row, auc in zip(weights, aucs):
        drawn = np.repeat(np.arange(len(labels)), row.astype(int))
        assert auc == pytest.approx(sk_metrics.roc_auc_score(labels[drawn] == 1, scores[drawn]))


def test_resampled_metrics_equal_the_metrics_of_the_drawn_images():
    labels, p = _predictions(n=200, counts=(50, 50, 50, 50), seed=5)
    weights = bootstrap.stratified_weights(labels, resamples=1, seed=9)
    drawn = np.repeat(np.arange(len(labels)), weights[0].astype(int))
    expected = reports.classification_metrics(labels[drawn], p[drawn], NAMES)
    ece = bootstrap._ece(weights, labels, p)[0]
    assert ece == pytest.approx(expected["expected_calibration_error"])


def test_undefined_metrics_get_no_interval():
    labels, p = _predictions(n=90, counts=(30, 30, 30, 0))
    found = bootstrap.metric_intervals(labels, p, NAMES, resamples=20)
    assert found["per_class"]["pituitary"]["sensitivity"] is None
    assert found["per_class"]["pituitary"]["roc_auc"] is None
    assert found["macro_avg"]["roc_auc"] is None
    assert found["per_class"]["pituitary"]["specificity"] is not None


@pytest.mark.parametrize("resamples", [0, -5, 2.5, True])
def test_bad_resample_counts_are_refused(resamples):
    labels, p = _predictions(n=40, counts=(10, 10, 10, 10))
    with pytest.raises(ParameterError, match="resamples=.* must be a positive number"):
        bootstrap.metric_intervals(labels, p, NAMES, resamples=resamples)


def test_paired_difference_says_whether_a_difference_is_real():
    labels, p = _predictions(seed=3)
    right = (p.argmax(axis=1) == labels).astype(float)
    same = bootstrap.paired_difference(labels, right, right, resamples=200)
    assert same["difference"] == 0 and same["interval"] == [0, 0] and not same["excludes_zero"]
    # One more mistake in 1,311 is no real difference; 40 more are.
    worse_by_one = right.copy()
    worse_by_one[np.flatnonzero(right)[0]] = 0
    assert not bootstrap.paired_difference(labels, right, worse_by_one)["excludes_zero"]
    worse = right.copy()
    worse[np.flatnonzero(right)[:40]] = 0
    found = bootstrap.paired_difference(labels, right, worse)
    assert found["excludes_zero"] and found["difference"] == pytest.approx(40 / len(labels))
    assert found["interval"][0] > 0
    with pytest.raises(ParameterError, match="one score per image"):
        bootstrap.paired_difference(labels, right, right[:-1])


def test_describe_writes_the_interval_as_a_reader_reads_it():
    assert bootstrap.describe("accuracy", 0.93064, [0.91634, 0.94358], 0.95) == \
        "accuracy 0.9306 (95% CI 0.9163-0.9436)"
    assert bootstrap.describe("roc_auc", None, None, 0.95) == "roc_auc undefined"


def _brute_force_threshold(scores, alpha):
    """The smallest calibration score q with #{s <= q} >= ceil((n + 1)(1 - alpha))."""
    n = len(scores)
    needed = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    return min(q for q in scores if np.sum(scores <= q) >= needed)


@pytest.mark.parametrize("n, alpha", [(9, 0.1), (19, 0.05), (100, 0.1), (131, 0.05),
                                      (57, 0.2), (1000, 0.01)])
def test_conformal_quantile_equals_a_brute_force_computation(n, alpha):
    rng = np.random.default_rng(n)
    for scores in (rng.random(n), np.round(rng.random(n), 1)):  # also with ties
        assert conformal.conformal_quantile(scores, alpha) == _brute_force_threshold(scores, alpha)


@pytest.mark.parametrize("n, alpha", [(8, 0.1), (18, 0.05), (0, 0.5)])
def test_too_few_calibration_images_for_the_level_are_named(n, alpha):
    assert conformal.min_examples(alpha) == n + 1
    with pytest.raises(UserError, match=f"needs at least {n + 1} calibration images, but the "
                                        f"validation split has {n}"):
        conformal.conformal_quantile(np.zeros(n), alpha)


def test_calibrate_keeps_the_levels_the_split_allows_and_names_the_others():
    labels, p = _predictions(n=40, counts=(10, 10, 10, 10))
    found = conformal.calibrate(p[:12], labels[:12], (0.1, 0.05), split="train[90%:]")
    assert list(found["alphas"]) == ["0.1"] and found["calibration_examples"] == 12
    assert found["calibration_split"] == "train[90%:]" and found["score"] == "lac"
    assert "needs at least 19 calibration images" in found["skipped"]["0.05"]


@pytest.mark.parametrize("alphas", [(0.0,), (1.0,), (-0.1,), (1.5,), (0.1, 0.1)])
def test_levels_outside_zero_one_are_refused(alphas):
    with pytest.raises(ParameterError, match="alphas="):
        conformal.check_alphas(alphas)


@pytest.mark.parametrize("score", conformal.SCORES)
def test_sets_cover_at_least_the_level_on_exchangeable_data(score):
    """The guarantee itself: over many random calibration/test splits, mean coverage >= 1-alpha
    (and not far above it)."""
    labels, p = _predictions(n=1000, counts=(250, 250, 250, 250), accuracy=0.8, seed=7)
    rng = np.random.default_rng(0)
    coverages = []
    for _ in range(200):
        order = rng.permutation(len(labels))
        calibration, test = order[:200], order[200:]
        threshold = conformal.calibrate(p[calibration], labels[calibration], (0.1,), split="x",
                                        score=score)["alphas"]["0.1"]
        sets = conformal.prediction_sets(p[test], threshold, score)
        coverages.append(sets[np.arange(len(test)), labels[test]].mean())
    assert 0.895 <= np.mean(coverages) <= 0.92, np.mean(coverages)


def test_set_rules_lac_and_aps():
    p = np.array([[0.7, 0.2, 0.1, 0.0], [0.4, 0.4, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_array_equal(conformal.prediction_sets(p, 0.35, "lac"),
                                  p >= 0.65 - 1e-12)
    # aps scores: the mass at least as probable as each class (ties together).
    np.testing.assert_allclose(conformal.class_scores(p, "aps"),
                               [[0.7, 0.9, 1.0, 1.0], [0.8, 0.8, 1.0, 1.0], [1, 1, 1, 1]])
    assert conformal.prediction_sets(p, 0.0, "aps").sum() == 0
    assert conformal.prediction_sets(p, 0.7, "aps").sum(axis=1).tolist() == [1, 0, 0]
    with pytest.raises(ParameterError, match="score="):
        conformal.class_scores(p, "raps")


def test_evaluate_sets_reports_coverage_size_and_referrals():
    labels = np.array([0, 1, 2, 3])
    p = np.array([[0.9, 0.05, 0.05, 0.0], [0.5, 0.45, 0.05, 0.0], [0.1, 0.1, 0.8, 0.0],
                  [0.0, 0.0, 0.9, 0.1]])
    calibration = {"score": "lac", "alphas": {"0.1": 0.6}, "calibration_examples": 30,
                   "calibration_split": "train[90%:]"}
    found = conformal.evaluate_sets(labels, p, calibration, resamples=50)
    assert found["score"] == "lac" and found["calibration_examples"] == 30
    assert found["calibration_split"] == "train[90%:]"
    level = found["levels"]["0.9"]
    # Sets: {0}, {0, 1}, {2}, {2}: image 3's true class is missed; image 1 is referred.
    assert level["alpha"] == 0.1 and level["threshold"] == 0.6
    assert level["coverage"] == 0.75 and level["mean_set_size"] == 1.25
    assert level["referred_fraction"] == 0.25
    assert level["accuracy_not_referred"] == pytest.approx(2 / 3)
    low, high = level["coverage_interval"]
    assert 0 <= low <= 0.75 <= high <= 1
    assert conformal.level_name(0.05) == "0.95" and conformal.level_name(0.1) == "0.9"
