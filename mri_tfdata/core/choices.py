"""The accepted values of the enumerated settings, TensorFlow-free: commands define flags from them."""

# Where a run's images come from (data.dataspec).
SOURCES = ("tfds", "folder", "synthetic")
# tf.distribute strategies (runtime.distribute).
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
# Keras mixed-precision settings (runtime.precision).
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# Learning-rate schedules over a fit's steps: constant; cosine decay to 0; a step to a tenth of
# the rate after two thirds of the steps (model.optimization).
SCHEDULES = ("constant", "cosine", "step")
