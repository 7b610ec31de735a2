"""Measures of predicted probabilities that need no threshold: ROC AUC, calibration, Brier score."""

import numpy as np
from sklearn import metrics as sk_metrics

ECE_BINS = 15


def one_vs_rest_auc(labels, probabilities, class_names) -> tuple[dict, dict]:
    """Each class's ROC AUC: how well its probability ranks its images above all the others.

    Computed by scikit-learn's roc_auc_score on (label == c, probabilities[:, c]); their mean is
    what roc_auc_score(multi_class="ovr", average="macro") reports when every class is present.

    Args:
      labels: int array [N] of true classes.
      probabilities: float array [N, C].
      class_names: C names, in label order.

    Returns:
      ({name: AUC, or None when undefined}, {name: why it is undefined}). The AUC of class c is
      undefined when the split has no image of c, or only images of c.
    """
    labels = np.asarray(labels)
    aucs, reasons = {}, {}
    for c, name in enumerate(class_names):
        positives = int(np.sum(labels == c))
        if positives in (0, len(labels)):
            aucs[name] = None
            reasons[name] = (
                f"{'no' if positives == 0 else 'every'} image of the split is {name}; a "
                "one-vs-rest AUC needs images of the class and of the other classes")
        else:
            aucs[name] = float(sk_metrics.roc_auc_score(labels == c, probabilities[:, c]))
    return aucs, reasons


def reliability_bins(labels, probabilities, n_bins: int = ECE_BINS) -> dict:
    """Groups the predictions by their top-class confidence into equal-width bins.

    The confidence of a prediction is its largest class probability, and it is correct when
    that class is the label. Bin m (m = 1..n_bins) holds confidences in ((m-1)/n_bins, m/n_bins]
    (the first also 0), the binning of sklearn.calibration.calibration_curve(strategy="uniform").

    Returns:
      {"edges": [n_bins + 1], "count": [n_bins], "confidence": mean confidence per bin,
       "accuracy": fraction correct per bin}; an empty bin has confidence and accuracy 0.
    """
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, n_bins) / count
        accuracy = np.bincount(index, correct, n_bins) / count
    return {"edges": edges, "count": count, "confidence": np.nan_to_num(mean_confidence),
            "accuracy": np.nan_to_num(accuracy)}


def expected_calibration_error(labels, probabilities, n_bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence: how far confidence is from accuracy, on average.

    ECE = sum over bins B_m of |B_m| / N * |accuracy(B_m) - mean confidence(B_m)|, with the
    n_bins equal-width bins of `reliability_bins` (Guo et al., 2017). 0 is perfect calibration;
    a model that says 0.9 and is right 70 % of the time contributes 0.2 for those predictions.
    """
    bins = reliability_bins(labels, probabilities, n_bins)
    weight = bins["count"] / max(int(bins["count"].sum()), 1)
    return float(np.sum(weight * np.abs(bins["accuracy"] - bins["confidence"])))


def brier_score(labels, probabilities) -> float:
    """The multi-class Brier score (Brier, 1950): mean over images of ||p - onehot(label)||^2.

    The squared distance is summed over all C classes, not halved, so it runs from 0 (certain
    and right) to 2 (certain and wrong); scikit-learn's brier_score_loss(scale_by_half=False).
    """
    probabilities = np.asarray(probabilities, np.float64)
    # float32 softmax rows sum to 1 within ~1e-7, which scikit-learn warns about in float64.
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    return float(sk_metrics.brier_score_loss(labels, probabilities,
                                             labels=list(range(probabilities.shape[1])),
                                             scale_by_half=False))
