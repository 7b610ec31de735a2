"""Writes the files a finished run leaves in its workdir, for the report tests (no training)."""

import csv
import io
import json
import pathlib
import zipfile

import numpy as np
from PIL import Image

from mri_tfdata.evaluation import reports, run_evidence

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
HOSTILE_FILE = "Testing/glioma/<script>alert(1)</script>&.jpg"

INTERVALS = {
    "level": 0.95, "method": "stratified bootstrap, percentile", "resamples": 1000, "seed": 0,
    "accuracy": [0.6123, 0.8234], "brier_score": [0.3011, 0.5022],
    "expected_calibration_error": [0.0511, 0.2122],
    "macro_avg": {"roc_auc": [0.8411, 0.9522]},
    "per_class": {name: {"sensitivity": [0.4111, 0.9222], "specificity": [0.8111, 0.9822],
                         "roc_auc": [0.7711, 0.9933]} for name in CLASSES}}
CONFORMAL = {
    "score": "aps", "calibration_split": "train[90%:]", "calibration_examples": 24,
    "levels": {"0.9": {"alpha": 0.1, "threshold": 0.8711, "coverage": 0.9167,
                       "coverage_interval": [0.8156, 0.9637], "mean_set_size": 1.4833,
                       "referred_fraction": 0.3667, "accuracy_not_referred": 0.9474},
               "0.95": {"alpha": 0.05, "threshold": 0.9411, "coverage": 0.9667,
                        "coverage_interval": [0.8861, 0.9908], "mean_set_size": 1.8167,
                        "referred_fraction": 0.5833, "accuracy_not_referred": 0.9600}}}


def png(color, size=(160, 120)) -> bytes:
    """A small PNG: a coloured rectangle on white."""
    image = Image.new("RGB", size, "white")
    image.paste(color, (10, 10, size[0] - 10, size[1] - 10))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def run_settings(*, source="synthetic", tfds_config="default", tfds_data_dir=None,
                 weights="none") -> dict:
    return {"data": {"source": source, "data_dir": None, "tfds_data_dir": tfds_data_dir,
                     "tfds_config": tfds_config},
            "model": {"image_size": 64, "weights": weights, "head_units": [512, 128],
                      "head_activation": "relu", "dropout": 0.0, "standardize_features": True,
                      "augment": False},
            "train": {"train_split": "train[:90%]", "validation_split": "train[90%:]",
                      "test_split": "test", "batch_size": 16, "epochs": 6,
                      "learning_rate": 0.001, "schedule": "constant", "seed": 0,
                      "fine_tune_blocks": 0},
            "precision": "mixed_bfloat16", "replicas": 1}


def write_metrics(folder: pathlib.Path, *, model: pathlib.Path, uncertainty: bool) -> dict:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 15)
    probabilities = rng.dirichlet(np.ones(len(CLASSES)), size=len(labels))
    probabilities[np.arange(len(labels)), labels] += 0.6
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    metrics = {"split": "test", "model": str(model),
               "training_examples_per_class": dict(zip(CLASSES, [55, 57, 51, 53]))}
    metrics.update(reports.classification_metrics(labels, probabilities, CLASSES))
    if uncertainty:
        metrics.update(intervals=INTERVALS, conformal=CONFORMAL)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def write_errors(folder: pathlib.Path, rows: int = 14) -> None:
    with (folder / "errors.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "true_class", "predicted_class", "probability"])
        writer.writerow([HOSTILE_FILE, "glioma", "notumor", "0.999000"])
        for i in range(rows - 1):
            writer.writerow([f"Testing/glioma/Te-gl_{i:04d}.jpg", "glioma", "meningioma",
                             f"{0.9 - i / 100:.6f}"])


def write_model(path: pathlib.Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr(run_evidence.MODEL_METADATA_MEMBER, json.dumps(
            {"format_version": 1, "package_version": "9.8.7", "class_names": list(CLASSES),
             "image_size": 64}))


def write_run(folder: pathlib.Path, *, uncertainty: bool = True, gradcam: bool = True,
              settings: dict | None = None) -> pathlib.Path:
    """A finished training workdir with every file a report reads (or all but some)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_model(folder / "model.keras")
    write_metrics(folder, model=folder / "model.keras", uncertainty=uncertainty)
    write_errors(folder)
    (folder / "run.json").write_text(json.dumps(
        {"status": "finished", "started": "2026-12-04T10:00:00+00:00",
         "settings": settings or run_settings(), "phases_done": ["head"]}))
    (folder / "flags.txt").write_text("--source=synthetic\n--epochs=6\n--weights=none\n")
    (folder / "history.json").write_text(json.dumps(
        {"epoch": [1, 2], "phase": ["head", "head"], "loss": [1.5, 0.25],
         "accuracy": [0.5, 0.875], "val_loss": [1.25, 1.125], "val_accuracy": [0.5, 0.625]}))
    colours = ["navy", "darkred", "darkgreen", "purple", "orange", "teal"]
    for name, colour in zip(run_evidence.PLOTS, colours):
        if gradcam or name != "gradcam_examples":
            (folder / f"{name}.png").write_bytes(png(colour))
    return folder
