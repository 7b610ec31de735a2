"""A split's frozen-backbone features: the backbone run over every image once, in order."""

import time
import weakref

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mri_tfdata.model import architecture, shared_arrays
from mri_tfdata.runtime import progress

# The global batch of feature extraction, whatever the training batch: large enough to keep the
# device busy, small enough for ResNet50's activations at 256 px to fit a CPU host's memory.
INFERENCE_BATCH = 64

# backbone -> {(strategy, element_spec): traced step}. Tracing ResNet50 takes seconds, and a run
# extracts two or three splits with the same backbone; the weak keys let models be freed.
_STEPS = weakref.WeakKeyDictionary()


def _extraction_step(backbone: keras.Model, strategy, element_spec):
    """The tf.function that runs one (distributed) batch through the backbone, traced once."""
    steps = _STEPS.setdefault(backbone, {})
    key = (id(strategy), element_spec)
    if key not in steps:
        # A weak reference, so that the cached function does not keep its own key alive.
        backbone_ref = weakref.ref(backbone)

        # One function for all strategies: on the default strategy `run` and `gather` are
        # identities. Every batch is padded to the full size, so the signature is static and
        # ResNet50 is traced (and its kernels prepared) once.
        @tf.function(input_signature=[element_spec])
        def step(batch):
            def replica_fn(images, labels, valid):
                # float32 storage whatever the policy: bfloat16/float16 values are exact in float32.
                # The mask travels as int32: collective gathers do not take booleans.
                return (tf.cast(backbone_ref()(images, training=False), tf.float32),
                        tf.cast(labels, tf.int32), tf.cast(valid, tf.int32))

            features, labels, valid = (strategy.gather(t, axis=0)
                                       for t in strategy.run(replica_fn, args=batch))
            valid = tf.cast(valid, tf.bool)
            return tf.boolean_mask(features, valid), tf.boolean_mask(labels, valid)

        steps[key] = step
    return steps[key]


def _padded(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Pads each batch to batch_size examples, with a mask of the real ones: static shapes."""
    image_shape = dataset.element_spec[0].shape[1:]

    def pad(images, labels):
        missing = batch_size - tf.shape(images)[0]
        images = tf.pad(images, [[0, missing]] + [[0, 0]] * len(image_shape))
        valid = tf.range(batch_size) < batch_size - missing
        return (tf.ensure_shape(images, [batch_size, *image_shape]),
                tf.ensure_shape(tf.pad(labels, [[0, missing]]), [batch_size]), valid)

    return dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def extract_features(backbone: keras.Model, dataset: tf.data.Dataset, *, batch_size: int,
                     strategy=None,
                     num_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Runs the backbone over every batch of `dataset`, in order, with a progress bar.

    The results stay on the device until the end: no batch waits for the previous one's features
    to reach the host, so the input pipeline, the transfer and the backbone overlap.

    Args:
      backbone: `architecture.build_backbone(...)`, built in `strategy`'s scope.
      dataset: batches of (uint8 images, labels) in a fixed order, every example once
        (`input_pipeline.make_dataset(..., training=False)`).
      batch_size: the global batch of `dataset`; a shorter last batch is padded to it.
      strategy: the tf.distribute strategy; batches are split across its replicas and the
        replicas' results gathered back, in the dataset's order on one worker (across workers
        the pairs stay matched but follow the sharding's order). Default: the current strategy.
      num_examples: the progress bar's target, if known.

    Returns:
      (features float32 [N, FEATURE_DIM], labels int32 [N]).
    """
    strategy = strategy or tf.distribute.get_strategy()
    dataset = _padded(dataset, batch_size)
    if strategy.num_replicas_in_sync > 1:
        # Across workers, every batch must go to exactly one worker (the pipeline itself does not
        # shard); `gather` then collects every example once. Within one worker the order is kept.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        dataset = dataset.with_options(options)
    elif tf.config.list_logical_devices("GPU"):
        # Strategies prefetch to their devices themselves; without one, do it here.
        dataset = dataset.apply(tf.data.experimental.prefetch_to_device("/gpu:0"))
    distributed = strategy.experimental_distribute_dataset(dataset)
    step = _extraction_step(backbone, strategy, distributed.element_spec)
    progbar = keras.utils.Progbar(num_examples, unit_name="image",
                                  verbose=progress.progress_verbose())
    all_features, all_labels = [], []
    start = time.perf_counter()
    for index, batch in enumerate(distributed):
        features, labels = step(batch)
        all_features.append(features)
        all_labels.append(labels)
        # Counted, not read back from the device (the last batch may be short).
        done = (index + 1) * batch_size
        progbar.update(min(done, num_examples) if num_examples else done)
    features = _stacked(all_features, np.float32, (architecture.FEATURE_DIM,))
    labels = _stacked(all_labels, np.int32, ())
    seconds = time.perf_counter() - start
    logging.info("Extracted %d feature vectors in %.1f s (%.1f images/s).",
                 len(labels), seconds, len(labels) / max(seconds, 1e-9))
    return features, labels


def _stacked(batches: list, dtype, shape: tuple) -> np.ndarray:
    """The batches' rows in one array, each batch released once copied: a concatenation would
    hold the split's largest array twice at the end of extraction. Aligned, so that the head's
    fit reads it in place (shared_arrays)."""
    out = shared_arrays.empty((sum(int(b.shape[0]) for b in batches), *shape), dtype)
    row = 0
    for index, batch in enumerate(batches):
        rows = int(batch.shape[0])
        out[row:row + rows] = batch.numpy()
        batches[index] = None
        row += rows
    return out
