"""Shuffle orders derived from (seed, epoch): a resumed fit draws each epoch's order afresh."""

import keras
import numpy as np
import tensorflow as tf


class EpochOrder(keras.callbacks.Callback):
    """The epoch a training dataset shuffles for, set by Keras's fit as each epoch begins.

    tf.data's `reshuffle_each_iteration` draws epoch k's order from how many iterators the
    dataset made before, which a fit resumed at epoch k has not made. A dataset built by
    `shuffled_batches` reads this epoch when an iterator starts, so epoch k's order is the same
    whether the fit ran from epoch 0 or resumed at k.
    """

    def __init__(self):
        super().__init__()
        with tf.init_scope():
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="shuffle_epoch")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)


def epoch_permutation(count: int, *, seed: int, epoch) -> tf.Tensor:
    """The order of `count` examples in `epoch` (an int or an int64 tensor): a full shuffle drawn
    from (seed, epoch) alone."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(count), seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]))


def shuffled_batches(features: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                     order: EpochOrder) -> tf.data.Dataset:
    """Whole batches of in-memory examples in a full shuffle drawn from (seed, order's epoch).

    The last partial batch is dropped; the cardinality is known (Keras counts the steps).
    """
    count = len(labels)
    features, labels = np.asarray(features), np.asarray(labels)

    def gathered(index):
        # The arrays stay where they are: a constant would copy the split's features whole, and
        # again into the dataset's graph (three more copies of the run's largest array).
        batch = tf.numpy_function(lambda i: (features[i], labels[i]), [index],
                                  [tf.as_dtype(features.dtype), tf.as_dtype(labels.dtype)],
                                  stateful=False)
        batch[0].set_shape([batch_size, *features.shape[1:]])
        batch[1].set_shape([batch_size, *labels.shape[1:]])
        return tuple(batch)

    def one_epoch(_):
        return tf.data.Dataset.from_tensor_slices(
            epoch_permutation(count, seed=seed, epoch=order.epoch.value()))

    steps = count // batch_size
    return (tf.data.Dataset.range(1).flat_map(one_epoch)
            .batch(batch_size, drop_remainder=True)
            .map(gathered)
            .apply(tf.data.experimental.assert_cardinality(steps)))


def shuffled(dataset: tf.data.Dataset, *, buffer: int, seed: int,
             order: EpochOrder) -> tf.data.Dataset:
    """`dataset` shuffled within `buffer` examples, in an order drawn from (seed, order's epoch).

    `dataset` (a cache included) is shared by every epoch; only its order is drawn anew.
    """
    def one_epoch(_):
        # This traced function's graph: the order is (seed, epoch)'s alone. (With the global seed
        # left in, tf.data compares a tensor seed with 0 in Python, which fails in a graph.)
        tf.compat.v1.get_default_graph().seed = None
        epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + order.epoch.value()
        return dataset.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)

    return tf.data.Dataset.range(1).flat_map(one_epoch)
