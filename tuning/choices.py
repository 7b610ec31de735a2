"""The search's enumerated settings, TensorFlow-free: mri-tune defines its flags from them."""

# The KerasTuner algorithms (tuning.tuners).
TUNERS = ("random", "bayesian", "hyperband")
# What the final selection can rank by (the keys of tuning.selection.FOLD_METRICS).
SELECTION_METRICS = ("accuracy", "loss")
