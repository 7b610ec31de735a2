"""mri_tfdata: brain-tumour MRI classification by transfer learning on TensorFlow."""

import sys

from mri_tfdata import console

__version__ = "0.2.0"

# First, before any module imports TensorFlow: a command starts quietly (see console.py).
console.setup_command(sys.argv)
