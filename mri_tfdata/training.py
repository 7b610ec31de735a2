"""Trains the classifier into a workdir: fit (resumable), save, export, evaluate and report."""

import contextlib
import dataclasses
import json
import math
import pathlib
import shutil
import time

import keras
import tensorflow as tf
from absl import logging

from mri_tfdata import features, input_pipeline, model, reports, workdir
from mri_tfdata.dataspec import DataSpec
from mri_tfdata.errors import UserError

HEAD_PHASE = "head"
FINE_TUNE_PHASE = "fine_tune"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The classifier's shape (see model.build_backbone / build_head / build_classifier)."""

    image_size: int = 224  # side of the square uint8 input
    weights: str = "imagenet"  # imagenet | none | path of a ResNet50 no-top .h5
    head_units: tuple[int, ...] = (512, 128)  # hidden Dense sizes
    head_activation: str = "relu"
    dropout: float = 0.0
    standardize_features: bool = True  # Normalization of the 2,048 pooled features
    augment: bool = False  # random flip/rotation/zoom/contrast while training


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


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


class HistoryLog(keras.callbacks.Callback):
    """Writes history.json/.csv after every epoch, across restarts and phases.

    Rows are keyed by the absolute epoch, and an epoch being (re)started drops any row at or after
    it, so a run killed between logging an epoch and backing it up still ends with each epoch once.
    """

    def __init__(self, out_dir, phase: str):
        super().__init__()
        self._out_dir = out_dir
        self._phase = phase

    def _rows(self) -> list[dict]:
        path = self._out_dir / "history.json"
        if not path.exists():
            return []
        columns = json.loads(path.read_text())
        return [dict(zip(columns, values)) for values in zip(*columns.values())]

    def _write(self, rows: list[dict]) -> None:
        keys = ["epoch", "phase"] + sorted({k for r in rows for k in r} - {"epoch", "phase"})
        reports.write_history({k: [r.get(k) for r in rows] for k in keys}, self._out_dir)

    def on_epoch_begin(self, epoch, logs=None):
        self._write([r for r in self._rows() if r["epoch"] <= epoch])

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "phase": self._phase}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self._write([r for r in self._rows() if r["epoch"] <= epoch] + [row])


def make_callbacks(run: workdir.RunDir, phase: str) -> list[keras.callbacks.Callback]:
    """The callbacks of every fit: NaN stop, history files, resumable backup, TensorBoard.

    A feature-cache fast path passes the same list to its head-only fit.
    """
    return [
        keras.callbacks.TerminateOnNaN(),
        HistoryLog(run.path, phase),
        # double_checkpoint: a kill while the weights file is written leaves the previous epoch's.
        keras.callbacks.BackupAndRestore(str(run.backup_dir(phase)), double_checkpoint=True),
        keras.callbacks.TensorBoard(log_dir=str(run.path / "logs"), update_freq="epoch"),
    ]


@contextlib.contextmanager
def _limit_steps(max_steps: int):
    """Caps the batches of every epoch (smoke runs) with Keras's own knob, then restores it."""
    previous = keras.config.max_steps_per_epoch()
    keras.config.set_max_steps_per_epoch(max_steps or None)
    try:
        yield
    finally:
        keras.config.set_max_steps_per_epoch(previous)


def _backed_up_epochs(run: workdir.RunDir, phase: str) -> int:
    path = run.backup_dir(phase) / "training_metadata.json"
    return json.loads(path.read_text())["epoch"] if path.exists() else 0


def _check_finite(run: workdir.RunDir, learning_rate: float) -> None:
    history = json.loads((run.path / "history.json").read_text())
    bad = [e for e, loss in zip(history["epoch"], history["loss"])
           if loss is None or not math.isfinite(loss)]
    if bad:
        raise UserError(
            f"Training stopped in epoch {bad[0]}: the loss became NaN or infinite, so the weights "
            f"are unusable. The learning rate ({learning_rate:g}) is probably too high: rerun with "
            "a lower one (e.g. --learning_rate=1e-4, --overwrite) and keep "
            "--standardize_features on with --weights=none.")


def fit_phase(net: keras.Model, run: workdir.RunDir, phase: str, *, train_ds, val_ds,
              initial_epoch: int, epochs: int, learning_rate: float,
              max_steps_per_epoch: int = 0) -> None:
    """Fits a compiled model for one phase, resumably, and fails clearly on a NaN loss.

    The end-to-end path fits the classifier on images; a feature-cache fast path can fit the head
    alone on cached features through the same function (same callbacks, history and backups).

    Args:
      net: the compiled model to fit.
      run: the workdir (history files, backup/<phase>/, logs/).
      phase: HEAD_PHASE or FINE_TUNE_PHASE; names the backup and the history rows.
      train_ds: training batches (a tf.data or distributed dataset).
      val_ds: validation batches, or None.
      initial_epoch: epochs before this phase (the head phase's epochs, for fine-tuning).
      epochs: the epoch number to stop at (absolute, as in keras fit).
      learning_rate: the phase's learning rate, named in the NaN message.
      max_steps_per_epoch: > 0 caps the batches of every epoch (smoke runs).

    Raises:
      UserError: the loss became NaN or infinite.
    """
    done = _backed_up_epochs(run, phase)
    if done:
        logging.info("Resuming phase %s from its backup: %d epoch(s) already finished.",
                     phase, done)
    # BackupAndRestore sets this private attribute when it restores; it would otherwise carry a
    # restored epoch of the head phase into the fine-tuning fit.
    net._initial_epoch = None
    with _limit_steps(max_steps_per_epoch):
        net.fit(train_ds, validation_data=val_ds, initial_epoch=initial_epoch, epochs=epochs,
                callbacks=make_callbacks(run, phase), shuffle=False, verbose=2)
    _check_finite(run, learning_rate)


def _checkpoint(run: workdir.RunDir, phase: str):
    return run.path / "checkpoints" / f"{phase}.weights.h5"


def _end_phase(classifier: keras.Model, run: workdir.RunDir, phase: str) -> None:
    """Keeps the phase's final weights and records it as done, so a restart never redoes it."""
    _checkpoint(run, phase).parent.mkdir(exist_ok=True)
    classifier.save_weights(_checkpoint(run, phase))
    run.mark_phase_done(phase)


def train_head(classifier: keras.Model, run: workdir.RunDir, *, train_source, train_ds, val_ds,
               model_spec: ModelSpec, config: TrainConfig,
               strategy: tf.distribute.Strategy) -> None:
    """The end-to-end head phase: images through the frozen backbone into the head, every epoch.

    Args:
      classifier: from model.build_classifier, built in `strategy`'s scope.
      run: the workdir.
      train_source: the training split (standardisation statistics are fitted on its images).
      train_ds: training batches (distributed dataset).
      val_ds: validation batches, or None.
      model_spec: the classifier's shape.
      config: epochs, learning rate, batch size, pipeline settings.
      strategy: the tf.distribute strategy.

    Raises:
      UserError: the loss became NaN.
    """
    backbone, head = classifier.get_layer("backbone"), classifier.get_layer("head")
    # Standardisation statistics come from (up to) 1,024 training images; a run resumed from a
    # backup gets them back with the restored weights instead.
    if model_spec.standardize_features and not _backed_up_epochs(run, HEAD_PHASE):
        sample = input_pipeline.make_dataset(train_source, image_size=model_spec.image_size,
                                             batch_size=config.batch_size, training=False)
        sample = sample.take(max(1, 1024 // config.batch_size)).map(lambda x, y: x)
        model.adapt_standardization(head, backbone.predict(sample, verbose=0))
    with strategy.scope():
        model.compile_model(classifier, learning_rate=config.learning_rate)
    fit_phase(classifier, run, HEAD_PHASE, train_ds=train_ds, val_ds=val_ds, initial_epoch=0,
              epochs=config.epochs, learning_rate=config.learning_rate,
              max_steps_per_epoch=config.max_steps_per_epoch)


def train_head_on_features(classifier: keras.Model, run: workdir.RunDir, *, train_source,
                           val_source, model_spec: ModelSpec, config: TrainConfig,
                           strategy: tf.distribute.Strategy) -> None:
    """The fast head phase: each split's backbone features once (cached), the head fit on them.

    The same optimizer, loss, metrics, callbacks, history and backups as train_head; the
    classifier shares the head's layers, so afterwards it is the trained model on raw images.

    Args:
      classifier: from model.build_classifier (no augmentation), built in `strategy`'s scope.
      run: the workdir.
      train_source: the whole training split.
      val_source: the whole validation split, or None.
      model_spec: the classifier's shape.
      config: epochs, learning rate, batch size, feature cache.
      strategy: the tf.distribute strategy.

    Raises:
      UserError: the loss became NaN, or the feature cache folder is not writable.
    """
    backbone, head = classifier.get_layer("backbone"), classifier.get_layer("head")
    extract = dict(backbone=backbone, image_size=model_spec.image_size,
                   batch_size=config.batch_size, strategy=strategy,
                   cache_dir=features.resolve_cache_dir(config.feature_cache))
    train_set = features.load_or_extract(train_source, **extract)
    val_set = features.load_or_extract(val_source, **extract) if val_source else None
    if model_spec.standardize_features and not _backed_up_epochs(run, HEAD_PHASE):
        # The same first images as train_head's sample, without another backbone pass.
        sample_size = max(1, 1024 // config.batch_size) * config.batch_size
        model.adapt_standardization(head, train_set.features[:sample_size])
    with strategy.scope():
        model.compile_model(head, learning_rate=config.learning_rate)
        # As train_head leaves it: compiled, for evaluation and the saved model's config.
        model.compile_model(classifier, learning_rate=config.learning_rate)
    train_ds = features.make_feature_dataset(train_set.features, train_set.labels,
                                             batch_size=config.batch_size, training=True,
                                             seed=config.seed)
    val_ds = (features.make_feature_dataset(val_set.features, val_set.labels,
                                            batch_size=config.batch_size, training=False)
              if val_set else None)
    fit_phase(head, run, HEAD_PHASE, train_ds=train_ds, val_ds=val_ds, initial_epoch=0,
              epochs=config.epochs, learning_rate=config.learning_rate,
              max_steps_per_epoch=config.max_steps_per_epoch)


def train(*, data: DataSpec, model_spec: ModelSpec, config: TrainConfig, workdir_path,
          strategy: tf.distribute.Strategy, precision_policy: str, overwrite: bool = False,
          flags_text: str | None = None) -> TrainResult:
    """Runs the whole training job into `workdir_path`; safe to rerun after a kill.

    Phases: the head on the frozen backbone (`config.epochs`), then optionally the top
    `fine_tune_blocks` blocks at `fine_tune_learning_rate` (`fine_tune_epochs` more epochs).
    Each phase resumes from its last finished epoch (BackupAndRestore). Then model.keras,
    export/ (SavedModel taking raw uint8 images), history, metrics and plots are written.

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
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise UserError(f"--batch_size={config.batch_size} is not divisible by the "
                        f"{replicas} replicas; use a multiple of {replicas}.")
    # Only the chief writes the workdir; other workers keep their (identical) state in a scratch
    # folder inside it, as Keras recommends for multi-worker saving.
    out = (pathlib.Path(workdir_path) if is_chief(strategy) else
           pathlib.Path(workdir_path) / f"worker-{strategy.cluster_resolver.task_id}")
    settings = {"data": dataclasses.asdict(data), "model": dataclasses.asdict(model_spec),
                "train": dataclasses.asdict(config), "precision": precision_policy,
                "replicas": replicas}
    run = workdir.prepare(out, settings=settings, overwrite=overwrite)
    if flags_text is not None:
        (run.path / "flags.txt").write_text(flags_text)
    keras.utils.set_random_seed(config.seed)
    fast = features.use_fast_path(config.feature_cache, fine_tune_blocks=config.fine_tune_blocks,
                                  augment=model_spec.augment)

    data.prepare()
    train_source = data.open(config.train_split)
    val_source = data.open(config.validation_split) if config.validation_split else None
    class_names = tuple(train_source.class_names)
    steps = train_source.num_examples // config.batch_size
    if steps == 0:
        raise UserError(f"The training split {config.train_split!r} has "
                        f"{train_source.num_examples} examples, fewer than one batch of "
                        f"{config.batch_size}; lower --batch_size.")
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    logging.info("Data: %s; train %r: %d examples; validation %r: %s; test %r.", data.describe(),
                 config.train_split, train_source.num_examples, config.validation_split,
                 val_source.num_examples if val_source else "none", config.test_split)
    logging.info("Replicas: %d; global batch %d, per-replica batch %d; %d steps per epoch; "
                 "precision policy %s.", replicas, config.batch_size, config.batch_size // replicas,
                 steps, precision_policy)

    pipeline = dict(image_size=model_spec.image_size, cache=config.cache)
    train_ds = input_pipeline.distribute_dataset(
        strategy, lambda ctx: data.open(config.train_split, input_context=ctx),
        global_batch_size=config.batch_size, training=True, shuffle_buffer=config.shuffle_buffer,
        seed=config.seed, **pipeline)
    val_ds = (input_pipeline.make_dataset(val_source, batch_size=config.batch_size, training=False,
                                          **pipeline) if val_source else None)

    with strategy.scope():
        backbone = model.build_backbone(image_size=model_spec.image_size,
                                        weights=model_spec.weights)
        head = model.build_head(hidden_units=model_spec.head_units,
                                activation=model_spec.head_activation, dropout=model_spec.dropout,
                                standardize=model_spec.standardize_features,
                                num_classes=len(class_names))
        classifier = model.build_classifier(backbone, head, augment=model_spec.augment)
    # A restart after a finished phase continues from that phase's weights.
    finished = [p for p in (HEAD_PHASE, FINE_TUNE_PHASE) if run.phase_done(p)]
    if finished:
        classifier.load_weights(_checkpoint(run, finished[-1]))

    # Phase 1: the head on the frozen backbone, end to end or on cached features.
    if not run.phase_done(HEAD_PHASE):
        if fast:
            train_head_on_features(classifier, run, train_source=train_source,
                                   val_source=val_source, model_spec=model_spec, config=config,
                                   strategy=strategy)
        else:
            train_head(classifier, run, train_source=train_source, train_ds=train_ds,
                       val_ds=val_ds, model_spec=model_spec, config=config, strategy=strategy)
        _end_phase(classifier, run, HEAD_PHASE)

    # Phase 2: fine-tune the top blocks at a lower learning rate.
    if config.fine_tune_blocks and not run.phase_done(FINE_TUNE_PHASE):
        with strategy.scope():
            model.unfreeze_top_blocks(classifier, config.fine_tune_blocks)
            model.compile_model(classifier, learning_rate=config.fine_tune_learning_rate)
        fit_phase(classifier, run, FINE_TUNE_PHASE, train_ds=train_ds, val_ds=val_ds,
                  initial_epoch=config.epochs, epochs=config.epochs + config.fine_tune_epochs,
                  learning_rate=config.fine_tune_learning_rate,
                  max_steps_per_epoch=config.max_steps_per_epoch)
        _end_phase(classifier, run, FINE_TUNE_PHASE)

    return finish(classifier, run, data=data, config=config, image_size=model_spec.image_size,
                  class_names=class_names, start=start)


def finish(classifier, run: workdir.RunDir, *, data: DataSpec, config: TrainConfig,
           image_size: int, class_names, start: float) -> TrainResult:
    """Saves, exports, evaluates on the test split and writes the reports; marks the run finished.

    Args:
      classifier: the trained uint8-image classifier.
      run: the prepared workdir.
      data: where the test split comes from.
      config: the training config (test split, batch size, cache).
      image_size: the classifier's input side.
      class_names: names in label order.
      start: time.perf_counter() at the start of the run, for the log.

    Returns:
      The TrainResult.
    """
    classifier.save(run.path / "model.keras")
    # The serving artifact: signature "serve" maps uint8 [batch, H, W, 3] to probabilities.
    classifier.export(str(run.path / "export"), format="tf_saved_model", verbose=False)
    history = json.loads((run.path / "history.json").read_text())
    reports.plot_history(history, run.path)
    metrics = None
    if config.test_split:
        test_ds = input_pipeline.make_dataset(data.open(config.test_split), image_size=image_size,
                                              batch_size=config.batch_size, training=False,
                                              cache="none")
        labels, probabilities = reports.collect_predictions(classifier, test_ds)
        metrics = reports.write_evaluation(
            run.path, labels=labels, probabilities=probabilities, class_names=class_names,
            extra={"split": config.test_split, "model": str(run.path / "model.keras")})
        logging.info("Test %r: accuracy %.4f, loss %.4f on %d images.", config.test_split,
                     metrics["accuracy"], metrics["loss"], metrics["num_examples"])
    # Resume state is useless once the outputs exist (BackupAndRestore already emptied backup/).
    for scratch in ("backup", "checkpoints"):
        shutil.rmtree(run.path / scratch, ignore_errors=True)
    run.mark_finished()
    logging.info("Finished in %.0f s; outputs in %s.", time.perf_counter() - start, run.path)
    return TrainResult(workdir=run.path, history=history, metrics=metrics, resumed=run.resuming)
