"""Benchmarks our tf.data pipeline against Keras ImageDataGenerator on a Kaggle-layout folder.

    python benchmarks/input_pipeline.py --data_dir=../shared/data/kaggle-brain-tumor-mri-224 \
        [--image_size=256] [--batch_size=32] [--cache=memory|DIR]

Measures, over the Training split: (a) the reference loop, ImageDataGenerator(
preprocessing_function=resnet50.preprocess_input).flow_from_directory, one epoch; (b) our first
(cold) epoch, which decodes, resizes and fills the cache; (c) our steady-state (warm) epoch from
the cache. Each delivers what its model consumes: float32 preprocessed batches for (a), uint8
batches for (b) and (c) (our model preprocesses on the accelerator). Prints a table, then one JSON
object as the last line.
"""

import json
import pathlib
import resource
import tempfile
import time

from absl import flags, logging

from mri_tfdata import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Kaggle-layout folder (Training/<class>/*.jpg).")
flags.DEFINE_integer("image_size", 256, "Side of the images delivered, in pixels.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_string("cache", "memory",
                    "Our cache: 'memory', or a folder for the file cache (a fresh temporary "
                    "folder is used when the value is 'file').")
flags.DEFINE_integer("warm_epochs", 2, "Warm epochs to time; the fastest is reported.")


def _time_epoch(batches) -> tuple[int, float]:
    """Consumes an iterable of (images, labels) batches; returns (images, seconds)."""
    start = time.perf_counter()
    count = 0
    for images, _ in batches:
        count += int(images.shape[0])
    return count, time.perf_counter() - start


def _idg_epoch(train_dir: pathlib.Path, image_size: int, batch_size: int) -> tuple[int, float]:
    # Keras 3 keeps ImageDataGenerator only in its tf.keras compatibility namespace (deprecated).
    import tensorflow as tf
    from keras.applications import resnet50

    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        preprocessing_function=resnet50.preprocess_input).flow_from_directory(
            str(train_dir), target_size=(image_size, image_size), batch_size=batch_size,
            class_mode="sparse", shuffle=True)
    return _time_epoch(generator[i] for i in range(len(generator)))


def main(argv: list[str]) -> None:
    del argv
    cli.require(FLAGS.data_dir is not None, "--data_dir is required: the Kaggle-layout folder.")
    cli.require(FLAGS.image_size > 0 and FLAGS.batch_size > 0,
                "--image_size and --batch_size must be positive.")
    from mri_tfdata import input_pipeline, kaggle_layout, sources

    train_dir = kaggle_layout.find_split_dirs(FLAGS.data_dir)["train"]
    size, batch = FLAGS.image_size, FLAGS.batch_size
    idg_images, idg_seconds = _idg_epoch(train_dir, size, batch)

    with tempfile.TemporaryDirectory(prefix="mri_tfdata-bench-") as tmp:
        cache = tmp if FLAGS.cache == "file" else FLAGS.cache
        start = time.perf_counter()
        source = sources.load_folder_source(FLAGS.data_dir, split="train")
        dataset = input_pipeline.make_dataset(source, image_size=size, batch_size=batch,
                                              training=True, cache=cache)
        open_seconds = time.perf_counter() - start
        cold_images, cold_seconds = _time_epoch(dataset)
        warm_images, warm_seconds = min(
            (_time_epoch(dataset) for _ in range(FLAGS.warm_epochs)), key=lambda r: r[1])

    rates = {"idg": idg_images / idg_seconds, "cold": cold_images / cold_seconds,
             "warm": warm_images / warm_seconds}
    rows = [("ImageDataGenerator, one epoch", idg_images, idg_seconds, rates["idg"]),
            (f"tf.data cold epoch (cache={FLAGS.cache})", cold_images, cold_seconds, rates["cold"]),
            ("tf.data warm epoch (from cache)", warm_images, warm_seconds, rates["warm"])]
    print(f"{'pipeline':40s} {'images':>7s} {'seconds':>8s} {'img/s':>9s} {'ratio':>7s}")
    for name, images, seconds, rate in rows:
        print(f"{name:40s} {images:7d} {seconds:8.2f} {rate:9.0f} {rate / rates['idg']:7.2f}")
    print(f"(opening and checking the {source.num_examples} files took {open_seconds:.2f} s, "
          f"outside the cold epoch; {size} px, batch {batch})")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB.
    print(json.dumps({
        "idg_img_s": round(rates["idg"], 1), "cold_img_s": round(rates["cold"], 1),
        "warm_img_s": round(rates["warm"], 1),
        "cold_ratio": round(rates["cold"] / rates["idg"], 2),
        "warm_ratio": round(rates["warm"] / rates["idg"], 2),
        "peak_rss_mb": round(peak_rss_mb, 1)}))


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    cli.run(main)
