"""Times a whole training run from a cold feature cache against one bare backbone pass.

    python benchmarks/training_run.py --data_dir=../shared/data/kaggle-brain-tumor-mri-224

Runs `python -m mri_tfdata.train --flagfile=configs/kaggle.flags --source=folder --weights=none
--image_size=128` (10 epochs, the default recipe; extra flags after `--`) in a fresh process with
an empty workdir and feature cache, and times it wall to wall, start-up included. In this process
it then times the bare backbone forward pass (same size, the run's precision, the extraction's
batch) on random images before and after that run, averaged, and scales it to every image the run
read: "one bare backbone pass", the floor of the frozen-feature design on this device. It prints
where the run's time went, per part, from the times its log lines were written (`run_parts.py`),
and, last, one JSON line with the ratio and the parts.

With --feature_cache=DIR the cache is kept: the first run fills it (a cold run, as above), and a
later one that finds the features there times everything but extraction, parts included, with no
bare pass.
Hardware: any CPU; about 3 minutes on 2 idle cores (a warm run: about 30 s).
"""

import json
import pathlib
import re
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
import run_parts  # benchmarks/, beside this script
import timed_command
from absl import flags

from mri_tfdata.cli import runner
from mri_tfdata.model import architecture, features
from mri_tfdata.runtime import precision

flags.DEFINE_string("data_dir", None, "Kaggle-layout root holding Training/ and Testing/.")
flags.DEFINE_integer("image_size", 128, "Image side of the run.")
flags.DEFINE_integer("bare_images", 1024, "Images timed for the bare pass, before and after.")
flags.DEFINE_string("feature_cache", None,
                    "A feature cache folder kept between runs: a run that finds the features "
                    "there reads them, so it times everything but extraction (what a run costs "
                    "once the backbone pass is cached, or on a device whose pass takes seconds); "
                    "no bare pass is timed then. Default: a fresh empty one (a cold run).")
FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parent.parent


def bare_rate(backbone: keras.Model, num_images: int) -> float:
    """Images/s of the backbone's forward pass alone, at the extraction's batch."""
    forward = tf.function(lambda x: backbone(x, training=False))
    batch = tf.constant(np.random.default_rng(0).integers(
        0, 256, (features.INFERENCE_BATCH, FLAGS.image_size, FLAGS.image_size, 3), np.uint8))
    forward(batch).numpy()  # Traces and prepares the graph.
    start, done = time.perf_counter(), 0
    while done < num_images:
        forward(batch).numpy()
        done += features.INFERENCE_BATCH
    return done / (time.perf_counter() - start)


def run_training(work: pathlib.Path, extra: list[str],
                 cache: pathlib.Path) -> tuple[float, list[tuple[float, str]]]:
    command = [sys.executable, "-m", "mri_tfdata.train",
               f"--flagfile={ROOT / 'configs' / 'kaggle.flags'}", "--source=folder",
               f"--data_dir={FLAGS.data_dir}", "--weights=none",
               f"--image_size={FLAGS.image_size}", f"--workdir={work / 'run'}",
               f"--feature_cache={cache}", *extra]
    return timed_command.run_with_line_times(command, what="training run")


def timed_run(extra: list[str], cache: pathlib.Path | None) -> tuple[float, list, dict]:
    """(wall seconds, timed log lines, metrics.json) of one run into a fresh workdir, its feature
    cache `cache` or, for None, a fresh empty one."""
    with tempfile.TemporaryDirectory(prefix="mri_tfdata-run-") as tmp:
        wall, lines = run_training(pathlib.Path(tmp), extra,
                                   cache or pathlib.Path(tmp) / "features")
        metrics = json.loads((pathlib.Path(tmp) / "run" / "metrics.json").read_text())
    return wall, lines, metrics


def print_parts(parts: dict[str, float]) -> None:
    print("Where the run's time went (s): " +
          ", ".join(f"{name} {seconds:.1f}" for name, seconds in parts.items()))


def main(argv):
    runner.require(FLAGS.data_dir is not None, "--data_dir is required: the Kaggle dataset root.")
    extra = argv[1:]
    # The run's own precision choice (--precision=auto), so both sides use the same policy.
    policy = precision.apply_precision("auto")
    cache = pathlib.Path(FLAGS.feature_cache) if FLAGS.feature_cache else None
    if cache is not None and any(cache.glob("*.npz")):
        wall, lines, metrics = timed_run(extra, cache)
        parts = run_parts.breakdown(lines, wall)
        rest = wall - parts.get("extraction", 0.0)
        print(f"Warm run (features read from {cache}): {wall:.1f} s wall, {rest:.1f} s outside "
              f"reading the features; test accuracy {metrics['accuracy']:.4f}")
        print_parts(parts)
        print(json.dumps({"wall_s": round(wall, 1), "all_but_extraction_s": round(rest, 2),
                          "test_accuracy": round(metrics["accuracy"], 4), "precision": policy,
                          "image_size": FLAGS.image_size, "extra_flags": extra,
                          "parts_s": parts}))
        return
    backbone = architecture.build_backbone(image_size=FLAGS.image_size, weights="none")
    before = bare_rate(backbone, FLAGS.bare_images)
    wall, lines, metrics = timed_run(extra, cache)
    after = bare_rate(backbone, FLAGS.bare_images)
    rate = (before + after) / 2
    log = "".join(line for _, line in lines)
    parts = run_parts.breakdown(lines, wall)
    extracted = [(int(n), float(s)) for n, s in
                 re.findall(r"Extracted (\d+) feature vectors in ([\d.]+) s", log)]
    images = sum(n for n, _ in extracted)
    extraction_s = sum(s for _, s in extracted)
    bare_s = images / rate
    print(f"Training run: {wall:.1f} s wall for {images} images ({policy}, {FLAGS.image_size} "
          f"px); feature extraction {extraction_s:.1f} s of it, the rest (start-up, opening and "
          f"checking the files, the head's epochs, evaluation and saving) {wall - extraction_s:.1f}"
          f" s; test accuracy {metrics['accuracy']:.4f}")
    print(f"Bare backbone: {rate:.1f} img/s (before {before:.1f}, after {after:.1f}), one pass "
          f"over the {images} images {bare_s:.1f} s; the run takes {wall / bare_s:.2f}x that pass, "
          f"the extraction {extraction_s / bare_s:.2f}x")
    print_parts(parts)
    print(json.dumps({"wall_s": round(wall, 1), "images": images,
                      "extraction_s": round(extraction_s, 1), "bare_img_s": round(rate, 1),
                      "bare_pass_s": round(bare_s, 1), "run_vs_bare": round(wall / bare_s, 3),
                      "extraction_vs_bare": round(extraction_s / bare_s, 3),
                      "test_accuracy": round(metrics["accuracy"], 4), "precision": policy,
                      "image_size": FLAGS.image_size, "extra_flags": extra, "parts_s": parts}))


if __name__ == "__main__":
    runner.run(main)
