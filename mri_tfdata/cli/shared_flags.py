"""The data, model and runtime flags shared by the commands, and the path flag type they all use.

TensorFlow-free: a command defines and parses its flags (and answers --help or a typo) before
TensorFlow loads; the library types are imported when the flags are turned into them.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

from absl import flags

from mri_tfdata.cli.runner import require
from mri_tfdata.core.choices import PRECISIONS, SOURCES, STRATEGIES
from mri_tfdata.core.class_names import problem as class_names_problem

if TYPE_CHECKING:
    from mri_tfdata.data.dataspec import DataSpec
    from mri_tfdata.model.architecture import ModelSpec

FLAGS = flags.FLAGS


# $NAME or ${NAME}, as os.path.expandvars reads them.
_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


def expand_path(value: str) -> str:
    """`value` with a leading ~ and $VARIABLES expanded, as a shell would if it saw them.

    A shell expands neither after `--flag=` nor inside a flagfile, so a path flag does it itself.

    Raises:
      ValueError: a $VARIABLE in `value` is not set (kept literally, it would name a folder
        called "$VARIABLE").
    """
    unset = [m.group(1).strip("{}") for m in _VARIABLE.finditer(value)
             if m.group(1).strip("{}") not in os.environ]
    if unset:
        raise ValueError(f"the environment variable ${unset[0]} is not set; set it (export "
                         f"{unset[0]}=...) or write the path out")
    return os.path.expandvars(os.path.expanduser(value))


class PathParser(flags.ArgumentParser):
    """Parses a path flag's value: ~ and $VARIABLES expanded (keywords such as none pass as is)."""

    syntactic_help = "a path; ~ and $VARIABLES are expanded"

    def parse(self, argument):
        return None if argument is None else expand_path(str(argument))

    def flag_type(self):
        return "path"


def define_path(name: str, default: str | None, help_text: str, **kwargs) -> None:
    """Defines a string flag naming a file or folder, whose value has ~ and $VARIABLES expanded."""
    flags.DEFINE(PathParser(), name, default, help_text, serializer=flags.ArgumentSerializer(),
                 module_name=kwargs.pop("module_name", None) or _caller_module(), **kwargs)


def _caller_module() -> str:
    """The module that called define_path, so that the flag is listed under its command."""
    name = sys._getframe(2).f_globals["__name__"]
    return sys.argv[0] if name == "__main__" else name  # absl's name for the main module

_ACTIVATIONS = ("relu", "gelu", "swish", "elu", "selu", "tanh")


def define_data_flags() -> None:
    """Defines where the images come from and how they are read (call once, at import)."""
    flags.DEFINE_enum(
        "source", "synthetic", SOURCES,
        "A brain_tumor_mri TFDS build, a Kaggle-layout folder (--data_dir) or the generated "
        "set (no download). tfds reads a build made by mri-build; synthetic generates its "
        "images once and caches them.")
    define_path(
        "data_dir", None,
        "source=folder: the Kaggle-layout root (Training/, Testing/). source=synthetic: where the "
        "generated set is cached (default $XDG_CACHE_HOME/mri_tfdata/synthetic, else "
        "$HOME/.cache/mri_tfdata/synthetic).")
    define_path(
        "tfds_data_dir", None,
        "source=tfds: the TFDS data_dir the dataset was built into. Default: $TFDS_DATA_DIR, else "
        "$HOME/tensorflow_datasets.")
    flags.DEFINE_enum(
        "tfds_config", "default", ("default", "dedup", "folders", "folders_dedup"),
        "source=tfds: builder config; dedup drops the test images that leak from train; "
        "folders/folders_dedup: a build of your own class folders.")
    flags.DEFINE_list(
        "classes", None,
        "source=folder or synthetic: the class folders in label order. E.g. cat,dog,other; "
        "a class folder not listed is refused. Default: the Training/ subfolders, "
        "sorted (the Kaggle order for the Kaggle class names).")
    flags.DEFINE_integer("synthetic_train_per_class", 40,
                         "source=synthetic: Training images per class.")
    flags.DEFINE_integer("synthetic_test_per_class", 10,
                         "source=synthetic: Testing images per class.")
    flags.DEFINE_integer("image_size", 224,
                         "Side of the square model input in pixels (images are resized).")
    define_dicom_window_flag()
    flags.DEFINE_integer("batch_size", 32, "GLOBAL batch size, split evenly across the replicas.")
    define_path(
        "cache", "memory",
        "Cache of decoded images: none, memory, or a folder. A folder holds a file cache of the "
        "decoded, resized uint8 images.")
    define_path("feature_cache", "auto",
                        "Frozen-backbone fast path: auto, off or a folder. auto computes each split's ResNet50 features "
                        "once, caches them in $XDG_CACHE_HOME/mri_tfdata/features (else "
                        "$HOME/.cache/mri_tfdata/features) and trains the head on them when the "
                        "backbone stays frozen and --augment is off; a folder does the same with "
                        "the cache there; off always trains end to end.")
    flags.DEFINE_integer("shuffle_buffer", 2048, "Examples in the training split's shuffle "
                         "buffer. A file cache shuffles the whole split instead.")
    flags.DEFINE_integer("seed", 0, "Seed for shuffling, weight initialisation and dropout.")


def define_dicom_window_flag() -> None:
    """Defines --dicom_window (call once, at import; define_data_flags calls it)."""
    flags.DEFINE_string(
        "dicom_window", None,
        "center,width of the display window DICOM files are read with. E.g. 40,400, in "
        "rescaled units. Default: each file's own window (VOI LUT or WindowCenter/WindowWidth), "
        "else the minimum to maximum of each slice.")


def dicom_window_from_flags():
    """--dicom_window as a data.dicom.Window, or None when unset.

    Raises:
      ParameterError: not two numbers center,width with a width of at least 1 (exit code 2).
    """
    if FLAGS.dicom_window is None:
        return None
    from mri_tfdata.data import dicom  # TensorFlow-free

    try:
        return dicom.parse_window(FLAGS.dicom_window)
    except ValueError as e:
        require(False, f"--dicom_window: {e}; pass center,width, e.g. --dicom_window=40,400.")


def define_model_flags() -> None:
    """Defines the model's shape and the hardware it runs on (call once, at import)."""
    define_path(
        "weights", "imagenet",
        "Backbone weights: imagenet, none (random) or a ResNet50 .h5 file. imagenet is "
        "Keras's download, cached in $HOME/.keras; the file holds ResNet50's no-top weights.")
    flags.DEFINE_list("head_units", ["512", "128"],
                      "Hidden Dense layer sizes of the head, e.g. 512,128.")
    flags.DEFINE_enum("head_activation", "relu", _ACTIVATIONS,
                      "Hidden head layers' activation.")
    flags.DEFINE_float("dropout", 0.0, "Dropout after each hidden head layer, in [0, 1).")
    flags.DEFINE_bool(
        "standardize_features", True,
        "Standardise the pooled features before the head. Fitted on the 2,048 features of the "
        "training images; needed for usable accuracy with --weights=none.")
    flags.DEFINE_bool("augment", False, "Random flip/rotation/zoom/contrast during training.")
    flags.DEFINE_enum(
        "strategy", "auto", STRATEGIES,
        "Distribution. auto: mirrored on >1 GPU, one GPU, else the default.")
    flags.DEFINE_string("tpu", None, "strategy=tpu: the TPU name or address (local on a TPU VM).")
    flags.DEFINE_enum("precision", "auto", PRECISIONS,
                      "Mixed precision. auto picks what the hardware runs natively.")


def define_evaluation_flags() -> None:
    """Defines how metrics.json states its uncertainty (call once, at import)."""
    flags.DEFINE_integer("bootstrap_resamples", 1000,
                         "Bootstrap resamples behind metrics.json's 95% intervals. The "
                         "bootstrap is stratified by class; at least 1.")


def bootstrap_resamples_from_flags() -> int:
    """--bootstrap_resamples, checked.

    Raises:
      ParameterError: it is below 1 (exit code 2).
    """
    require(FLAGS.bootstrap_resamples >= 1,
            f"--bootstrap_resamples={FLAGS.bootstrap_resamples} must be at least 1: the 95% "
            "intervals of metrics.json come from that many resamples (1000 is the default and "
            "takes about a second).")
    return FLAGS.bootstrap_resamples


def data_spec_from_flags(*, image_size: int | None = None) -> DataSpec:
    """Validates the data flags and returns the DataSpec they describe.

    Args:
      image_size: the image side to use instead of --image_size (e.g. a saved model's input).

    Raises:
      ParameterError: for inconsistent or out-of-range values (exit code 2).
    """
    require(FLAGS.image_size >= 32, f"--image_size={FLAGS.image_size} is too small: ResNet50 needs "
            "at least 32 px. Use e.g. 64 for a quick run, 224 or 256 for the real data.")
    require(FLAGS.batch_size >= 1, f"--batch_size={FLAGS.batch_size} must be a positive number.")
    require(FLAGS.shuffle_buffer >= 1, "--shuffle_buffer must be at least 1.")
    require(0 <= FLAGS.seed < 2**31, f"--seed={FLAGS.seed} must be between 0 and 2**31 - 1.")
    require(bool(FLAGS.cache.strip()), "--cache must be none, memory or a folder.")
    if FLAGS.source == "folder":
        require(bool(FLAGS.data_dir), "--source=folder needs --data_dir=DIR, the folder holding "
                "Training/<class>/ and Testing/<class>/ (the Kaggle download, unzipped).")
    else:
        require(FLAGS.source == "synthetic" or not FLAGS.data_dir,
                "--data_dir is for --source=folder or synthetic; with --source=tfds pass "
                "--tfds_data_dir instead.")
    if FLAGS.classes is not None:
        require(FLAGS.source != "tfds", "--classes is for --source=folder or synthetic; a TFDS "
                "build holds its class names (choose them when building it).")
        problem = class_names_problem(FLAGS.classes)
        require(problem is None, f"--classes={','.join(FLAGS.classes)!r}: {problem}; list at "
                "least two distinct class folder names, e.g. --classes=cat,dog.")
    if FLAGS.source == "synthetic":
        require(FLAGS.synthetic_train_per_class >= 2 and FLAGS.synthetic_test_per_class >= 1,
                "--synthetic_train_per_class must be at least 2 and --synthetic_test_per_class at "
                "least 1.")
    from mri_tfdata.data.dataspec import DataSpec  # imports TensorFlow

    return DataSpec(
        source=FLAGS.source, data_dir=FLAGS.data_dir, tfds_data_dir=FLAGS.tfds_data_dir,
        tfds_config=FLAGS.tfds_config, synthetic_train_per_class=FLAGS.synthetic_train_per_class,
        synthetic_test_per_class=FLAGS.synthetic_test_per_class,
        synthetic_image_size=image_size or FLAGS.image_size,
        class_names=tuple(FLAGS.classes) if FLAGS.classes else None,
        dicom_window=dicom_window_from_flags())


def model_spec_from_flags() -> ModelSpec:
    """Validates the model flags and returns the ModelSpec they describe.

    Raises:
      ParameterError: for malformed or out-of-range values (exit code 2).
    """
    try:
        units = tuple(int(u) for u in FLAGS.head_units)
    except ValueError:
        units = ()
    require(bool(units) and all(u >= 1 for u in units),
            f"--head_units={','.join(FLAGS.head_units)} must be a comma-separated list of positive "
            "integers, e.g. --head_units=512,128.")
    require(0.0 <= FLAGS.dropout < 1.0, f"--dropout={FLAGS.dropout} must be in [0, 1).")
    require(FLAGS.weights.lower() in ("imagenet", "none") or bool(FLAGS.weights.strip()),
            "--weights must be imagenet, none or a file path.")
    from mri_tfdata.model.architecture import ModelSpec  # imports TensorFlow

    return ModelSpec(image_size=FLAGS.image_size, weights=FLAGS.weights, head_units=units,
                     head_activation=FLAGS.head_activation, dropout=FLAGS.dropout,
                     standardize_features=FLAGS.standardize_features, augment=FLAGS.augment)


# Flags naming a path, with the values that are keywords instead (written as given).
_PATH_FLAGS = {"data_dir": (), "tfds_data_dir": (), "workdir": (), "cache": ("none", "memory"),
               "feature_cache": ("auto", "off"), "weights": ("imagenet", "none")}


def serialize(flag) -> str:
    """The flag as a flagfile line ("" when unset), with a path made absolute, so that the file
    means the same from any working directory (URLs such as gs://... are kept as they are)."""
    value = flag.value
    if (flag.name in _PATH_FLAGS and isinstance(value, str) and value
            and value.lower() not in _PATH_FLAGS[flag.name] and "://" not in value):
        return f"--{flag.name}={os.path.abspath(os.path.expanduser(value))}"
    return flag.serialize()


def flags_as_text(modules) -> str:
    """Serialises the flags defined by `modules` (module objects or names) as a flagfile.

    Only this project's flags are written (not absl's own), sorted, one per line, paths
    absolute, so that `--flagfile=` of the result repeats the run from any folder.
    """
    names = {}
    for module in modules:
        name = module if isinstance(module, str) else module.__name__
        for flag in FLAGS.get_flags_for_module(name):
            names[flag.name] = flag
    # --overwrite is an instruction for one invocation, not a setting of the run.
    names.pop("overwrite", None)
    lines = (serialize(names[n]) for n in sorted(names))
    return "".join(f"{line}\n" for line in lines if line)
