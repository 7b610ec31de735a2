"""Trains the classifier: `mri-train --flagfile=configs/demo.flags` (or python -m mri_tfdata.train).

Outputs in --workdir: model.keras (loads with plain Keras; `mri-export` turns it into a SavedModel
for TF Serving), history.json/.csv, metrics.json, loss.png, accuracy.png, confusion_matrix.png,
logs/ (TensorBoard), flags.txt. Rerunning the same command after a kill resumes from the last
finished epoch; a finished workdir is refused unless --overwrite is given.
"""

import sys

from mri_tfdata.cli import console

console.setup_command(sys.argv)  # Before TensorFlow loads: a command starts quietly.

from absl import flags, logging  # noqa: E402

from mri_tfdata.cli import runner, shared_flags  # noqa: E402
from mri_tfdata.cli.runner import require  # noqa: E402
from mri_tfdata.core.choices import SCHEDULES  # noqa: E402
from mri_tfdata.training.config import TrainConfig  # noqa: E402

shared_flags.define_data_flags()
shared_flags.define_model_flags()
shared_flags.define_evaluation_flags()
flags.DEFINE_string("train_split", "train[:90%]", "Split trained on (TFDS split syntax).")
flags.DEFINE_string("validation_split", "train[90%:]",
                    "Split validated on after each epoch; empty for none. The reference recipe "
                    "validated on 'test'; carving it from train keeps the test split unseen.")
flags.DEFINE_string("test_split", "test",
                    "Split of the final evaluation (metrics.json); empty for none.")
# The defaults are TrainConfig's: the best stable head recipe measured (benchmarks/README.md).
_DEFAULTS = TrainConfig()
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Epochs of head training on the frozen backbone.")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate,
                   "Initial learning rate of the head phase. Adam, or AdamW with "
                   "--weight_decay.")
flags.DEFINE_enum("lr_schedule", _DEFAULTS.schedule, SCHEDULES,
                  "Learning-rate schedule of each phase. Over the phase's steps: constant; cosine (decays to 0 by the "
                  "phase's last step); step (a tenth of the rate after two thirds of the steps).")
flags.DEFINE_float("label_smoothing", _DEFAULTS.label_smoothing,
                   "Label smoothing of the training loss, in [0, 1). The target of the true class "
                   "is 1 - s + s/4, of the others s/4.")
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay,
                   "AdamW's decoupled weight decay; 0 = Adam.")
flags.DEFINE_integer("fine_tune_blocks", 0,
                     "ResNet50 blocks (of 16, from the top) unfrozen in a second phase; 0 = none.")
flags.DEFINE_integer("fine_tune_epochs", 0, "Epochs of the fine-tuning phase.")
flags.DEFINE_float("fine_tune_learning_rate", 1e-5, "Adam learning rate of the fine-tuning phase.")
shared_flags.define_path("workdir", None, "Output directory (created if missing).")
flags.DEFINE_bool("overwrite", False,
                  "Replace a finished or differently configured run in --workdir.")
flags.DEFINE_integer("max_steps_per_epoch", 0,
                     "Cap on batches per epoch, for smoke runs; 0 = whole splits.")
flags.DEFINE_list("conformal_alphas", [str(a) for a in _DEFAULTS.conformal_alphas],
                  "Miscoverage levels of the prediction sets (0.1: 90% coverage). They are "
                  "calibrated on the validation split (0.1 = sets holding the true class 90% of "
                  "the time); the first is the one mri-predict and the SavedModel give; empty "
                  "for none.")
flags.DEFINE_bool("allow_missing_classes", False,
                  "Train even when a class has no training example. Refused by default: the "
                  "model could never predict it.")

FLAGS = flags.FLAGS


def _conformal_alphas() -> tuple[float, ...]:
    text = ",".join(FLAGS.conformal_alphas)
    try:
        alphas = tuple(float(a) for a in FLAGS.conformal_alphas)
    except ValueError:
        alphas = (-1.0,)
    require(all(0.0 < a < 1.0 for a in alphas) and len(set(alphas)) == len(alphas),
            f"--conformal_alphas={text} must be distinct numbers strictly between 0 and 1, e.g. "
            "--conformal_alphas=0.1,0.05 for 90% and 95% prediction sets (empty for none).")
    return alphas


def _train_config() -> TrainConfig:
    require(bool(FLAGS.workdir), "--workdir is required: the directory for the model, metrics and "
            "plots (created if missing), e.g. --workdir=runs/demo.")
    require(bool(FLAGS.train_split.strip()), "--train_split must name a split, e.g. train[:90%].")
    require(FLAGS.epochs >= 1, f"--epochs={FLAGS.epochs} must be at least 1.")
    require(FLAGS.learning_rate > 0, f"--learning_rate={FLAGS.learning_rate} must be positive.")
    require(0.0 <= FLAGS.label_smoothing < 1.0,
            f"--label_smoothing={FLAGS.label_smoothing} must be in [0, 1).")
    require(FLAGS.weight_decay >= 0, f"--weight_decay={FLAGS.weight_decay} must be 0 or more.")
    require(FLAGS.fine_tune_learning_rate > 0, "--fine_tune_learning_rate must be positive.")
    require(0 <= FLAGS.fine_tune_blocks <= 16,
            f"--fine_tune_blocks={FLAGS.fine_tune_blocks} must be between 0 and 16 (ResNet50's "
            "blocks).")
    require(FLAGS.fine_tune_epochs >= 0, "--fine_tune_epochs must be 0 or more.")
    require(bool(FLAGS.fine_tune_blocks) == bool(FLAGS.fine_tune_epochs),
            "--fine_tune_blocks and --fine_tune_epochs go together: set both above 0 to fine-tune, "
            "or leave both at 0.")
    require(bool(FLAGS.feature_cache.strip()), "--feature_cache must be auto, off or a folder.")
    require(FLAGS.max_steps_per_epoch >= 0, "--max_steps_per_epoch must be 0 (no cap) or more.")
    return TrainConfig(
        conformal_alphas=_conformal_alphas(),
        bootstrap_resamples=shared_flags.bootstrap_resamples_from_flags(),
        train_split=FLAGS.train_split, validation_split=FLAGS.validation_split,
        test_split=FLAGS.test_split, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
        learning_rate=FLAGS.learning_rate, schedule=FLAGS.lr_schedule,
        label_smoothing=FLAGS.label_smoothing, weight_decay=FLAGS.weight_decay,
        fine_tune_blocks=FLAGS.fine_tune_blocks,
        fine_tune_epochs=FLAGS.fine_tune_epochs,
        fine_tune_learning_rate=FLAGS.fine_tune_learning_rate, cache=FLAGS.cache,
        feature_cache=FLAGS.feature_cache,
        shuffle_buffer=FLAGS.shuffle_buffer, seed=FLAGS.seed,
        max_steps_per_epoch=FLAGS.max_steps_per_epoch,
        allow_missing_classes=FLAGS.allow_missing_classes)


def main(argv):
    require(len(argv) == 1, f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    data = shared_flags.data_spec_from_flags()
    model_spec = shared_flags.model_spec_from_flags()
    config = _train_config()
    # TensorFlow loads only once the flags are known to be valid.
    from mri_tfdata.runtime import distribute, precision
    from mri_tfdata.training import trainer

    # The strategy first (multi-worker must configure the runtime before any other TF work),
    # then the precision policy, before any layer is built.
    strategy = distribute.create_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    policy = precision.apply_precision(FLAGS.precision)
    logging.info("Strategy: %s.", distribute.describe_strategy(strategy))
    result = trainer.train(data=data, model_spec=model_spec, config=config,
                           workdir_path=FLAGS.workdir, strategy=strategy, precision_policy=policy,
                           overwrite=FLAGS.overwrite,
                           flags_text=shared_flags.flags_as_text([shared_flags, __name__]))
    if result.already_finished:
        print(result.already_finished)


def console_main():
    """The `mri-train` command."""
    runner.run(main)


if __name__ == "__main__":
    console_main()
