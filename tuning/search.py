"""Searches the head with KerasTuner: `mri-tune --flagfile=configs/tune.flags`.

Trials train the head on backbone features computed once and cached (mri_tfdata.model.features), so a
trial costs seconds on a CPU. The space is the head's shape and its training recipe (learning
rate, schedule, label smoothing, weight decay, epochs; tuning.hypermodel). The objective is the
cross-entropy after temperature scaling (val_calibrated_cross_entropy, lower is better;
mri_tfdata.evaluation.calibration) on a validation split carved from the training split, the measure the
final selection ranks by; unlike the plain cross-entropy it does not penalise the lower confidence
that label smoothing trains into a head. The test split is never read. Outputs
in --directory/--project_name: results.csv, objective.png, selection.csv, best.flags
(`python -m mri_tfdata.train --flagfile=.../best.flags` trains the chosen head), and KerasTuner's
own trial files; trials are numbered as KerasTuner's log numbers them ("Trial #1" = trial 1,
folder trial_00). The chosen head is not simply the trial with the best validation score, which
on a few hundred validation images is mostly noise: the best
--finalists trials and the default head are re-scored by k-fold cross-validation on the training
and validation splits together (tuning.selection; byte-identical images always in one fold), and
the best mean held-out calibrated cross-entropy wins.
Rerunning the same command resumes the search: finished trials are kept, an interrupted one starts
again, and fold scores already computed are reused. For distributed tuning (KERASTUNER_TUNER_ID,
KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT) see docs/scaling.md.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

from mri_tfdata.cli import console

console.setup_command(sys.argv)  # Before TensorFlow loads: a command starts quietly.

from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from mri_tfdata.cli import runner, shared_flags  # noqa: E402
from mri_tfdata.cli.runner import require  # noqa: E402
from mri_tfdata.core.errors import UserError  # noqa: E402
from tuning.choices import SELECTION_METRICS, TUNERS  # noqa: E402

if TYPE_CHECKING:
    from tuning import selection
    from tuning.search_data import SearchData

# The search's modules import TensorFlow and KerasTuner: the functions below import them when
# they run, so that --help and flag errors answer without loading them.

shared_flags.define_data_flags()
shared_flags.define_model_flags()
flags.DEFINE_enum("tuner", "bayesian", TUNERS, "KerasTuner algorithm.")
flags.DEFINE_integer("max_trials", 20, "Trials in all (random, bayesian); a resumed search runs "
                     "only the missing ones. Hyperband's budget is set by --epochs instead.")
flags.DEFINE_integer("executions_per_trial", 1, "Fits per trial, averaged (less noisy, slower).")
flags.DEFINE_integer("epochs", 10, "The default head's epochs; trials choose among half, once and "
                     "1.5 times it (hyperband: the most any trial gets).")
flags.DEFINE_list("batch_sizes", ["32"],
                  "Global batch sizes the search chooses from; one value = not tuned (batch 64 "
                  "tested no better than 32 on the real data).")
flags.DEFINE_string("train_split", "train[:85%]", "Split the trial heads are trained on.")
flags.DEFINE_string("validation_split", "train[85%:]",
                    "Split of the objective (val_calibrated_cross_entropy); carved from train, "
                    "never the test split.")
shared_flags.define_path("directory", "runs/tune", "Parent directory of search projects.")
flags.DEFINE_string("project_name", "head_search", "The search's folder in --directory.")
flags.DEFINE_integer("finalists", 3,
                     "Trials re-scored by cross-validation after the search. The best N "
                     "trials and the default head (--head_units, "
                     "--dropout, --batch_size, --epochs and train.py's default recipe) are "
                     "re-scored by --selection_folds-fold cross-validation on train and validation "
                     "together, and best.flags takes the best mean --selection_metric. 0: "
                     "best.flags takes the trial with the best val_calibrated_cross_entropy.")
flags.DEFINE_integer("selection_folds", 3, "Folds of the final selection's cross-validation.")
flags.DEFINE_enum("selection_metric", "loss", SELECTION_METRICS,
                  "What the final selection ranks by. On the held-out folds: cross-entropy after "
                  "temperature scaling (loss, lower is better; it uses every predicted "
                  "probability, so it separates heads that accuracy, counting only flipped "
                  "argmaxes, calls a tie, and the fitted temperature undoes the lower confidence "
                  "of label smoothing) or accuracy.")
flags.DEFINE_bool("overwrite", False, "Delete this project's trials and start afresh instead of "
                  "resuming.")

FLAGS = flags.FLAGS


def _split_names(split: str) -> list[str]:
    """Split names of a TFDS split string: 'train[:85%]+validation' -> ['train', 'validation']."""
    return [part.split("[")[0].strip() for part in split.split("+")]


def _validate_flags(model_spec) -> tuple[int, ...]:
    """Checks the search flags; returns the batch sizes to choose from."""
    for name in ("train_split", "validation_split"):
        value = getattr(FLAGS, name)
        require(bool(value.strip()), f"--{name} must name a split, e.g. train[:85%] / train[85%:].")
        require("test" not in _split_names(value),
                f"--{name}={value} reads the test split. The search must never see it: carve the "
                "validation split from train (--train_split=train[:85%] --validation_split="
                "train[85%:]) and keep test for the final evaluation of the best model.")
    require(FLAGS.validation_split != FLAGS.train_split,
            "--validation_split equals --train_split; carve disjoint parts of train, e.g. "
            "train[:85%] and train[85%:].")
    require(not model_spec.augment, "--augment is on, but trials train heads on cached features, "
            "which are only valid without augmentation; pass --noaugment.")
    require(FLAGS.max_trials >= 1, f"--max_trials={FLAGS.max_trials} must be at least 1.")
    require(FLAGS.executions_per_trial >= 1, "--executions_per_trial must be at least 1.")
    require(FLAGS.epochs >= 1, f"--epochs={FLAGS.epochs} must be at least 1.")
    require(FLAGS.finalists >= 0, f"--finalists={FLAGS.finalists} must be 0 (no final selection) "
            "or more.")
    require(FLAGS.selection_folds >= 2,
            f"--selection_folds={FLAGS.selection_folds} must be at least 2.")
    require(bool(FLAGS.directory) and bool(FLAGS.project_name),
            "--directory and --project_name must not be empty.")
    try:
        batch_sizes = tuple(sorted({int(b) for b in FLAGS.batch_sizes}))
    except ValueError:
        batch_sizes = ()
    require(bool(batch_sizes) and batch_sizes[0] >= 1,
            f"--batch_sizes={','.join(FLAGS.batch_sizes)} must be positive integers, e.g. "
            "16,32,64.")
    if FLAGS.tuner == "hyperband" and FLAGS["max_trials"].present:
        from tuning import tuners

        logging.warning("--max_trials is ignored by --tuner=hyperband: its number of trials "
                        "follows from --epochs (max_epochs) and the reduction factor %d.",
                        tuners.HYPERBAND_FACTOR)
    return batch_sizes


def _best_flag_lines(best: selection.Candidate, *, project_dir: Path) -> dict[str, str]:
    """train.py's flags for the chosen head: the search's data/model flags plus its values."""
    lines = {flag.name: shared_flags.serialize(flag)
             for flag in FLAGS.get_flags_for_module(shared_flags)}
    recipe = best.recipe
    values = {
        "head_units": ",".join(map(str, best.head_units)),
        "dropout": recipe["dropout"],
        "learning_rate": recipe["learning_rate"],
        "lr_schedule": recipe["lr_schedule"],
        "label_smoothing": recipe["label_smoothing"],
        "weight_decay": recipe["weight_decay"],
        "batch_size": best.batch_size,
        # Hyperband trains a trial for tuner/epochs in all (continuing an earlier trial's weights).
        "epochs": best.epochs,
        "train_split": FLAGS.train_split,
        "validation_split": FLAGS.validation_split,
        "test_split": "test",
        "workdir": str((project_dir / "best_model").resolve()),
    }
    lines.update({name: f"--{name}={value}" for name, value in values.items()})
    return lines


def _select(rows: list[dict], search_data: SearchData, *, model_spec, policy: str, strategy,
            project_dir: Path) -> tuple[selection.Candidate, list[selection.Candidate], str]:
    """Re-scores the best trials and the default head by cross-validation; returns the winner, the
    candidates and the reason best.flags gives for it."""
    from tuning import final_selection, hypermodel, selection
    from tuning.tuners import OBJECTIVE

    default = selection.default_candidate(
        units=model_spec.head_units, dropout=model_spec.dropout,
        learning_rate=hypermodel.DEFAULT_LEARNING_RATE, schedule=hypermodel.DEFAULT_SCHEDULE,
        label_smoothing=hypermodel.DEFAULT_LABEL_SMOOTHING,
        weight_decay=hypermodel.DEFAULT_WEIGHT_DECAY, batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs)
    candidates = selection.finalists(rows, OBJECTIVE, top=FLAGS.finalists, default=default,
                                     epochs=FLAGS.epochs)
    # Both splits are carved from train. Pooled, every example is held out once: several times
    # the validation split's examples, so less sampling noise.
    labels = search_data.pooled().labels
    folds = FLAGS.selection_folds
    smallest_class = int(np.bincount(labels, minlength=len(search_data.sources[0].class_names)).min())
    require(smallest_class >= folds,
            f"The final selection's {folds}-fold cross-validation needs at least {folds} examples "
            f"of every class in the training and validation splits; the rarest class has "
            f"{smallest_class}. Lower --selection_folds, or pass --finalists=0.")
    fold_train_size = len(labels) - -(-len(labels) // folds)
    largest_batch = max(c.batch_size for c in candidates)
    require(fold_train_size >= largest_batch,
            f"The final selection trains on {fold_train_size} examples per fold, fewer than the "
            f"batch of {largest_batch}; lower --batch_size/--batch_sizes or --selection_folds.")
    winner, reason = final_selection.run(
        candidates, search_data, folds=folds, seed=FLAGS.seed, metric=FLAGS.selection_metric,
        model_spec=model_spec, policy=policy, strategy=strategy, project_dir=project_dir,
        splits=f"{FLAGS.train_split} + {FLAGS.validation_split}")
    return winner, candidates, reason


def _write_outputs(tuner, project_dir: Path, *, load_data, model_spec, policy: str,
                   strategy) -> None:
    """Writes results.csv, objective.png and best.flags (after the final selection, which calls
    `load_data()` for the training and validation features)."""
    from tuning import results, selection
    from tuning.tuners import OBJECTIVE

    rows = results.trial_rows(tuner.oracle, OBJECTIVE)
    results.write_csv(rows, project_dir / results.RESULTS_CSV)
    print(results.summary(rows, OBJECTIVE), flush=True)
    best = results.best_row(rows, OBJECTIVE)
    if best is None:
        raise UserError(f"No trial of {project_dir} completed, so there is no best model; see the "
                        "trial messages in its trial_*/trial.json files.")
    if FLAGS.finalists:
        chosen, candidates, reason = _select(rows, load_data(), model_spec=model_spec,
                                             policy=policy, strategy=strategy,
                                             project_dir=project_dir)
    else:
        chosen = selection.trial_candidate(best, epochs=FLAGS.epochs)
        candidates = [chosen]
        reason = f"The trial with the best {OBJECTIVE.name}: {best[OBJECTIVE.name]:.4f}."
    results.plot(rows, OBJECTIVE, project_dir / results.PLOT_PNG,
                 finalists=tuple(c.trial for c in candidates if c.trial is not None),
                 chosen=chosen.trial)
    path = project_dir / results.BEST_FLAGS
    results.write_best_flags(_best_flag_lines(chosen, project_dir=project_dir), path, header=(
        f"The head chosen by the search in {project_dir} ({len(rows)} trials).\n{reason}\n"
        f"Command: python -m mri_tfdata.train --flagfile={path}"))
    logging.info("Wrote %s, %s and %s in %s.", results.RESULTS_CSV, results.PLOT_PNG,
                 results.BEST_FLAGS, project_dir)
    print(f"Train the best head: python -m mri_tfdata.train --flagfile={path}", flush=True)


def _check_replicas(replicas: int, batch_sizes: tuple[int, ...]) -> None:
    require(all(b % replicas == 0 for b in batch_sizes),
            f"--batch_sizes={','.join(map(str, batch_sizes))} must all be multiples of the "
            f"{replicas} replicas.")
    require(FLAGS.finalists == 0 or FLAGS.batch_size % replicas == 0,
            f"--batch_size={FLAGS.batch_size}, the default head's batch in the final selection, "
            f"must be a multiple of the {replicas} replicas.")


def _search(data, model_spec, batch_sizes: tuple[int, ...]) -> None:
    """Runs (or resumes) the search and, unless this is a worker, writes its outputs."""
    from mri_tfdata.runtime import distribute, precision, progress
    from tuning import hypermodel, project, search_data, tuners
    from tuning.hypermodel import HeadHyperModel

    start = time.perf_counter()
    role = project.distributed_role()
    # As in training: the strategy first, then the precision policy, before any layer is built.
    strategy = distribute.create_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    policy = precision.apply_precision(FLAGS.precision)
    _check_replicas(strategy.num_replicas_in_sync, batch_sizes)
    logging.info("Strategy: %s; search role: %s.", distribute.describe_strategy(strategy), role)
    project_dir = Path(FLAGS.directory) / FLAGS.project_name
    settings = project.search_settings(
        data=data, model_spec=model_spec, policy=policy, tuner=FLAGS.tuner, epochs=FLAGS.epochs,
        batch_sizes=batch_sizes, train_split=FLAGS.train_split,
        validation_split=FLAGS.validation_split, seed=FLAGS.seed,
        executions_per_trial=FLAGS.executions_per_trial)
    # Only the chief (or a lone search) may delete a project; a worker never does.
    overwrite = FLAGS.overwrite and role != "worker"
    if not overwrite:
        project.check_settings(project_dir, settings)
        project.check_tuner_files(project_dir)

    @functools.cache  # Loaded once, whether for the trials, the final selection or both.
    def load_data() -> SearchData:
        return search_data.load(
            data, model_spec, strategy=strategy, seed=FLAGS.seed,
            feature_cache_setting=FLAGS.feature_cache, train_split=FLAGS.train_split,
            validation_split=FLAGS.validation_split, largest_batch=batch_sizes[-1])

    # The chief only runs the oracle: it fits no trial, so it needs features only for the final
    # selection, after the search (from the cache the workers wrote, if they share it).
    trial_data = None if role == "chief" else load_data()
    # The head's classes are those of the training split (its class folders, or --classes).
    class_names = (trial_data.sources[0].class_names if trial_data
                   else data.open(FLAGS.train_split).class_names)
    head_model = HeadHyperModel(
        train=trial_data and trial_data.train, validation=trial_data and trial_data.validation,
        num_classes=len(class_names), activation=model_spec.head_activation,
        dropout=model_spec.dropout, standardize=model_spec.standardize_features,
        precision_policy=policy, batch_sizes=batch_sizes,
        # Hyperband sets each trial's epochs itself.
        epochs=None if FLAGS.tuner == "hyperband" else hypermodel.epoch_choices(FLAGS.epochs),
        seed=FLAGS.seed, strategy=strategy)
    tuner = tuners.open_tuner(
        FLAGS.tuner, head_model, max_trials=FLAGS.max_trials, epochs=FLAGS.epochs,
        executions_per_trial=FLAGS.executions_per_trial, directory=FLAGS.directory,
        project_name=FLAGS.project_name, overwrite=overwrite, strategy=strategy, seed=FLAGS.seed)
    project.record_settings(project_dir, settings)
    if role == "chief":
        logging.info("Chief: serving the oracle on %s:%s until the workers have run every trial.",
                     os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"])
    tuner.search(epochs=FLAGS.epochs, verbose=progress.progress_verbose())
    if role == "worker":
        logging.info("Worker %s: no trials left; the chief writes the results.",
                     os.environ["KERASTUNER_TUNER_ID"])
        return
    _write_outputs(tuner, project_dir, load_data=load_data, model_spec=model_spec,
                   policy=policy, strategy=strategy)
    logging.info("Search finished in %.0f s.", time.perf_counter() - start)


def main(argv):
    require(len(argv) == 1, f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    data = shared_flags.data_spec_from_flags()
    model_spec = shared_flags.model_spec_from_flags()
    _search(data, model_spec, _validate_flags(model_spec))


def console_main():
    """The `mri-tune` command."""
    runner.run(main)


if __name__ == "__main__":
    console_main()
