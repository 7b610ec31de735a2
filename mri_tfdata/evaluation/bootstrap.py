"""Stratified bootstrap intervals of the evaluation metrics, and paired differences of two models.

Each resample draws, within every true class, as many images as the class has, with replacement
(the class counts of the split stay fixed, as they were fixed when the test split was made). A
resample is held as a multiplicity matrix W [resamples, N]: W[b, i] is how often image i was
drawn in resample b, so every metric that is a sum over images is one matrix product, and the
one-vs-rest ROC AUC is the Mann-Whitney statistic counted with cumulative weights over the
negatives sorted by score. The interval is the percentile interval of the resampled values.
"""

import numpy as np

from mri_tfdata.core.errors import ParameterError
from mri_tfdata.evaluation import probability_metrics

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0
METHOD = "stratified bootstrap, percentile"


def check_resamples(resamples) -> int:
    """`resamples` as an int, or a ParameterError naming it when it is not a positive count."""
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ParameterError("{resamples} must be a positive number of bootstrap resamples, e.g. "
                             "{resamples:1000} (each adds a few milliseconds).",
                             resamples=resamples)
    return int(resamples)


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ParameterError("{level} must be a confidence level strictly between 0 and 1, e.g. "
                             "{level:0.95}.", level=level)
    return float(level)


def stratified_weights(labels, *, resamples: int, seed: int) -> np.ndarray:
    """The multiplicity matrix W [resamples, N] of a bootstrap stratified by `labels`.

    Every row draws n_c images (with replacement) among the n_c images of each class c, so
    W[b, labels == c].sum() == n_c for every b.
    """
    labels = np.asarray(labels).reshape(-1)
    resamples = check_resamples(resamples)
    rng = np.random.default_rng(seed)
    n = len(labels)
    offsets = (np.arange(resamples) * n)[:, None]
    drawn = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        drawn.append((members[rng.integers(0, len(members), size=(resamples, len(members)))]
                      + offsets).ravel())
    counts = np.bincount(np.concatenate(drawn) if drawn else np.zeros(0, np.int64),
                         minlength=resamples * n).astype(np.float64)
    return counts.reshape(resamples, n)


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    if values is None:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def weighted_auc(weights: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The ROC AUC of `scores` for `positive` against the rest, in every resample of `weights`.

    AUC = P(score of a positive > score of a negative) + P(equal) / 2 over the drawn pairs,
    which is the rank (Mann-Whitney) form roc_auc_score computes; each row of `weights` counts
    how often each image was drawn. Returns [resamples]; NaN where a resample lacks either side.
    """
    positive = np.asarray(positive, bool)
    neg_scores, pos_scores = scores[~positive], scores[positive]
    order = np.argsort(neg_scores, kind="stable")
    neg_sorted = neg_scores[order]
    # float32 counts are exact (far below 2**24) and halve the memory the sum walks through.
    cumulative = np.zeros((len(weights), len(neg_sorted) + 1), np.float32)
    np.cumsum(weights[:, np.flatnonzero(~positive)[order]], axis=1, dtype=np.float32,
              out=cumulative[:, 1:])
    below = cumulative[:, np.searchsorted(neg_sorted, pos_scores, side="left")]
    up_to = cumulative[:, np.searchsorted(neg_sorted, pos_scores, side="right")]
    pos_weights = weights[:, positive]
    pairs = pos_weights.sum(axis=1) * cumulative[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(pos_weights * (below + 0.5 * (up_to - below)), axis=1) / pairs


def _ece(weights, labels, probabilities) -> np.ndarray:
    """ECE per resample: sum over bins of |sum of (correct - confidence)| / N, the bins of
    probability_metrics.reliability_bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    n_bins = probability_metrics.ECE_BINS
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    gap = np.zeros((len(labels), n_bins))
    gap[np.arange(len(labels)), index] = correct - confidence
    return np.abs(weights @ gap).sum(axis=1) / len(labels)


def metric_intervals(labels, probabilities, class_names, *, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
                     weights: np.ndarray | None = None) -> dict:
    """The `level` intervals of the headline metrics of metrics.json, by stratified bootstrap.

    Args:
      labels: int array [N] of true classes.
      probabilities: float array [N, C].
      class_names: C names, in label order.
      resamples: bootstrap resamples (at least 1).
      seed: the seed of the draws; the same seed gives the same intervals.
      level: the coverage of each interval, in (0, 1).
      weights: stratified_weights(labels, resamples=resamples, seed=seed), when the caller has
        it already (it is drawn here otherwise).

    Returns:
      {"level", "method", "resamples", "seed", "accuracy", "brier_score",
       "expected_calibration_error": [lo, hi], "macro_avg": {"roc_auc": [lo, hi]},
       "per_class": {name: {"sensitivity", "specificity", "roc_auc": [lo, hi]}}}; an interval
      of a metric that is undefined on the split (as in classification_metrics) is None.

    Raises:
      ParameterError: resamples < 1 or a level outside (0, 1).
    """
    resamples, level = check_resamples(resamples), _check_level(level)
    labels = np.asarray(labels, np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    n = len(labels)
    weights = _weights(labels, resamples, seed, weights)
    predictions = probabilities.argmax(axis=1)
    onehot = np.eye(len(class_names))[labels]
    brier = np.sum((probabilities - onehot) ** 2, axis=1)
    per_class, aucs = {}, []
    for c, name in enumerate(class_names):
        positive = labels == c
        positives, negatives = int(positive.sum()), int(n - positive.sum())
        sensitivity = (weights[:, positive] @ (predictions[positive] == c)) / positives \
            if positives else None
        specificity = 1 - (weights[:, ~positive] @ (predictions[~positive] == c)) / negatives \
            if negatives else None
        auc = (weighted_auc(weights, positive, probabilities[:, c])
               if positives and negatives else None)
        aucs.append(auc)
        per_class[name] = {"sensitivity": _interval(sensitivity, level),
                           "specificity": _interval(specificity, level),
                           "roc_auc": _interval(auc, level)}
    macro = None if any(a is None for a in aucs) or not aucs else np.mean(aucs, axis=0)
    return {"level": level, "method": METHOD, "resamples": resamples, "seed": int(seed),
            "accuracy": _interval(weights @ (predictions == labels) / n, level) if n else None,
            "brier_score": _interval(weights @ brier / n, level) if n else None,
            "expected_calibration_error": (_interval(_ece(weights, labels, probabilities), level)
                                           if n else None),
            "macro_avg": {"roc_auc": _interval(macro, level)},
            "per_class": per_class}


def _weights(labels, resamples: int, seed: int, weights) -> np.ndarray:
    if weights is None:
        return stratified_weights(labels, resamples=resamples, seed=seed)
    if weights.shape != (resamples, len(labels)):
        raise ParameterError("{weights!n} must be [resamples, N] = {expected!s}, not {shape!s}.",
                             expected=(resamples, len(labels)), shape=weights.shape)
    return weights


def mean_interval(labels, per_image, *, resamples: int = DEFAULT_RESAMPLES,
                  seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
                  weights: np.ndarray | None = None) -> list[float]:
    """The `level` interval of the mean of a per-image quantity (e.g. whether a prediction set
    covers the true class), by the stratified bootstrap of `labels` (or the given `weights`)."""
    resamples, level = check_resamples(resamples), _check_level(level)
    per_image = np.asarray(per_image, np.float64).reshape(-1)
    weights = _weights(np.asarray(labels).reshape(-1), resamples, seed, weights)
    return _interval(weights @ per_image / len(per_image), level)


def paired_difference(labels, per_image_a, per_image_b, *, resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> dict:
    """The difference mean(a) - mean(b) of a per-image score of two models on the same images,
    with its interval by a paired stratified bootstrap (both models see the same draws).

    Args:
      labels: int array [N] of true classes (the strata).
      per_image_a, per_image_b: the score of each image under model a and model b, e.g. 1.0 where
        the prediction is right (then the difference is one of accuracies) or its log loss.
      resamples, seed, level: as in metric_intervals.

    Returns:
      {"difference", "interval": [lo, hi], "level", "resamples", "seed", "excludes_zero"}:
      excludes_zero is True when the interval lies wholly on one side of 0, i.e. the difference
      is larger than resampling the images explains.
    """
    a = np.asarray(per_image_a, np.float64).reshape(-1)
    b = np.asarray(per_image_b, np.float64).reshape(-1)
    if len(a) != len(b) or len(a) != len(np.asarray(labels).reshape(-1)) or not len(a):
        raise ParameterError("{per_image_a!n} and {per_image_b!n} must hold one score per image "
                             "of {labels!n}, for the same images ({sizes!s}).",
                             sizes=f"{len(a)}, {len(b)} and {np.size(labels)}")
    interval = mean_interval(labels, a - b, resamples=resamples, seed=seed, level=level)
    return {"difference": float(np.mean(a - b)), "interval": interval, "level": float(level),
            "resamples": int(resamples), "seed": int(seed),
            "excludes_zero": bool(interval[0] > 0 or interval[1] < 0)}


def describe(name: str, value, interval, level: float, digits: int = 4) -> str:
    """'accuracy 0.9306 (95% CI 0.9163-0.9436)', or without the interval when it is None."""
    if value is None:
        return f"{name} undefined"
    text = f"{name} {value:.{digits}f}"
    if interval is None:
        return text
    return f"{text} ({level:.0%} CI {interval[0]:.{digits}f}-{interval[1]:.{digits}f})"
