"""The search space (head layers, units, dropout, learning rate, batch size), built by model.py."""

import keras
import keras_tuner
from absl import logging

from mri_tfdata import features, head_fit, kaggle_layout, model

MAX_LAYERS = 3
# Defaults are train.py's defaults, so a trial at the defaults is the default head.
DEFAULT_UNITS = (512, 128, 64)
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_BATCH_SIZE = 32


def head_units(values: dict) -> tuple[int, ...]:
    """The hidden layer sizes a trial used: units_0 .. units_{num_layers-1} of its values.

    Units of deeper layers stay in the values of shallower trials (KerasTuner keeps every
    hyperparameter it has seen) but play no part in them.
    """
    return tuple(int(values[f"units_{i}"]) for i in range(int(values["num_layers"])))


def build_model(hp: keras_tuner.HyperParameters, *,
                num_classes: int = len(kaggle_layout.CLASS_NAMES), activation: str = "relu",
                standardize: bool = True) -> keras.Model:
    """Builds and compiles one trial's head from the hyperparameters, with the ordinary model code.

    The head's Normalization is fitted when the head is fitted (head_fit.fit_head), so a build
    alone (a smoke check, or the chief of a distributed search, which never fits) needs no data.

    Args:
      hp: the trial's hyperparameters; unseen ones are registered with train.py's defaults.
      num_classes: number of output classes.
      activation: activation of the hidden layers (not tuned; --head_activation).
      standardize: start the head with the Normalization of the 2,048 features, as training does.

    Returns:
      The compiled head: features [2048] -> float32 probabilities.
    """
    num_layers = hp.Int("num_layers", 1, MAX_LAYERS, default=2)
    units = tuple(
        # Powers of two from 32 to 1,024 (log sampling, step = factor 2).
        hp.Int(f"units_{i}", 32, 1024, step=2, sampling="log", default=DEFAULT_UNITS[i])
        for i in range(num_layers))
    dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.0)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log",
                             default=DEFAULT_LEARNING_RATE)
    head = model.build_head(hidden_units=units, activation=activation, dropout=dropout,
                            standardize=standardize, num_classes=num_classes)
    model.compile_model(head, learning_rate=learning_rate)
    return head


class HeadHyperModel(keras_tuner.HyperModel):
    """Builds trial heads and fits them on cached features, the batch size being a hyperparameter.

    Args:
      train: training-split features (None on the chief of a distributed search, which only
        runs the oracle and never fits).
      validation: validation-split features, the objective's data.
      num_classes: number of output classes.
      activation: activation of the hidden layers.
      standardize: standardise the features inside the head.
      precision_policy: the Keras dtype policy of the run (precision.apply_precision's result).
      batch_sizes: the global batch sizes to choose from; one value = not tuned.
      seed: the shuffle seed of the training features.
      strategy: the tf.distribute strategy the tuner builds trial heads under (KerasTuner calls
        `fit` outside its scope).
    """

    def __init__(self, *, train: features.FeatureSet | None, validation: features.FeatureSet | None,
                 num_classes: int, activation: str, standardize: bool, precision_policy: str,
                 batch_sizes: tuple[int, ...], seed: int, strategy=None):
        super().__init__(name="head")
        self._train, self._validation = train, validation
        self._num_classes, self._activation = num_classes, activation
        self._standardize = standardize
        self._policy = precision_policy
        self._batch_sizes = tuple(batch_sizes)
        self._seed = seed
        self._strategy = strategy

    def declare_hyperparameters(self, hp):
        # Declared up front (it is only read in fit), so the chief's oracle, which never fits,
        # knows the whole space.
        self._batch_size(hp)

    def _batch_size(self, hp) -> int:
        sizes = self._batch_sizes
        default = DEFAULT_BATCH_SIZE if DEFAULT_BATCH_SIZE in sizes else sizes[0]
        return hp.Choice("batch_size", list(self._batch_sizes), ordered=True, default=default)

    def build(self, hp):
        # KerasTuner calls keras.backend.clear_session() before every build, which also resets
        # the global dtype policy; set it again so trial heads compute as the trained head will.
        keras.mixed_precision.set_global_policy(self._policy)
        return build_model(hp, num_classes=self._num_classes, activation=self._activation,
                           standardize=self._standardize)

    def fit(self, hp, model, *args, **kwargs):
        """Fits the head on the cached training features, validating on the validation features.

        `kwargs` are KerasTuner's (epochs, initial_epoch for Hyperband, callbacks, verbose).

        Returns:
          The last epoch's metrics (loss, accuracy, val_loss, val_accuracy).
        """
        # The oracle's one summary per trial is the search's progress report; per-epoch lines of
        # every trial's fit would drown it.
        kwargs["verbose"] = 0
        batch_size = self._batch_size(hp)
        # The one per-trial line a worker of a distributed search prints (the chief shows tables).
        logging.info("Fitting head %s: dropout %.2f, learning rate %.3g, batch %d.",
                     ",".join(map(str, head_units(hp.values))), hp.get("dropout"),
                     hp.get("learning_rate"), batch_size)
        # The same fit as training's fast path: standardisation fitted on all training features,
        # the same compile, batching and shuffling.
        history = head_fit.fit_head(
            model, self._train.features, self._train.labels,
            validation=(self._validation.features, self._validation.labels),
            learning_rate=hp.get("learning_rate"), batch_size=batch_size, seed=self._seed,
            strategy=self._strategy, **kwargs)
        # The trial's score is its last epoch's val_accuracy, not KerasTuner's default (the best
        # epoch's): training keeps the last epoch's weights, and the best of ten noisy epochs
        # favours unstable heads (on the real data it predicted test accuracy worse).
        return {name: values[-1] for name, values in history.history.items()}
