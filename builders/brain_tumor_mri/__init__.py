"""The `brain_tumor_mri` TFDS dataset; importing this package registers it with TFDS."""

# Relative, so that it also works when `tfds build builders/brain_tumor_mri` imports this folder
# as the top-level package `brain_tumor_mri`.
from .brain_tumor_mri_dataset_builder import Builder

__all__ = ["Builder"]
