"""The training recipe's optimizer: Adam or AdamW, the learning-rate schedule, the loss and metrics."""

import types

import keras
import tensorflow as tf

from mri_tfdata.core.choices import SCHEDULES
from mri_tfdata.model import losses



def learning_rate_schedule(learning_rate: float, *, schedule: str, decay_steps: int):
    """The optimizer's learning rate: a float (constant) or a Keras schedule over `decay_steps`.

    The schedule counts the optimizer's iterations, which the epoch backups save with the weights,
    so a resumed fit continues the decay where the killed one stopped.

    Raises:
      ValueError: an unknown schedule, or a decaying one without steps.
    """
    if schedule == "constant":
        return float(learning_rate)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if decay_steps < 1:
        raise ValueError(f"the {schedule} schedule needs decay_steps >= 1, got {decay_steps}")
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=decay_steps,
                                                      alpha=0.0)
    boundary = max(1, (2 * decay_steps) // 3)
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [boundary], [float(learning_rate), float(learning_rate) * 0.1])


def compile_model(model: keras.Model, *, learning_rate: float, schedule: str = "constant",
                  decay_steps: int = 0, label_smoothing: float = 0.0,
                  weight_decay: float = 0.0, steps_per_execution: int = 1) -> None:
    """Compiles with Adam (AdamW with weight decay), cross-entropy and accuracy: the one compile of
    training (fast path and end to end), every tuning trial and every selection fold.

    Metrics: accuracy and `cross_entropy`, the plain cross-entropy against the true labels. With
    label smoothing the loss is the smoothed one, whose minimum depends on the smoothing, so
    heads with different smoothing are never compared by `loss`; the search compares them by the
    cross-entropy after temperature scaling (mri_tfdata.evaluation.calibration), since smoothing also
    raises the plain `cross_entropy` by making a head less confident.

    Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer here. Call inside the
    strategy's scope, and again after unfreeze_top_blocks.

    Args:
      model: the head or the classifier (float32 probabilities out).
      learning_rate: the (initial) learning rate.
      schedule: one of SCHEDULES.
      decay_steps: the optimizer steps the schedule spans (the fit's steps); unused by constant.
      label_smoothing: s in [0, 1) (losses.SparseCrossEntropy).
      weight_decay: AdamW's decoupled weight decay; 0 = Adam.
      steps_per_execution: optimizer steps per call into the compiled graph (Keras's
        `steps_per_execution`), used as given; the caller, who knows the strategy, decides
        (`training_plan.plan_fit`). 1 is right under every strategy.
    """
    rate = learning_rate_schedule(learning_rate, schedule=schedule, decay_steps=decay_steps)
    optimizer = (keras.optimizers.AdamW(learning_rate=rate, weight_decay=weight_decay)
                 if weight_decay else keras.optimizers.Adam(learning_rate=rate))
    model.compile(
        optimizer=optimizer,
        loss=losses.SparseCrossEntropy(label_smoothing=label_smoothing),
        metrics=["accuracy", keras.metrics.SparseCategoricalCrossentropy(name="cross_entropy")],
        steps_per_execution=steps_per_execution,
    )



def _adam_steps(variables, momentums, velocities, gradients, alpha, one_minus_beta_1,
                one_minus_beta_2, epsilon):
    """Keras's Adam update of every variable, term for term (keras.optimizers.Adam.update_step)."""
    for variable, m, v, gradient in zip(variables, momentums, velocities, gradients):
        m.assign_add((gradient - m) * one_minus_beta_1)
        v.assign_add((tf.square(gradient) - v) * one_minus_beta_2)
        variable.assign_sub((m * alpha) / (tf.sqrt(v) + epsilon))


def _is_distributed(variable) -> bool:
    return (isinstance(variable, tf.distribute.DistributedValues)
            or hasattr(variable, "_distributed_container"))


def fuse_adam_update(optimizer) -> None:
    """Makes a compiled Adam or AdamW update all variables in one fused call (XLA).

    The call computes Keras's own update term for term, with the same float32 constants, so the
    weights are Keras's to the last bit or two; Keras runs each term of each variable as a separate
    full-size operation, which is most of the time of a small head's step. AdamW's decay stays
    Keras's own step before it. The optimizer's class, config and variables are unchanged (backups
    and saved models are the same); variables under a multi-device strategy, of several dtypes, and
    AMSGrad keep Keras's update.

    Args:
      optimizer: `model.optimizer` after `compile_model` (a LossScaleOptimizer's inner one is used).
    """
    adam = getattr(optimizer, "inner_optimizer", optimizer)
    if not isinstance(adam, keras.optimizers.Adam) or adam.amsgrad:
        return
    keras_update = type(adam)._backend_update_step
    # One function per optimizer: a traced function holds on to the variables it was traced with.
    fused_steps = tf.function(_adam_steps, jit_compile=True, autograph=False)

    def backend_update_step(self, gradients, trainable_variables, learning_rate):
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        slots = [self._get_variable_index(v) for v in trainable_variables]
        momentums = [self._momentums[i].value for i in slots]
        velocities = [self._velocities[i].value for i in slots]
        dtypes = {v.dtype for v in variables}
        if len(dtypes) != 1 or any(map(_is_distributed, [*variables, *momentums, *velocities])):
            return keras_update(self, gradients, trainable_variables, learning_rate)
        dtype = dtypes.pop()
        # Identity on one replica, as in Keras's own update.
        gradients = [g for g, _ in self._all_reduce_sum_gradients(zip(gradients, variables))]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), step)
        alpha = tf.cast(learning_rate, dtype) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        fused_steps(variables, momentums, velocities, [tf.cast(g, dtype) for g in gradients],
                    alpha, tf.cast(1 - self.beta_1, dtype), tf.cast(1 - self.beta_2, dtype),
                    tf.cast(self.epsilon, dtype))
        return None

    adam._backend_update_step = types.MethodType(backend_update_step, adam)
