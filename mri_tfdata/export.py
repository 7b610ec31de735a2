"""Saves a trained classifier: model.keras for Keras, export/ (a SavedModel) for TF Serving."""

import pathlib

import keras

from mri_tfdata import atomic

MODEL_FILE = "model.keras"
EXPORT_DIR = "export"


def save_classifier(classifier: keras.Model, out_dir) -> pathlib.Path:
    """Writes model.keras and export/ into `out_dir`, each replaced whole or not at all.

    The SavedModel's "serve" signature maps uint8 images [N, H, W, 3] to class probabilities.

    Returns:
      The path of model.keras.
    """
    out_dir = pathlib.Path(out_dir)
    path = atomic.publish(out_dir / MODEL_FILE, classifier.save, suffix=".keras")
    atomic.publish(out_dir / EXPORT_DIR, lambda tmp: classifier.export(
        str(tmp), format="tf_saved_model", verbose=False))
    return path
