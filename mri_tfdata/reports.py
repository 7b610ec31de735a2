"""Evaluation reports: metrics.json, history files, loss/accuracy and confusion-matrix plots."""

import csv
import json
import math
import os
import pathlib

import matplotlib

# Agg renders to files without a display; set before pyplot is imported anywhere.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Keras clips probabilities to [eps, 1 - eps] before the log when it computes the cross-entropy of
# probabilities; metrics.json does the same. (model.evaluate can report more for wildly confident
# mistakes: it takes the loss from the softmax's logits, which are not clipped.)
_EPSILON = 1e-7


def collect_predictions(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs `model` over a finite dataset of (images, labels) batches.

    Args:
      model: a Keras classifier mapping an image batch to class probabilities.
      dataset: a finite, unshuffled tf.data.Dataset of (images, labels) batches.

    Returns:
      (labels int64 [N], probabilities float32 [N, num_classes]) in dataset order.
    """
    # model.predict (not predict_on_batch) so that a distribution strategy splits each batch across
    # replicas and concatenates the outputs back in order; labels come from a second, cheap pass.
    probabilities = model.predict(dataset.map(lambda images, labels: images), verbose=0)
    labels = [np.asarray(y, np.int64) for y in dataset.map(lambda images, labels: labels)]
    labels = np.concatenate(labels) if labels else np.zeros([0], np.int64)
    return labels, np.asarray(probabilities, np.float32)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts examples by (true class, predicted class).

    Args:
      labels: int array [N] of true classes.
      predictions: int array [N] of predicted classes.
      num_classes: the number of classes.

    Returns:
      int64 [num_classes, num_classes]; row = true class, column = predicted class.
    """
    matrix = np.zeros([num_classes, num_classes], np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def metrics_from_confusion(matrix: np.ndarray, class_names) -> dict:
    """Accuracy and per-class precision, recall and F1 from a confusion matrix.

    A class that is never predicted (or never present) gets precision (recall) 0.0, as
    scikit-learn's zero_division=0 does, so the JSON never holds NaN.

    Args:
      matrix: [C, C] counts, row = true class, column = predicted class.
      class_names: C names, in label order.

    Returns:
      {"accuracy", "num_examples", "per_class": {name: {precision, recall, f1, support}},
       "macro_avg": {precision, recall, f1}, "confusion_matrix": [[...]], "class_names": [...]}.
    """
    matrix = np.asarray(matrix, np.int64)
    total = int(matrix.sum())
    true_positives = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives),
                          where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator),
                   where=denominator > 0)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(actual[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(true_positives.sum() / total) if total else 0.0,
        "num_examples": total,
        "per_class": per_class,
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                      "f1": float(f1.mean())},
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
    }


def classification_metrics(labels, probabilities, class_names) -> dict:
    """Loss, accuracy, per-class P/R/F1 and the confusion matrix of predicted probabilities.

    Args:
      labels: int array [N] of true classes.
      probabilities: float array [N, C] of predicted class probabilities.
      class_names: C names, in label order.

    Returns:
      The dict of `metrics_from_confusion` plus "loss" (mean sparse categorical cross-entropy).
    """
    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    matrix = confusion_matrix(labels, probabilities.argmax(axis=1), len(class_names))
    metrics = metrics_from_confusion(matrix, class_names)
    if len(labels):
        picked = np.clip(probabilities[np.arange(len(labels)), labels], _EPSILON, 1 - _EPSILON)
        metrics["loss"] = float(-np.log(picked).mean())
    else:
        metrics["loss"] = float("nan")
    return metrics


def write_json(obj, path) -> None:
    """Writes JSON atomically (temp file + rename), so a killed process never leaves half a file."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, path)


def write_history(history: dict, out_dir) -> None:
    """Writes history.json (column lists, like keras History.history) and history.csv.

    Args:
      history: {"epoch": [...], "loss": [...], ...}, all lists of one length.
      out_dir: the directory to write into.
    """
    out_dir = pathlib.Path(out_dir)
    write_json(history, out_dir / "history.json")
    keys = list(history)
    tmp = out_dir / "history.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for row in zip(*(history[k] for k in keys)):
            writer.writerow(row)
    os.replace(tmp, out_dir / "history.csv")


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
    for metric, title in (("loss", "Loss"), ("accuracy", "Accuracy")):
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
        ax.set_title(f"Training and validation {title.lower()}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_confusion_matrix(matrix, class_names, path) -> pathlib.Path:
    """Draws the confusion matrix with counts in the cells; rows are true classes."""
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = matrix.max() / 2 if matrix.size and matrix.max() else math.inf
    for i in ticks:
        for j in ticks:
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    write_json(metrics, out_dir / "metrics.json")
    plot_confusion_matrix(metrics["confusion_matrix"], class_names,
                          out_dir / "confusion_matrix.png")
    return metrics
