"""The KerasTuner tuners the search offers, all minimising the held-out calibrated
cross-entropy."""

import json
import zlib

import keras
import keras_tuner
from keras_tuner.src import utils as keras_tuner_utils

from mri_tfdata.core import atomic
from mri_tfdata.core.errors import UserError
from mri_tfdata.evaluation import calibration
from tuning.choices import TUNERS

# The cross-entropy on the validation split after temperature scaling (mri_tfdata.evaluation.calibration,
# written into the logs by HeadHyperModel.fit): the measure the final selection ranks by. Unlike
# `val_loss` it does not depend on the label smoothing of the loss, and unlike the plain
# `val_cross_entropy` it does not penalise the lower confidence that smoothing trains into a head
# (which on the real data ranked the best-testing head last). Lower is better.
OBJECTIVE = keras_tuner.Objective(f"val_{calibration.METRIC_NAME}", "min")
HYPERBAND_FACTOR = 3


def _save_json_atomically(path, obj) -> str:
    """KerasTuner's save_json, but whole or not at all: a temp file, fsync, then a rename."""
    text = json.dumps(obj)
    atomic.write_atomic(path, text)
    return text


# KerasTuner writes oracle.json and every trial.json in place (keras_tuner utils.save_json, used
# by every Stateful save), so a kill during a write (which the tests met) leaves truncated JSON
# that no rerun can reload. Its writes go through this one function; make them atomic.
keras_tuner_utils.save_json = _save_json_atomically


def trial_number(trial_id: str) -> int:
    """The number KerasTuner's log gives a trial ("Trial #1" is trial_id "00")."""
    return int(trial_id) + 1


def trial_seed(seed: int, trial_id: str, execution: int) -> int:
    """The random seed of one execution of one trial: a function of the search's seed, the trial
    and the execution alone, never of the trials run before it in the same process."""
    return zlib.crc32(f"{seed}/{trial_id}/{execution}".encode()) % 2**31


def _seeded(tuner_class: type) -> type:
    """`tuner_class` with every trial execution seeded by trial_seed before its head is built.

    Without it a trial's initial weights depend on the random state the trials before it left in
    this process, so a search resumed after a kill fits other heads than an uninterrupted one and
    ends elsewhere.
    """

    class Seeded(tuner_class):
        def __init__(self, *args, search_seed: int, **kwargs):
            super().__init__(*args, **kwargs)
            self._search_seed = search_seed
            self._executions: dict[str, int] = {}

        # KerasTuner's documented hook for what happens around one execution's build and fit.
        def _build_and_fit_model(self, trial, *args, **kwargs):
            execution = self._executions.get(trial.trial_id, 0)
            self._executions[trial.trial_id] = execution + 1
            keras.utils.set_random_seed(trial_seed(self._search_seed, trial.trial_id, execution))
            return super()._build_and_fit_model(trial, *args, **kwargs)

    Seeded.__name__ = tuner_class.__name__
    return Seeded


def bayesian_initial_points(max_trials: int) -> int:
    """Random trials before the Gaussian process proposes the rest: half of them, at least 3.

    KerasTuner's default is 3 per dimension of the space, about 27 for this one, so a 20-trial
    "bayesian" search was a random search: no trial was ever proposed by the model.
    """
    return max(3, max_trials // 2)


def make_tuner(name: str, hypermodel: keras_tuner.HyperModel, *, max_trials: int, epochs: int,
               executions_per_trial: int, directory: str, project_name: str, overwrite: bool,
               strategy, seed: int) -> keras_tuner.Tuner:
    """Creates the tuner; with overwrite=False it reloads a search found in directory/project_name.

    Args:
      name: one of TUNERS.
      hypermodel: builds and fits the trial models.
      max_trials: trials in all (random, bayesian); hyperband derives its own from `epochs`.
      epochs: hyperband's max_epochs (the other tuners get epochs from `search`).
      executions_per_trial: fits per trial, their objectives averaged.
      directory: parent folder of the project.
      project_name: the search's folder in `directory`.
      overwrite: delete an existing project instead of resuming it.
      strategy: the tf.distribute strategy every trial model is built and fitted under.
      seed: seed of the oracle's choices and of every trial's initial weights (trial_seed).

    Returns:
      The tuner.

    Raises:
      ValueError: for an unknown name.
    """
    # KerasTuner's oracles take a seed of 0 for "none" and draw a random one: +1 keeps seed=0
    # (the default) reproducible.
    common = {"objective": OBJECTIVE, "seed": seed + 1,
              "executions_per_trial": executions_per_trial, "directory": directory,
              "project_name": project_name, "overwrite": overwrite,
              "distribution_strategy": strategy, "search_seed": seed}
    if name == "hyperband":
        return _seeded(keras_tuner.Hyperband)(hypermodel, max_epochs=epochs,
                                              factor=HYPERBAND_FACTOR, **common)
    if name == "random":
        return _seeded(keras_tuner.RandomSearch)(hypermodel, max_trials=max_trials, **common)
    if name == "bayesian":
        return _seeded(keras_tuner.BayesianOptimization)(
            hypermodel, max_trials=max_trials,
            num_initial_points=bayesian_initial_points(max_trials), **common)
    raise ValueError(f"unknown tuner {name!r}; expected one of {TUNERS}")


def open_tuner(name: str, hypermodel: keras_tuner.HyperModel, **settings) -> keras_tuner.Tuner:
    """make_tuner, with the two ways it fails on a user's machine as one paragraph each.

    Raises:
      UserError: the tuner's optional packages are missing, or the search on disk cannot be
        reloaded.
    """
    try:
        return make_tuner(name, hypermodel, **settings)
    except ImportError as e:  # BayesianOptimization's optional scipy/scikit-learn.
        raise UserError(f"tuner={name!r} cannot start: {e} Install them with "
                        "pip install 'keras-tuner[bayesian]', or use tuner='random'.") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        # Well-formed JSON with missing or wrong fields (check_tuner_files catches bad JSON).
        detail = str(e).splitlines()[0] if str(e) else ""
        folder = f"{settings['directory']}/{settings['project_name']}"
        raise UserError(
            f"KerasTuner cannot reload the search in {folder} from its oracle.json and "
            f"trial_*/trial.json files ({type(e).__name__}: {detail}). Restore them from a "
            "backup, or pass overwrite=True to start afresh.") from None
