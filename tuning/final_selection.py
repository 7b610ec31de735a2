"""The search's final selection: the finalists re-scored by cross-validation into selection.csv."""

import time
from pathlib import Path

import numpy as np
from absl import logging

from mri_tfdata.evaluation import bootstrap
from tuning import results, selection
from tuning.search_data import SearchData


def run(candidates: list[selection.Candidate], search_data: SearchData, *, folds: int, seed: int,
        metric: str, model_spec, policy: str, strategy, project_dir: Path,
        splits: str) -> tuple[selection.Candidate, str]:
    """Cross-validates the candidates on both splits pooled; returns the winner and the reason
    best.flags gives for it. Fold scores already in the project's store are reused.

    Args:
      candidates: the default head first, then the best trials (selection.finalists).
      search_data: the training and validation features.
      folds, seed: the cross-validation's folds and shuffle seed.
      metric: one of selection.FOLD_METRICS.
      model_spec: the head's fixed shape (activation, standardisation).
      policy: the precision policy in force.
      strategy: the tf.distribute strategy of the fits.
      project_dir: the search's folder (selection.json, selection.csv).
      splits: the pooled splits as the reason names them, e.g. "train[:85%] + train[85%:]".
    """
    pooled = search_data.pooled()
    # Byte-identical images (the Kaggle training split holds duplicate files) share a fold.
    groups = search_data.content_groups()
    store = selection.ScoreStore(project_dir / selection.SCORES_JSON,
                                 examples=len(pooled.labels), groups=groups, folds=folds,
                                 seed=seed)
    logging.info("Final selection: %d candidates x %d folds on %d examples (%d distinct images).",
                 len(candidates), folds, len(pooled.labels), int(groups.max()) + 1)
    start = time.perf_counter()
    winner, scores = selection.select(
        candidates, pooled, groups=groups, folds=folds, seed=seed, metric=metric, store=store,
        strategy=strategy, precision_policy=policy, num_classes=len(search_data.sources[0].class_names),
        activation=model_spec.head_activation, standardize=model_spec.standardize_features)
    logging.info("Final selection took %.1f s.", time.perf_counter() - start)
    table = selection.table_rows(candidates, scores, winner)
    results.write_csv(table, project_dir / selection.SELECTION_CSV)
    print(selection.summary(table, folds=folds, examples=len(pooled.labels), metric=metric),
          flush=True)
    mean = float(np.mean(scores[winner.key][metric]))
    versus = against_default(winner, candidates[0], scores, labels=pooled.labels, metric=metric)
    if versus:
        print(versus, flush=True)
    return winner, (f"Chosen by held-out {metric} in {folds}-fold cross-validation on {splits} "
                    f"({len(pooled.labels)} examples) among the default head and the "
                    f"{len(candidates) - 1} best trials: {winner.label}, mean {metric} "
                    f"{mean:.4f} ({selection.SELECTION_CSV}).{' ' + versus if versus else ''}")


def against_default(winner: selection.Candidate, default: selection.Candidate,
                    scores: dict, *, labels, metric: str) -> str:
    """Whether the winner's held-out `metric` differs from the default head's by more than chance:
    the paired stratified bootstrap of the per-example held-out scores ("" when the winner is the
    default, or when the scores were stored by a version that kept no per-example scores)."""
    key = selection.PER_EXAMPLE[metric]
    if winner is default or key not in scores[winner.key] or key not in scores[default.key]:
        return ""
    found = bootstrap.paired_difference(labels, scores[winner.key][key], scores[default.key][key])
    low, high = found["interval"]
    verdict = ("a real difference" if found["excludes_zero"] else
               "within what resampling the examples gives, so not shown to be better")
    return (f"Against the default head, {found['difference']:+.4f} in held-out {metric} per "
            f"example (95% CI {low:+.4f} to {high:+.4f}, paired stratified bootstrap of "
            f"{found['resamples']} resamples): {verdict}.")
