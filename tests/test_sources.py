"""Tests of the image sources: Kaggle-layout folders and a TFDS build of the dummy data."""

import collections
import hashlib
import logging
import os
import pathlib

import image_trees
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import dataspec, sources

DUMMY_DATA = pathlib.Path(__file__).parents[1] / "builders" / "brain_tumor_mri" / "dummy_data"


def elements(source):
    return [(data.numpy(), int(label)) for data, label in source.dataset]


def digests(source):
    return collections.Counter(hashlib.sha256(data).hexdigest() for data, _ in elements(source))


def decoded(source):
    return [(tf.io.decode_image(data, channels=3).numpy(), label)
            for data, label in elements(source)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return image_trees.write_tree(tmp_path_factory.mktemp("kaggle"), train_per_class=6,
                                  test_per_class=2)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """The dummy data built in-process by the real builder, like `tfds build` would."""
    from builders.brain_tumor_mri import Builder
    data_dir = tmp_path_factory.mktemp("tfds")
    Builder(data_dir=str(data_dir), config="default").download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY_DATA)))
    return str(data_dir)


def test_folder_source_spec_and_labels_match_folders(tree):
    source = sources.load_folder_source(tree, split="train")
    assert source.dataset.element_spec == (tf.TensorSpec([], tf.string),
                                           tf.TensorSpec([], tf.int64))
    assert source.num_examples == 24 and source.class_names == image_trees.CLASS_NAMES
    pairs = decoded(source)
    assert len(pairs) == 24
    images = np.stack([image for image, _ in pairs])
    labels = np.array([label for _, label in pairs])
    np.testing.assert_array_equal(image_trees.labels_from_pixels(images), labels)
    assert sorted(image_trees.ids_from_pixels(images)) == list(range(24))


def test_folder_slices_are_deterministic_disjoint_and_mix_classes(tree):
    head = sources.load_folder_source(tree, split="train[:75%]")
    tail = sources.load_folder_source(tree, split="train[75%:]")
    assert (head.num_examples, tail.num_examples) == (18, 6)
    assert digests(head) == digests(sources.load_folder_source(tree, split="train[:75%]"))
    assert digests(head) + digests(tail) == digests(sources.load_folder_source(tree, split="train"))
    assert len({label for _, label in elements(tail)}) > 1  # Not the last class folder only.
    assert head.cache_id != tail.cache_id
    both = sources.load_folder_source(tree, split="train[:2]+test")
    assert both.num_examples == 2 + 8


@pytest.mark.parametrize("split", ["validation", "train[:200%]", "train[", "bogus"])
def test_folder_bad_split_is_a_user_error(tree, split):
    with pytest.raises(UserError, match="split"):
        sources.load_folder_source(tree, split=split)


def test_folder_worker_shards_are_disjoint_and_cover_the_split(tree):
    full = digests(sources.load_folder_source(tree, split="train[:90%]"))
    shards = [sources.load_folder_source(
        tree, split="train[:90%]",
        input_context=tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i))
        for i in range(2)]
    assert not set(digests(shards[0])) & set(digests(shards[1]))
    assert digests(shards[0]) + digests(shards[1]) == full
    assert abs(shards[0].num_examples - shards[1].num_examples) <= 1
    assert shards[0].cache_id != shards[1].cache_id


def test_folder_skips_junk_and_reports_corrupt_files(tmp_path, caplog):
    root = image_trees.write_tree(tmp_path / "data", train_per_class=2, test_per_class=1, fmt="jpg")
    glioma = root / "Training" / "glioma"
    good = (glioma / "Tr-000.jpg").read_bytes()
    (glioma / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (glioma / "not_an_image.jpg").write_text("hello")
    (glioma / "empty.png").write_bytes(b"")
    (glioma / ".ipynb_checkpoints").mkdir()
    (glioma / ".ipynb_checkpoints" / "stray.jpg").write_bytes(good)
    (glioma / "notes.txt").write_text("junk")
    (glioma / "bad_crc.png").write_bytes(image_trees.bad_crc_png(3))  # Only a decode tells.
    os.mkfifo(glioma / "fifo.jpg")  # Would block a plain read forever.
    os.symlink(glioma, glioma / "loop")  # Would list every file again, and again.
    with caplog.at_level(logging.WARNING):
        source = sources.load_folder_source(root, split="train")
    assert source.num_examples == 8
    for name in ("truncated.jpg", "not_an_image.jpg", "empty.png", "bad_crc.png", "fifo.jpg"):
        assert name in caplog.text
    assert "stray.jpg" not in caplog.text
    assert len(decoded(source)) == 8  # Every remaining file decodes.


def test_folder_converts_what_tf_cannot_decode_like_the_builder(tmp_path):
    root = image_trees.write_tree(tmp_path / "data", train_per_class=1, test_per_class=1)
    pixels = np.full((8, 8, 4), (10, 200, 30, 255), dtype=np.uint8)
    pixels[:, :4, 3] = 0  # Transparent left half: black, as the builder makes it.
    Image.fromarray(pixels, mode="RGBA").save(root / "Training" / "notumor" / "rgba.png")
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).convert("CMYK").save(
        root / "Training" / "notumor" / "cmyk.jpg")
    source = sources.load_folder_source(root, split="train")
    small = [image for image, _ in decoded(source) if image.shape == (8, 8, 3)]
    assert source.num_examples == 6 and len(small) == 2
    rgba = next(image for image in small if image[0, 7, 1] == 200)
    np.testing.assert_array_equal(rgba[:, :4], 0)
    np.testing.assert_array_equal(rgba[:, 4:], np.broadcast_to([10, 200, 30], (8, 4, 3)))
    cmyk = next(image for image in small if image[0, 7, 1] != 200)
    assert np.abs(cmyk.astype(int) - 77).max() <= 3


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        sources.load_folder_source(tmp_path / "absent", split="train")


def test_tfds_source_spec_labels_and_slices(tfds_dir):
    source = sources.load_tfds_source(split="train", data_dir=tfds_dir)
    assert source.dataset.element_spec == (tf.TensorSpec([], tf.string),
                                           tf.TensorSpec([], tf.int64))
    reference = tfds.load("brain_tumor_mri", split="train", data_dir=tfds_dir)
    want = sorted((hashlib.sha256(tf.io.encode_png(ex["image"]).numpy()).hexdigest(),
                   int(ex["label"])) for ex in reference)
    got = sorted((hashlib.sha256(tf.io.encode_png(image).numpy()).hexdigest(), label)
                 for image, label in decoded(source))
    assert got == want and source.num_examples == len(want)
    assert source.class_names == image_trees.CLASS_NAMES
    head = sources.load_tfds_source(split="train[:50%]", data_dir=tfds_dir)
    tail = sources.load_tfds_source(split="train[50%:]", data_dir=tfds_dir)
    assert head.num_examples + tail.num_examples == source.num_examples
    assert digests(head) + digests(tail) == digests(source)
    assert len({source.cache_id, head.cache_id, tail.cache_id,
                sources.load_tfds_source(split="test", data_dir=tfds_dir).cache_id}) == 4


def test_tfds_worker_shards_are_disjoint_and_cover_the_split(tfds_dir):
    full = sources.load_tfds_source(split="train", data_dir=tfds_dir)
    shards = [sources.load_tfds_source(
        split="train", data_dir=tfds_dir,
        input_context=tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i))
        for i in range(2)]
    assert digests(shards[0]) + digests(shards[1]) == digests(full)
    assert sum(s.num_examples for s in shards) == full.num_examples
    assert abs(shards[0].num_examples - shards[1].num_examples) <= 1


def test_tfds_errors_name_the_fix(tfds_dir, tmp_path):
    with pytest.raises(UserError, match="mri-build --config=default.*or pass the data_dir it "
                                        "was built into"):
        sources.load_tfds_source(split="train", data_dir=str(tmp_path))
    # Through a DataSpec, whose own parameter passed the value on.
    spec = dataspec.DataSpec(source="tfds", tfds_data_dir=str(tmp_path))
    with pytest.raises(UserError, match="pass the tfds_data_dir it was built into. Or read the "
                                        "Kaggle folder itself: source='folder'."):
        spec.open("train")
    with pytest.raises(UserError, match="Valid splits are train, test"):
        sources.load_tfds_source(split="validation", data_dir=tfds_dir)


def test_names_and_labels_come_without_decoding_in_dataset_order(tree, tfds_dir):
    for source in (sources.load_folder_source(tree, split="train[:50%]"),
                   sources.load_tfds_source(split="test", data_dir=tfds_dir)):
        in_order = [label for _, label in elements(source)]
        assert source.labels.tolist() == in_order
        assert len(source.names) == source.num_examples == len(set(source.names))
        # A name is the file's path under the dataset root; its class folder is its label.
        assert all(source.class_names[label] in name.split("/")
                   for name, label in zip(source.names, source.labels))


def test_a_dataset_not_built_names_the_expanded_folder_and_a_command_that_runs(tmp_path,
                                                                               monkeypatch):
    from mri_tfdata.core.errors import UserError
    from mri_tfdata.data import sources

    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError) as error:
        sources.load_tfds_source(split="train", data_dir="~/tensorflow_datasets")
    message = str(error.value)
    assert f"is not built in {tmp_path}/tensorflow_datasets" in message
    assert f"--data_dir={tmp_path}/tensorflow_datasets --manual_dir=DIR" in message
    assert "~" not in message and not (pathlib.Path.cwd() / "~").exists()
