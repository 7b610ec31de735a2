"""A training run: the trainer, its resumable phases and callbacks, and the run folder."""
