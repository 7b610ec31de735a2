"""How good a classifier is: metrics, calibration, plots, Grad-CAM and the split evaluator."""
