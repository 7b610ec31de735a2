"""TrainConfig: how a run trains; TensorFlow-free, so train.py takes its flag defaults from it."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: splits, optimisation, input pipeline; all batch sizes are global."""

    train_split: str = "train[:90%]"
    validation_split: str = "train[90%:]"  # "" = no validation
    test_split: str = "test"  # "" = no final evaluation
    batch_size: int = 32
    # The head's recipe: the most accurate of the stable recipes measured on the real data, over
    # 5 seeds each (benchmarks/README.md, "Head recipes").
    epochs: int = 10
    learning_rate: float = 3e-4
    schedule: str = "cosine"  # optimization.SCHEDULES, over each phase's steps
    label_smoothing: float = 0.1
    weight_decay: float = 0.0  # AdamW's decoupled weight decay; 0 = Adam
    fine_tune_blocks: int = 0  # top ResNet50 blocks unfrozen in a second phase (0 = none)
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5
    cache: str = "memory"  # none | memory | directory
    feature_cache: str = "auto"  # auto | off | folder of cached backbone features (fast path)
    shuffle_buffer: int = 2048
    seed: int = 0
    max_steps_per_epoch: int = 0  # > 0 caps every epoch (smoke runs); 0 = whole splits
    allow_missing_classes: bool = False  # train even when a class has no training example
    # Prediction sets calibrated on the validation split: their miscoverage levels (the first is
    # the one predict and the export give) and the bootstrap's resamples for metric intervals.
    conformal_alphas: tuple[float, ...] = (0.1, 0.05)
    bootstrap_resamples: int = 1000
