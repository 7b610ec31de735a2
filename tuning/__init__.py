"""KerasTuner search over the classifier head, trained on cached backbone features."""
