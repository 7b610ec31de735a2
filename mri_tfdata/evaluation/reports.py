"""Evaluation reports: metrics.json, errors.csv, history files, and their plots (matplotlib Agg)."""

import csv
import io
import pathlib

import matplotlib

# Agg renders to files without a display; set before pyplot is imported anywhere.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as sk_metrics  # noqa: E402

from mri_tfdata.core import atomic
from mri_tfdata.evaluation import probability_metrics

# Keras clips probabilities to [eps, 1 - eps] before the log when it computes the cross-entropy of
# probabilities; metrics.json does the same. (model.evaluate can report more for wildly confident
# mistakes: it takes the loss from the softmax's logits, which are not clipped.)
_EPSILON = 1e-7


def _sensitivity_specificity(matrix: np.ndarray, class_names) -> tuple[dict, dict, dict]:
    """Per class, one class against the rest: TP / (TP + FN) and TN / (TN + FP), or None."""
    total = matrix.sum()
    sensitivity, specificity, undefined = {}, {}, {}
    for c, name in enumerate(class_names):
        tp, positives, predicted = matrix[c, c], matrix[c].sum(), matrix[:, c].sum()
        negatives = total - positives
        sensitivity[name] = float(tp / positives) if positives else None
        specificity[name] = float((negatives - (predicted - tp)) / negatives) if negatives else None
        if not positives:
            undefined[f"per_class.{name}.sensitivity"] = f"no image of the split is {name}"
        if not negatives:
            undefined[f"per_class.{name}.specificity"] = f"every image of the split is {name}"
    return sensitivity, specificity, undefined


def classification_metrics(labels, probabilities, class_names) -> dict:
    """Every metric of metrics.json, from the true classes and the predicted probabilities.

    Predictions are the most probable classes. A class that is never predicted (or never present)
    gets precision (recall) 0.0; metrics that are undefined on the split (a class's sensitivity
    or AUC when it has no image, its specificity when every image is of it) are None, with the
    reason under "undefined", so the JSON never holds NaN.

    Args:
      labels: int array [N] of true classes.
      probabilities: float array [N, C] of predicted class probabilities.
      class_names: C names, in label order.

    Returns:
      {"accuracy", "loss", "num_examples",
       "per_class": {name: {precision, recall, f1, support, sensitivity, specificity, roc_auc}},
       "macro_avg": {precision, recall, f1, roc_auc}, "expected_calibration_error", "ece_bins",
       "brier_score", "undefined": {"per_class.NAME.METRIC": reason}, "class_names",
       "confusion_matrix"} with the confusion matrix's rows the true classes; sensitivity and
      specificity are one class against the rest; see probability_metrics for AUC, ECE, Brier.
    """
    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    predictions = probabilities.argmax(axis=1) if len(labels) else labels
    classes = list(range(len(class_names)))
    matrix = sk_metrics.confusion_matrix(labels, predictions, labels=classes)
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], _EPSILON, 1 - _EPSILON)
    sensitivity, specificity, undefined = _sensitivity_specificity(matrix, class_names)
    aucs, auc_undefined = probability_metrics.one_vs_rest_auc(labels, probabilities, class_names)
    undefined.update({f"per_class.{name}.roc_auc": why for name, why in auc_undefined.items()})
    if auc_undefined:
        undefined["macro_avg.roc_auc"] = f"the AUC of {', '.join(auc_undefined)} is undefined"
    return {
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else 0.0,
        "loss": float(-np.log(picked).mean()) if len(labels) else float("nan"),
        "num_examples": int(len(labels)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i]),
                   "sensitivity": sensitivity[name], "specificity": specificity[name],
                   "roc_auc": aucs[name]}
            for i, name in enumerate(class_names)},
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                      "f1": float(f1.mean()),
                      "roc_auc": None if auc_undefined else float(np.mean(list(aucs.values())))},
        "expected_calibration_error": probability_metrics.expected_calibration_error(
            labels, probabilities),
        "ece_bins": probability_metrics.ECE_BINS,
        "brier_score": probability_metrics.brier_score(labels, probabilities),
        "undefined": undefined,
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
    }


def save_figure(fig, path) -> pathlib.Path:
    """Writes a matplotlib figure as PNG, atomically, and closes it."""
    try:
        return atomic.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def write_history(history: dict, out_dir) -> None:
    """Writes history.json (column lists, like keras History.history) and history.csv.

    Args:
      history: {"epoch": [...], "loss": [...], ...}, all lists of one length.
      out_dir: the directory to write into.
    """
    out_dir = pathlib.Path(out_dir)
    atomic.write_json(out_dir / "history.json", history)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(history)
    writer.writerows(zip(*history.values()))
    atomic.write_atomic(out_dir / "history.csv", text.getvalue())


def plot_history(history: dict, out_dir) -> list[pathlib.Path]:
    """Plots training and validation loss and accuracy per epoch (the reference report's curves).

    Args:
      history: column lists with "epoch" and "loss"/"accuracy" (and "val_*" when validated);
        an optional "phase" column marks where fine-tuning starts with a dashed line.
      out_dir: where loss.png and accuracy.png are written.

    Returns:
      The paths written.
    """
    out_dir = pathlib.Path(out_dir)
    epochs = history.get("epoch", [])
    phases = history.get("phase", [])
    fine_tune_start = next((e for e, p in zip(epochs, phases) if p == "fine_tune"), None)
    written = []
    for metric in ("loss", "accuracy"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            values = history.get(key)
            if values:
                ax.plot(epochs, values, marker="o", label=label)
        if fine_tune_start is not None:
            ax.axvline(fine_tune_start - 0.5, color="grey", linestyle="--", label="fine-tuning")
        values = [v for k in (metric, f"val_{metric}") for v in history.get(k) or [] if v]
        if metric == "loss" and values and min(values) > 0 and max(values) > 50 * min(values):
            ax.set_yscale("log")  # Otherwise one wild validation loss flattens every other curve.
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"Training and validation {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(save_figure(fig, out_dir / f"{metric}.png"))
    return written


def plot_confusion_matrix(matrix, class_names, path) -> pathlib.Path:
    """Draws the confusion matrix with counts in the cells; rows are true classes."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    display = sk_metrics.ConfusionMatrixDisplay(np.asarray(matrix), display_labels=class_names)
    display.plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=30)
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_roc(labels, probabilities, class_names, path) -> pathlib.Path:
    """Draws each class's one-vs-rest ROC curve (scikit-learn's roc_curve) with its AUC."""
    labels = np.asarray(labels)
    aucs, undefined = probability_metrics.one_vs_rest_auc(labels, probabilities, class_names)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for c, name in enumerate(class_names):
        if name in undefined:
            ax.plot([], [], " ", label=f"{name}: AUC undefined")
            continue
        fpr, tpr, _ = sk_metrics.roc_curve(labels == c, np.asarray(probabilities)[:, c])
        ax.plot(fpr, tpr, label=f"{name} (AUC {aucs[name]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="chance")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, each class against the rest")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(labels, probabilities, path) -> pathlib.Path:
    """Draws the reliability diagram of the top-class confidence, and how many images each bin has.

    A calibrated model's bars reach the diagonal: of the images it gives 0.8, 80 % are right.
    """
    bins = probability_metrics.reliability_bins(labels, probabilities)
    ece = probability_metrics.expected_calibration_error(labels, probabilities)
    edges, filled = bins["edges"], bins["count"] > 0
    width = edges[1] - edges[0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.bar(edges[:-1][filled], bins["accuracy"][filled], width=width, align="edge",
            edgecolor="black", label="accuracy in the bin")
    top.plot(bins["confidence"][filled], bins["accuracy"][filled], "o", color="darkorange",
             label="(mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"Reliability of the top-class confidence\n"
                  f"(ECE {ece:.3f} over {len(filled)} bins)")
    top.legend(loc="upper left", fontsize=9)
    bottom.bar(edges[:-1], bins["count"], width=width, align="edge", edgecolor="black",
               color="grey")
    bottom.set_xlabel("confidence (largest class probability)")
    bottom.set_ylabel("images")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    return save_figure(fig, path)


def write_errors(path, *, names, labels, probabilities, class_names) -> pathlib.Path:
    """Writes errors.csv: every misclassified image, the most confident mistakes first.

    Columns: file, true_class, predicted_class, probability (the predicted class's).
    """
    probabilities = np.asarray(probabilities)
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != np.asarray(labels))
    wrong = wrong[np.argsort(-probabilities[wrong, predictions[wrong]], kind="stable")]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "true_class", "predicted_class", "probability"])
    writer.writerows([names[i], class_names[labels[i]], class_names[predictions[i]],
                      f"{probabilities[i, predictions[i]]:.6f}"] for i in wrong)
    return atomic.write_atomic(path, text.getvalue())


def write_evaluation(out_dir, *, labels, probabilities, class_names, names,
                     extra: dict | None = None, uncertainty: dict | None = None) -> dict:
    """Writes metrics.json, errors.csv, confusion_matrix.png, roc.png and reliability.png.

    Args:
      out_dir: an existing directory.
      labels: int array [N] of true classes.
      probabilities: float array [N, C].
      class_names: C names, in label order.
      names: N file names, in the order of `labels`, for errors.csv.
      extra: more keys for metrics.json (split, model path, ...).
      uncertainty: keys written after the metrics ("intervals", "conformal").

    Returns:
      The metrics dict written.
    """
    out_dir = pathlib.Path(out_dir)
    metrics = dict(extra or {})
    metrics.update(classification_metrics(labels, probabilities, class_names))
    metrics.update(uncertainty or {})
    atomic.write_json(out_dir / "metrics.json", metrics)
    write_errors(out_dir / "errors.csv", names=names, labels=labels, probabilities=probabilities,
                 class_names=class_names)
    plot_confusion_matrix(metrics["confusion_matrix"], class_names,
                          out_dir / "confusion_matrix.png")
    plot_roc(labels, probabilities, class_names, out_dir / "roc.png")
    plot_reliability(labels, probabilities, out_dir / "reliability.png")
    return metrics
