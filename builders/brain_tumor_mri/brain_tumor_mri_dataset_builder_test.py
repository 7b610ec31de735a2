"""TFDS conformance tests of the `brain_tumor_mri` builder over dummy_data/, for both configs.

dummy_data/ is synthetic (nothing copyrighted) and regenerated with:
  python -m mri_tfdata.synthetic --out=builders/brain_tumor_mri/dummy_data \
      --train_per_class=3 --test_per_class=2 --image_size=32 --leaked_test_images=1
It holds 12 training and 9 testing images, one testing image being a copy of Tr-gl_0000.jpg.
"""

import tensorflow_datasets as tfds

from . import brain_tumor_mri_dataset_builder


class DefaultConfigTest(tfds.testing.DatasetBuilderTestCase):
    """The data as published: the leaked test image stays."""

    DATASET_CLASS = brain_tumor_mri_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["default"]
    SPLITS = {"train": 12, "test": 9}


class DedupConfigTest(tfds.testing.DatasetBuilderTestCase):
    """The leaked copy of a training image is dropped from test."""

    DATASET_CLASS = brain_tumor_mri_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["dedup"]
    SPLITS = {"train": 12, "test": 8}


if __name__ == "__main__":
    tfds.testing.test_main()
