"""A 20-trial head search against 2 epochs of the reference recipe, and its head vs the default.

    python benchmarks/tuning_search.py --data_dir=../shared/data/kaggle-brain-tumor-mri-224

1. The reference recipe's cost: its every epoch runs the frozen ResNet50 over 5,708 training and
   1,311 test (validation) images at 256 px in float32. The forward rate is measured here on
   --reference_images random images, and 2 epochs = 2 x 7,019 / rate. This leaves out decoding
   and the head, so it underestimates the reference, which makes the comparison harder for us.
2. The search, timed as a user runs it: `python -m tuning.search` in a fresh process with an
   empty feature cache, so the time includes start-up and extracting the features of
   train[:85%] and train[85%:] at --image_size.
   The search ends with its final selection (tuning.selection: the best trials and the default
   head re-scored by held-out cross-entropy after temperature scaling in 3-fold cross-validation
   on train), which decides best.flags.
3. Test accuracy: the search's chosen head (best.flags) and the default head and recipe
   (train.py's: 512-128, no dropout, Adam 3e-4 cosine-decayed over 10 epochs, label smoothing
   0.1, batch 32), each trained --seeds times (seeds 0..N-1) with head_fit.fit_head, as
   `mri-train --flagfile=best.flags` trains it: on the features of train.py's training split
   (--final_train_split, train[:90%]; the search itself holds out train[85%:]) and evaluated on
   the test split's features (both extracted here, once, outside the search's time). Also,
   for comparison, the trial with the best objective (the pick without the final selection),
   when it is another head.
The last line printed is one JSON object with all the numbers.
"""

import csv
import json
import pathlib
import re
import sys
import tempfile
import time

import keras
import keras_tuner
import numpy as np
import timed_command  # benchmarks/, beside this script
from absl import flags

from mri_tfdata.cli import runner
from mri_tfdata.cli.runner import require
from mri_tfdata.data import sources
from mri_tfdata.evaluation import evaluator
from mri_tfdata.model import architecture, feature_cache, head_fit
from mri_tfdata.runtime import precision
from tuning import hypermodel, results, selection, tuners

flags.DEFINE_string("data_dir", "../shared/data/kaggle-brain-tumor-mri-224",
                    "Kaggle-layout root holding Training/ and Testing/.")
flags.DEFINE_integer("image_size", 128, "Image side of the search.")
flags.DEFINE_integer("max_trials", 20, "Trials of the search.")
flags.DEFINE_enum("tuner", "bayesian", ("random", "bayesian", "hyperband"), "KerasTuner algorithm.")
flags.DEFINE_integer("epochs", 10, "Epochs per trial.")
flags.DEFINE_integer("executions_per_trial", 1,
                     "Fits per trial, averaged. 2 doubled the search's time here without picking "
                     "a head that tested better (one fit's validation score on 856 images is "
                     "noisy).")
flags.DEFINE_integer("seeds", 5, "Trainings of each head for the test-accuracy comparison.")
flags.DEFINE_integer("reference_images", 96, "Images timed for the reference forward rate.")
flags.DEFINE_string("final_train_split", "train[:90%]",
                    "Split the compared heads are trained on for their test accuracy: train.py's "
                    "default --train_split, where a user trains the chosen head.")
flags.DEFINE_string("out", None, "Working folder (default: a new temporary one).")

FLAGS = flags.FLAGS
REFERENCE_SIZE = 256
REFERENCE_IMAGES_PER_EPOCH = 5708 + 1311  # Training + Testing (the report validated on test).


def reference_rate(num_images: int) -> float:
    """Images/s of the reference's frozen ResNet50 forward pass (256 px, float32, batch 32)."""
    keras.mixed_precision.set_global_policy("float32")
    backbone = architecture.build_backbone(image_size=REFERENCE_SIZE, weights="none")
    batch = np.random.default_rng(0).integers(0, 256, (32, REFERENCE_SIZE, REFERENCE_SIZE, 3),
                                              dtype=np.uint8)
    backbone.predict(batch, verbose=0)  # Trace and warm up.
    start, done = time.perf_counter(), 0
    while done < num_images:
        backbone.predict(batch, verbose=0)
        done += len(batch)
    return done / (time.perf_counter() - start)


def run_search(work: pathlib.Path) -> tuple[float, str]:
    """Runs the search in a fresh process with an empty feature cache; returns (seconds, log)."""
    command = [sys.executable, "-m", "tuning.search", "--source=folder",
               f"--data_dir={FLAGS.data_dir}", f"--image_size={FLAGS.image_size}", "--weights=none",
               f"--tuner={FLAGS.tuner}", f"--max_trials={FLAGS.max_trials}",
               f"--epochs={FLAGS.epochs}", f"--executions_per_trial={FLAGS.executions_per_trial}",
               f"--feature_cache={work / 'features'}",
               f"--directory={work / 'runs'}", "--project_name=benchmark"]
    return timed_command.run(command, what="search")


def test_accuracies(candidate: selection.Candidate, train, test, *, policy: str) -> list[float]:
    """Trains the candidate's head and recipe --seeds times; returns its test accuracies."""
    accuracies = []
    for seed in range(FLAGS.seeds):
        keras.utils.set_random_seed(seed)
        keras.mixed_precision.set_global_policy(policy)
        hp = keras_tuner.HyperParameters()
        hp.values.update(candidate.values)
        head = hypermodel.build_model(hp, dropout=float(candidate.values["dropout"]))
        recipe = hypermodel.declare_recipe(hp, batch_sizes=(candidate.batch_size,),
                                           epochs=(candidate.epochs,))
        # The fit every trial, every selection fold and training's fast path use.
        head_fit.fit_head(head, train.features, train.labels, validation=None, seed=seed,
                          verbose=0, **recipe)
        predicted = evaluator.head_probabilities(head, test.features).argmax(axis=1)
        accuracies.append(float(np.mean(predicted == test.labels)))
    return accuracies


def _candidate(row: dict) -> selection.Candidate:
    """A head of results.csv or selection.csv as a selection Candidate."""
    if "mean_accuracy" in row:  # selection.csv lists head_units rather than units_i.
        units = [int(u) for u in row["head_units"].split(",")]
        row = {**row, "num_layers": len(units), "trial": row["candidate"].split()[-1],
               **{f"units_{i}": u for i, u in enumerate(units)}}
    return selection.trial_candidate(row, epochs=FLAGS.epochs)


def _describe(candidate: selection.Candidate) -> str:
    r = candidate.recipe
    return (f"({','.join(map(str, candidate.head_units))}, lr {r['learning_rate']:.3g} "
            f"{r['lr_schedule']}, smoothing {r['label_smoothing']:g}, weight decay "
            f"{r['weight_decay']:g}, dropout {r['dropout']:g}, batch {r['batch_size']}, "
            f"{r['epochs']} epochs)")


def main(argv):
    require(len(argv) == 1, f"Unexpected arguments {argv[1:]}.")
    require(pathlib.Path(FLAGS.data_dir, "Training").is_dir(),
            f"--data_dir={FLAGS.data_dir} holds no Training/ folder; pass the Kaggle dataset root.")
    work = pathlib.Path(FLAGS.out or tempfile.mkdtemp(prefix="tuning-benchmark-"))
    rate = reference_rate(FLAGS.reference_images)
    reference_s = 2 * REFERENCE_IMAGES_PER_EPOCH / rate
    print(f"Reference: ResNet50 {REFERENCE_SIZE} px float32 forward {rate:.1f} img/s -> 2 epochs "
          f"of {REFERENCE_IMAGES_PER_EPOCH} images >= {reference_s:.0f} s (estimated)", flush=True)

    search_s, log = run_search(work)
    summary = re.search(r"^\d+ trial\(s\).*?(?=^Train the best head)", log, re.S | re.M)
    print(summary.group(0) if summary else "(no summary in the search's output)", end="")
    extraction_s = sum(float(s) for s in re.findall(r"feature vectors in ([\d.]+) s", log))
    project = work / "runs" / "benchmark"
    with open(project / results.RESULTS_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    selection_s = sum(float(s) for s in re.findall(r"Final selection took ([\d.]+) s", log))
    print(f"Search: {len(rows)} trials ({FLAGS.tuner}) and the final selection in {search_s:.0f} s "
          f"wall, of which feature extraction {extraction_s:.0f} s and the selection "
          f"{selection_s:.0f} s; {search_s / reference_s:.2f} x the reference's 2 epochs",
          flush=True)

    # The search's backbone, precision and cache: train/validation features come from its cache.
    policy = precision.apply_precision("auto")
    keras.utils.set_random_seed(0)
    backbone = architecture.build_backbone(image_size=FLAGS.image_size, weights="none")
    load = dict(backbone=backbone, image_size=FLAGS.image_size, cache_dir=work / "features")
    searched, train, test = (
        feature_cache.load_or_extract(sources.load_folder_source(FLAGS.data_dir, split=split),
                                      **load)
        for split in ("train[:85%]", FLAGS.final_train_split, "test"))
    require(searched.from_cache,
            "the benchmark's backbone did not reproduce the search's features")

    with open(project / selection.SELECTION_CSV, newline="") as f:
        finalists = list(csv.DictReader(f))
    chosen = next(r for r in finalists if r["chosen"] == "True")
    objective = tuners.OBJECTIVE.name
    top_trial = min((r for r in rows if r["status"] == "COMPLETED" and r[objective]),
                    key=lambda r: float(r[objective]))
    heads = {"chosen": _candidate(chosen), "default": _candidate(finalists[0])}
    if _candidate(top_trial).key != heads["chosen"].key:
        heads["top_val_trial"] = _candidate(top_trial)
    accuracy = {}
    for name, head in heads.items():
        # Identical heads train identically (same seeds): the default is not trained twice.
        same = next((other for other in accuracy if heads[other].key == head.key), None)
        accuracy[name] = accuracy[same] if same else test_accuracies(head, train, test,
                                                                      policy=policy)
    labels = {"chosen": f"Chosen head ({chosen['candidate']})", "default": "Default head",
              "top_val_trial": f"Best-{objective} trial {top_trial['trial']}"}
    for name, head in heads.items():
        print(f"{labels[name]} {_describe(head)}: test accuracy "
              f"{np.mean(accuracy[name]):.4f} +- {np.std(accuracy[name], ddof=1):.4f} "
              f"(seeds {', '.join(f'{a:.4f}' for a in accuracy[name])})", flush=True)
    print(json.dumps({
        "trials": len(rows), "final_train_split": FLAGS.final_train_split,
        "search_s": round(search_s, 1), "extraction_s": round(extraction_s, 1),
        "selection_s": round(selection_s, 1),
        "reference_rate_img_s": round(rate, 2), "reference_2_epochs_s": round(reference_s, 1),
        "search_vs_reference": round(search_s / reference_s, 3),
        "chosen": chosen["candidate"],
        **{f"{name}_cv_{metric}": round(float(row[f"mean_{metric}"]), 4)
           for name, row in (("chosen", chosen), ("default", finalists[0]))
           for metric in ("loss", "accuracy")},
        **{f"{name}_test_acc": round(float(np.mean(acc)), 4) for name, acc in accuracy.items()},
        **{f"{name}_test_acc_std": round(float(np.std(acc, ddof=1)), 4)
           for name, acc in accuracy.items()},
        **{f"{name}_recipe": {"head_units": list(head.head_units), **head.recipe}
           for name, head in heads.items()},
        "search_dir": str(project)}))


if __name__ == "__main__":
    runner.run(main)
