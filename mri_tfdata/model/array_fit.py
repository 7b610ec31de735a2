"""Keras's fit of a compiled model on in-memory arrays, one graph call per epoch (one replica)."""

import keras
import numpy as np
import tensorflow as tf

from mri_tfdata.data import epoch_order
from mri_tfdata.model import shared_arrays

# Rule: the model's own train_step and test_step do each step, so the loss, metrics, optimizer
# and logs are Keras's; only the loop moves into the graph. A step on a batch of features is as
# short as Keras's per-step overhead (its iterator, its loop, a host call per batch to gather it),
# so an epoch's batches are gathered from the arrays inside one graph call. Epoch-level callbacks
# run as under Keras's fit; batch-level ones see one batch per epoch.


def fit_arrays(model: keras.Model, features: np.ndarray, labels: np.ndarray, *,
               validation: tuple[np.ndarray, np.ndarray] | None, batch_size: int, epochs: int,
               initial_epoch: int = 0, steps_per_epoch: int, validation_steps: int | None = None,
               seed: int | None = None, callbacks=(), verbose="auto") -> keras.callbacks.History:
    """Fits a compiled model as `model.fit` would on the shuffled whole batches of the arrays.

    Epoch k trains on the first `steps_per_epoch` whole batches of
    `epoch_order.epoch_permutation(len(labels), seed=seed, epoch=k)`: the order a fit resumed at
    epoch k continues with. Validation runs every example in order, in batches of `batch_size` (at
    most `validation_steps` of them), after every epoch, as Keras's fit validates.

    Args:
      model: compiled, on one replica.
      features: float32 [N, ...].
      labels: int [N].
      validation: (features, labels), or None.
      batch_size: examples per step.
      epochs: the epoch to stop at (absolute, as in Keras's fit).
      initial_epoch: the epoch to start from.
      steps_per_epoch: optimizer steps per epoch, at most len(labels) // batch_size.
      validation_steps: a cap on the validation batches, or None for all.
      seed: the orders' seed; None draws one from NumPy's global generator.
      callbacks: Keras callbacks.
      verbose: as in Keras's fit.

    Returns:
      The fit's History (`model.history`).

    Raises:
      ValueError: steps_per_epoch out of range, named with its value.
    """
    count = len(labels)
    if not 1 <= steps_per_epoch <= count // batch_size:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be between 1 and "
                         f"{count // batch_size} (whole batches of {batch_size} in {count})")
    if seed is None:
        seed = int(np.random.randint(2**31 - 1))
    # Arguments, not captured constants: a constant would copy the split's features into the
    # graph. An aligned array (the extraction's) is read in place, not copied.
    arrays = (shared_arrays.as_tensor(features), tf.convert_to_tensor(labels))
    train_epoch = _train_epoch(model, batch_size=batch_size, steps=steps_per_epoch)
    evaluate = None
    if validation is not None:
        val_arrays = (shared_arrays.as_tensor(validation[0]),
                      tf.convert_to_tensor(validation[1]))
        val_batches = -(-len(validation[1]) // batch_size)
        evaluate = _evaluate(model, batch_size=batch_size,
                             steps=min(val_batches, validation_steps or val_batches))
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=verbose != 0, verbose=verbose,
        epochs=epochs, steps=steps_per_epoch, model=model)
    model.stop_training = False
    callback_list.on_train_begin()
    # A callback restoring a backup sets where the fit resumes, as under Keras's fit.
    initial_epoch = getattr(model, "_initial_epoch", None) or initial_epoch
    logs = None
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        callback_list.on_train_batch_begin(0)
        train_epoch(*arrays, epoch_order.epoch_permutation(count, seed=seed, epoch=epoch))
        epoch_logs = dict(model.get_metrics_result())
        callback_list.on_train_batch_end(steps_per_epoch - 1, epoch_logs)
        if evaluate is not None:
            model.reset_metrics()
            evaluate(*val_arrays)
            epoch_logs.update({f"val_{name}": value
                               for name, value in model.get_metrics_result().items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        logs = epoch_logs
        if model.stop_training:
            break
    if epochs > initial_epoch:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=logs)
    return model.history


def _train_epoch(model: keras.Model, *, batch_size: int, steps: int):
    @tf.function
    def train_epoch(features, labels, permutation):
        for step in tf.range(steps):
            batch = permutation[step * batch_size:(step + 1) * batch_size]
            model.train_step((tf.gather(features, batch), tf.gather(labels, batch)))
    return train_epoch


def _evaluate(model: keras.Model, *, batch_size: int, steps: int):
    @tf.function
    def evaluate(features, labels):
        for step in tf.range(steps):
            start = step * batch_size
            model.test_step((features[start:start + batch_size], labels[start:start + batch_size]))
    return evaluate
