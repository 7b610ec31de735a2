"""Writes an evaluation to TensorBoard: its metrics as scalars and its plots as images."""

import pathlib

import tensorflow as tf


def _scalars(metrics: dict) -> dict:
    """TensorBoard tag -> value of the metrics worth a chart; undefined (None) values are left out.

    Accuracy and loss take the tags Keras's TensorBoard callback gives the epoch metrics, so that
    TensorBoard draws the test value in the same chart as the training and validation curves.
    """
    scalars = {"epoch_accuracy": metrics["accuracy"], "epoch_loss": metrics["loss"],
               "roc_auc/macro": metrics["macro_avg"]["roc_auc"],
               "calibration/expected_calibration_error": metrics["expected_calibration_error"],
               "calibration/brier_score": metrics["brier_score"]}
    for name, values in metrics["per_class"].items():
        for metric in ("roc_auc", "sensitivity", "specificity"):
            scalars[f"{metric}/{name}"] = values[metric]
    return {tag: value for tag, value in scalars.items() if value is not None}


def write_evaluation(log_dir, *, step: int, metrics: dict, plots: dict) -> None:
    """Writes one evaluation as TensorBoard summaries into `log_dir` at `step`, replacing any there.

    Args:
      log_dir: the run's folder in TensorBoard's logdir, e.g. WORKDIR/logs/test beside the
        train/ and validation/ folders the Keras callback writes.
      step: the step to plot at; the callback's steps are the 0-based epochs, so the last
        epoch's puts the test results under the end of the curves.
      metrics: reports.classification_metrics' dict.
      plots: TensorBoard tag -> PNG file, e.g. {"roc": WORKDIR/roc.png}.
    """
    log_dir = pathlib.Path(log_dir)
    # An evaluation rewritten (a rerun after a kill, evaluate --overwrite) replaces its summaries
    # instead of adding a second point at the same step.
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for tag, value in _scalars(metrics).items():
            tf.summary.scalar(tag, value, step=step)
        for tag, path in plots.items():
            png = tf.io.decode_png(pathlib.Path(path).read_bytes(), channels=3)
            tf.summary.image(tag, png[tf.newaxis], step=step)
    writer.close()
