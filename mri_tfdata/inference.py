"""Loads a saved classifier safely and turns image files into the uint8 batches it takes."""

import pathlib

import keras
import numpy as np
import tensorflow as tf

# Registers the model's custom layers (ResNetPreprocess), which safe-mode loading resolves by name.
from mri_tfdata import images, model  # noqa: F401
from mri_tfdata.errors import UserError


def load_classifier(path) -> keras.Model:
    """Loads a model.keras in Keras safe mode, so that no code stored in the file is run.

    Args:
      path: the .keras file written by training.

    Returns:
      The classifier: uint8 images [H, W, 3] -> class probabilities.

    Raises:
      UserError: the file is missing or is not a loadable .keras model.
    """
    path = pathlib.Path(path).expanduser()
    if path.is_dir() and (path / "model.keras").is_file():
        path = path / "model.keras"  # A training workdir.
    if not path.is_file():
        raise UserError(f"--model={path} is not a file. Pass the model.keras of a training run "
                        "(e.g. --model=runs/demo/model.keras).")
    if path.suffix != ".keras":
        raise UserError(f"--model={path} is not a .keras file. Pass the model.keras of a training "
                        "run; the export/ SavedModel is for TF Serving.")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as e:  # noqa: BLE001 -- Keras raises many types for a bad archive.
        raise UserError(f"Cannot load {path} as a Keras model ({type(e).__name__}: {e}). Pass a "
                        "model.keras written by mri_tfdata.train.") from None


def input_size(classifier: keras.Model) -> int:
    """The side of the square images the classifier takes."""
    return int(classifier.input_shape[1])


def load_image(path, *, image_size: int) -> np.ndarray:
    """Reads an image file as training data is read: checked, RGB, resized to a uint8 square.

    The file is checked as the dataset builder checks it (mri_tfdata.images): a regular file of
    sane size, a header declaring sane dimensions (a decompression bomb is refused before any
    pixel is decoded), decodable by the pipeline's own decoder; grey, palette, CMYK and 16-bit
    files are converted to 8-bit RGB as the builder converts them.

    Args:
      path: the image file (JPEG or PNG).
      image_size: the side of the output.

    Returns:
      uint8 [image_size, image_size, 3].

    Raises:
      images.CorruptImageError: not a usable image; the message says why.
      OSError: the file cannot be read.
    """
    stored = images.read_image(path)
    return images.decode_and_resize(tf.constant(stored.data), image_size=image_size).numpy()
