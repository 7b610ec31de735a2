"""Split-conformal prediction sets: thresholds calibrated on held-out images, sets, their report.

A nonconformity score s(x, y) says how unusual class y is for image x under the model:
  lac: 1 - p_y (least ambiguous set-valued classifier, Sadinle et al. 2019), the smallest sets
       on average; a set may be empty when no class is probable enough.
  aps: the probability mass of the classes at least as probable as y, p_y included (adaptive
       prediction sets, Romano et al. 2020, not randomised), never empty, larger on hard images.
Calibration takes the scores of the true classes of n held-out images and keeps the k-th
smallest, k = ceil((n + 1)(1 - alpha)); the set of an image is every class whose score is at most
that threshold. If the calibration and the new images are exchangeable (drawn alike), the set
holds the true class with probability at least 1 - alpha, on average over images and
calibration sets: a marginal guarantee, not one per image or per class. It needs
n >= 1/alpha - 1 calibration images (else k > n and no finite threshold exists).
"""

import math

import numpy as np

from mri_tfdata.core.errors import ParameterError, UserError
from mri_tfdata.evaluation import bootstrap

SCORES = ("lac", "aps")
DEFAULT_SCORE = "lac"
DEFAULT_ALPHAS = (0.1, 0.05)


def check_alphas(alphas) -> tuple[float, ...]:
    """The miscoverage levels as floats, or a ParameterError naming the first outside (0, 1)."""
    alphas = tuple(float(a) for a in alphas)
    for alpha in alphas:
        if not 0.0 < alpha < 1.0:
            raise ParameterError("{alphas} must be miscoverage levels strictly between 0 and 1, "
                                 "e.g. {alphas:0.1,0.05} for 90% and 95% prediction sets; "
                                 "{alpha!s} is not.", alphas=",".join(map(str, alphas)),
                                 alpha=alpha)
    if len(set(alphas)) != len(alphas):
        raise ParameterError("{alphas} names a level twice.", alphas=",".join(map(str, alphas)))
    return alphas


def _check_score(score: str) -> str:
    if score not in SCORES:
        raise ParameterError("{score} must be one of {choices!s}.", score=score,
                             choices=", ".join(SCORES))
    return score


def level_name(alpha: float) -> str:
    """The key of a level in metrics.json: the coverage 1 - alpha, e.g. "0.9" for alpha 0.1."""
    return f"{round(1.0 - alpha, 10):g}"


def min_examples(alpha: float) -> int:
    """The fewest calibration images with a finite threshold at `alpha`: ceil(1/alpha - 1)."""
    return max(1, math.ceil(round(1.0 / alpha - 1.0, 9)))


def class_scores(probabilities, score: str = DEFAULT_SCORE) -> np.ndarray:
    """s(x, y) for every image and class [N, C] (see the module docstring)."""
    p = np.asarray(probabilities, np.float64)
    if _check_score(score) == "lac":
        return 1.0 - p
    # aps: sum of p_k over the classes k with p_k >= p_y (ties count as at least as probable).
    return np.sum(p[:, None, :] * (p[:, None, :] >= p[:, :, None]), axis=-1)


def conformal_quantile(scores, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest of the n calibration scores.

    Raises:
      UserError: n < min_examples(alpha): fewer scores than the rank, no finite threshold.
    """
    scores = np.sort(np.asarray(scores, np.float64).reshape(-1))
    n = len(scores)
    rank = math.ceil(round((n + 1) * (1.0 - alpha), 9))
    if rank > n:
        raise UserError(
            f"A {1 - alpha:.0%} prediction set (alpha {alpha:g}) needs at least "
            f"{min_examples(alpha)} calibration images, but the validation split has {n}. Use a "
            "larger validation split, or leave this level out of the alphas.")
    return float(scores[rank - 1])


def calibrate(probabilities, labels, alphas=DEFAULT_ALPHAS, *, split: str,
              score: str = DEFAULT_SCORE) -> dict:
    """The thresholds of `alphas` on held-out predictions, for the model file's metadata.

    Levels that need more images than there are are left out and named under "skipped" with
    the reason (so a small demo split still trains); see min_examples.

    Args:
      probabilities: the model's float [n, C] on the calibration images (held out from training).
      labels: their int [n] true classes.
      alphas: the miscoverage levels, each in (0, 1); the first is the primary one.
      split: the calibration split's name, as recorded (e.g. "train[90%:]").
      score: one of SCORES.

    Returns:
      {"score", "alphas": {str(alpha): threshold}, "calibration_examples": n,
       "calibration_split": split}, with "skipped":
      {str(alpha): why} when some level was left out; "alphas" keeps the order of `alphas`
      (the first is the primary level: mri-predict's and the SavedModel's sets).
    """
    alphas = check_alphas(alphas)
    labels = np.asarray(labels, np.int64).reshape(-1)
    true_scores = class_scores(probabilities, score)[np.arange(len(labels)), labels]
    thresholds, skipped = {}, {}
    for alpha in alphas:
        try:
            thresholds[str(alpha)] = conformal_quantile(true_scores, alpha)
        except UserError as e:
            skipped[str(alpha)] = str(e)
    result = {"score": score, "alphas": thresholds, "calibration_examples": int(len(labels)),
              "calibration_split": split}
    if skipped:
        result["skipped"] = skipped
    return result


def prediction_sets(probabilities, threshold: float, score: str = DEFAULT_SCORE) -> np.ndarray:
    """bool [N, C]: class y is in the set of image x when s(x, y) <= threshold."""
    return class_scores(probabilities, score) <= threshold


def primary_alpha(calibration: dict | None) -> str | None:
    """The first calibrated level's key in calibration["alphas"], or None without any."""
    return next(iter(calibration["alphas"]), None) if calibration else None


def evaluate_sets(labels, probabilities, calibration: dict, *,
                  resamples: int = bootstrap.DEFAULT_RESAMPLES,
                  seed: int = bootstrap.DEFAULT_SEED, weights: np.ndarray | None = None) -> dict:
    """How the calibrated sets do on a split: metrics.json's "conformal" section.

    The coverage intervals are bootstrap.mean_interval's, of `resamples` draws (or `weights`).

    Returns:
      {"score", "calibration_split", "calibration_examples", "levels": {level_name: {"alpha",
       "threshold", "coverage", "coverage_interval", "mean_set_size", "referred_fraction",
       "accuracy_not_referred"}}}; a set is referred when its size is not 1, and
      accuracy_not_referred (None when every image is referred) is the accuracy of the rest.
    """
    labels = np.asarray(labels, np.int64).reshape(-1)
    predictions = np.asarray(probabilities).argmax(axis=1)
    levels = {}
    for key, threshold in calibration["alphas"].items():
        sets = prediction_sets(probabilities, threshold, calibration["score"])
        covered = sets[np.arange(len(labels)), labels]
        sizes = sets.sum(axis=1)
        kept = sizes == 1
        levels[level_name(float(key))] = {
            "alpha": float(key), "threshold": float(threshold),
            "coverage": float(covered.mean()),
            "coverage_interval": bootstrap.mean_interval(labels, covered, resamples=resamples,
                                                         seed=seed, weights=weights),
            "mean_set_size": float(sizes.mean()), "referred_fraction": float(1 - kept.mean()),
            "accuracy_not_referred": (float(np.mean(predictions[kept] == labels[kept]))
                                      if kept.any() else None)}
    report = {"score": calibration["score"],
              "calibration_split": calibration.get("calibration_split"),
              "calibration_examples": int(calibration["calibration_examples"]), "levels": levels}
    if calibration.get("skipped"):
        report["skipped"] = dict(calibration["skipped"])
    return report
