"""Tests of the frozen-feature fast path: cache keys, cache files, extraction and equivalence."""

import collections
import hashlib
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import image_trees
from mri_tfdata.core.errors import UserError
from mri_tfdata.data import images, input_pipeline, sources
from mri_tfdata.model import (architecture, feature_cache, features, head_fit, optimization,
                              shared_arrays)

IMAGE_SIZE = 32
CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")


def tiny_source(num_examples=7, *, seed=0, cache_id="brain_tumor_mri/default/1.0.0/train"):
    """A Source of random PNGs (odd count, so the last batch is partial)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num_examples, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    encoded = [tf.io.encode_png(image).numpy() for image in images]
    labels = np.arange(num_examples, dtype=np.int64) % len(CLASS_NAMES)
    dataset = tf.data.Dataset.from_tensor_slices((encoded, labels))
    return sources.Source(dataset=dataset, num_examples=num_examples, class_names=CLASS_NAMES,
                          cache_id=cache_id, description=f"tiny source {cache_id}")


def images_of(source):
    batches = list(input_pipeline.make_dataset(source, image_size=IMAGE_SIZE, batch_size=64,
                                               training=False))
    return (np.concatenate([b[0].numpy() for b in batches]),
            np.concatenate([b[1].numpy() for b in batches]))


@pytest.fixture(scope="module", autouse=True)
def float32_policy():
    """Whatever policy an earlier test left set, these tolerances are for float32."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy(previous)


@pytest.fixture(scope="module")
def backbone():
    return architecture.build_backbone(image_size=IMAGE_SIZE, weights="none")


@pytest.mark.integration
def test_cache_key_changes_with_each_keyed_input(backbone):
    base = dict(cache_id="brain_tumor_mri/default/1.0.0/train", image_size=64,
                weights_fingerprint=feature_cache.weights_fingerprint(backbone),
                precision="float32")
    key = feature_cache.cache_key(**base)
    assert feature_cache.cache_key(**base) == key
    assert "64px" in key.name and "float32" in key.name
    changes = [
        dict(cache_id="other_dataset/default/1.0.0/train"),
        dict(cache_id="brain_tumor_mri/dedup/1.0.0/train"),
        dict(cache_id="brain_tumor_mri/default/1.0.1/train"),
        dict(cache_id="brain_tumor_mri/default/1.0.0/test"),
        dict(image_size=128),
        dict(weights_fingerprint="0" * 32),
        dict(precision="mixed_bfloat16"),
    ]
    digests = {feature_cache.cache_key(**{**base, **change}).digest for change in changes}
    assert key.digest not in digests and len(digests) == len(changes)


@pytest.mark.integration
def test_weights_fingerprint_changes_when_one_weight_changes(backbone):
    before = feature_cache.weights_fingerprint(backbone)
    assert feature_cache.weights_fingerprint(backbone) == before
    # A BatchNorm moving statistic: non-trainable, yet it changes the features.
    weight = next(w for w in backbone.weights if "moving_mean" in w.path)
    original = weight.numpy()
    try:
        weight.assign(original + 1e-3)
        assert feature_cache.weights_fingerprint(backbone) != before
    finally:
        weight.assign(original)
    assert feature_cache.weights_fingerprint(backbone) == before


@pytest.mark.integration
def test_features_equal_a_direct_backbone_call(backbone):
    source = tiny_source()
    dataset = input_pipeline.make_dataset(source, image_size=IMAGE_SIZE, batch_size=3,
                                          training=False)
    got_features, got_labels = features.extract_features(backbone, dataset, batch_size=3,
                                                         num_examples=source.num_examples)
    images, labels = images_of(source)
    want = backbone(images, training=False).numpy()
    assert got_features.dtype == np.float32 and got_features.shape == (7, architecture.FEATURE_DIM)
    # Aligned, so that the head's fit reads the features in place instead of copying them.
    assert got_features.ctypes.data % shared_arrays.ALIGNMENT == 0
    np.testing.assert_allclose(got_features, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_labels, np.arange(7) % 4)


@pytest.mark.integration
def test_extraction_traces_the_backbone_once_with_static_shapes(backbone):
    source = tiny_source()  # 7 examples in batches of 2: the last one holds a single image
    dataset = input_pipeline.make_dataset(source, image_size=IMAGE_SIZE, batch_size=2,
                                          training=False)
    got, labels = features.extract_features(backbone, dataset, batch_size=2)
    assert got.shape == (7, architecture.FEATURE_DIM) and labels.tolist() == (np.arange(7) % 4).tolist()
    ((spec, step),) = [(spec, step) for (_, spec), step in features._STEPS[backbone].items()
                       if spec[0].shape[0] == 2]
    assert [s.shape.as_list() for s in spec] == [[2, IMAGE_SIZE, IMAGE_SIZE, 3], [2], [2]]
    assert step.experimental_get_tracing_count() == 1  # the padded last batch did not retrace


@pytest.mark.integration
def test_cache_is_reused_and_a_truncated_file_is_rebuilt(backbone, tmp_path):
    source = tiny_source()
    kwargs = dict(backbone=backbone, image_size=IMAGE_SIZE, batch_size=4, cache_dir=tmp_path)
    first = feature_cache.load_or_extract(source, **kwargs)
    assert not first.from_cache and first.path.parent == tmp_path and first.path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temp file left behind

    second = feature_cache.load_or_extract(source, **kwargs)
    assert second.from_cache
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.labels, first.labels)
    # A caller's fingerprint of the backbone keys the same file; another one keys another file.
    fingerprint = feature_cache.weights_fingerprint(backbone)
    assert feature_cache.load_or_extract(source, **kwargs, fingerprint=fingerprint).path == \
        first.path
    other = feature_cache.load_or_extract(source, **kwargs, fingerprint="f" * 32)
    assert not other.from_cache and other.path != first.path
    other.path.unlink()

    # As if a process had died mid-write without the atomic rename.
    data = first.path.read_bytes()
    first.path.write_bytes(data[: len(data) // 2])
    third = feature_cache.load_or_extract(source, **kwargs)
    assert not third.from_cache
    np.testing.assert_array_equal(third.features, first.features)
    assert feature_cache.load_or_extract(source, **kwargs).from_cache

    # A file whose count disagrees with the split (e.g. the split changed under the same id), or
    # that another key wrote, is not served either.
    assert feature_cache._read_valid(third.path, third.key, expected_count=7) is not None
    assert feature_cache._read_valid(third.path, third.key, expected_count=5) is None
    other_key = feature_cache.CacheKey(name=third.key.name, digest="0" * 16)
    assert feature_cache._read_valid(third.path, other_key, expected_count=7) is None


def test_feature_dataset_batches_like_the_image_pipeline():
    feats = np.arange(10 * architecture.FEATURE_DIM, dtype=np.float32).reshape(10, architecture.FEATURE_DIM)
    labels = np.arange(10) % 4
    train = head_fit.make_feature_dataset(feats, labels, batch_size=4, training=True, seed=1)
    epochs = [np.concatenate([x[:, 0].numpy() for x, _ in train]) for _ in range(2)]
    assert all(len(e) == 8 for e in epochs)  # drop_remainder
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    evaluation = head_fit.make_feature_dataset(feats, labels, batch_size=4, training=False)
    order = np.concatenate([x[:, 0].numpy() for x, _ in evaluation])
    np.testing.assert_array_equal(order, feats[:, 0])  # every example once, fixed order


@pytest.mark.parametrize("cache, fine_tune, augment, fast", [
    ("auto", 0, False, True), ("/some/dir", 0, False, True), ("off", 0, False, False),
    ("auto", 0, True, False), ("auto", 2, False, False)])
def test_use_fast_path(cache, fine_tune, augment, fast):
    assert feature_cache.use_fast_path(cache, fine_tune_blocks=fine_tune, augment=augment) is fast


def test_resolve_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert feature_cache.resolve_cache_dir("off") is None
    assert feature_cache.resolve_cache_dir("auto") == tmp_path / "mri_tfdata" / "features"
    assert feature_cache.resolve_cache_dir(str(tmp_path / "x")) == tmp_path / "x"


@pytest.mark.integration
def test_one_training_step_gives_the_same_head_weights_on_both_paths(backbone):
    """The fast path is the end-to-end computation: same weights, same batch -> same update."""
    source = tiny_source(num_examples=8)
    images, labels = images_of(source)
    head_end_to_end = architecture.build_head(standardize=True)
    head_fast = architecture.build_head(standardize=True)
    head_fast.set_weights(head_end_to_end.get_weights())

    # The fast path's own code: extraction, then the fit training and tuning call.
    train = feature_cache.load_or_extract(source, backbone=backbone, image_size=IMAGE_SIZE,
                                     batch_size=8, cache_dir=None)
    head_fit.fit_head(head_fast, train.features, train.labels, validation=None,
                      learning_rate=1e-2, epochs=1, batch_size=8, seed=0, verbose=0)

    # End to end, as training's end-to-end path does it: standardisation fitted on all training
    # features, then one step of the full model on the images.
    architecture.adapt_standardization(head_end_to_end, train.features)
    initial = head_end_to_end.get_weights()
    classifier = architecture.build_classifier(backbone, head_end_to_end, augment=False)
    optimization.compile_model(classifier, learning_rate=1e-2)
    classifier.run_eagerly = True  # tracing ResNet50's train step would take most of the test
    classifier.train_on_batch(images, labels)

    moved = 0
    for got, want, before in zip(head_fast.get_weights(), head_end_to_end.get_weights(), initial):
        moved += not np.allclose(got, before)
        # Adam's first step moves each weight by about lr * g / (|g| + eps): up to 1e-2 here, and
        # for near-zero gradients summation-order noise can shift that by ~1e-5. Anything but the
        # same computation would differ by ~1e-2.
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert moved == 6  # the step moved every Dense kernel and bias (not the statistics)


@pytest.mark.integration
def test_saved_fast_path_model_predicts_raw_images_like_the_assembled_one(backbone, tmp_path):
    train = feature_cache.load_or_extract(tiny_source(num_examples=8), backbone=backbone,
                                     image_size=IMAGE_SIZE, batch_size=4, cache_dir=tmp_path)
    head = architecture.build_head(standardize=True)
    history = head_fit.fit_head(head, train.features, train.labels,
                                validation=(train.features, train.labels), learning_rate=1e-3,
                                epochs=2, batch_size=4, seed=0, verbose=0)
    assert len(history.history["loss"]) == 2 and "val_accuracy" in history.history
    # Standardisation was fitted on all training features.
    np.testing.assert_allclose(np.ravel(head.get_layer("standardize").mean),
                               train.features.mean(axis=0), rtol=1e-4, atol=1e-5)
    classifier = architecture.build_classifier(backbone, head, augment=False)
    classifier.run_eagerly = True  # saves tracing ResNet50; the numbers are the same
    images, _ = images_of(tiny_source(num_examples=8))
    in_memory = classifier.predict(images, verbose=0)
    np.testing.assert_allclose(in_memory, head.predict(train.features, verbose=0),
                               rtol=1e-5, atol=1e-6)
    path = tmp_path / "model.keras"
    classifier.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    loaded.run_eagerly = True
    np.testing.assert_allclose(loaded.predict(images, verbose=0), in_memory, rtol=1e-5, atol=1e-6)


MIRRORED_EXTRACTION = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import test_features as t
from mri_tfdata.data import input_pipeline
from mri_tfdata.model import architecture, features
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    backbone = architecture.build_backbone(image_size=t.IMAGE_SIZE, weights="none")
source = t.tiny_source()
# Batches of 4 over 2 replicas; the last batch (3 examples) splits unevenly.
dataset = input_pipeline.make_dataset(source, image_size=t.IMAGE_SIZE, batch_size=4, training=False)
got, labels = features.extract_features(backbone, dataset, batch_size=4, strategy=strategy)
images, want_labels = t.images_of(source)
np.testing.assert_allclose(got, backbone(images, training=False).numpy(), rtol=1e-4, atol=1e-4)
np.testing.assert_array_equal(labels, want_labels)
print("OK", strategy.num_replicas_in_sync)
"""


@pytest.mark.integration
def test_extraction_under_mirrored_strategy_keeps_every_example_in_order():
    """Two replicas in a subprocess: logical devices must be set before TensorFlow starts."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", MIRRORED_EXTRACTION], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK 2")


def _counting_decoders(monkeypatch) -> collections.Counter:
    """Counts every JPEG and PNG decode, anywhere (eager, tf.function or tf.data), by the sha256
    of the bytes decoded."""
    counts = collections.Counter()

    def counting(original):
        def decode(contents, *args, **kwargs):
            def note(data):
                counts[hashlib.sha256(data.numpy()).hexdigest()] += 1
                return np.int32(0)
            noted = tf.py_function(note, [contents], tf.int32)
            with tf.control_dependencies([noted]):
                return original(tf.identity(contents), *args, **kwargs)
        return decode

    monkeypatch.setattr(tf.io, "decode_jpeg", counting(tf.io.decode_jpeg))
    monkeypatch.setattr(tf.io, "decode_png", counting(tf.io.decode_png))
    return counts


def _warnings(log: str) -> list[str]:
    """The messages of a captured log's warnings, sorted (their order may differ)."""
    return sorted(line.split(" ", 2)[2].split(" ", 1)[1] for line in log.splitlines()
                  if line.startswith("WARNING"))


def _pooling_backbone() -> keras.Model:
    """A backbone's shape and contract (uint8 images in, FEATURE_DIM vectors out), built in
    milliseconds."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype="uint8")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(architecture.FEATURE_DIM)(pooled))


def test_a_split_opened_without_decoding_is_decoded_once_and_skips_what_the_check_skips(
        tmp_path, caplog, monkeypatch):
    root = image_trees.write_tree(tmp_path / "data", train_per_class=2, test_per_class=1,
                                  fmt="jpg")
    glioma = root / "Training" / "glioma"
    good = (glioma / "Tr-000.jpg").read_bytes()
    # Only a decode tells these two, the second only a strict one.
    (glioma / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (glioma / "cut.jpg").write_bytes(image_trees.damaged_jpegs()["cut_with_end_marker"])
    (glioma / "not_an_image.jpg").write_text("hello")  # Its header tells.
    with caplog.at_level(logging.WARNING):
        checked = sources.load_folder_source(root, split="train")
    told_by_the_check = caplog.text
    caplog.clear()
    monkeypatch.setattr(images, "_verdicts", {})  # As in a new process.
    decodes = _counting_decoders(monkeypatch)
    backbone = _pooling_backbone()
    with caplog.at_level(logging.WARNING):
        opened = sources.load_folder_source(root, split="train", check_decoding=False)
        # Opening decodes none of the usable files (libjpeg's strict pass refuses the damaged
        # ones, which the pipeline's decoder then decodes alone for its reason) ...
        assert set(decodes) <= {hashlib.sha256((glioma / n).read_bytes()).hexdigest()
                                for n in ("truncated.jpg", "cut.jpg")}
        found = feature_cache.load_or_extract(opened, backbone=backbone, image_size=IMAGE_SIZE,
                                              cache_dir=tmp_path / "features", batch_size=4)
    # ... and the extraction decodes every usable file once; the bad ones alone once more, for
    # the decoder's reason.
    bad = {hashlib.sha256((glioma / n).read_bytes()).hexdigest()
           for n in ("truncated.jpg", "cut.jpg")}
    usable = [hashlib.sha256((root / name).read_bytes()).hexdigest()
              for name in checked.names]
    assert [decodes[digest] for digest in usable] == [1] * len(usable)
    assert set(usable) < set(decodes) <= set(usable) | bad
    # The same files named for the same reasons, and the same split as the checked one.
    assert _warnings(caplog.text) == _warnings(told_by_the_check)
    split = found.source
    assert (split.num_examples, split.names, split.undecoded) == (8, checked.names, None)
    np.testing.assert_array_equal(found.labels, checked.labels)
    np.testing.assert_array_equal(split.labels, checked.labels)
    assert len(found.features) == 8
    # From the cache: nothing decoded, the same files named, the same split.
    decodes.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = feature_cache.load_or_extract(
            sources.load_folder_source(root, split="train", check_decoding=False),
            backbone=backbone, image_size=IMAGE_SIZE, cache_dir=tmp_path / "features",
            batch_size=4)
    assert again.from_cache and not decodes
    assert _warnings(caplog.text) == _warnings(told_by_the_check)
    assert again.source.names == checked.names
    np.testing.assert_array_equal(again.features, found.features)


def test_a_split_whose_files_all_fail_to_decode_is_one_paragraph(tmp_path):
    root = image_trees.write_tree(tmp_path / "data", train_per_class=1, test_per_class=1,
                                  fmt="jpg")
    opened = sources.load_folder_source(root, split="test", check_decoding=False)
    # Damaged after opening: only extraction's decode can tell.
    for path in (root / "Testing").rglob("*.jpg"):
        path.write_bytes(image_trees.jpeg_cut_with_end_marker(path.read_bytes()))
    with pytest.raises(UserError, match="holds no readable image"):
        feature_cache.load_or_extract(opened, backbone=_pooling_backbone(),
                                      image_size=IMAGE_SIZE, cache_dir=None, batch_size=4)
