"""mri_tfdata: brain-tumour MRI classification by transfer learning on TensorFlow."""

__version__ = "0.2.0"
