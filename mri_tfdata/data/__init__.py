"""Images in: Kaggle layout, file checks, decoding, sources, synthetic data, tf.data, TFDS steps."""
