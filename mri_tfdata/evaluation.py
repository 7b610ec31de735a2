"""Evaluates a classifier on one split: predictions from the split's features, checked, reported."""

import keras
import numpy as np
from absl import logging

from mri_tfdata import features, input_pipeline, reports
from mri_tfdata.errors import UserError
from mri_tfdata.sources import Source

# Images on which the assembled (or saved) model must agree with the head on cached features.
CHECK_IMAGES = 8


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


def check_model(classifier: keras.Model, source: Source, probabilities: np.ndarray) -> None:
    """Runs the whole classifier on the split's first images and compares with `probabilities`.

    Raises:
      UserError: the classifier disagrees with the probabilities computed from cached features.
    """
    image_size = int(classifier.input_shape[1])
    count = min(CHECK_IMAGES, len(probabilities))
    dataset = input_pipeline.make_dataset(source, image_size=image_size, batch_size=count,
                                          training=False)
    images, _ = next(iter(dataset))
    direct = keras.ops.convert_to_numpy(classifier(images, training=False))
    difference = float(np.max(np.abs(direct - probabilities[:count])))
    if difference > _tolerance(classifier):
        raise UserError(
            f"The model's predictions on {count} images of {source.description} differ by "
            f"{difference:.3g} from those computed from its cached backbone features, so the "
            "feature cache does not belong to this model or the model is damaged. Delete the "
            "feature cache (or pass --feature_cache=off) and run again.")


def evaluate_split(classifier: keras.Model, source: Source, *, out_dir, batch_size: int,
                   cache_dir, strategy=None, extra: dict | None = None,
                   checked_model: keras.Model | None = None) -> dict:
    """Evaluates `classifier` on a split and writes metrics.json and confusion_matrix.png.

    The split's backbone features come from the feature cache (extracted and cached when
    absent), so each image is decoded at most once and a second evaluation decodes none; the
    head turns them into probabilities. The whole model is then run on a few images and must
    agree.

    Args:
      classifier: the trained classifier (its "backbone" and "head" are used).
      source: the split, every example once (no input_context).
      out_dir: an existing directory for the reports.
      batch_size: the global batch of the feature extraction.
      cache_dir: the feature cache folder, or None for no caching.
      strategy: the tf.distribute strategy the classifier was built under.
      extra: more keys for metrics.json.
      checked_model: the model run on the check images, e.g. the model as saved and loaded
        again; default `classifier`.

    Returns:
      The metrics written.
    """
    feature_set = features.load_or_extract(
        source, backbone=classifier.get_layer("backbone"), image_size=int(classifier.input_shape[1]),
        batch_size=batch_size, cache_dir=cache_dir, strategy=strategy)
    probabilities = head_probabilities(classifier.get_layer("head"), feature_set.features)
    check_model(checked_model or classifier, source, probabilities)
    metrics = reports.write_evaluation(out_dir, labels=feature_set.labels,
                                       probabilities=probabilities,
                                       class_names=source.class_names, extra=extra)
    logging.info("%s: accuracy %.4f, loss %.4f on %d images.", source.description,
                 metrics["accuracy"], metrics["loss"], metrics["num_examples"])
    return metrics
