"""KerasTuner search over the classifier head, trained on cached backbone features."""

import sys

from mri_tfdata import console

# `python -m tuning.search` imports keras before mri_tfdata: quieten TensorFlow here first.
console.setup_command(sys.argv)
