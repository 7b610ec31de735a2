"""TFDS dataset builders of the project; import a builder's package to register it with TFDS."""
