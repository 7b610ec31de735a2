"""The KerasTuner tuners the search offers, all maximising val_accuracy."""

import keras_tuner

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVE = "val_accuracy"
HYPERBAND_FACTOR = 3


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
      seed: seed of the oracle's choices.

    Returns:
      The tuner.

    Raises:
      ValueError: for an unknown name.
    """
    common = dict(objective=keras_tuner.Objective(OBJECTIVE, "max"), seed=seed,
                  executions_per_trial=executions_per_trial, directory=directory,
                  project_name=project_name, overwrite=overwrite, distribution_strategy=strategy)
    if name == "hyperband":
        return keras_tuner.Hyperband(hypermodel, max_epochs=epochs, factor=HYPERBAND_FACTOR,
                                     **common)
    if name == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if name == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    raise ValueError(f"unknown tuner {name!r}; expected one of {TUNERS}")
