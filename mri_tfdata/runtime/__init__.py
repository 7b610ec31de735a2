"""Where the work runs: the tf.distribute strategy and the mixed-precision policy."""
