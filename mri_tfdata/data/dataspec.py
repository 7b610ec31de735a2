"""Which dataset a run reads: a TFDS build, a Kaggle-layout folder or the embedded synthetic set."""

import dataclasses
import pathlib

import numpy as np
from absl import logging

from mri_tfdata.core import caches
from mri_tfdata.core.choices import SOURCES
from mri_tfdata.core.errors import ParameterError, UserError
from mri_tfdata.data import dicom, sources, synthetic


# Synthetic roots already generated or checked by this process; every split opens through prepare().
_prepared: set[pathlib.Path] = set()


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the images come from; training, evaluation and tuning open their splits through it.

    Attributes:
      source: "tfds" (a built brain_tumor_mri), "folder" (Kaggle layout under `data_dir`) or
        "synthetic" (generated once into `data_dir`, then read as a Kaggle-layout folder).
      data_dir: the Kaggle-layout root ("folder"), or where generated data is kept ("synthetic";
        None for caches.cache_dir("synthetic")).
      tfds_data_dir: TFDS data_dir ("tfds"); None means the TFDS default ($TFDS_DATA_DIR, else $HOME/tensorflow_datasets).
      tfds_config: the builder config: "default" or "dedup" (Kaggle), "folders" or
        "folders_dedup" (classes from the data) ("tfds").
      synthetic_train_per_class: generated Training images per class ("synthetic").
      synthetic_test_per_class: generated Testing images per class ("synthetic").
      synthetic_image_size: side of the generated images in pixels ("synthetic").
      class_names: the classes in label order ("folder", "synthetic"); None takes them from the
        training split's class folders, sorted (the Kaggle classes for a Kaggle tree).
      dicom_window: the display window DICOM files of a folder are read with, replacing their
        own (data.dicom); None for each file's own.
    """

    source: str
    data_dir: str | None = None
    tfds_data_dir: str | None = None
    tfds_config: str = "default"
    synthetic_train_per_class: int = 40
    synthetic_test_per_class: int = 10
    synthetic_image_size: int = 64
    class_names: tuple | None = None
    dicom_window: dicom.Window | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")

    def synthetic_root(self) -> pathlib.Path:
        """The folder the synthetic set is generated into, named by caches.cache_key from the
        generation settings, so that a different setting never reuses a tree made with another."""
        base = pathlib.Path(self.data_dir).expanduser() if self.data_dir else \
            caches.cache_dir("synthetic")
        train, test = self.synthetic_train_per_class, self.synthetic_test_per_class
        size = self.synthetic_image_size
        return base / caches.cache_key(f"train{train}-test{test}-{size}px", train_per_class=train,
                                       test_per_class=test, image_size=size)

    def prepare(self) -> None:
        """Generates the synthetic dataset unless a complete tree exists; a no-op for others."""
        root = self.synthetic_root()
        if self.source == "synthetic" and root not in _prepared:
            logging.info("Synthetic dataset: %s (generated once, then reused)", root)
            synthetic.write_synthetic_dataset(
                root, train_per_class=self.synthetic_train_per_class,
                test_per_class=self.synthetic_test_per_class,
                image_size=self.synthetic_image_size, seed=0)
            _prepared.add(root)

    def open(self, split: str, *, input_context=None, check_decoding: bool = True
             ) -> sources.Source:
        """Opens one split (a TFDS split string such as "train[:90%]") as a sources.Source.

        Args:
          split: the split string.
          input_context: a tf.distribute.InputContext when a strategy shards the input.
          check_decoding: for a folder, decode its files now to refuse those that fail; False
            leaves that to the first pass over the images (sources.load_folder_source). A TFDS
            build's files were checked when it was built.

        Returns:
          The Source of encoded images and labels.

        Raises:
          UserError: the data is missing; the message says how to provide it.
          ParameterError: source="folder" without a data_dir.
        """
        if self.source == "tfds":
            try:
                return sources.load_tfds_source(split=split, data_dir=self.tfds_data_dir,
                                                config=self.tfds_config,
                                                input_context=input_context)
            except UserError as e:  # Its data_dir is this spec's tfds_data_dir.
                raise e.renamed(data_dir="tfds_data_dir",
                                also="Or read the Kaggle folder itself: {source:'folder'}.") \
                    from None
        if self.source == "synthetic":
            self.prepare()
            root = self.synthetic_root()
        else:
            if not self.data_dir:
                raise ParameterError("{source} needs {data_dir!n}, the folder holding the Kaggle "
                                     "layout (Training/<class>/*.jpg and Testing/<class>/*.jpg).",
                                     source=self.source)
            root = pathlib.Path(self.data_dir).expanduser()
        return sources.load_folder_source(root, split=split, class_names=self.class_names,
                                          input_context=input_context,
                                          dicom_window=self.dicom_window,
                                          check_decoding=check_decoding)

    def describe(self) -> str:
        """A one-line description for logs."""
        if self.source == "tfds":
            return (f"TFDS brain_tumor_mri/{self.tfds_config} in "
                    f"{self.tfds_data_dir or 'the TFDS default folder'}")
        if self.source == "synthetic":
            return f"embedded synthetic dataset in {self.synthetic_root()}"
        return f"Kaggle-layout folder {self.data_dir}"


def check_splits(splits: dict, *, batch_size: int, allow_missing_classes: bool = False) -> None:
    """Refuses splits that would train on nothing, on too few classes, or on the scored data.

    Args:
      splits: parameter name of the split ("train_split", "validation_split", "test_split", as
        in training's config) -> (split string, sources.Source), for the splits in use;
        "train_split" is required.
      batch_size: the global batch; the training split must fill one.
      allow_missing_classes: accept a training split that lacks a class.

    Raises:
      ParameterError: the batch exceeds the training split, or another split shares examples
        with it.
      UserError: the training split lacks a class (and that is not allowed).
    """
    train_split, train = splits["train_split"]
    if train.num_examples < batch_size:
        raise ParameterError("The training split {train_split} has {count!s} examples, fewer than "
                             "one batch of {batch_size}; lower {batch_size!n}.",
                             train_split=train_split, count=train.num_examples,
                             batch_size=batch_size)
    counts = np.bincount(train.labels, minlength=len(train.class_names))
    missing = [name for name, count in zip(train.class_names, counts) if not count]
    if missing and not allow_missing_classes:
        raise UserError(
            "The training split {train_split} ({description!s}) has no example of {missing!s}, so "
            "the model could never predict it. Add the missing class folder(s), or pass "
            "{allow_missing_classes:True} to train without them.", train_split=train_split,
            description=train.description, missing=", ".join(missing))
    # Scores are wrong when measured on examples the model trained on. Validating on the test split
    # itself (the reference recipe) reuses no training example, so it is left to the user.
    trained = set(train.names)
    for scored, (split, source) in splits.items():
        shared = trained & set(source.names) if scored != "train_split" else set()
        if shared:
            raise ParameterError(
                "{train_split} and {" + scored + "} share {count!s} example(s), e.g. "
                "{example!s}, so the {kind!s} scores would be measured on examples of the "
                "training split. Use disjoint splits, e.g. {train_split:'train[:90%]'} "
                "{validation_split:'train[90%:]'}.",
                **{"train_split": train_split, scored: split}, count=len(shared),
                example=repr(sorted(shared)[0]), kind=scored.split("_")[0])
