"""Benchmarks our tf.data pipeline, with both caches, against Keras ImageDataGenerator.

    python benchmarks/input_pipeline.py --data_dir=../shared/data/kaggle-brain-tumor-mri-native \
        [--image_size=256] [--batch_size=32] [--max_images=0] [--extraction]

Hardware: any CPU; on 2 cores, about 2 minutes per shared copy (5 more with --extraction).
Measures, on the same files of the Training split: (a) the reference loop,
ImageDataGenerator(preprocessing_function=resnet50.preprocess_input).flow_from_dataframe, one
epoch; (b) our first (cold) epoch with the memory cache, which decodes, resizes and fills it, and
(c) our warm epochs from it; (b') that cold epoch again on one thread, whose ratio to (a), also
one thread, is the cold ratio per core (cores x it bounds what (b) can reach); (d) the cold
epoch with a file cache in a fresh folder (writing it, then reading it) and (e) warm epochs
from the file cache opened again, as a new run opens it.
Each delivers what its model consumes: float32 preprocessed batches for (a), uint8 batches for
ours (our model preprocesses on the accelerator). With --extraction it also runs the feature
extraction (fast path) over the images against the bare backbone's forward pass at the same size,
batch and precision, in images/s as benchmarks/backbone_speed.py reports it. Prints a table, then
one JSON object with every ratio as the last line.
"""

import json
import os
import pathlib
import resource
import tempfile
import time

from absl import flags, logging

from mri_tfdata.cli import runner

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Kaggle-layout folder (Training/<class>/*.jpg).")
flags.DEFINE_integer("image_size", 256, "Side of the images delivered, in pixels.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("warm_epochs", 2, "Warm epochs to time per cache; the fastest is reported.")
flags.DEFINE_integer("max_images", 0, "Use only the first N training images (0: all), for a "
                     "quick smoke run; ImageDataGenerator reads the same files.")
flags.DEFINE_bool("extraction", False, "Also measure feature extraction against the backbone.")
flags.DEFINE_integer("extract_image_size", 128, "Image side for the extraction measurement.")
flags.DEFINE_integer("extract_images", 1024, "Images for the extraction measurement (at most "
                     "the training split's).")
flags.DEFINE_string("precision", "float32", "Keras dtype policy for the extraction measurement.")


def _time_epoch(batches) -> tuple[int, float]:
    """Consumes an iterable of (images, labels) batches; returns (images, seconds)."""
    start = time.perf_counter()
    count = 0
    for images, _ in batches:
        count += int(images.shape[0])
    return count, time.perf_counter() - start


def _idg_epoch(root: pathlib.Path, names, class_names, labels, image_size: int,
               batch_size: int) -> tuple[int, float]:
    # Keras 3 keeps ImageDataGenerator only in its tf.keras compatibility namespace (deprecated).
    import pandas as pd
    import tensorflow as tf
    from keras.applications import resnet50

    frame = pd.DataFrame({"filename": [str(root / name) for name in names],
                          "class": [class_names[label] for label in labels]})
    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        preprocessing_function=resnet50.preprocess_input).flow_from_dataframe(
            frame, target_size=(image_size, image_size), batch_size=batch_size,
            class_mode="sparse", classes=list(class_names), shuffle=True, validate_filenames=False)
    return _time_epoch(generator[i] for i in range(len(generator)))


def _rate(images: int, seconds: float) -> float:
    return images / max(seconds, 1e-9)


def _pipeline_rates(source, cache_dir: str) -> dict:
    """Cold and warm rates (img/s) of the memory cache and the file cache, plus opening times."""
    import tensorflow as tf

    from mri_tfdata.data import input_pipeline

    def make(cache):
        return input_pipeline.make_dataset(source, image_size=FLAGS.image_size,
                                           batch_size=FLAGS.batch_size, training=True,
                                           cache=cache)

    def warm(dataset):
        return max(_rate(*_time_epoch(dataset)) for _ in range(FLAGS.warm_epochs))

    memory = make("memory")
    rates = {"memory_cold": _rate(*_time_epoch(memory)), "memory_warm": warm(memory)}
    del memory
    # The same cold epoch on one thread: its per-image cost against ImageDataGenerator's (also
    # one thread) bounds the cold ratio any number of cores can reach (cores x this ratio).
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    rates["one_thread_cold"] = _rate(*_time_epoch(make("memory").with_options(options)))
    # The file cache's first epoch: the pass that writes the cache (inside make_dataset), then
    # one epoch read from it.
    start = time.perf_counter()
    written = make(cache_dir)
    build_seconds = time.perf_counter() - start
    images, seconds = _time_epoch(written)
    rates["file_cold"] = _rate(images, build_seconds + seconds)
    # A new run opens the complete cache (and checks its fingerprints) before its first epoch.
    start = time.perf_counter()
    reopened = make(cache_dir)
    rates["file_open_s"] = time.perf_counter() - start
    rates["file_warm"] = warm(reopened)
    return rates


def _extraction_rates(source) -> dict:
    """Feature extraction over a cold pipeline against the bare backbone, both in images/s."""
    import keras
    import numpy as np
    import tensorflow as tf

    from mri_tfdata.data import input_pipeline
    from mri_tfdata.model import architecture, features

    size, batch = FLAGS.extract_image_size, features.INFERENCE_BATCH
    keras.mixed_precision.set_global_policy(FLAGS.precision)
    backbone = architecture.build_backbone(image_size=size, weights="none")
    keras.mixed_precision.set_global_policy("float32")
    forward = tf.function(lambda x: backbone(x, training=False))
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3),
                                                           dtype=np.uint8))

    def bare(batches: int) -> float:
        start = time.perf_counter()
        for _ in range(batches):
            forward(images).numpy()
        return batches * batch / (time.perf_counter() - start)

    def dataset():
        return input_pipeline.make_dataset(source, image_size=size, batch_size=batch,
                                           training=False)

    bare(2)  # Traces and prepares the forward pass.
    features.extract_features(backbone, dataset().take(1), batch_size=batch)  # Traces the step.
    batches = max(1, source.num_examples // batch)
    before = bare(batches)
    start = time.perf_counter()
    extracted, _ = features.extract_features(backbone, dataset(), batch_size=batch)
    extraction = _rate(len(extracted), time.perf_counter() - start)
    # The bare pass before and after the extraction, so that load changing during the run
    # affects both sides alike.
    backbone_rate = (before + bare(batches)) / 2
    return {"extract_img_s": extraction, "backbone_img_s": backbone_rate,
            "extract_image_size": size, "extract_batch": batch, "precision": FLAGS.precision}


def main(argv: list[str]) -> None:
    del argv
    runner.require(FLAGS.data_dir is not None, "--data_dir is required: the Kaggle-layout folder.")
    runner.require(FLAGS.image_size > 0 and FLAGS.batch_size > 0 and FLAGS.max_images >= 0,
                "--image_size and --batch_size must be positive, --max_images at least 0.")
    from mri_tfdata.data import sources

    split = f"train[:{FLAGS.max_images}]" if FLAGS.max_images else "train"
    load_average = os.getloadavg()
    start = time.perf_counter()
    source = sources.load_folder_source(FLAGS.data_dir, split=split)
    open_seconds = time.perf_counter() - start
    root = pathlib.Path(FLAGS.data_dir).expanduser()
    idg_images, idg_seconds = _idg_epoch(root, source.names, source.class_names, source.labels,
                                         FLAGS.image_size, FLAGS.batch_size)
    idg = _rate(idg_images, idg_seconds)
    with tempfile.TemporaryDirectory(prefix="mri_tfdata-bench-") as tmp:
        rates = _pipeline_rates(source, tmp)

    rows = [("ImageDataGenerator, one epoch", idg),
            ("ours, cold epoch, filling the memory cache", rates["memory_cold"]),
            ("ours, warm epoch from the memory cache", rates["memory_warm"]),
            ("ours, cold epoch, writing the file cache", rates["file_cold"]),
            ("ours, warm epoch from the file cache", rates["file_warm"]),
            ("ours, cold epoch on one thread", rates["one_thread_cold"])]
    print(f"{'pipeline':45s} {'img/s':>9s} {'ratio':>7s}")
    for name, rate in rows:
        print(f"{name:45s} {rate:9.0f} {rate / idg:7.2f}")
    print(f"({source.num_examples} images of {root.name}, {FLAGS.image_size} px, batch "
          f"{FLAGS.batch_size}; opening and checking the files took {open_seconds:.2f} s and "
          f"opening the complete file cache {rates['file_open_s']:.2f} s, outside the epochs; "
          f"load average at the start {load_average[0]:.1f})")
    summary = {
        "data": root.name, "images": source.num_examples, "image_size": FLAGS.image_size,
        "batch_size": FLAGS.batch_size, "idg_img_s": round(idg, 1),
        **{f"{k}_img_s": round(v, 1) for k, v in rates.items() if not k.endswith("_s")},
        "cold_ratio": round(rates["memory_cold"] / idg, 2),
        "warm_ratio_memory": round(rates["memory_warm"] / idg, 2),
        "cold_ratio_file": round(rates["file_cold"] / idg, 2),
        "warm_ratio_file": round(rates["file_warm"] / idg, 2),
        "file_open_s": round(rates["file_open_s"], 2),
        # ImageDataGenerator runs on one thread: this is what the cold ratio can reach per core.
        "one_thread_cold_ratio": round(rates["one_thread_cold"] / idg, 2),
        "cores": os.cpu_count(),
    }
    if FLAGS.extraction:
        extraction = _extraction_rates(sources.load_folder_source(
            FLAGS.data_dir, split=f"train[:{min(FLAGS.extract_images, source.num_examples)}]"))
        ratio = extraction["extract_img_s"] / extraction["backbone_img_s"]
        print(f"feature extraction {extraction['extract_img_s']:.1f} img/s, bare backbone "
              f"{extraction['backbone_img_s']:.1f} img/s ({extraction['extract_image_size']} px, "
              f"batch {extraction['extract_batch']}, {extraction['precision']}): ratio "
              f"{ratio:.2f}")
        summary.update({k: round(v, 1) if isinstance(v, float) else v
                        for k, v in extraction.items()})
        summary["extraction_ratio"] = round(ratio, 3)
    summary["load_average_start"] = round(load_average[0], 2)
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    runner.run(main)
