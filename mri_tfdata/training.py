"""Trains the classifier into a workdir: the phases (resumable), then save and evaluate."""

import dataclasses
import json
import pathlib
import shutil
import time

import keras
import tensorflow as tf
from absl import logging

from mri_tfdata import (atomic, console, distribute, evaluation, features, head_fit, inference,
                        input_pipeline, model, reports, resumable, workdir)
from mri_tfdata.dataspec import DataSpec
from mri_tfdata.errors import UserError
from mri_tfdata.model import ModelSpec
from mri_tfdata.sources import Source

HEAD_PHASE = "head"
FINE_TUNE_PHASE = "fine_tune"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: splits, optimisation, input pipeline; all batch sizes are global."""

    train_split: str = "train[:90%]"
    validation_split: str = "train[90%:]"  # "" = no validation
    test_split: str = "test"  # "" = no final evaluation
    batch_size: int = 32
    epochs: int = 10
    learning_rate: float = 1e-3
    fine_tune_blocks: int = 0  # top ResNet50 blocks unfrozen in a second phase (0 = none)
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5
    cache: str = "memory"  # none | memory | directory
    feature_cache: str = "auto"  # auto | off | folder of cached backbone features (fast path)
    shuffle_buffer: int = 2048
    seed: int = 0
    max_steps_per_epoch: int = 0  # > 0 caps every epoch (smoke runs); 0 = whole splits


@dataclasses.dataclass
class TrainResult:
    """What a run produced."""

    workdir: pathlib.Path
    history: dict  # column lists, as written to history.json
    metrics: dict | None  # metrics.json, or None without a test split
    resumed: bool  # True when the run continued an interrupted one


@dataclasses.dataclass
class _Job:
    """What every step of one run needs: its settings, data and places."""

    data: DataSpec
    spec: ModelSpec
    config: TrainConfig
    strategy: tf.distribute.Strategy
    run: workdir.RunDir
    train_source: Source
    val_source: Source | None
    cache_dir: pathlib.Path | None  # the feature cache, None when off


def _fit_head_on_features(classifier: keras.Model, job: _Job) -> None:
    """The fast head phase: each split's backbone features once (cached), the head fit on them."""
    config = job.config
    extract = dict(backbone=classifier.get_layer("backbone"), image_size=job.spec.image_size,
                   batch_size=config.batch_size, cache_dir=job.cache_dir, strategy=job.strategy)
    train_set = features.load_or_extract(job.train_source, **extract)
    val_set = features.load_or_extract(job.val_source, **extract) if job.val_source else None
    head = classifier.get_layer("head")
    with resumable.phase(head, job.run, HEAD_PHASE, learning_rate=config.learning_rate,
                         max_steps_per_epoch=config.max_steps_per_epoch) as callbacks:
        head_fit.fit_head(head, train_set.features, train_set.labels,
                          validation=(val_set.features, val_set.labels) if val_set else None,
                          learning_rate=config.learning_rate, epochs=config.epochs,
                          batch_size=config.batch_size, seed=config.seed, callbacks=callbacks,
                          strategy=job.strategy, verbose=console.progress_verbose())


def _fit_end_to_end(classifier: keras.Model, job: _Job, phase: str) -> None:
    """One phase on images: every batch through the backbone into the head, every epoch."""
    config = job.config
    if phase == HEAD_PHASE:
        learning_rate, initial_epoch, epochs = config.learning_rate, 0, config.epochs
        if job.spec.standardize_features:
            # Fitted on all training features, as the fast path fits it; cached like them.
            train_set = features.load_or_extract(
                job.train_source, backbone=classifier.get_layer("backbone"),
                image_size=job.spec.image_size, batch_size=config.batch_size,
                cache_dir=job.cache_dir, strategy=job.strategy)
            model.adapt_standardization(classifier.get_layer("head"), train_set.features)
    else:
        learning_rate = config.fine_tune_learning_rate
        initial_epoch, epochs = config.epochs, config.epochs + config.fine_tune_epochs
        with job.strategy.scope():
            model.unfreeze_top_blocks(classifier, config.fine_tune_blocks)
    pipeline = dict(image_size=job.spec.image_size, cache=config.cache)
    train_ds = input_pipeline.distribute_dataset(
        job.strategy, lambda ctx: job.data.open(config.train_split, input_context=ctx),
        global_batch_size=config.batch_size, training=True, shuffle_buffer=config.shuffle_buffer,
        seed=config.seed, **pipeline)
    val_ds = (input_pipeline.make_dataset(job.val_source, batch_size=config.batch_size,
                                          training=False, **pipeline) if job.val_source else None)
    with job.strategy.scope():
        model.compile_model(classifier, learning_rate=learning_rate)
    with resumable.phase(classifier, job.run, phase, learning_rate=learning_rate,
                         max_steps_per_epoch=config.max_steps_per_epoch) as callbacks:
        classifier.fit(train_ds, validation_data=val_ds, initial_epoch=initial_epoch,
                       epochs=epochs, callbacks=callbacks, shuffle=False,
                       verbose=console.progress_verbose())


def _checkpoint(run: workdir.RunDir, phase: str) -> pathlib.Path:
    return run.path / "checkpoints" / f"{phase}.weights.h5"


def _end_phase(classifier: keras.Model, run: workdir.RunDir, phase: str) -> None:
    """Keeps the phase's final weights and records it as done, so a restart never redoes it."""
    _checkpoint(run, phase).parent.mkdir(exist_ok=True)
    atomic.publish(_checkpoint(run, phase), classifier.save_weights, suffix=".weights.h5")
    run.mark_phase_done(phase)


def _finish(classifier: keras.Model, job: _Job, *, class_names, start: float) -> TrainResult:
    """Saves, evaluates the saved model on the test split, reports; marks the run done."""
    run, config = job.run, job.config
    saved_path = inference.save_classifier(classifier, run.path / inference.MODEL_FILE,
                                           class_names=class_names)
    history = json.loads((run.path / "history.json").read_text())
    reports.plot_history(history, run.path)
    metrics = None
    if config.test_split:
        # The probabilities come from the trained head on the test features; the model as saved
        # and loaded again must agree with them on a few images.
        metrics = evaluation.evaluate_split(
            classifier, job.data.open(config.test_split), out_dir=run.path,
            batch_size=config.batch_size, cache_dir=job.cache_dir, strategy=job.strategy,
            extra={"split": config.test_split, "model": str(saved_path)},
            checked_model=inference.load_classifier(saved_path).model)
    # Resume state is useless once the outputs exist (BackupAndRestore already emptied backup/).
    for scratch in ("backup", "checkpoints"):
        shutil.rmtree(run.path / scratch, ignore_errors=True)
    run.mark_finished()
    logging.info("Finished in %.0f s; outputs in %s. A SavedModel for TF Serving: "
                 "python -m mri_tfdata.export --model=%s", time.perf_counter() - start, run.path,
                 saved_path)
    return TrainResult(workdir=run.path, history=history, metrics=metrics, resumed=run.resuming)


def _log_start(job: _Job, precision_policy: str) -> None:
    config, replicas = job.config, job.strategy.num_replicas_in_sync
    steps = job.train_source.num_examples // config.batch_size
    if steps == 0:
        raise UserError(f"The training split {config.train_split!r} has "
                        f"{job.train_source.num_examples} examples, fewer than one batch of "
                        f"{config.batch_size}; lower --batch_size.")
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    logging.info("Data: %s; train %r: %d examples; validation %r: %s; test %r.",
                 job.data.describe(), config.train_split, job.train_source.num_examples,
                 config.validation_split,
                 job.val_source.num_examples if job.val_source else "none", config.test_split)
    logging.info("Replicas: %d; global batch %d, per-replica batch %d; %d steps per epoch; "
                 "precision policy %s.", replicas, config.batch_size, config.batch_size // replicas,
                 steps, precision_policy)


def _prepare_workdir(workdir_path, *, data: DataSpec, model_spec: ModelSpec, config: TrainConfig,
                     strategy: tf.distribute.Strategy, precision_policy: str, overwrite: bool,
                     flags_text: str | None) -> workdir.RunDir:
    """Opens the run's folder (new, resumed or refused) and writes flags.txt into it."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise UserError(f"--batch_size={config.batch_size} is not divisible by the "
                        f"{replicas} replicas; use a multiple of {replicas}.")
    settings = {"data": dataclasses.asdict(data), "model": dataclasses.asdict(model_spec),
                "train": dataclasses.asdict(config), "precision": precision_policy,
                "replicas": replicas}
    run = workdir.prepare(distribute.output_dir(workdir_path, strategy), settings=settings,
                          overwrite=overwrite)
    if flags_text is not None:
        atomic.write_atomic(run.path / "flags.txt", flags_text)
    return run


def train(*, data: DataSpec, model_spec: ModelSpec, config: TrainConfig, workdir_path,
          strategy: tf.distribute.Strategy, precision_policy: str, overwrite: bool = False,
          flags_text: str | None = None) -> TrainResult:
    """Runs the whole training job into `workdir_path`; safe to rerun after a kill.

    Phases: the head on the frozen backbone (`config.epochs`), on cached features when the
    backbone stays frozen and nothing is augmented (see features.use_fast_path), else end to end;
    then optionally the top `fine_tune_blocks` blocks at `fine_tune_learning_rate`
    (`fine_tune_epochs` more epochs). Each phase resumes from its last finished epoch. Then
    model.keras, history, metrics and plots are written.

    Args:
      data: where the images come from.
      model_spec: the classifier's shape.
      config: splits, optimisation, input pipeline.
      workdir_path: the output directory (see mri_tfdata.workdir for rerun rules).
      strategy: the tf.distribute strategy; the precision policy must already be set.
      precision_policy: the policy in force (apply_precision's result), for the log and run.json.
      overwrite: replace a finished (or differently configured) run in the workdir.
      flags_text: the flags used, written to flags.txt.

    Returns:
      A TrainResult.

    Raises:
      UserError: missing data, a workdir conflict, a batch larger than the split, a NaN loss.
    """
    start = time.perf_counter()
    run = _prepare_workdir(workdir_path, data=data, model_spec=model_spec, config=config,
                           strategy=strategy, precision_policy=precision_policy,
                           overwrite=overwrite, flags_text=flags_text)
    keras.utils.set_random_seed(config.seed)
    fast = features.use_fast_path(config.feature_cache, fine_tune_blocks=config.fine_tune_blocks,
                                  augment=model_spec.augment)
    data.prepare()
    job = _Job(data=data, spec=model_spec, config=config, strategy=strategy, run=run,
               train_source=data.open(config.train_split),
               val_source=data.open(config.validation_split) if config.validation_split else None,
               cache_dir=features.resolve_cache_dir(config.feature_cache))
    _log_start(job, precision_policy)
    class_names = tuple(job.train_source.class_names)
    with strategy.scope():
        classifier = model.build_from_spec(model_spec, num_classes=len(class_names))
    # A restart after a finished phase continues from that phase's weights.
    finished = [p for p in (HEAD_PHASE, FINE_TUNE_PHASE) if run.phase_done(p)]
    if finished:
        classifier.load_weights(_checkpoint(run, finished[-1]))
    if not run.phase_done(HEAD_PHASE):
        if fast:
            _fit_head_on_features(classifier, job)
        else:
            _fit_end_to_end(classifier, job, HEAD_PHASE)
        _end_phase(classifier, run, HEAD_PHASE)
    if config.fine_tune_blocks and not run.phase_done(FINE_TUNE_PHASE):
        _fit_end_to_end(classifier, job, FINE_TUNE_PHASE)
        _end_phase(classifier, run, FINE_TUNE_PHASE)
    return _finish(classifier, job, class_names=class_names, start=start)
