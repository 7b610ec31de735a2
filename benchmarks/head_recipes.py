"""Head recipes on the same cached features, several seeds each: the evidence for the defaults.

    python benchmarks/head_recipes.py --data_dir=../shared/data/kaggle-brain-tumor-mri-224

Extracts (or reads from the feature cache) the ResNet50 features of train[:90%] and test once,
at --image_size with --weights (training's fast path: the same backbone, seed and cache),
then trains each recipe's 512-128 head --seeds times (seeds 0..N-1) with
head_fit.fit_head, the fit training's fast path uses, and evaluates it on the test features.
Prints one line per recipe (mean, seed SD, min-max of test accuracy), then each recipe's
difference in test accuracy from the default with its 95% interval by a paired stratified
bootstrap over the test images (each image's correctness averaged over the seeds; "real" when
the interval excludes 0), and, last, one JSON object.
The recipes: the old default (Adam 1e-3 constant), the report's rate (1e-4 constant), the
current default (train.py's TrainConfig) and its neighbours. Each fit takes ~30-50 s on 2 CPU
cores at 128 px, so the default 6 recipes x 5 seeds take about 20 minutes after extraction.
"""

import json
import pathlib

import keras
import numpy as np
from absl import flags

from mri_tfdata.cli import runner
from mri_tfdata.cli.runner import require
from mri_tfdata.data import sources
from mri_tfdata.evaluation import bootstrap, evaluator
from mri_tfdata.model import architecture, feature_cache, head_fit
from mri_tfdata.runtime import precision
from mri_tfdata.training import trainer

flags.DEFINE_string("data_dir", "../shared/data/kaggle-brain-tumor-mri-224",
                    "Kaggle-layout root holding Training/ and Testing/.")
flags.DEFINE_integer("image_size", 128, "Image side.")
flags.DEFINE_string("weights", "none", "Backbone weights: none, imagenet or a file.")
flags.DEFINE_integer("seeds", 5, "Trainings of each recipe (seeds 0..N-1).")
flags.DEFINE_list("recipes", [], "Names of RECIPES to run; empty = all.")
flags.DEFINE_string("feature_cache", "auto", "Feature cache: auto or a folder.")

FLAGS = flags.FLAGS
_DEFAULT = trainer.TrainConfig()
RECIPES = {
    "old default: 1e-3 constant": dict(learning_rate=1e-3, schedule="constant",
                                       label_smoothing=0.0),
    "report's rate: 1e-4 constant": dict(learning_rate=1e-4, schedule="constant",
                                         label_smoothing=0.0),
    "3e-4 cosine": dict(learning_rate=3e-4, schedule="cosine", label_smoothing=0.0),
    "default": dict(learning_rate=_DEFAULT.learning_rate, schedule=_DEFAULT.schedule,
                    label_smoothing=_DEFAULT.label_smoothing),
    "1e-3 cosine, smoothing 0.1": dict(learning_rate=1e-3, schedule="cosine",
                                       label_smoothing=0.1),
    "default with dropout 0.2": dict(learning_rate=_DEFAULT.learning_rate,
                                     schedule=_DEFAULT.schedule,
                                     label_smoothing=_DEFAULT.label_smoothing, dropout=0.2),
}


def _features(split: str, backbone, cache_dir) -> feature_cache.FeatureSet:
    source = sources.load_folder_source(FLAGS.data_dir, split=split)
    return feature_cache.load_or_extract(source, backbone=backbone, image_size=FLAGS.image_size,
                                    cache_dir=cache_dir)


def run_recipe(recipe: dict, train, test, policy: str) -> tuple[list[float], np.ndarray]:
    """Test accuracies of the recipe's 512-128 head, one per seed, and each test image's
    correctness averaged over the seeds."""
    recipe = dict(recipe)
    dropout = recipe.pop("dropout", 0.0)
    accuracies, correct = [], []
    for seed in range(FLAGS.seeds):
        keras.utils.set_random_seed(seed)
        keras.mixed_precision.set_global_policy(policy)
        head = architecture.build_head(hidden_units=(512, 128), dropout=dropout, standardize=True)
        head_fit.fit_head(head, train.features, train.labels, validation=None,
                          epochs=_DEFAULT.epochs, batch_size=_DEFAULT.batch_size,
                          weight_decay=0.0, seed=seed, verbose=0, **recipe)
        predicted = evaluator.head_probabilities(head, test.features).argmax(axis=1)
        accuracies.append(float(np.mean(predicted == test.labels)))
        correct.append(predicted == test.labels)
    return accuracies, np.mean(correct, axis=0)


def paired_lines(correct: dict, labels) -> list[str]:
    """Each recipe's test accuracy minus the default's, with its paired bootstrap interval."""
    lines = []
    for name, per_image in correct.items():
        if name == "default" or "default" not in correct:
            continue
        found = bootstrap.paired_difference(labels, per_image, correct["default"])
        low, high = found["interval"]
        lines.append(f"{name} - default: {found['difference']:+.4f} (95% CI {low:+.4f} to "
                     f"{high:+.4f}; {'real' if found['excludes_zero'] else 'within noise'})")
    return lines


def main(argv):
    require(len(argv) == 1, f"Unexpected arguments {argv[1:]}.")
    require(pathlib.Path(FLAGS.data_dir, "Training").is_dir(),
            f"--data_dir={FLAGS.data_dir} holds no Training/ folder; pass the Kaggle dataset root.")
    unknown = sorted(set(FLAGS.recipes) - RECIPES.keys())
    require(not unknown, f"Unknown --recipes {unknown}; choose from {sorted(RECIPES)}.")
    policy = precision.apply_precision("auto")
    # As training seeds before it builds the classifier: the same random backbone and features.
    keras.utils.set_random_seed(0)
    backbone = architecture.build_backbone(image_size=FLAGS.image_size, weights=FLAGS.weights)
    cache_dir = feature_cache.resolve_cache_dir(FLAGS.feature_cache)
    train, test = (_features(split, backbone, cache_dir) for split in ("train[:90%]", "test"))
    found, correct = {}, {}
    for name in FLAGS.recipes or RECIPES:
        accuracies, correct[name] = run_recipe(RECIPES[name], train, test, policy)
        found[name] = accuracies
        # ddof=1: the seed SD as benchmarks/README.md's tables give it.
        print(f"{name}: test accuracy {np.mean(accuracies):.4f} +- "
              f"{np.std(accuracies, ddof=1):.4f} ({min(accuracies):.4f}-{max(accuracies):.4f})",
              flush=True)
    print("\n".join(paired_lines(correct, test.labels)))
    print(json.dumps({name: {"mean": round(float(np.mean(a)), 4),
                             "std": round(float(np.std(a, ddof=1)), 4),
                             "seeds": [round(x, 4) for x in a]} for name, a in found.items()}))


if __name__ == "__main__":
    runner.run(main)
