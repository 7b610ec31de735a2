"""Empirical coverage of the conformal prediction sets, and the bootstrap accuracy interval, on
real data.

    python benchmarks/conformal_coverage.py --data_dir=../shared/data/kaggle-brain-tumor-mri-224

Extracts (or reads from the feature cache) the ResNet50 features of train[:90%], train[90%:]
and test at --image_size with --weights (training's fast path: the same backbone, seed and
cache), fits the default head once (train.py's TrainConfig recipe, seed 0), then:
  1. pools the images no head saw (train[90%:] and test) and, --splits times, draws at random as
     many calibration images as train[90%:] holds, calibrates on them and measures the coverage
     of the 90% and 95% sets on the rest (LAC, training's score, and APS); target: the mean within
     2 points of the level, no split below it by more than 4 points;
  2. calibrates on train[90%:] and tests on test, as training does;
  3. compares the stratified bootstrap interval of the test accuracy with the Wilson interval;
  4. times what evaluation adds: the intervals and the conformal report of the test split.
"""

import json
import math
import time

import keras
import numpy as np
from absl import flags
from scipy import stats

from mri_tfdata.cli import runner
from mri_tfdata.cli.runner import require
from mri_tfdata.data import sources
from mri_tfdata.evaluation import bootstrap, conformal, evaluator
from mri_tfdata.model import architecture, feature_cache, head_fit
from mri_tfdata.runtime import precision
from mri_tfdata.training import trainer

flags.DEFINE_string("data_dir", "../shared/data/kaggle-brain-tumor-mri-224",
                    "Kaggle-layout root holding Training/ and Testing/.")
flags.DEFINE_integer("image_size", 128, "Image side.")
flags.DEFINE_string("weights", "none", "Backbone weights: none, imagenet or a file.")
flags.DEFINE_integer("splits", 20, "Random calibration/test splits of the pooled held-out images.")
flags.DEFINE_string("feature_cache", "auto", "Feature cache: auto or a folder.")

FLAGS = flags.FLAGS
_CONFIG = trainer.TrainConfig()


def _features(split: str, backbone, cache_dir) -> feature_cache.FeatureSet:
    source = sources.load_folder_source(FLAGS.data_dir, split=split)
    return feature_cache.load_or_extract(source, backbone=backbone, image_size=FLAGS.image_size,
                                         cache_dir=cache_dir)


def _coverage(probabilities, labels, calibration, test, alpha: float, score: str) -> float:
    threshold = conformal.calibrate(probabilities[calibration], labels[calibration], (alpha,),
                                    split="random", score=score)["alphas"][str(alpha)]
    sets = conformal.prediction_sets(probabilities[test], threshold, score)
    return float(sets[np.arange(len(test)), labels[test]].mean())


def random_split_table(probabilities, labels, calibration_size: int) -> tuple[list[str], dict]:
    """One row per (score, level): mean, SD, min and max coverage over the random splits; and the
    same as {score: {level: {...}}}."""
    rng = np.random.default_rng(0)
    splits = [rng.permutation(len(labels)) for _ in range(FLAGS.splits)]
    rows = [f"{'score':>5} {'level':>5} {'mean':>7} {'sd':>6} {'min':>7} {'max':>7}  target met"]
    table = {}
    for score in conformal.SCORES:
        for alpha in conformal.DEFAULT_ALPHAS:
            found = np.array([_coverage(probabilities, labels, order[:calibration_size],
                                        order[calibration_size:], alpha, score)
                              for order in splits])
            level = 1 - alpha
            met = abs(found.mean() - level) <= 0.02 and found.min() >= level - 0.04
            rows.append(f"{score:>5} {level:>5.2f} {found.mean():>7.4f} {found.std(ddof=1):>6.4f} "
                        f"{found.min():>7.4f} {found.max():>7.4f}  {'yes' if met else 'NO'}")
            table.setdefault(score, {})[conformal.level_name(alpha)] = {
                "mean": round(float(found.mean()), 4), "sd": round(float(found.std(ddof=1)), 4),
                "min": round(float(found.min()), 4), "max": round(float(found.max()), 4),
                "target_met": bool(met)}
    return rows, table


def _wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def main(argv):
    require(len(argv) == 1, f"Unexpected arguments {argv[1:]}.")
    require(FLAGS.splits >= 1, "--splits must be at least 1.")
    policy = precision.apply_precision("auto")
    keras.utils.set_random_seed(0)  # As training seeds: the same random backbone and features.
    backbone = architecture.build_backbone(image_size=FLAGS.image_size, weights=FLAGS.weights)
    cache_dir = feature_cache.resolve_cache_dir(FLAGS.feature_cache)
    train, validation, test = (_features(split, backbone, cache_dir)
                               for split in (_CONFIG.train_split, _CONFIG.validation_split, "test"))
    keras.mixed_precision.set_global_policy(policy)
    head = architecture.build_head(hidden_units=(512, 128), standardize=True)
    head_fit.fit_head(head, train.features, train.labels, validation=None,
                      learning_rate=_CONFIG.learning_rate, epochs=_CONFIG.epochs,
                      batch_size=_CONFIG.batch_size, schedule=_CONFIG.schedule,
                      label_smoothing=_CONFIG.label_smoothing, seed=0, verbose=0)
    val_p = evaluator.head_probabilities(head, validation.features)
    test_p = evaluator.head_probabilities(head, test.features)
    pooled_p = np.concatenate([val_p, test_p])
    pooled_labels = np.concatenate([validation.labels, test.labels])
    print(f"Coverage over {FLAGS.splits} random splits of the {len(pooled_labels)} held-out "
          f"images ({len(val_p)} calibration, {len(pooled_labels) - len(val_p)} test each), "
          f"{FLAGS.image_size} px, weights={FLAGS.weights}:")
    rows, table = random_split_table(pooled_p, pooled_labels, len(val_p))
    print("\n".join(rows))

    calibration = conformal.calibrate(val_p, validation.labels, split=_CONFIG.validation_split)
    start = time.perf_counter()
    found = evaluator.uncertainty_metrics(test.labels, test_p, [str(i) for i in range(4)],
                                          resamples=bootstrap.DEFAULT_RESAMPLES,
                                          calibration=calibration)
    seconds = time.perf_counter() - start
    print(f"Calibrated on {_CONFIG.validation_split} ({len(val_p)}), tested on test "
          f"({len(test_p)}), as training does:")
    for name, level in found["conformal"]["levels"].items():
        print(f"  {name}: coverage {level['coverage']:.4f} {level['coverage_interval']}, mean "
              f"set size {level['mean_set_size']:.3f}, referred {level['referred_fraction']:.3f}, "
              f"accuracy of the rest {level['accuracy_not_referred']:.4f}")
    right = int(np.sum(test_p.argmax(axis=1) == test.labels))
    low, high = found["intervals"]["accuracy"]
    wilson = _wilson(right, len(test_p))
    print(f"Test accuracy {right / len(test_p):.4f}: bootstrap {low:.4f}-{high:.4f}, Wilson "
          f"{wilson[0]:.4f}-{wilson[1]:.4f}; largest endpoint difference "
          f"{max(abs(low - wilson[0]), abs(high - wilson[1])):.4f} (target < 0.005).")
    print(f"Intervals ({bootstrap.DEFAULT_RESAMPLES} resamples) and conformal report of the "
          f"test split: {seconds:.2f} s.")
    print(json.dumps({"random_splits": table, "as_training": {
        name: {key: level[key] for key in ("coverage", "mean_set_size", "referred_fraction")}
        for name, level in found["conformal"]["levels"].items()},
        "accuracy": round(right / len(test_p), 4), "bootstrap": [round(low, 4), round(high, 4)],
        "wilson": [round(w, 4) for w in wilson], "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    runner.run(main)
