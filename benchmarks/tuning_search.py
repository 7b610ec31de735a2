"""A 20-trial head search against 2 epochs of the reference recipe, and best head vs default head.

    python benchmarks/tuning_search.py --data_dir=../shared/data/kaggle-brain-tumor-mri-224

1. The reference recipe's cost: its every epoch runs the frozen ResNet50 over 5,708 training and
   1,311 test (validation) images at 256 px in float32. The forward rate is measured here on
   --reference_images random images, and 2 epochs = 2 x 7,019 / rate. This leaves out decoding
   and the head, so it underestimates the reference, which makes the comparison harder for us.
2. The search, timed as a user runs it: `python -m tuning.search` in a fresh process with an
   empty feature cache, so the time includes start-up and extracting the features of
   train[:85%] and train[85%:] at --image_size.
3. Test accuracy: the best trial's head and the default head (train.py's: 512-128, dropout 0,
   Adam 1e-3, batch 32), each trained --seeds times on the cached training features for the
   search's epochs and evaluated on the test split's features (extracted here, once).
The last line printed is one JSON object with all the numbers.
"""

import csv
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import keras
import keras_tuner
import numpy as np
from absl import flags, logging

from mri_tfdata import cli, features, model, precision, sources
from mri_tfdata.cli import require
from tuning import hypermodel, results

flags.DEFINE_string("data_dir", "../shared/data/kaggle-brain-tumor-mri-224",
                    "Kaggle-layout root holding Training/ and Testing/.")
flags.DEFINE_integer("image_size", 128, "Image side of the search.")
flags.DEFINE_integer("max_trials", 20, "Trials of the search.")
flags.DEFINE_enum("tuner", "bayesian", ("random", "bayesian", "hyperband"), "KerasTuner algorithm.")
flags.DEFINE_integer("epochs", 10, "Epochs per trial.")
flags.DEFINE_integer("executions_per_trial", 1,
                     "Fits per trial, averaged. 2 doubled the search's time here without picking "
                     "a head that tested better (one fit's val_accuracy on 856 images is noisy).")
flags.DEFINE_integer("seeds", 5, "Trainings of each head for the test-accuracy comparison.")
flags.DEFINE_integer("reference_images", 96, "Images timed for the reference forward rate.")
flags.DEFINE_string("out", None, "Working folder (default: a new temporary one).")

FLAGS = flags.FLAGS
REFERENCE_SIZE = 256
REFERENCE_IMAGES_PER_EPOCH = 5708 + 1311  # Training + Testing (the report validated on test).


def reference_rate(num_images: int) -> float:
    """Images/s of the reference's frozen ResNet50 forward pass (256 px, float32, batch 32)."""
    keras.mixed_precision.set_global_policy("float32")
    backbone = model.build_backbone(image_size=REFERENCE_SIZE, weights="none")
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
    logging.info("Search: %s", " ".join(command))
    start = time.perf_counter()
    proc = subprocess.run(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.stdout.write(proc.stdout[-5000:])
        raise SystemExit(f"the search failed with exit code {proc.returncode}")
    return seconds, proc.stdout


def test_accuracies(values: dict, train, test, *, batch_size: int, epochs: int,
                    policy: str) -> list[float]:
    """Trains the head `values` describe --seeds times; returns its test accuracies."""
    accuracies = []
    for seed in range(FLAGS.seeds):
        keras.utils.set_random_seed(seed)
        keras.mixed_precision.set_global_policy(policy)
        hp = keras_tuner.HyperParameters()
        hp.values.update(values)
        head = hypermodel.build_model(hp, adapt_features=train.features)
        head.fit(features.make_feature_dataset(train.features, train.labels, batch_size=batch_size,
                                               training=True, seed=seed),
                 epochs=epochs, verbose=0)
        _, accuracy = head.evaluate(features.make_feature_dataset(
            test.features, test.labels, batch_size=256, training=False), verbose=0)
        accuracies.append(float(accuracy))
    return accuracies


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
    print(f"Search: {len(rows)} trials ({FLAGS.tuner}) in {search_s:.0f} s wall, of which feature "
          f"extraction {extraction_s:.0f} s; {search_s / reference_s:.2f} x the reference's "
          "2 epochs", flush=True)

    # The search's backbone, precision and cache: train/validation features come from its cache.
    policy = precision.apply_precision("auto")
    keras.utils.set_random_seed(0)
    backbone = model.build_backbone(image_size=FLAGS.image_size, weights="none")
    load = dict(backbone=backbone, image_size=FLAGS.image_size, batch_size=32,
                cache_dir=work / "features")
    train, test = (features.load_or_extract(sources.load_folder_source(FLAGS.data_dir, split=split),
                                            **load) for split in ("train[:85%]", "test"))
    require(train.from_cache, "the benchmark's backbone did not reproduce the search's features")

    best = max((r for r in rows if r["status"] == "COMPLETED"),
               key=lambda r: float(r["val_accuracy"]))
    best_values = {k: float(v) if k in ("dropout", "learning_rate") else int(float(v))
                   for k, v in best.items() if k in ("num_layers", "dropout", "learning_rate")
                   or k.startswith("units_") and v}
    best_epochs = int(float(best.get("tuner/epochs") or FLAGS.epochs))
    best_acc = test_accuracies(best_values, train, test, batch_size=int(best["batch_size"]),
                               epochs=best_epochs, policy=policy)
    default_acc = test_accuracies({}, train, test, batch_size=hypermodel.DEFAULT_BATCH_SIZE,
                                  epochs=FLAGS.epochs, policy=policy)
    print(f"Best trial {best['trial_id']} (head {best['head_units']}, dropout {best['dropout']}, "
          f"lr {float(best['learning_rate']):.3g}, batch {best['batch_size']}, val_accuracy "
          f"{float(best['val_accuracy']):.4f}): test accuracy {np.mean(best_acc):.4f} "
          f"(seeds {', '.join(f'{a:.4f}' for a in best_acc)})")
    print(f"Default head (512,128, dropout 0, lr 1e-3, batch 32): test accuracy "
          f"{np.mean(default_acc):.4f} (seeds {', '.join(f'{a:.4f}' for a in default_acc)})")
    print(json.dumps({
        "trials": len(rows), "search_s": round(search_s, 1), "extraction_s": round(extraction_s, 1),
        "reference_rate_img_s": round(rate, 2), "reference_2_epochs_s": round(reference_s, 1),
        "search_vs_reference": round(search_s / reference_s, 3),
        "best_test_acc": round(float(np.mean(best_acc)), 4),
        "default_test_acc": round(float(np.mean(default_acc)), 4),
        "best_val_acc": round(float(best["val_accuracy"]), 4), "search_dir": str(project)}))


if __name__ == "__main__":
    cli.run(main)
