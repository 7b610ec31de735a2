"""Fits a head on feature arrays: the one fit behind training's fast path and every tuning trial."""

import keras
import numpy as np
import tensorflow as tf

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import epoch_order
from mri_tfdata.model import architecture, array_fit, optimization, training_plan
from mri_tfdata.model.training_plan import TrainingPlan

# A head's step on a batch of features is as short as Keras's own per-step overhead, so a fit on
# one replica runs a whole epoch per graph call on the arrays (array_fit); under several replicas
# Keras's fit runs a dataset of the same batches in the same orders (epoch_order), one step per
# call (training_plan.plan_fit).


def make_feature_dataset(features: np.ndarray, labels: np.ndarray, *, batch_size: int,
                         training: bool, seed: int | None = None,
                         order: epoch_order.EpochOrder | None = None) -> tf.data.Dataset:
    """Batches features like `input_pipeline` batches images.

    Args:
      features: float32 [N, FEATURE_DIM].
      labels: int [N].
      batch_size: the global batch (Keras splits it across the strategy's replicas).
      training: shuffle all examples anew each epoch and drop the last partial batch, as the image
        pipeline does; otherwise keep the fixed order and every example.
      seed: the shuffle seed.
      order: with a seed, the fit's EpochOrder: each epoch's order is drawn from (seed, epoch)
        (epoch_order), so a fit resumed at any epoch continues with the same orders.

    Returns:
      A tf.data.Dataset of (float32 [B, FEATURE_DIM], int32 [B]).
    """
    # No copy of float32 features: a split's features are the run's largest array.
    features, labels = np.asarray(features, np.float32), np.asarray(labels, np.int32)
    if training and seed is not None and order is not None:
        ds = epoch_order.shuffled_batches(features, labels, batch_size=batch_size, seed=seed,
                                          order=order)
        return _with_options(ds)
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if training:
        # The split's features are in memory already, so the shuffle is a full one.
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return _with_options(ds.batch(batch_size, drop_remainder=training))


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    # In-memory data has no files to shard by; say so instead of letting AUTO warn and fall back.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def fit_head(head: keras.Model, features: np.ndarray, labels: np.ndarray, *,
             validation: tuple[np.ndarray, np.ndarray] | None, learning_rate: float, epochs: int,
             batch_size: int, schedule: str = "constant", label_smoothing: float = 0.0,
             weight_decay: float = 0.0, seed: int | None = None, callbacks=(), strategy=None,
             initial_epoch: int = 0, plan: TrainingPlan | None = None,
             verbose="auto") -> keras.callbacks.History:
    """Standardises, compiles and fits a head on features, as training compiles the classifier.

    The head's Normalization layer (if any) is fitted to all of `features`. A classifier
    assembled with `architecture.build_classifier(backbone, head)` shares the head's layers, so after
    this fit it is the trained full model (raw uint8 images in).

    Args:
      head: `architecture.build_head(...)`, built in `strategy`'s scope.
      features: training features, float32 [N, FEATURE_DIM].
      labels: training labels, int [N].
      validation: (features, labels) validated on after every epoch, or None.
      learning_rate: the optimizer's (initial) learning rate (`optimization.compile_model`).
      epochs: the epoch to stop at (absolute, as in Keras's fit).
      batch_size: the global batch.
      schedule: the learning-rate schedule (`optimization.SCHEDULES`), spanning the steps of epochs
        `initial_epoch` to `epochs`.
      label_smoothing: the loss's label smoothing.
      weight_decay: AdamW's weight decay; 0 = Adam.
      seed: the shuffle seed.
      callbacks: Keras callbacks for `fit`; they see the head.
      strategy: the tf.distribute strategy (default: the current one).
      initial_epoch: the epoch to start from (Hyperband continues earlier trials).
      plan: the fit's step counts (schedule length, steps per call, a smoke run's cap), computed
        by the caller; default `head_plan(...)` of this fit, uncapped.
      verbose: passed to `fit`.

    Returns:
      The fit's History.

    Raises:
      UserError: the training split is smaller than one batch (the last partial batch of every
        epoch is dropped, as in the image pipeline, so the head would never be trained).
    """
    if len(labels) < batch_size:
        raise UserError(
            f"batch_size={batch_size} is larger than the {len(labels)} training examples, so the "
            "head would never be trained (the last partial batch of every epoch is dropped).")
    strategy = strategy or tf.distribute.get_strategy()
    if plan is None:
        plan = head_plan(num_examples=len(labels), batch_size=batch_size,
                         epochs=epochs - initial_epoch, strategy=strategy)
    architecture.adapt_standardization(head, features)
    with strategy.scope():
        optimization.compile_model(head, learning_rate=learning_rate, schedule=schedule,
                                   decay_steps=plan.decay_steps, label_smoothing=label_smoothing,
                                   weight_decay=weight_decay,
                                   steps_per_execution=plan.steps_per_execution)
        optimization.fuse_adam_update(head.optimizer)
    if strategy.num_replicas_in_sync == 1:
        # The dtypes make_feature_dataset feeds the other path (no copy of float32 features).
        features, labels = np.asarray(features, np.float32), np.asarray(labels, np.int32)
        if validation is not None:
            validation = (np.asarray(validation[0], np.float32),
                          np.asarray(validation[1], np.int32))
        return array_fit.fit_arrays(head, features, labels, validation=validation,
                                    batch_size=batch_size, epochs=epochs,
                                    initial_epoch=initial_epoch,
                                    steps_per_epoch=plan.steps_per_epoch,
                                    validation_steps=plan.max_steps_per_epoch, seed=seed,
                                    callbacks=callbacks, verbose=verbose)
    order = epoch_order.EpochOrder()
    train_ds = make_feature_dataset(features, labels, batch_size=batch_size, training=True,
                                    seed=seed, order=order)
    val_ds = None
    if validation is not None:
        val_ds = make_feature_dataset(*validation, batch_size=batch_size, training=False)
    # shuffle=False: the dataset reshuffles itself every epoch; Keras's flag is for arrays.
    return head.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                    callbacks=[order, *callbacks], shuffle=False, verbose=verbose,
                    **plan.fit_steps())


def head_plan(*, num_examples: int, batch_size: int, epochs: int, strategy,
              max_steps_per_epoch: int = 0) -> TrainingPlan:
    """The plan of a head's fit on features: a whole epoch per call on one replica."""
    whole_epoch = num_examples // batch_size if batch_size > 0 else 1
    if max_steps_per_epoch > 0:
        whole_epoch = min(whole_epoch, max_steps_per_epoch)
    return training_plan.plan_fit(num_examples=num_examples, batch_size=batch_size, epochs=epochs,
                                  replicas=strategy.num_replicas_in_sync,
                                  steps_per_execution=max(1, whole_epoch),
                                  max_steps_per_epoch=max_steps_per_epoch)
