"""model.keras: saved with the metadata marking it ours, loaded safely and checked; images read."""

import dataclasses
import json
import pathlib
import zipfile

import keras
import numpy as np
import tensorflow as tf

import mri_tfdata
from mri_tfdata.core import atomic
from mri_tfdata.core.class_names import problem as class_names_problem
from mri_tfdata.core.errors import UserError
from mri_tfdata.data import decoding, images
from mri_tfdata.evaluation import conformal

MODEL_FILE = "model.keras"
# A file of our own inside the .keras zip archive. Keras reads only the members it knows
# (config.json, metadata.json, model.weights.h5), so the file still loads with plain Keras.
METADATA_FILE = "mri_tfdata.json"
# Bump when what load_classifier expects of a saved classifier changes.
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SavedClassifier:
    """A classifier loaded from a model.keras, with what its metadata says about it."""

    model: keras.Model  # uint8 images [N, S, S, 3] -> float32 probabilities [N, C]
    class_names: tuple[str, ...]  # the C names, in label order
    image_size: int  # S
    path: pathlib.Path
    # The split-conformal thresholds calibrated by training (evaluation.conformal.calibrate), or
    # None for a model saved without them (e.g. trained without a validation split).
    conformal: dict | None = None


def _compiled(model: keras.Model) -> bool:
    """True when `model` or a model nested in it at any depth has an optimizer."""
    return any(getattr(part, "optimizer", None) is not None
               for part in [model, *_all_layers(model)])


def without_training_state(classifier: keras.Model) -> keras.Model:
    """`classifier` as save_classifier writes it: itself when no part of it is compiled, else a
    new model over the same layers in which each compiled nested model is replaced by an
    uncompiled copy (new layers, the same weights).

    Keras saves the optimizer of a compiled model, of a compiled model nested in it (training's
    fast path compiles the head) even through a view, and clones a compiled model compiled; and
    save(include_optimizer=False) is silently ignored for .keras files. A caller that wants to
    run the model as saved (training's check of the saved model) takes this, passes it to
    save_classifier, and runs it: only the compiled parts are copied (the head, not the
    backbone), none is loaded back.
    """
    if not _compiled(classifier):
        return classifier

    def uncompiled(layer):
        if not (isinstance(layer, keras.Model) and _compiled(layer)):
            return layer  # shared: holds no training state
        if getattr(layer, "optimizer", None) is None:  # compiled only deeper down
            return without_training_state(layer)
        copy = keras.models.clone_model(keras.Model(layer.input, layer.output, name=layer.name))
        copy.set_weights(layer.get_weights())
        for part in _all_layers(copy):
            # A Normalization layer computes from copies of its statistics taken when they are
            # set by adapt() or loaded, not by set_weights: take them now, as loading would.
            if hasattr(part, "finalize_state"):
                part.finalize_state()
        return copy

    view = keras.Model(classifier.input, classifier.output, name=classifier.name)
    return keras.models.clone_model(view, clone_function=uncompiled)


def _all_layers(model: keras.Model) -> list:
    """Every layer of `model`, nested models' layers included, at any depth."""
    return [found for layer in model.layers for found in (
        [layer, *_all_layers(layer)] if isinstance(layer, keras.Model) else [layer])]


def save_classifier(classifier: keras.Model, path, *, class_names,
                    conformal: dict | None = None) -> pathlib.Path:
    """Writes `classifier` to a .keras file with its metadata, whole or not at all.

    The file holds no optimizer state (nothing reads it: metrics come from predictions), so it is
    smaller and loads without Keras's "Skipping variable loading for optimizer" warning.

    Args:
      classifier: uint8 images [S, S, 3] -> probabilities over `class_names`.
      path: the .keras file to write.
      class_names: the class names in label order.
      conformal: the prediction-set thresholds (conformal.calibrate's result), or None.

    Returns:
      `path` as a Path.
    """
    metadata = {"format_version": FORMAT_VERSION, "package_version": mri_tfdata.__version__,
                "class_names": [str(n) for n in class_names],
                "image_size": int(classifier.input_shape[1]),
                "input_contract": decoding.INPUT_CONTRACT}
    problem = class_names_problem(metadata["class_names"], int(classifier.output_shape[-1]))
    if problem:
        raise ValueError(f"class_names={list(class_names)!r}: {problem}")
    if conformal and conformal.get("alphas"):
        metadata["conformal"] = conformal

    saved = without_training_state(classifier)

    def write(tmp):
        saved.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(METADATA_FILE, json.dumps(metadata, indent=1))

    return atomic.publish(path, write, suffix=".keras")


def _not_ours(path, why: str) -> UserError:
    return UserError("{model_path} {why!s}. Pass the model.keras written by mri_tfdata.train "
                     "(e.g. {model_path:'runs/demo/model.keras'}).", model_path=path, why=why)


def _conformal(stored) -> dict | None:
    """The conformal entry of the metadata, checked (absent in older files: None)."""
    if stored is None:
        return None
    if stored["score"] not in conformal.SCORES or not stored["alphas"]:
        raise ValueError(f"conformal score {stored['score']!r} with levels {stored['alphas']!r}")
    conformal.check_alphas(stored["alphas"])
    return {**stored, "alphas": {str(a): float(t) for a, t in stored["alphas"].items()},
            "calibration_examples": int(stored["calibration_examples"])}


def _read_metadata(path: pathlib.Path) -> dict:
    """The metadata stored in a .keras file, or a UserError saying why it is not one of ours."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            stored = archive.read(METADATA_FILE) if METADATA_FILE in names else None
            legacy = "config.json" in names and b"ResNetPreprocess" in archive.read("config.json")
    except (zipfile.BadZipFile, OSError) as e:
        raise _not_ours(path, f"is not a Keras model file ({e})") from None
    if stored is None and legacy:
        raise UserError(
            "{model_path} was written by mri_tfdata before 0.2.0, whose preprocessing layer "
            "needs that version's code to load. Train it again with this version: "
            "python -m mri_tfdata.train --flagfile={flagfile!s} --overwrite "
            "(its backbone features are still in the feature cache, so this is quick).",
            model_path=path, flagfile=path.parent / "flags.txt")
    if stored is None:
        raise _not_ours(path, f"is a Keras model, but not one written by mri_tfdata.train (it "
                        f"holds no {METADATA_FILE}, which records the class names and image size)")
    try:
        metadata = json.loads(stored)
        version = int(metadata["format_version"])
        names = metadata["class_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"class_names must be a list of strings, not {names!r}")
        metadata["class_names"] = tuple(names)
        metadata["image_size"] = int(metadata["image_size"])
        metadata["conformal"] = _conformal(metadata.get("conformal"))
    except (ValueError, KeyError, TypeError) as e:
        raise _not_ours(path, f"has a damaged {METADATA_FILE} ({type(e).__name__}: {e})") from None
    problem = class_names_problem(metadata["class_names"])
    if problem:
        raise _not_ours(path, f"has a damaged or edited {METADATA_FILE}: {problem}")
    if version > FORMAT_VERSION:
        raise UserError("{model_path} was written by mri_tfdata {written_by!s}, newer than this "
                        "one ({running!s}); upgrade mri_tfdata to use it.", model_path=path,
                        written_by=metadata.get("package_version"),
                        running=mri_tfdata.__version__)
    return metadata


def load_classifier(model_path) -> SavedClassifier:
    """Loads a model.keras written by save_classifier, in Keras safe mode (no stored code runs).

    Args:
      model_path: the .keras file, or a training workdir holding model.keras.

    Returns:
      The SavedClassifier.

    Raises:
      UserError: the file is missing, is not a Keras model, or is not one of ours (no metadata,
        or layers that disagree with it).
    """
    path = pathlib.Path(model_path).expanduser()
    if path.is_dir() and (path / MODEL_FILE).is_file():
        path = path / MODEL_FILE  # A training workdir.
    if not path.is_file():
        raise UserError("{model_path} is not a file. Pass the model.keras of a training run "
                        "(e.g. {model_path:'runs/demo/model.keras'}).", model_path=path)
    if path.suffix != ".keras":
        raise _not_ours(path, "is not a .keras file")
    metadata = _read_metadata(path)
    try:
        # compile=False: nothing here trains or calls evaluate(), and old files' optimizer state
        # would only bring a warning.
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 -- Keras raises many types for a bad archive.
        raise _not_ours(path, f"cannot be loaded by Keras ({type(e).__name__}: {e})") from None
    size, names = metadata["image_size"], metadata["class_names"]
    inputs, outputs = getattr(model, "inputs", None) or [], getattr(model, "outputs", None) or []
    shapes = [(tuple(t.shape), t.dtype) for t in inputs] + [tuple(t.shape) for t in outputs]
    if (shapes != [((None, size, size, 3), "uint8"), (None, len(names))]
            or not {"backbone", "head"} <= {layer.name for layer in model.layers}):
        raise _not_ours(path, f"does not match its own {METADATA_FILE}, which says it takes "
                        f"{size} px uint8 images and predicts {len(names)} classes "
                        f"({', '.join(names)}) with a backbone and a head; the model has "
                        f"inputs and outputs {shapes} (a damaged or edited {METADATA_FILE})")
    return SavedClassifier(model=model, class_names=names, image_size=size, path=path,
                           conformal=metadata["conformal"])


def load_image(path, *, image_size: int, dicom_window=None) -> np.ndarray:
    """Reads an image file as training data is read: checked, RGB, resized to a uint8 square.

    The file is checked as the dataset builder checks it (mri_tfdata.data.images): a regular file of
    sane size, a header declaring sane dimensions (a decompression bomb is refused before any
    pixel is decoded), decodable by the pipeline's own decoder; grey, palette, CMYK and 16-bit
    files are converted to 8-bit RGB as the builder converts them.

    Args:
      path: the image file (JPEG, PNG or DICOM; `path#N` for frame N of a multi-frame DICOM).
      image_size: the side of the output.
      dicom_window: a data.dicom.Window replacing a DICOM file's own display window, or None.

    Returns:
      uint8 [image_size, image_size, 3].

    Raises:
      images.CorruptImageError: not a usable image; the message says why.
      OSError: the file cannot be read.
    """
    stored = images.read_image(path, dicom_window=dicom_window)
    return decoding.decode_and_resize(tf.constant(stored.data), image_size=image_size).numpy()


def prepare_pixels(pixels, *, image_size: int) -> np.ndarray:
    """Turns decoded pixels of any size into the model's input by its input contract.

    The contract (decoding.INPUT_CONTRACT, also in every model.keras's metadata): the whole
    image resized bilinearly (no antialiasing, aspect ratio not kept) to image_size x image_size
    and rounded to uint8 -- what training, mri-predict and both serving signatures do.

    Args:
      pixels: uint8 [H, W], [H, W, 1] or [H, W, 3] (grey or RGB), or a batch [N, H, W, 3].
      image_size: the model's input side (SavedClassifier.image_size).

    Returns:
      uint8 [image_size, image_size, 3] (or [N, image_size, image_size, 3]).

    Raises:
      ValueError: `pixels` is not uint8 grey or RGB.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or pixels.shape[-1] not in (1, 3):
        raise ValueError(f"pixels of dtype {pixels.dtype} and shape {pixels.shape}; pass uint8 "
                         "grey [H, W] or RGB [H, W, 3] (or a batch [N, H, W, 3])")
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return decoding.resize(pixels, image_size).numpy()
