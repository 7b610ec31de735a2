"""Evaluates a classifier on one split: predictions from the split's features, checked, reported."""

import pathlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import decoding
from mri_tfdata.data.sources import Source
from mri_tfdata.evaluation import bootstrap, conformal, gradcam, reports, summaries
from mri_tfdata.model import feature_cache

# Images on which the assembled (or saved) model must agree with the head on cached features.
CHECK_IMAGES = 8
# Images per row of gradcam_examples.png: one row of correct predictions, one of mistakes.
GRADCAM_EXAMPLES = 4
# The plots evaluate_split writes into out_dir, as <name>.png.
PLOTS = ("confusion_matrix", "roc", "reliability", "gradcam_examples")


def head_probabilities(head: keras.Model, feature_array: np.ndarray,
                       batch_size: int = 1024) -> np.ndarray:
    """The head's class probabilities for every feature vector, in order.

    Called directly rather than through `predict`, so that no distribution strategy pads the last
    batch: every example is counted exactly once, on every worker.
    """
    chunks = [keras.ops.convert_to_numpy(head(feature_array[i:i + batch_size], training=False))
              for i in range(0, len(feature_array), batch_size)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 0), np.float32)


def _tolerance(classifier: keras.Model) -> float:
    # Under mixed precision the backbone computes in 16 bits, and a batch of another size can round
    # differently; a wrong model (other weights or preprocessing) differs by far more.
    return 1e-4 if classifier.get_layer("backbone").compute_dtype == "float32" else 5e-2


def check_agreement(classifier: keras.Model, source: Source, direct: np.ndarray,
                    from_features: np.ndarray) -> None:
    """Compares the classifier's own probabilities on a few of the split's images (`direct`)
    with those the head computed from the split's cached features for the same images.

    Raises:
      UserError: they differ by more than the classifier's precision explains.
    """
    difference = float(np.max(np.abs(direct - from_features)))
    if difference > _tolerance(classifier):
        raise UserError(
            "The model's predictions on {count!s} images of {description!s} differ by "
            "{difference!s} from those computed from its cached backbone features, so the "
            "feature cache does not belong to this model or the model is damaged. Delete the "
            "feature cache (or pass {cache_dir:None}) and run again.", count=len(direct),
            description=source.description, difference=f"{difference:.3g}")


def check_labels(source: Source, labels: np.ndarray) -> None:
    """Checks that the labels that came with the features are the split's, in the split's order.

    Raises:
      UserError: they differ, so file names (Source.names) could not be paired with predictions.
    """
    expected = source.labels
    if len(expected) == len(labels) and np.array_equal(expected, labels):
        return
    differ = np.flatnonzero(expected != labels) if len(expected) == len(labels) else []
    where = (f"at {len(differ)} of {len(labels)} positions, first at {differ[0]}" if len(differ)
             else f"{len(labels)} labels for {len(expected)} images")
    raise UserError(
        "The labels stored with the cached features of {description!s} differ from the split's "
        "own labels ({where!s}), so the cache does not hold this split in this order and its "
        "predictions cannot be matched to the files. Delete the feature cache (or pass "
        "{cache_dir:None}) and run again.", description=source.description, where=where)


def _images_at(source: Source, indices, image_size: int) -> np.ndarray:
    """The split's images at `indices` (at least one), decoded as the pipeline decodes them (no
    other decoded).

    Each is decoded alone by the pipeline's own decode_and_resize, eagerly: for a few images,
    tracing it into a dataset's map costs several times more than the decoding.
    """
    wanted = tf.constant(sorted(set(indices)), tf.int64)
    encoded = (source.dataset.enumerate()
               .filter(lambda i, example: tf.reduce_any(tf.equal(i, wanted)))
               .map(lambda i, example: example[0]))
    decoded = {i: decoding.decode_and_resize(data, image_size=image_size).numpy()
               for i, data in zip(wanted.numpy().tolist(), encoded)}
    return np.stack([decoded[i] for i in indices])


def gradcam_picks(labels: np.ndarray, probabilities: np.ndarray, num_classes: int) -> list:
    """The split's positions shown with their Grad-CAMs: a row of correct predictions, then a row
    of mistakes (at most GRADCAM_EXAMPLES each).

    Correct: the first correctly classified image of each class, in the split's order (a fair
    sample, not the model's best). Mistakes: the most confident ones, what a reviewer most needs
    to see.
    """
    predictions = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(labels)), predictions]
    right = predictions == labels
    correct = np.concatenate([np.flatnonzero(right & (labels == c))[:1]
                              for c in range(num_classes)]).tolist()
    wrong = np.flatnonzero(~right)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")].tolist()
    return [correct[:GRADCAM_EXAMPLES], wrong[:GRADCAM_EXAMPLES]]


def check_and_explain(classifier: keras.Model, source: Source, *, labels,
                      probabilities, path) -> pathlib.Path:
    """Runs the classifier on a few of the split's images, once, for two ends: its probabilities
    must agree with `probabilities` (computed by the head from the cached features) on the first
    CHECK_IMAGES images (check_agreement), and the Grad-CAMs of the gradcam_picks are drawn into
    `path`, each heatmap explaining the predicted class (the one in its caption).

    Raises:
      UserError: the classifier disagrees with `probabilities`.
    """
    rows = gradcam_picks(labels, probabilities, len(source.class_names))
    checked = list(range(min(CHECK_IMAGES, len(labels))))
    positions = sorted(set(checked).union(*rows))
    if not positions:
        return gradcam.plot_grid(path, [])
    predictions = probabilities.argmax(axis=1)
    images = _images_at(source, positions, int(classifier.input_shape[1]))
    explained = gradcam.gradcam(classifier, images, class_index=predictions[positions],
                                batch_size=len(positions))
    at = {position: k for k, position in enumerate(positions)}
    check_agreement(classifier, source, explained.probabilities[[at[i] for i in checked]],
                    probabilities[checked])
    names, classes = source.names, source.class_names
    confidence = probabilities[np.arange(len(labels)), predictions]
    panels = [[(images[at[i]], explained.heatmaps[at[i]],
                (f"{pathlib.Path(names[i]).name}\ntrue {classes[labels[i]]}\n"
                 f"predicted {classes[predictions[i]]} {confidence[i]:.2f}"),
                classes[predictions[i]]) for i in row] for row in rows]
    return gradcam.plot_grid(path, [("correct", panels[0]), ("wrong", panels[1])])


def calibrate_split(head: keras.Model, feature_set: feature_cache.FeatureSet, *, alphas,
                    split: str) -> dict | None:
    """The conformal thresholds of `alphas` from the head's probabilities on a held-out split's
    features (conformal.calibrate), or None when the split is too small for every level; each
    level left out is named in a warning."""
    calibration = conformal.calibrate(head_probabilities(head, feature_set.features),
                                      feature_set.labels, alphas, split=split)
    for alpha, why in calibration.get("skipped", {}).items():
        logging.warning("No prediction sets at alpha %s: %s", alpha, why)
    return calibration if calibration["alphas"] else None


def uncertainty_metrics(labels, probabilities, class_names, *, resamples: int,
                        calibration: dict | None) -> dict:
    """metrics.json's "intervals" of the metrics and, with a calibration, its "conformal" report,
    all from one set of bootstrap draws."""
    weights = bootstrap.stratified_weights(labels, resamples=resamples,
                                           seed=bootstrap.DEFAULT_SEED)
    found = {"intervals": bootstrap.metric_intervals(labels, probabilities, class_names,
                                                     resamples=resamples, weights=weights)}
    if calibration:
        found["conformal"] = conformal.evaluate_sets(labels, probabilities, calibration,
                                                     resamples=resamples, weights=weights)
    return found


def evaluate_split(classifier: keras.Model, source: Source, *, out_dir, batch_size: int,
                   cache_dir, strategy=None, extra: dict | None = None,
                   checked_model: keras.Model | None = None, log_dir=None,
                   log_step: int = 0, feature_set: feature_cache.FeatureSet | None = None,
                   bootstrap_resamples: int = bootstrap.DEFAULT_RESAMPLES,
                   calibration: dict | None = None) -> dict:
    """Evaluates `classifier` on a split: metrics.json, errors.csv and the PLOTS in out_dir.

    With a log_dir, the metrics and the PLOTS also go to TensorBoard (see summaries).

    The split's backbone features come from the feature cache (extracted and cached when
    absent), so each image is decoded at most once and a second evaluation decodes only the few
    shown with their Grad-CAMs and checked; the head turns them into probabilities. The model is
    then run once on a few images: it must agree, and the same pass gives the Grad-CAMs
    (check_and_explain).

    Args:
      classifier: the trained classifier (its "backbone" and "head" are used).
      source: the split, every example once (no input_context).
      out_dir: an existing directory for the reports.
      batch_size: the global batch of the feature extraction.
      cache_dir: the feature cache folder, or None for no caching.
      strategy: the tf.distribute strategy the classifier was built under.
      extra: more keys for metrics.json.
      checked_model: the model run on the check images and explained by the Grad-CAMs, e.g. the
        model as saved (training's model_file.without_training_state); default `classifier`.
      log_dir: the TensorBoard folder for this evaluation (its earlier summaries are replaced),
        e.g. WORKDIR/logs/test; None for none.
      log_step: the step the summaries are written at.
      feature_set: the split's features under the classifier's backbone, when the caller has
        them already (then none are extracted or read here).
      bootstrap_resamples: resamples of the metrics' 95% intervals (bootstrap.metric_intervals).
      calibration: the model's conformal thresholds (conformal.calibrate): their prediction
        sets are reported on this split; None for none.

    Returns:
      The metrics written.

    Raises:
      UserError: the cached features do not belong to this split or to this model.
    """
    feature_set = feature_set or feature_cache.load_or_extract(
        source, backbone=classifier.get_layer("backbone"),
        image_size=int(classifier.input_shape[1]),
        batch_size=batch_size, cache_dir=cache_dir, strategy=strategy)
    source = feature_set.source or source  # without files that failed to decode, if any
    check_labels(source, feature_set.labels)
    probabilities = head_probabilities(classifier.get_layer("head"), feature_set.features)
    # Before any report is written: a model that disagrees with its features leaves none.
    check_and_explain(checked_model or classifier, source, labels=feature_set.labels,
                      probabilities=probabilities,
                      path=pathlib.Path(out_dir) / "gradcam_examples.png")
    uncertainty = uncertainty_metrics(feature_set.labels, probabilities, source.class_names,
                                      resamples=bootstrap_resamples, calibration=calibration)
    metrics = reports.write_evaluation(out_dir, labels=feature_set.labels,
                                       probabilities=probabilities, class_names=source.class_names,
                                       names=source.names, extra=extra, uncertainty=uncertainty)
    if log_dir is not None:
        summaries.write_evaluation(
            log_dir, step=log_step, metrics=metrics,
            plots={name: pathlib.Path(out_dir) / f"{name}.png" for name in PLOTS})
    logging.info("%s: %s, loss %.4f on %d images.", source.description,
                 bootstrap.describe("accuracy", metrics["accuracy"],
                                    metrics["intervals"]["accuracy"], bootstrap.DEFAULT_LEVEL),
                 metrics["loss"], metrics["num_examples"])
    return metrics
