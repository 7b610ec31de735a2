"""The reference recipe's training loop against our frozen-feature fast path, on the same images.

    python benchmarks/end_to_end.py --subset=100 \
        --data_dir=../shared/data/kaggle-brain-tumor-mri-224

Both runs happen in one process on one deterministic, class-stratified subset (N images per split,
symlinked into a temporary Kaggle-layout folder) with the same backbone weights and the same initial
head weights:
- reference: the report's recipe: `ImageDataGenerator(preprocessing_function=preprocess_input)
  .flow_from_directory` at 256 px, batch 32, feeding the full model (frozen ResNet50 + the same
  512-128 head on the pooled features) every epoch, Adam 1e-4, 10 epochs, validating each epoch
  on the test split;
- ours: the default path for the same job: each split's features extracted once into an empty
  cache (`feature_cache.load_or_extract`, tf.data input), the head fit on them with the same
  optimizer,
  loss, batch and epochs, validating each epoch on the cached test features; then the classifier
  assembled. Its time is extraction plus head training.
Both accuracies are the last epoch's validation (= test split) accuracy. The last line printed
is one JSON object: {"ref_s", "ours_s", "speedup", "ref_acc", "ours_acc", "peak_rss_mb"}.
Cost: (2 x epochs + 2) x N ResNet50 passes, ~18 images/s at 256 px on 2 idle cores, so
--subset=100 takes about 2 minutes there; several times longer on shared cores.
"""

import hashlib
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

from absl import flags, logging

from mri_tfdata.cli import runner
from mri_tfdata.cli.runner import require
from mri_tfdata.data import kaggle_layout, sources
from mri_tfdata.model import architecture, feature_cache, head_fit
from mri_tfdata.runtime import precision

flags.DEFINE_string("data_dir", None, "Kaggle-layout root holding Training/ and Testing/.")
flags.DEFINE_integer("subset", 100, "Images per split, stratified across classes; 0 = all.")
flags.DEFINE_integer("epochs", 10, "Epochs of both runs (the report: 10).")
flags.DEFINE_integer("image_size", 256, "Image side of both runs (the report: 256).")
flags.DEFINE_enum("weights", "none", ("imagenet", "none"),
                  "Backbone weights of both runs; none = the same random weights in both.")
flags.DEFINE_enum("precision", "float32", precision.PRECISIONS,
                  "Policy of our path; the reference always runs float32 as the report did.")
flags.DEFINE_integer("batch_size", 32, "Batch size of both runs (the report: 32).")
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate of both runs (the report: 1e-4).")
flags.DEFINE_integer("seed", 0, "Seed of the initial head weights and of the shuffling.")
flags.DEFINE_bool("standardize", False,
                  "Both runs: standardise the pooled features before the head (statistics of our "
                  "cached training features, copied into the reference's head). Not the report's "
                  "recipe; with --weights=none, raw random features give near-chance accuracies "
                  "that jump from epoch to epoch, standardised ones comparable ones.")

FLAGS = flags.FLAGS
SPLIT_FOLDERS = {"train": "Training", "test": "Testing"}


def _stratified_sample(examples: list, n: int) -> list:
    """Picks n examples with the split's class proportions, the same ones on every machine."""
    if not n or n >= len(examples):
        return examples
    by_class = {}
    for example in sorted(examples, key=lambda e: hashlib.sha256(e.relpath.encode()).digest()):
        by_class.setdefault(example.label, []).append(example)
    quotas = {label: n * len(group) / len(examples) for label, group in by_class.items()}
    counts = {label: int(q) for label, q in quotas.items()}
    # Largest remainders get the images left over after rounding down.
    for label in sorted(quotas, key=lambda k: counts[k] - quotas[k])[: n - sum(counts.values())]:
        counts[label] += 1
    return [e for label, group in sorted(by_class.items()) for e in group[: counts[label]]]


def make_subset(data_dir: pathlib.Path, out: pathlib.Path, n: int) -> dict:
    """Symlinks a stratified subset of each split into out/Training and out/Testing."""
    split_dirs = kaggle_layout.find_split_dirs(data_dir)
    counts = {}
    for split, folder in SPLIT_FOLDERS.items():
        chosen = _stratified_sample(kaggle_layout.list_examples(split_dirs[split]), n)
        for example in chosen:
            link = out / folder / kaggle_layout.CLASS_NAMES[example.label] / example.path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(example.path.resolve())
        counts[split] = len(chosen)
    return counts


def build_head(head_weights, *, standardize: bool):
    """A fresh 512-128 head holding `head_weights` (the same initial head for both runs)."""
    head = architecture.build_head(hidden_units=(512, 128), standardize=standardize)
    head.set_weights(head_weights)
    if standardize:
        # Keras's Normalization recomputes its mean and variance from the weights only here;
        # after set_weights alone it would still standardise with the initial 0 and 1.
        head.get_layer("standardize").finalize_state()
    return head


def run_reference(subset: pathlib.Path, resnet_weights, head_weights, *, image_size: int,
                  batch_size: int, learning_rate: float, epochs: int, seed: int,
                  standardize: bool) -> list[float]:
    """The report's loop: ImageDataGenerator feeding the full float32 model every epoch.

    Returns:
      The validation (= test split) accuracy of every epoch.
    """
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy("float32")
    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        preprocessing_function=keras.applications.resnet50.preprocess_input)
    flow = dict(target_size=(image_size, image_size), batch_size=batch_size,
                class_mode="categorical", classes=list(kaggle_layout.CLASS_NAMES), seed=seed)
    train_it = generator.flow_from_directory(str(subset / "Training"), shuffle=True, **flow)
    test_it = generator.flow_from_directory(str(subset / "Testing"), shuffle=False, **flow)

    shape = (image_size, image_size, 3)
    resnet = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None,
                                         input_shape=shape)
    resnet.set_weights(resnet_weights)
    resnet.trainable = False
    head = build_head(head_weights, standardize=standardize)
    images = keras.Input(shape)
    reference = keras.Model(images, head(resnet(images, training=False)))
    reference.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss="categorical_crossentropy", metrics=["accuracy"])
    history = reference.fit(train_it, validation_data=test_it, epochs=epochs, verbose=2)
    return history.history["val_accuracy"]


def extract_splits(subset: pathlib.Path, backbone, cache_dir: pathlib.Path, *, image_size: int,
                   batch_size: int) -> dict:
    """Our path, part 1: each split's features, extracted once into the cache or read from it."""
    return {split: feature_cache.load_or_extract(sources.load_folder_source(subset, split=split),
                                            backbone=backbone, image_size=image_size,
                                            batch_size=batch_size, cache_dir=cache_dir)
            for split in SPLIT_FOLDERS}


def train_on_features(feature_sets: dict, backbone, head_weights, *, batch_size: int,
                      learning_rate: float, epochs: int, seed: int,
                      standardize: bool) -> list[float]:
    """Our path, part 2: the head fit on the features, then the classifier assembled.

    Returns:
      The validation (= test split) accuracy of every epoch.
    """
    head = build_head(head_weights, standardize=standardize)
    train, test = feature_sets["train"], feature_sets["test"]
    # The function training's fast path and every tuning trial fit their heads with.
    history = head_fit.fit_head(head, train.features, train.labels,
                                validation=(test.features, test.labels),
                                learning_rate=learning_rate, epochs=epochs, batch_size=batch_size,
                                seed=seed, verbose=2)
    architecture.build_classifier(backbone, head)  # what train.py saves and evaluates
    return history.history["val_accuracy"]


class Clock:
    """Wall and CPU seconds of this process since creation (CPU time suffers less from sharing)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def main(argv):
    require(len(argv) == 1, f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    require(bool(FLAGS.data_dir), "--data_dir is required: the Kaggle-layout folder with "
            "Training/ and Testing/, e.g. --data_dir=../shared/data/kaggle-brain-tumor-mri-224.")
    require(FLAGS.subset >= 0 and FLAGS.epochs >= 1 and FLAGS.image_size >= 32,
            "--subset must be 0 or more, --epochs at least 1, --image_size at least 32.")
    import keras

    logging.info("CPUs: %d, load average at start: %.1f (the cores may be shared; compare the "
                 "ratio, not the absolute times).", os.cpu_count(), os.getloadavg()[0])
    with tempfile.TemporaryDirectory(prefix="mri_end_to_end_") as tmp:
        tmp = pathlib.Path(tmp)
        counts = make_subset(pathlib.Path(FLAGS.data_dir).expanduser(), tmp / "data", FLAGS.subset)
        logging.info("Subset: %s images (train, test).", counts)
        sizes = dict(image_size=FLAGS.image_size, batch_size=FLAGS.batch_size)
        fit = dict(batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
                   epochs=FLAGS.epochs, seed=FLAGS.seed, standardize=FLAGS.standardize)

        keras.utils.set_random_seed(FLAGS.seed)
        policy = precision.apply_precision(FLAGS.precision)
        backbone = architecture.build_backbone(image_size=FLAGS.image_size, weights=FLAGS.weights)
        # Variables are float32 under every policy, so these copy into the float32 reference.
        resnet_weights = backbone.get_layer("resnet50").get_weights()

        # Ours first extracts the features (into an empty cache), since with --standardize the
        # statistics they give are part of both runs' initial head.
        clock = Clock()
        feature_sets = extract_splits(tmp / "data", backbone, tmp / "features", **sizes)
        extract_s, extract_cpu = clock.read()
        head = architecture.build_head(hidden_units=(512, 128), standardize=FLAGS.standardize)
        architecture.adapt_standardization(head, feature_sets["train"].features)
        head_weights = head.get_weights()

        clock = Clock()
        ref_accs = run_reference(tmp / "data", resnet_weights, head_weights,
                                 image_size=FLAGS.image_size, **fit)
        ref_s, ref_cpu = clock.read()

        keras.mixed_precision.set_global_policy(policy)
        clock = Clock()
        ours_accs = train_on_features(feature_sets, backbone, head_weights, **fit)
        fit_s, fit_cpu = clock.read()
        ours_s, ours_cpu = extract_s + fit_s, extract_cpu + fit_cpu
        # What every later run or tuner trial on the same data costs: the cache is warm.
        clock = Clock()
        train_on_features(extract_splits(tmp / "data", backbone, tmp / "features", **sizes),
                          backbone, head_weights, **fit)
        warm_s, _ = clock.read()

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ref_acc, ours_acc = float(ref_accs[-1]), float(ours_accs[-1])
    print(f"subset: {counts['train']} train / {counts['test']} test images, {FLAGS.epochs} epochs, "
          f"{FLAGS.image_size} px, weights={FLAGS.weights}, standardize={FLAGS.standardize}, "
          f"our precision {policy}")
    print(f"reference (ImageDataGenerator, full model every epoch): {ref_s:.1f} s "
          f"({ref_cpu:.0f} CPU s), test accuracy {ref_acc:.4f}")
    print(f"ours (features once, head on features): {ours_s:.1f} s ({ours_cpu:.0f} CPU s; "
          f"extraction {extract_s:.1f} s, head {fit_s:.1f} s), test accuracy {ours_acc:.4f}; "
          f"again with a warm cache: {warm_s:.1f} s")
    print("test accuracy by epoch, reference: " + " ".join(f"{a:.2f}" for a in ref_accs))
    print("test accuracy by epoch, ours:      " + " ".join(f"{a:.2f}" for a in ours_accs))
    print(f"speed-up: {ref_s / ours_s:.1f}x wall, {ref_cpu / ours_cpu:.1f}x CPU time; peak RSS "
          f"{peak_rss_mb:.0f} MB; load average at end {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(json.dumps({"ref_s": round(ref_s, 1), "ours_s": round(ours_s, 1),
                      "speedup": round(ref_s / ours_s, 2), "ref_acc": round(ref_acc, 4),
                      "ours_acc": round(ours_acc, 4), "peak_rss_mb": round(peak_rss_mb)}))
    sys.stdout.flush()


if __name__ == "__main__":
    runner.run(main)
