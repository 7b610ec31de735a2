"""Picks the final head: the search's best trials and the default head, re-scored by k-fold CV."""

import dataclasses
import hashlib
import json
from pathlib import Path

import keras
import keras_tuner
import numpy as np
from absl import logging
from sklearn.model_selection import StratifiedGroupKFold

from mri_tfdata.core import atomic
from mri_tfdata.evaluation import calibration, evaluator
from mri_tfdata.model.feature_cache import FeatureSet
from tuning import results, tuners
from tuning.hypermodel import HeadHyperModel, head_units

SELECTION_CSV = "selection.csv"
# Fold scores already computed, so that a rerun of a finished search does not fit them again.
SCORES_JSON = "selection.json"
DEFAULT_LABEL = "default"


# The hyperparameters a candidate's fold scores depend on (with its head_units).
RECIPE_KEYS = ("dropout", "learning_rate", "lr_schedule", "label_smoothing", "weight_decay",
               "batch_size", "epochs")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One head to re-score: its hyperparameter values (build_model's and declare_recipe's, with
    batch_size and epochs always present)."""

    label: str  # "default" or "trial 7" (KerasTuner's "Trial #7")
    values: dict

    @property
    def head_units(self) -> tuple[int, ...]:
        return head_units(self.values)

    @property
    def batch_size(self) -> int:
        return int(self.values["batch_size"])

    @property
    def epochs(self) -> int:
        return int(self.values["epochs"])

    @property
    def trial(self) -> int | None:
        """The trial number, or None for the default head."""
        return None if self.label == DEFAULT_LABEL else int(self.label.split()[-1])

    @property
    def recipe(self) -> dict:
        """The values of RECIPE_KEYS, normalised (a stepped float like 0.30000000000000004 is
        rounded) for keys and tables."""
        return {k: (round(float(self.values[k]), 9) if isinstance(self.values[k], float)
                    else self.values[k]) for k in RECIPE_KEYS}

    @property
    def key(self) -> str:
        """What the fold scores depend on: the head, not its label (a trial may be the default)."""
        return json.dumps({"head_units": self.head_units, **self.recipe}, sort_keys=True)


def default_candidate(*, units: tuple[int, ...], dropout: float, learning_rate: float,
                      schedule: str, label_smoothing: float, weight_decay: float,
                      batch_size: int, epochs: int) -> Candidate:
    """The head and recipe training would use without the search (train.py's defaults)."""
    values = {"num_layers": len(units), **{f"units_{i}": int(u) for i, u in enumerate(units)},
              "dropout": float(dropout), "learning_rate": float(learning_rate),
              "lr_schedule": schedule, "label_smoothing": float(label_smoothing),
              "weight_decay": float(weight_decay), "batch_size": int(batch_size),
              "epochs": int(epochs)}
    return Candidate(DEFAULT_LABEL, values)


def trial_candidate(row: dict, *, epochs: int) -> Candidate:
    """The head of one results row (results.trial_rows). Hyperband's trials carry their epochs
    (tuner/epochs); a trial without an epochs value ran `epochs`."""
    layers = int(row["num_layers"])
    values = {"num_layers": layers, **{f"units_{i}": int(row[f"units_{i}"]) for i in range(layers)},
              "dropout": float(row["dropout"]), "learning_rate": float(row["learning_rate"]),
              "lr_schedule": row["lr_schedule"], "label_smoothing": float(row["label_smoothing"]),
              "weight_decay": float(row["weight_decay"]), "batch_size": int(row["batch_size"]),
              "epochs": int(row.get("epochs") or row.get("tuner/epochs") or epochs)}
    return Candidate(f"trial {row['trial']}", values)


def finalists(rows: list[dict], objective: keras_tuner.Objective, *, top: int,
              default: Candidate, epochs: int) -> list[Candidate]:
    """The default head first, then the `top` best completed trials that differ from it.

    A trial with the default's head and recipe is the default itself, not a second candidate.
    """
    chosen, keys = [default], {default.key}
    for row in results.ranked(rows, objective):
        if len(chosen) > top:
            break
        candidate = trial_candidate(row, epochs=epochs)
        if candidate.key not in keys:
            chosen.append(candidate)
            keys.add(candidate.key)
    return chosen


def content_groups(hashes) -> np.ndarray:
    """Group ids of examples by content: equal hashes (byte-identical files) share an id."""
    return np.unique(np.asarray(hashes), return_inverse=True)[1].reshape(-1)


def fold_indices(labels: np.ndarray, *, groups: np.ndarray, folds: int,
                 seed: int) -> list[tuple[np.ndarray, ...]]:
    """(train, held-out) index pairs of a stratified, grouped k-fold split.

    Each class is spread as evenly as the groups allow, and every group (byte-identical images:
    content_groups) lies in one fold, so no held-out image is also a training image. Train holds
    207 duplicate files; split apart, they would score a memorising head on its training images.
    """
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def _subset(feature_set: FeatureSet, index: np.ndarray) -> FeatureSet:
    return FeatureSet(feature_set.features[index], feature_set.labels[index], key=None, path=None,
                      from_cache=False)


# What a fold reports, from the held-out examples: the name of each in the fit's logs.
# "loss" is the cross-entropy after temperature scaling (tuners.OBJECTIVE's metric,
# mri_tfdata.evaluation.calibration): the fit's own val_loss includes the label smoothing, and the plain
# val_cross_entropy penalises the lower confidence smoothing trains into a head without its
# accuracy being any lower, so ranking by either is biased by the smoothing.
FOLD_METRICS = {"loss": tuners.OBJECTIVE.name, "accuracy": "val_accuracy"}
# The ranking rule of each metric: lower cross-entropy is better, higher accuracy is.
LOWER_IS_BETTER = {"loss": True, "accuracy": False}
# Each example's held-out score, from the fold that held it out: metric -> this key.
PER_EXAMPLE = {"loss": "held_out_loss", "accuracy": "held_out_correct"}
FoldScores = dict[str, list[float]]  # metric -> one value per fold (PER_EXAMPLE: per example)


def cross_validate(candidate: Candidate, data: FeatureSet, *, groups: np.ndarray,
                   folds: int, seed: int, strategy, precision_policy: str, num_classes: int,
                   activation: str, standardize: bool) -> FoldScores:
    """Trains the candidate's head once per fold, as a trial trains; returns its held-out
    calibrated cross-entropy ("loss", FOLD_METRICS) and accuracy per fold, and each example's
    held-out calibrated cross-entropy and correctness (PER_EXAMPLE), for paired comparisons.

    Every candidate sees the same folds and, per fold, the same seed, so candidates differ only in
    their hyperparameters and their scores can be compared fold by fold.
    """
    hp = keras_tuner.HyperParameters()
    hp.values.update(candidate.values)
    scores = {metric: [] for metric in FOLD_METRICS}
    per_example = {key: np.zeros(len(data.labels)) for key in PER_EXAMPLE.values()}
    for fold, (train_index, held_out_index) in enumerate(
            fold_indices(data.labels, groups=groups, folds=folds, seed=seed)):
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed + fold)
        fold_model = HeadHyperModel(
            train=_subset(data, train_index), validation=_subset(data, held_out_index),
            num_classes=num_classes, activation=activation,
            dropout=float(candidate.values["dropout"]), standardize=standardize,
            precision_policy=precision_policy, batch_sizes=(candidate.batch_size,),
            epochs=(candidate.epochs,), seed=seed + fold, strategy=strategy)
        with strategy.scope():
            head = fold_model.build(hp)
        metrics = fold_model.fit(hp, head)
        for metric, name in FOLD_METRICS.items():
            scores[metric].append(float(metrics[name]))
        held_out = _subset(data, held_out_index)
        probabilities = evaluator.head_probabilities(head, held_out.features)
        per_example[PER_EXAMPLE["loss"]][held_out_index] = calibration.per_example_nll(
            probabilities, held_out.labels, float(metrics["val_temperature"]))
        per_example[PER_EXAMPLE["accuracy"]][held_out_index] = (
            probabilities.argmax(axis=1) == held_out.labels)
    return {**scores, **{key: values.tolist() for key, values in per_example.items()}}


def choose(candidates: list[Candidate], scores: dict[str, FoldScores], *,
           metric: str) -> Candidate:
    """The candidate with the best mean `metric` over the folds; on a tie the earlier (the
    default)."""
    sign = -1 if LOWER_IS_BETTER[metric] else 1
    return max(candidates,
               key=lambda c: (sign * np.mean(scores[c.key][metric]), -candidates.index(c)))


class ScoreStore:
    """Fold scores by candidate key, in SCORES_JSON, for one data size, fold count and seed."""

    def __init__(self, path: Path, *, examples: int, groups: np.ndarray, folds: int, seed: int):
        self._path = path
        # The folds themselves depend on the groups; scores of other folds are not comparable.
        grouping = hashlib.sha256(np.asarray(groups, np.int64).tobytes()).hexdigest()[:16]
        self._setting = {"examples": examples, "groups": grouping, "folds": folds, "seed": seed,
                         "metrics": sorted(FOLD_METRICS), "objective": FOLD_METRICS["loss"]}
        self.scores: dict[str, FoldScores] = {}
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # None yet, or unreadable: the scores are computed again.
        recorded = stored.get("setting") if isinstance(stored, dict) else None
        if recorded == self._setting:
            self.scores = stored.get("scores", {})
        elif isinstance(recorded, dict):
            # Never reuse scores of another measure (e.g. the plain val_cross_entropy of earlier
            # versions) or other folds: they are not comparable; the candidates are fitted again.
            changed = sorted(k for k in recorded.keys() | self._setting.keys()
                             if recorded.get(k) != self._setting.get(k))
            logging.warning("Selection: the fold scores in %s were made with other settings (%s; "
                            "this selection ranks by %s); they are not reused but computed again "
                            "and replaced.", path, ", ".join(changed), self._setting["objective"])

    def add(self, key: str, fold_scores: FoldScores) -> None:
        self.scores[key] = fold_scores
        # Atomic: a killed run leaves the last complete file.
        atomic.write_json(self._path, {"setting": self._setting, "scores": self.scores})


def select(candidates: list[Candidate], data: FeatureSet, *, groups: np.ndarray,
           folds: int, seed: int, metric: str, store: ScoreStore,
           **fit_args) -> tuple[Candidate, dict[str, FoldScores]]:
    """Cross-validates every candidate not yet in `store`; returns the winner by `metric` and
    all scores.

    `fit_args` are cross_validate's strategy, precision_policy, num_classes, activation and
    standardize.
    """
    for candidate in candidates:
        if candidate.key in store.scores:
            logging.info("Selection: %s scored before (%s), not fitted again.", candidate.label,
                         SCORES_JSON)
            continue
        fold_scores = cross_validate(candidate, data, groups=groups, folds=folds, seed=seed,
                                     **fit_args)
        logging.info("Selection: %s, mean held-out calibrated cross-entropy %.4f and accuracy "
                     "%.4f over %d folds.",
                     candidate.label, np.mean(fold_scores["loss"]),
                     np.mean(fold_scores["accuracy"]), folds)
        store.add(candidate.key, fold_scores)
    scores = {c.key: store.scores[c.key] for c in candidates}
    return choose(candidates, scores, metric=metric), scores


def table_rows(candidates: list[Candidate], scores: dict[str, FoldScores],
               winner: Candidate) -> list[dict]:
    """The selection table: one row per candidate, its mean, spread and fold scores."""
    table = []
    for c in candidates:
        row = {"candidate": c.label, "chosen": c is winner,
               "head_units": ",".join(map(str, c.head_units)), **c.recipe}
        for metric in FOLD_METRICS:
            fold_scores = scores[c.key][metric]
            row[f"mean_{metric}"] = float(np.mean(fold_scores))
            row[f"std_{metric}"] = float(np.std(fold_scores))
        for metric in FOLD_METRICS:
            row.update({f"{metric}_fold_{i}": s for i, s in enumerate(scores[c.key][metric])})
        table.append(row)
    return table


def summary(table: list[dict], *, folds: int, examples: int, metric: str) -> str:
    """A plain-text table of the candidates, best first by `metric`, the chosen one marked."""
    sign = 1 if LOWER_IS_BETTER[metric] else -1
    measure = {"loss": f"loss ({FOLD_METRICS['loss']})"}.get(metric, metric)
    lines = [(f"Final selection by held-out {measure}, {folds}-fold cross-validation on "
              f"{examples} training examples (identical images in one fold):"),
             (f"  {'candidate':>10} {'mean_loss':>9} {'mean_acc':>9} {'head_units':>10} "
              f"{'lr':>9} {'schedule':>9} {'smooth':>6} {'decay':>6} {'batch':>5} {'epochs':>6}")]
    for r in sorted(table, key=lambda r: sign * r[f"mean_{metric}"]):
        mark = "*" if r["chosen"] else " "
        lines.append(f"{mark} {r['candidate']:>10} {r['mean_loss']:>9.4f} "
                     f"{r['mean_accuracy']:>9.4f} {r['head_units']:>10} "
                     f"{r['learning_rate']:>9.3g} {r['lr_schedule']:>9} "
                     f"{r['label_smoothing']:>6.2f} {r['weight_decay']:>6.0e} "
                     f"{r['batch_size']:>5} {r['epochs']:>6}")
    return "\n".join(lines)
