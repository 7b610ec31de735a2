"""The step counts of one fit: per epoch (smoke-run cap included), over the schedule, per call."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """How many optimizer steps one fit takes, computed once by the caller and passed down.

    Attributes:
      steps_per_epoch: optimizer steps in one epoch: whole global batches (the last partial batch
        is dropped), at most `max_steps_per_epoch`.
      decay_steps: the steps the learning-rate schedule spans: steps_per_epoch times the fit's
        epochs.
      steps_per_execution: optimizer steps per call into the compiled graph (Keras's
        `steps_per_execution`): the same steps in the same order, so the same weights.
      max_steps_per_epoch: a smoke run's cap on the batches of every epoch (training and
        validation), or None for whole splits.
    """

    steps_per_epoch: int
    decay_steps: int
    steps_per_execution: int = 1
    max_steps_per_epoch: int | None = None

    def fit_steps(self) -> dict:
        """The arguments that make Keras's `fit` honour the cap: none when there is no cap.

        Keras continues one iterator across epochs when `steps_per_epoch` is given, so it is given
        only for a capped (smoke) run and the whole-split fit keeps Keras's per-epoch iteration.
        """
        if self.max_steps_per_epoch is None:
            return {}
        return {"steps_per_epoch": self.max_steps_per_epoch,
                "validation_steps": self.max_steps_per_epoch}


def plan_fit(*, num_examples: int, batch_size: int, epochs: int, replicas: int,
             steps_per_execution: int = 1, max_steps_per_epoch: int = 0) -> TrainingPlan:
    """The plan of a fit of `epochs` epochs over `num_examples` examples in global batches.

    Args:
      num_examples: the training split's examples.
      batch_size: the global batch.
      epochs: the epochs this fit runs (its end minus its initial epoch): the schedule spans them.
      replicas: the strategy's replicas in sync.
      steps_per_execution: the steps per graph call wanted on one replica.
      max_steps_per_epoch: > 0 caps the batches of every epoch (smoke runs); 0 = whole splits.

    Raises:
      ValueError: a parameter out of range, named with its value.
    """
    for name, value in (("num_examples", num_examples), ("epochs", epochs),
                        ("replicas", replicas), ("steps_per_execution", steps_per_execution)):
        if value < 0 or (value == 0 and name != "num_examples"):
            raise ValueError(f"{name}={value} must be positive")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    if max_steps_per_epoch < 0:
        raise ValueError(f"max_steps_per_epoch={max_steps_per_epoch} must be 0 (no cap) or more")
    steps = num_examples // batch_size
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    # Rule: under several replicas, one step per call. Keras 3.15's multi-step loop fails there
    # ("You must feed a value for placeholder tensor ... while/cond").
    per_call = steps_per_execution if replicas == 1 else 1
    return TrainingPlan(steps_per_epoch=steps, decay_steps=steps * epochs,
                        steps_per_execution=per_call,
                        max_steps_per_epoch=max_steps_per_epoch or None)
