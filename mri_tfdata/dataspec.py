"""Which dataset a run reads: a TFDS build, a Kaggle-layout folder or the embedded synthetic set."""

import dataclasses
import pathlib

from absl import logging

from mri_tfdata import sources, synthetic
from mri_tfdata.errors import UserError

SOURCES = ("tfds", "folder", "synthetic")

# Synthetic roots already generated or checked by this process; every split opens through prepare().
_prepared: set[pathlib.Path] = set()


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the images come from; training, evaluation and tuning open their splits through it.

    Attributes:
      source: "tfds" (a built brain_tumor_mri), "folder" (Kaggle layout under `data_dir`) or
        "synthetic" (generated once into `data_dir`, then read as a Kaggle-layout folder).
      data_dir: the Kaggle-layout root ("folder"), or where generated data is kept ("synthetic").
      tfds_data_dir: TFDS data_dir ("tfds"); None means the TFDS default (~/tensorflow_datasets).
      tfds_config: the builder config, "default" or "dedup" ("tfds").
      synthetic_train_per_class: generated Training images per class ("synthetic").
      synthetic_test_per_class: generated Testing images per class ("synthetic").
      synthetic_image_size: side of the generated images in pixels ("synthetic").
    """

    source: str
    data_dir: str | None = None
    tfds_data_dir: str | None = None
    tfds_config: str = "default"
    synthetic_train_per_class: int = 40
    synthetic_test_per_class: int = 10
    synthetic_image_size: int = 64

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")

    def synthetic_root(self) -> pathlib.Path:
        """The folder the synthetic set is generated into; its name carries the generation settings
        so that a different setting never reuses a tree made with another."""
        base = pathlib.Path(self.data_dir or "~/.cache/mri_tfdata/synthetic").expanduser()
        return base / (f"train{self.synthetic_train_per_class}-test{self.synthetic_test_per_class}"
                       f"-{self.synthetic_image_size}px")

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

    def open(self, split: str, *, input_context=None) -> sources.Source:
        """Opens one split (a TFDS split string such as "train[:90%]") as a sources.Source.

        Args:
          split: the split string.
          input_context: a tf.distribute.InputContext when a strategy shards the input.

        Returns:
          The Source of encoded images and labels.

        Raises:
          UserError: the data is missing; the message says how to provide it.
        """
        if self.source == "tfds":
            return sources.load_tfds_source(split=split, data_dir=self.tfds_data_dir,
                                            config=self.tfds_config, input_context=input_context)
        if self.source == "synthetic":
            self.prepare()
            root = self.synthetic_root()
        else:
            if not self.data_dir:
                raise UserError("--source=folder needs --data_dir, the folder holding the Kaggle "
                                "layout (Training/<class>/*.jpg and Testing/<class>/*.jpg).")
            root = pathlib.Path(self.data_dir).expanduser()
        return sources.load_folder_source(root, split=split, input_context=input_context)

    def describe(self) -> str:
        """A one-line description for logs."""
        if self.source == "tfds":
            return (f"TFDS brain_tumor_mri/{self.tfds_config} in "
                    f"{self.tfds_data_dir or '~/tensorflow_datasets'}")
        if self.source == "synthetic":
            return f"embedded synthetic dataset in {self.synthetic_root()}"
        return f"Kaggle-layout folder {self.data_dir}"
