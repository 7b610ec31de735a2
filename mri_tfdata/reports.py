"""Evaluation reports: metrics.json, history files, loss/accuracy and confusion-matrix plots."""

import csv
import io
import pathlib

import matplotlib

# Agg renders to files without a display; set before pyplot is imported anywhere.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as sk_metrics  # noqa: E402

from mri_tfdata import atomic  # noqa: E402

# Keras clips probabilities to [eps, 1 - eps] before the log when it computes the cross-entropy of
# probabilities; metrics.json does the same. (model.evaluate can report more for wildly confident
# mistakes: it takes the loss from the softmax's logits, which are not clipped.)
_EPSILON = 1e-7


def classification_metrics(labels, probabilities, class_names) -> dict:
    """Loss, accuracy, per-class precision/recall/F1 and the confusion matrix of predictions.

    A class that is never predicted (or never present) gets precision (recall) 0.0, so the JSON
    never holds NaN.

    Args:
      labels: int array [N] of true classes.
      probabilities: float array [N, C] of predicted class probabilities.
      class_names: C names, in label order.

    Returns:
      {"accuracy", "loss", "num_examples", "per_class": {name: {precision, recall, f1, support}},
       "macro_avg": {precision, recall, f1}, "class_names": [...], "confusion_matrix": [[...]]}
      with the confusion matrix's rows the true classes.
    """
    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    predictions = probabilities.argmax(axis=1) if len(labels) else labels
    classes = list(range(len(class_names)))
    matrix = sk_metrics.confusion_matrix(labels, predictions, labels=classes)
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], _EPSILON, 1 - _EPSILON)
    return {
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else 0.0,
        "loss": float(-np.log(picked).mean()) if len(labels) else float("nan"),
        "num_examples": int(len(labels)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)},
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                      "f1": float(f1.mean())},
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


def write_evaluation(out_dir, *, labels, probabilities, class_names,
                     extra: dict | None = None) -> dict:
    """Writes metrics.json and confusion_matrix.png for one evaluated split.

    Args:
      out_dir: an existing directory.
      labels: int array [N] of true classes.
      probabilities: float array [N, C].
      class_names: C names, in label order.
      extra: more keys for metrics.json (split, model path, ...).

    Returns:
      The metrics dict written.
    """
    out_dir = pathlib.Path(out_dir)
    metrics = dict(extra or {})
    metrics.update(classification_metrics(labels, probabilities, class_names))
    atomic.write_json(out_dir / "metrics.json", metrics)
    plot_confusion_matrix(metrics["confusion_matrix"], class_names,
                          out_dir / "confusion_matrix.png")
    return metrics
