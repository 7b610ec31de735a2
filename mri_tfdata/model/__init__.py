"""The classifier: the frozen ResNet50 backbone and dense head, its loss and optimizer, head fitting and feature extraction."""
