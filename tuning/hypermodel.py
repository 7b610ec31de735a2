"""The search space (head shape and its training recipe), built and fitted by the package's code."""

import keras
import keras_tuner
from absl import logging

from mri_tfdata.evaluation import calibration
from mri_tfdata.model import architecture, head_fit, optimization
from mri_tfdata.model.feature_cache import FeatureSet
from mri_tfdata.training import trainer

# Defaults are train.py's, so a trial at the defaults is the default head and recipe.
_MODEL_DEFAULTS = architecture.ModelSpec()
_TRAIN_DEFAULTS = trainer.TrainConfig()
MAX_LAYERS = 2
DEFAULT_UNITS = _MODEL_DEFAULTS.head_units
DEFAULT_LEARNING_RATE = _TRAIN_DEFAULTS.learning_rate
DEFAULT_SCHEDULE = _TRAIN_DEFAULTS.schedule
DEFAULT_LABEL_SMOOTHING = _TRAIN_DEFAULTS.label_smoothing
DEFAULT_WEIGHT_DECAY = _TRAIN_DEFAULTS.weight_decay
DEFAULT_BATCH_SIZE = _TRAIN_DEFAULTS.batch_size
# The measured good region (benchmarks/README.md, "Head recipes"): learning rates from 3e-5 to
# 1e-3 with a decaying schedule, smoothing up to 0.1, no dropout; the space extends past it on
# every side.
LEARNING_RATES = (1e-5, 1e-2)
LABEL_SMOOTHINGS = (0.0, 0.05, 0.1, 0.2)
WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 1e-1)


def epoch_choices(epochs: int) -> tuple[int, ...]:
    """The trial lengths a search of `epochs` chooses from: half, once and 1.5 times it."""
    return tuple(sorted({max(1, epochs // 2), epochs, epochs + epochs // 2}))


def head_units(values: dict) -> tuple[int, ...]:
    """The hidden layer sizes a trial used: units_0 .. units_{num_layers-1} of its values.

    Units of deeper layers stay in the values of shallower trials (KerasTuner keeps every
    hyperparameter it has seen) but play no part in them.
    """
    return tuple(int(values[f"units_{i}"]) for i in range(int(values["num_layers"])))


def build_model(hp: keras_tuner.HyperParameters, *, dropout: float = 0.0,
                num_classes: int, activation: str = "relu",
                standardize: bool = True) -> keras.Model:
    """Builds one trial's head from the hyperparameters, with the ordinary model code.

    The head is compiled and its Normalization fitted when it is fitted (head_fit.fit_head: the
    schedule needs the fit's steps), so a build alone (a smoke check, or the chief of a
    distributed search, which never fits) needs no data.

    Args:
      hp: the trial's hyperparameters; unseen ones are registered with train.py's defaults.
      dropout: the dropout of every trial (fixed: it lowered test accuracy at every
        rate measured).
      num_classes: number of output classes.
      activation: activation of the hidden layers (not tuned).
      standardize: start the head with the Normalization of the 2,048 features, as training does.

    Returns:
      The head: features [2048] -> float32 probabilities.
    """
    num_layers = hp.Int("num_layers", 1, MAX_LAYERS, default=len(DEFAULT_UNITS))
    units = tuple(
        # Powers of two from 64 to 1,024 (log sampling, step = factor 2).
        hp.Int(f"units_{i}", 64, 1024, step=2, sampling="log", default=DEFAULT_UNITS[i])
        for i in range(num_layers))
    rate = hp.Fixed("dropout", float(dropout))
    return architecture.build_head(hidden_units=units, activation=activation, dropout=rate,
                            standardize=standardize, num_classes=num_classes)


def declare_recipe(hp: keras_tuner.HyperParameters, *, batch_sizes: tuple[int, ...],
                   epochs: tuple[int, ...] | None) -> dict:
    """Registers (or reads) how a trial's head is trained; returns head_fit.fit_head's arguments.

    Args:
      hp: the trial's hyperparameters.
      batch_sizes: the global batches to choose from; one value = not tuned.
      epochs: the trial lengths to choose from, or None when the tuner sets them (Hyperband).
    """
    default_batch = DEFAULT_BATCH_SIZE if DEFAULT_BATCH_SIZE in batch_sizes else batch_sizes[0]
    recipe = {
        "learning_rate": hp.Float("learning_rate", *LEARNING_RATES, sampling="log",
                                  default=DEFAULT_LEARNING_RATE),
        "schedule": hp.Choice("lr_schedule", list(optimization.SCHEDULES), default=DEFAULT_SCHEDULE),
        "label_smoothing": hp.Choice("label_smoothing", list(LABEL_SMOOTHINGS), ordered=True,
                                     default=DEFAULT_LABEL_SMOOTHING),
        "weight_decay": hp.Choice("weight_decay", list(WEIGHT_DECAYS), ordered=True,
                                  default=DEFAULT_WEIGHT_DECAY),
        "batch_size": hp.Choice("batch_size", list(batch_sizes), ordered=True,
                                default=default_batch),
    }
    if epochs is not None:
        middle = epochs[len(epochs) // 2]
        recipe["epochs"] = hp.Choice("epochs", list(epochs), ordered=True, default=middle)
    return recipe


class HeadHyperModel(keras_tuner.HyperModel):
    """Builds trial heads and fits them on cached features.

    Args:
      train: training-split features (None on the chief of a distributed search, which only
        runs the oracle and never fits).
      validation: validation-split features, the objective's data.
      num_classes: number of output classes.
      activation: activation of the hidden layers.
      dropout: the fixed dropout of every head.
      standardize: standardise the features inside the head.
      precision_policy: the Keras dtype policy of the run (precision.apply_precision's result).
      batch_sizes: the global batch sizes to choose from; one value = not tuned.
      epochs: the trial lengths to choose from (epoch_choices); None: KerasTuner's `epochs`
        (Hyperband's budget).
      seed: the shuffle seed of the training features.
      strategy: the tf.distribute strategy the tuner builds trial heads under (KerasTuner calls
        `fit` outside its scope).
    """

    def __init__(self, *, train: FeatureSet | None, validation: FeatureSet | None,
                 num_classes: int, activation: str, dropout: float, standardize: bool,
                 precision_policy: str, batch_sizes: tuple[int, ...],
                 epochs: tuple[int, ...] | None, seed: int, strategy=None):
        super().__init__(name="head")
        self._train, self._validation = train, validation
        self._num_classes, self._activation = num_classes, activation
        self._dropout, self._standardize = dropout, standardize
        self._policy = precision_policy
        self._batch_sizes = tuple(batch_sizes)
        self._epochs = tuple(epochs) if epochs else None
        self._seed = seed
        self._strategy = strategy

    def declare_hyperparameters(self, hp):
        # Declared up front (they are only read in fit), so the chief's oracle, which never fits,
        # knows the whole space.
        declare_recipe(hp, batch_sizes=self._batch_sizes, epochs=self._epochs)

    def build(self, hp):
        # KerasTuner calls keras.backend.clear_session() before every build, which also resets
        # the global dtype policy; set it again so trial heads compute as the trained head will.
        keras.mixed_precision.set_global_policy(self._policy)
        return build_model(hp, dropout=self._dropout, num_classes=self._num_classes,
                           activation=self._activation, standardize=self._standardize)

    def fit(self, hp, model, *args, **kwargs):
        """Fits the head on the cached training features, validating on the validation features.

        `kwargs` are KerasTuner's (epochs, initial_epoch for Hyperband, callbacks, verbose).

        Returns:
          The last epoch's metrics (loss, accuracy, cross_entropy and their val_ forms, and
          val_calibrated_cross_entropy, the objective, with val_temperature).
        """
        # The oracle's one summary per trial is the search's progress report; per-epoch lines of
        # every trial's fit would drown it.
        kwargs["verbose"] = 0
        recipe = declare_recipe(hp, batch_sizes=self._batch_sizes, epochs=self._epochs)
        kwargs["epochs"] = recipe.pop("epochs", kwargs.get("epochs"))
        # The one per-trial line a worker of a distributed search prints (the chief shows tables).
        logging.info("Fitting head %s: %s.", ",".join(map(str, head_units(hp.values))),
                     ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in {**recipe, "epochs": kwargs["epochs"]}.items()))
        # The objective, written into every epoch's logs by a callback placed before KerasTuner's
        # own (Keras hands one logs dict to the callbacks in list order), so that they and the
        # History read it: the validation cross-entropy after temperature scaling, which label
        # smoothing does not inflate (mri_tfdata.evaluation.calibration).
        kwargs["callbacks"] = [
            calibration.CalibratedCrossEntropy(self._validation.features, self._validation.labels),
            *kwargs.get("callbacks", [])]
        # The same fit as training's fast path: standardisation fitted on all training features,
        # the same compile, batching and shuffling.
        history = head_fit.fit_head(
            model, self._train.features, self._train.labels,
            validation=(self._validation.features, self._validation.labels), seed=self._seed,
            strategy=self._strategy, **recipe, **kwargs)
        # The trial's score is its last epoch's, not KerasTuner's default (the best epoch's):
        # training keeps the last epoch's weights, and the best of ten noisy epochs favours
        # unstable heads (on the real data it predicted test accuracy worse).
        return {name: values[-1] for name, values in history.history.items()}
