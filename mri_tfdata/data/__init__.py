"""Images in: the Kaggle folder layout, file checks, decoding, sources, synthetic data, tf.data pipelines, caches and the TFDS build steps."""
