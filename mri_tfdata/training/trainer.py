"""Trains the classifier into a workdir: the phases (resumable), then save and evaluate."""

import dataclasses
import json
import pathlib
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mri_tfdata.core import atomic, faults
from mri_tfdata.core.errors import UserError
from mri_tfdata.data import dataspec, epoch_order, input_pipeline
from mri_tfdata.data.dataspec import DataSpec
from mri_tfdata.data.sources import Source
from mri_tfdata.evaluation import evaluator, reports, run_report
from mri_tfdata.model import architecture, feature_cache, features, head_fit, optimization
from mri_tfdata.model import training_plan
from mri_tfdata.model.architecture import ModelSpec
from mri_tfdata.model.feature_cache import FeatureSet
from mri_tfdata.model.training_plan import TrainingPlan
from mri_tfdata.runtime import distribute, progress
from mri_tfdata.serving import model_file
from mri_tfdata.training import resumable, workdir
from mri_tfdata.training.config import TrainConfig
from mri_tfdata.training.resumable import FINE_TUNE_PHASE, HEAD_PHASE


@dataclasses.dataclass
class TrainResult:
    """What a run produced."""

    workdir: pathlib.Path
    history: dict  # column lists, as written to history.json
    metrics: dict | None  # metrics.json, or None without a test split
    resumed: bool  # True when the run continued an interrupted one
    already_finished: str | None = None  # the message, when the workdir held this run finished


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
    test_source: Source | None
    cache_dir: pathlib.Path | None  # the feature cache, None when off
    plans: dict[str, TrainingPlan]  # phase -> its step counts, computed once (_plans)
    # Split -> its features under the current backbone: each split is extracted (or read from
    # the cache) at most once per run. Emptied when the backbone is unfrozen.
    feature_sets: dict[str, FeatureSet] = dataclasses.field(default_factory=dict)


def _features(classifier: keras.Model, job: _Job, source: Source) -> FeatureSet:
    """The split's backbone features: from this run's earlier call, else the cache or backbone.

    Extraction runs at its own inference batch (features.INFERENCE_BATCH), not the training one.
    """
    if source.cache_id not in job.feature_sets:
        job.feature_sets[source.cache_id] = feature_cache.load_or_extract(
            source, backbone=classifier.get_layer("backbone"), image_size=job.spec.image_size,
            cache_dir=job.cache_dir, strategy=job.strategy)
    return job.feature_sets[source.cache_id]


def _fit_head_on_features(classifier: keras.Model, job: _Job) -> None:
    """The fast head phase: each split's backbone features once (cached), the head fit on them."""
    config = job.config
    train_set = _features(classifier, job, job.train_source)
    val_set = _features(classifier, job, job.val_source) if job.val_source else None
    head = classifier.get_layer("head")
    with resumable.phase(head, job.run, HEAD_PHASE,
                         learning_rate=config.learning_rate) as callbacks:
        head_fit.fit_head(head, train_set.features, train_set.labels,
                          validation=(val_set.features, val_set.labels) if val_set else None,
                          learning_rate=config.learning_rate, epochs=config.epochs,
                          batch_size=config.batch_size, schedule=config.schedule,
                          label_smoothing=config.label_smoothing,
                          weight_decay=config.weight_decay, seed=config.seed, callbacks=callbacks,
                          strategy=job.strategy, plan=job.plans[HEAD_PHASE],
                          verbose=progress.progress_verbose())


def _fit_end_to_end(classifier: keras.Model, job: _Job, phase: str) -> None:
    """One phase on images: every batch through the backbone into the head, every epoch."""
    config = job.config
    if phase == HEAD_PHASE:
        learning_rate, initial_epoch, epochs = config.learning_rate, 0, config.epochs
        if job.spec.standardize_features:
            # Fitted on all training features, as the fast path fits it; cached like them.
            architecture.adapt_standardization(
                classifier.get_layer("head"), _features(classifier, job, job.train_source).features)
    else:
        learning_rate = config.fine_tune_learning_rate
        initial_epoch, epochs = config.epochs, config.epochs + config.fine_tune_epochs
        with job.strategy.scope():
            architecture.unfreeze_top_blocks(classifier, config.fine_tune_blocks)
        job.feature_sets.clear()  # The backbone trains from here: its features change.
    pipeline = dict(image_size=job.spec.image_size, cache=config.cache)
    order = epoch_order.EpochOrder()
    train_ds = input_pipeline.distribute_dataset(
        job.strategy, lambda ctx: job.data.open(config.train_split, input_context=ctx),
        global_batch_size=config.batch_size, training=True, shuffle_buffer=config.shuffle_buffer,
        seed=config.seed, order=order, **pipeline)
    val_ds = (input_pipeline.make_dataset(job.val_source, batch_size=config.batch_size,
                                          training=False, **pipeline) if job.val_source else None)
    plan = job.plans[phase]
    with job.strategy.scope():
        optimization.compile_model(classifier, learning_rate=learning_rate,
                                   schedule=config.schedule, decay_steps=plan.decay_steps,
                                   label_smoothing=config.label_smoothing,
                                   weight_decay=config.weight_decay,
                                   steps_per_execution=plan.steps_per_execution)
    with resumable.phase(classifier, job.run, phase, learning_rate=learning_rate) as callbacks:
        classifier.fit(train_ds, validation_data=val_ds, initial_epoch=initial_epoch,
                       epochs=epochs, callbacks=[order, *callbacks], shuffle=False,
                       verbose=progress.progress_verbose(), **plan.fit_steps())


def _calibrate_sets(classifier: keras.Model, job: _Job) -> dict | None:
    """The prediction sets' thresholds on the validation split (evaluator.calibrate_split)."""
    if not job.config.conformal_alphas or job.val_source is None:
        if job.config.conformal_alphas:
            logging.warning("No validation split: no prediction sets are calibrated, so "
                            "mri-predict gives none (pass --validation_split to get them).")
        return None
    return evaluator.calibrate_split(classifier.get_layer("head"),
                                     _features(classifier, job, job.val_source),
                                     alphas=job.config.conformal_alphas,
                                     split=job.config.validation_split)


def _finish(classifier: keras.Model, job: _Job, *, class_names, start: float) -> TrainResult:
    """Saves, evaluates the saved model on the test split, reports; marks the run done."""
    run, config = job.run, job.config
    # Every step rewrites its outputs whole, so a rerun after a kill anywhere here redoes the
    # steps from the top; the phase weights go only once the run is recorded as finished.
    calibration = _calibrate_sets(classifier, job)
    # The model as written, run by the evaluation's check: the file is not loaded back.
    saved = model_file.without_training_state(classifier)
    saved_path = model_file.save_classifier(saved, run.path / model_file.MODEL_FILE,
                                           class_names=class_names, conformal=calibration)
    faults.point("model_saved")
    history = resumable.read_history(run.path)
    reports.plot_history(history, run.path)
    logging.info("Saved the model in %s, its training curves beside it.", saved_path)
    metrics = None
    if job.test_source is not None:
        # The probabilities come from the trained head on the test features; the model as saved
        # must agree with them on a few images.
        counts = np.bincount(job.train_source.labels, minlength=len(class_names))
        metrics = evaluator.evaluate_split(
            classifier, job.test_source, out_dir=run.path,
            batch_size=features.INFERENCE_BATCH, cache_dir=job.cache_dir, strategy=job.strategy,
            feature_set=_features(classifier, job, job.test_source),
            extra={"split": config.test_split, "model": str(saved_path),
                   "training_examples_per_class": dict(zip(class_names, counts.tolist()))},
            checked_model=saved,
            bootstrap_resamples=config.bootstrap_resamples, calibration=calibration,
            # Beside the train/ and validation/ curves, at the last epoch (Keras counts from 0).
            log_dir=run.path / "logs" / "test", log_step=history["epoch"][-1] - 1)
        faults.point("evaluated")
    # Last of the outputs, from the files above: a failure costs only the report (a warning).
    run_report.write_report_or_warn(run.path)
    run.mark_finished()
    faults.point("finished_recorded")
    for scratch in workdir.SCRATCH:
        shutil.rmtree(run.path / scratch, ignore_errors=True)
    logging.info("Finished in %.0f s; outputs in %s. A SavedModel for TF Serving: "
                 "mri-export --model=%s", time.perf_counter() - start, run.path, saved_path)
    return TrainResult(workdir=run.path, history=history, metrics=metrics, resumed=run.resuming)


def _plans(*, config: TrainConfig, num_examples: int, strategy, fast: bool) -> dict:
    """Each phase's step counts: the head's, on features (fast) or images; the fine-tuning's."""
    common = dict(num_examples=num_examples, batch_size=config.batch_size,
                  max_steps_per_epoch=config.max_steps_per_epoch)
    on_images = dict(replicas=strategy.num_replicas_in_sync, **common)
    plans = {HEAD_PHASE: (head_fit.head_plan(epochs=config.epochs, strategy=strategy, **common)
                          if fast else training_plan.plan_fit(epochs=config.epochs, **on_images))}
    if config.fine_tune_blocks:
        plans[FINE_TUNE_PHASE] = training_plan.plan_fit(epochs=config.fine_tune_epochs, **on_images)
    return plans


def _log_start(job: _Job, precision_policy: str) -> None:
    config, replicas = job.config, job.strategy.num_replicas_in_sync
    steps = job.plans[HEAD_PHASE].steps_per_epoch
    logging.info("Data: %s; train %r: %d examples; validation %r: %s; test %r: %s.",
                 job.data.describe(), config.train_split, job.train_source.num_examples,
                 config.validation_split,
                 job.val_source.num_examples if job.val_source else "none", config.test_split,
                 job.test_source.num_examples if job.test_source else "none")
    logging.info("Replicas: %d; global batch %d, per-replica batch %d; %d steps per epoch; "
                 "precision policy %s.", replicas, config.batch_size, config.batch_size // replicas,
                 steps, precision_policy)


def _run_phases(classifier: keras.Model, job: _Job, *, precision_policy: str, fast: bool,
                start: float) -> TrainResult:
    """The head phase, the optional fine-tuning phase, then the outputs; each skipped if done."""
    run, config = job.run, job.config
    _log_start(job, precision_policy)
    # On the fast path only the head trains: the frozen backbone is rebuilt the same by every
    # run (its weights, or the seed), so the head's state is the whole state a phase keeps.
    kept = classifier.get_layer("head") if fast else classifier
    resumable.load_finished_phase(kept, run)
    if not run.phase_done(HEAD_PHASE):
        if fast:
            _fit_head_on_features(classifier, job)
        else:
            _fit_end_to_end(classifier, job, HEAD_PHASE)
        resumable.end_phase(kept, run, HEAD_PHASE)
    if config.fine_tune_blocks and not run.phase_done(FINE_TUNE_PHASE):
        _fit_end_to_end(classifier, job, FINE_TUNE_PHASE)
        resumable.end_phase(classifier, run, FINE_TUNE_PHASE)
    return _finish(classifier, job, class_names=tuple(job.train_source.class_names), start=start)


def _settings(*, data: DataSpec, model_spec: ModelSpec, config: TrainConfig,
              strategy: tf.distribute.Strategy, precision_policy: str) -> dict:
    """Everything that defines the run: a rerun resumes only a run with equal settings."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise UserError(f"batch_size={config.batch_size} is not a multiple of the {replicas} "
                        f"replicas; use a multiple of {replicas}.")
    return {"data": dataclasses.asdict(data), "model": dataclasses.asdict(model_spec),
            "train": dataclasses.asdict(config), "precision": precision_policy,
            "replicas": replicas}


def train(*, data: DataSpec, model_spec: ModelSpec, config: TrainConfig, workdir_path,
          strategy: tf.distribute.Strategy, precision_policy: str, overwrite: bool = False,
          flags_text: str | None = None) -> TrainResult:
    """Runs the whole training job into `workdir_path`; safe to rerun after a kill.

    Phases: the head on the frozen backbone (`config.epochs`), on cached features when the
    backbone stays frozen and nothing is augmented (feature_cache.use_fast_path), else end to end;
    then optionally the top `fine_tune_blocks` blocks at `fine_tune_learning_rate`
    (`fine_tune_epochs` more epochs). Each phase resumes from its last finished epoch. Then
    model.keras, history, metrics and plots are written.

    Args:
      data: where the images come from.
      model_spec: the classifier's shape.
      config: splits, optimisation, input pipeline.
      workdir_path: the output directory (see mri_tfdata.training.workdir for rerun rules).
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
    settings = _settings(data=data, model_spec=model_spec, config=config, strategy=strategy,
                         precision_policy=precision_policy)
    out = distribute.output_dir(workdir_path, strategy)
    try:  # Refuses early; writes nothing.
        workdir.check(out, settings=settings, overwrite=overwrite)
    except workdir.AlreadyFinished as finished:
        workdir.tidy_finished(out)
        logging.info("%s", finished)
        metrics_file = pathlib.Path(out) / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
        return TrainResult(workdir=pathlib.Path(out), history=resumable.read_history(out),
                           metrics=metrics,
                           resumed=False, already_finished=str(finished))
    keras.utils.set_random_seed(config.seed)
    fast = feature_cache.use_fast_path(config.feature_cache,
                                       fine_tune_blocks=config.fine_tune_blocks,
                                       augment=model_spec.augment)
    data.prepare()
    # On the fast path the files are decoded once, by their features' extraction, which refuses
    # the files that fail; the end-to-end path decodes every epoch, so it checks them first.
    splits = {flag: data.open(getattr(config, flag), check_decoding=not fast)
              for flag in ("train_split", "validation_split", "test_split") if getattr(config, flag)}

    def check_splits():
        dataspec.check_splits(
            {flag: (getattr(config, flag), source) for flag, source in splits.items()},
            batch_size=config.batch_size, allow_missing_classes=config.allow_missing_classes)

    check_splits()
    class_names = tuple(splits["train_split"].class_names)
    with strategy.scope():
        classifier = architecture.build_from_spec(model_spec, num_classes=len(class_names))
    cache_dir = feature_cache.resolve_cache_dir(config.feature_cache)
    feature_sets = {}
    if fast:
        # Every split's features now, before the workdir is written: the splits are known to be
        # usable only once their files are decoded.
        backbone = classifier.get_layer("backbone")
        fingerprint = feature_cache.weights_fingerprint(backbone)  # the same for every split
        for flag, source in splits.items():
            if source.cache_id not in feature_sets:  # e.g. validating on the test split
                feature_sets[source.cache_id] = feature_cache.load_or_extract(
                    source, backbone=backbone, image_size=model_spec.image_size,
                    cache_dir=cache_dir, strategy=strategy, fingerprint=fingerprint)
            splits[flag] = feature_sets[source.cache_id].source
        check_splits()
    # The data and the weights are good: only now is the workdir written (and locked).
    run = workdir.open_run(out, settings=settings, overwrite=overwrite)
    try:
        if flags_text is not None:
            atomic.write_atomic(run.path / "flags.txt", flags_text)
        return _run_phases(classifier, _Job(
            data=data, spec=model_spec, config=config, strategy=strategy, run=run,
            train_source=splits["train_split"], val_source=splits.get("validation_split"),
            test_source=splits.get("test_split"), cache_dir=cache_dir,
            plans=_plans(config=config, num_examples=splits["train_split"].num_examples,
                         strategy=strategy, fast=fast), feature_sets=feature_sets),
            precision_policy=precision_policy, fast=fast, start=start)
    finally:
        run.close()
