"""Tests of the tf.data pipeline: specs, labels, order, file cache and distribution."""

import errno
import os
import pathlib
import subprocess
import sys
import textwrap

import image_trees
import numpy as np
import pytest
import tensorflow as tf

from mri_tfdata.core.atomic import DiskError
from mri_tfdata.core.errors import ParameterError, UserError
from mri_tfdata.data import decoding, image_cache, input_pipeline, sources

TESTS_DIR = pathlib.Path(__file__).parent


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return image_trees.write_tree(tmp_path_factory.mktemp("kaggle"), train_per_class=6,
                                  test_per_class=2)


def epoch(dataset):
    """One pass as (images, labels) numpy arrays, plus the batch shapes."""
    batches = [(x.numpy(), y.numpy()) for x, y in dataset]
    return (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]),
            [b[0].shape for b in batches])


def run_python(code: str) -> str:
    """Runs code in a fresh interpreter (its own TF runtime); returns stdout, fails on error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path])}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("cache", ["none", "memory", "file"])
def test_every_pipeline_and_the_cache_writing_pass_run_without_the_autotuner(
        tree, tmp_path, monkeypatch, cache):
    # With tf.data's autotuner on, 2 cold epochs in 5 ran at one thread's rate (input_pipeline).
    passes = []
    build = image_cache.open_or_build
    monkeypatch.setattr(image_cache, "open_or_build",
                        lambda decoded, **kw: (passes.append(decoded), build(decoded, **kw))[1])
    source = sources.load_folder_source(tree, split="train")
    cache = str(tmp_path / "cache") if cache == "file" else cache
    for training in (True, False):
        dataset = input_pipeline.make_dataset(source, image_size=24, batch_size=5,
                                              training=training, cache=cache)
        assert dataset.options().autotune.enabled is False
    assert all(p.options().autotune.enabled is False for p in passes)
    assert len(passes) == (2 if cache not in ("none", "memory") else 0)


@pytest.mark.parametrize("cache", ["none", "memory", "file"])
def test_specs_shapes_and_labels(tree, tmp_path, cache):
    source = sources.load_folder_source(tree, split="train")
    cache = str(tmp_path / "cache") if cache == "file" else cache
    train = input_pipeline.make_dataset(source, image_size=24, batch_size=5, training=True,
                                        cache=cache)
    assert train.element_spec == (tf.TensorSpec([5, 24, 24, 3], tf.uint8),
                                  tf.TensorSpec([5], tf.int32))
    for _ in range(2):  # Writing the cache, then reading it.
        images, labels, shapes = epoch(train)
        assert shapes == [(5, 24, 24, 3)] * 4  # 24 examples: the partial batch is dropped.
        np.testing.assert_array_equal(image_trees.labels_from_pixels(images), labels)
    evaluation = input_pipeline.make_dataset(source, image_size=24, batch_size=5, training=False,
                                             cache=cache)
    assert evaluation.element_spec[0].shape.as_list() == [None, 24, 24, 3]
    images, labels, shapes = epoch(evaluation)
    assert [s[0] for s in shapes] == [5, 5, 5, 5, 4]
    np.testing.assert_array_equal(image_trees.labels_from_pixels(images), labels)
    want = [int(label) for _, label in source.dataset]  # Evaluation keeps the source order.
    np.testing.assert_array_equal(labels, want)


def test_seeded_order_repeats_and_unseeded_order_changes(tree):
    source = sources.load_folder_source(tree, split="train")

    def ids(dataset):
        return image_trees.ids_from_pixels(epoch(dataset)[0]).tolist()

    def make(seed):
        return input_pipeline.make_dataset(source, image_size=16, batch_size=4, training=True,
                                           seed=seed, cache="memory")

    first, second = make(seed=7), make(seed=7)
    first_orders = [ids(first), ids(first)]
    assert first_orders == [ids(second), ids(second)]
    assert first_orders[0] != first_orders[1]  # Reshuffled each epoch, also with a seed.
    unseeded = make(seed=None)
    orders = [ids(unseeded) for _ in range(3)]
    assert len({tuple(o) for o in orders}) == 3
    assert all(sorted(o) == sorted(orders[0]) for o in orders)


def cache_entries(root, *, partial=False):
    """Complete caches (or, with partial=True, the folders still being written) under root."""
    return sorted(p.name for p in pathlib.Path(root).iterdir()
                  if (".partial-" in p.name) == partial)


def test_file_cache_is_read_back_and_never_served_for_another_size(tmp_path):
    tree = image_trees.write_tree(tmp_path / "data", train_per_class=3, test_per_class=1)
    source = sources.load_folder_source(tree, split="train")
    cache = tmp_path / "cache"
    images, labels, _ = epoch(input_pipeline.make_dataset(
        source, image_size=20, batch_size=4, training=False, cache=str(cache)))
    assert len(cache_entries(cache)) == 1 and "-20px-" in cache_entries(cache)[0]

    # With the images gone, only the cache can deliver them.
    for path in (tree / "Training").rglob("*.png"):
        path.unlink()
    cached, cached_labels, _ = epoch(input_pipeline.make_dataset(
        source, image_size=20, batch_size=4, training=False, cache=str(cache)))
    np.testing.assert_array_equal(cached, images)
    np.testing.assert_array_equal(cached_labels, labels)
    # Another image size is another key: a new cache, built from the images, not the 20 px one.
    with pytest.raises(tf.errors.NotFoundError):
        epoch(input_pipeline.make_dataset(source, image_size=28, batch_size=4, training=False,
                                          cache=str(cache)))
    assert len(cache_entries(cache)) == 1  # The failed 28 px pass published nothing.


def test_file_cache_is_rebuilt_for_a_new_image_size(tree, tmp_path):
    source = sources.load_folder_source(tree, split="train")
    cache = tmp_path / "cache"
    for size in (20, 28):
        images, labels, _ = epoch(input_pipeline.make_dataset(
            source, image_size=size, batch_size=4, training=False, cache=str(cache)))
        assert images.shape == (24, size, size, 3)
        np.testing.assert_array_equal(image_trees.labels_from_pixels(images), labels)
    assert [name.split("-")[-2] for name in cache_entries(cache)] == ["20px", "28px"]
    again, _, _ = epoch(input_pipeline.make_dataset(source, image_size=28, batch_size=4,
                                                    training=False, cache=str(cache)))
    assert again.shape == (24, 28, 28, 3)


def test_file_cache_keys_differ_by_split_and_size(tree, tmp_path):
    cache = tmp_path / "cache"
    for split, size in (("train", 16), ("train", 20), ("train[:50%]", 16), ("test", 16)):
        source = sources.load_folder_source(tree, split=split)
        epoch(input_pipeline.make_dataset(source, image_size=size, batch_size=8, training=True,
                                          cache=str(cache)))
    assert len(cache_entries(cache)) == 4


@pytest.mark.integration
@pytest.mark.parametrize("kill_at", ["image_cache_segment_written@2", "image_cache_written"])
def test_a_writer_killed_at_any_point_leaves_no_cache_and_the_next_run_rebuilds_it(
        tree, tmp_path, kill_at):
    cache = tmp_path / "cache"
    # SIGKILL (faults.point) in the middle of the writing, or after the last fsync but before the
    # rename: no cleanup runs. Segments of 5 images, so there are several.
    code = f"""
        from mri_tfdata.data import image_cache, input_pipeline, sources
        image_cache._SEGMENT_BYTES = 16 * 16 * 3 * 5
        source = sources.load_folder_source({str(tree)!r}, split="train")
        input_pipeline.make_dataset(source, image_size=16, batch_size=4, training=False,
                                    cache={str(cache)!r})
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            env={**os.environ, "MRI_TFDATA_KILL_AT": kill_at}, timeout=240,
                            check=False)
    assert result.returncode == -9, result.stderr[-3000:]
    assert cache_entries(cache) == []
    (partial,) = cache_entries(cache, partial=True)
    assert (cache / partial / image_cache.IMAGES).exists()  # killed while writing it
    source = sources.load_folder_source(tree, split="train")
    want, want_labels, _ = epoch(input_pipeline.make_dataset(source, image_size=16, batch_size=4,
                                                             training=False))
    images, labels, _ = epoch(input_pipeline.make_dataset(source, image_size=16, batch_size=4,
                                                          training=False, cache=str(cache)))
    # The dead writer's leftovers are gone; the new cache is complete and serves the same images.
    assert cache_entries(cache, partial=True) == []
    (complete,) = cache_entries(cache)
    assert (cache / complete / image_cache.MANIFEST).exists()
    np.testing.assert_array_equal(images, want)
    np.testing.assert_array_equal(labels, want_labels)


def test_the_file_cache_serves_what_the_memory_pipeline_does(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(image_cache, "_SEGMENT_BYTES", 20 * 20 * 3 * 7)  # 4 segments, one short
    source = sources.load_folder_source(tree, split="train")
    memory = input_pipeline.make_dataset(source, image_size=20, batch_size=5, training=False,
                                         cache="memory")
    want, want_labels, want_shapes = epoch(memory)
    for _ in range(2):  # Writing the cache, then reading it back.
        images, labels, shapes = epoch(input_pipeline.make_dataset(
            source, image_size=20, batch_size=5, training=False, cache=str(tmp_path / "cache")))
        # Evaluation: bit for bit, in the source order, the last batch partial.
        np.testing.assert_array_equal(images, want)
        np.testing.assert_array_equal(labels, want_labels)
        assert shapes == want_shapes

    def training_epochs(seed):
        dataset = input_pipeline.make_dataset(source, image_size=20, batch_size=5, training=True,
                                              seed=seed, cache=str(tmp_path / "cache"))
        assert dataset.element_spec == (tf.TensorSpec([5, 20, 20, 3], tf.uint8),
                                        tf.TensorSpec([5], tf.int32))
        return [epoch(dataset) for _ in range(2)]

    first, again = training_epochs(seed=4), training_epochs(seed=4)
    ids = image_trees.ids_from_pixels(want).tolist()
    for (images, labels, shapes), (images_again, _, _) in zip(first, again):
        assert shapes == [(5, 20, 20, 3)] * 4  # 24 examples: the partial batch is dropped
        np.testing.assert_array_equal(images, images_again)  # the same seed, the same order
        # Every example is a cached image with its own label, none twice in an epoch.
        picked = image_trees.ids_from_pixels(images).tolist()
        assert len(set(picked)) == 20 and set(picked) <= set(ids)
        np.testing.assert_array_equal(labels, [want_labels[ids.index(i)] for i in picked])
    assert not np.array_equal(first[0][0], first[1][0])  # reshuffled every epoch
    assert len(cache_entries(tmp_path / "cache")) == 1


def _the_cache(root):
    (folder,) = cache_entries(root)
    return root / folder


@pytest.mark.parametrize("damage", ["truncated", "changed", "no manifest", "other key",
                                    "images missing"])
def test_a_damaged_file_cache_is_detected_logged_and_rebuilt(tree, tmp_path, caplog, damage):
    source = sources.load_folder_source(tree, split="train")
    cache = tmp_path / "cache"

    def run():
        return epoch(input_pipeline.make_dataset(source, image_size=16, batch_size=4,
                                                 training=False, cache=str(cache)))

    want, want_labels, _ = run()
    folder = _the_cache(cache)
    pixels, manifest = folder / image_cache.IMAGES, folder / image_cache.MANIFEST
    if damage == "truncated":
        pixels.write_bytes(pixels.read_bytes()[:-100])
    elif damage == "changed":  # Same size, one pixel different: only the CRC-32 tells.
        data = bytearray(pixels.read_bytes())
        data[1000] ^= 0xFF
        pixels.write_bytes(bytes(data))
    elif damage == "no manifest":
        manifest.unlink()
    elif damage == "other key":
        manifest.write_text(manifest.read_text().replace('"key": "', '"key": "x'))
    else:
        pixels.unlink()
    with caplog.at_level("WARNING"):
        images, labels, _ = run()
    assert any("is damaged" in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    np.testing.assert_array_equal(images, want)
    np.testing.assert_array_equal(labels, want_labels)
    assert cache_entries(cache, partial=True) == [] and len(cache_entries(cache)) == 1


def test_a_second_writer_of_the_same_cache_keeps_the_first_ones(tree, tmp_path):
    source = sources.load_folder_source(tree, split="train")
    cache = tmp_path / "cache"
    epoch(input_pipeline.make_dataset(source, image_size=16, batch_size=4, training=False,
                                      cache=str(cache)))
    folder = _the_cache(cache)
    before = {p.name: p.stat().st_ino for p in folder.iterdir()}
    # What a concurrent writer that finishes second does: its rename fails, it drops its copy.
    decoded = source.dataset.map(
        lambda data, label: (decoding.decode_and_resize(data, image_size=16),
                             tf.cast(label, tf.int32)))
    image_cache._build(decoded, cache, folder.name, count=source.num_examples, image_size=16)
    assert {p.name: p.stat().st_ino for p in folder.iterdir()} == before
    assert cache_entries(cache, partial=True) == []


def test_a_full_disk_while_writing_the_cache_is_a_disk_error_and_leaves_nothing(tree, tmp_path,
                                                                                monkeypatch):
    source = sources.load_folder_source(tree, split="train")
    cache = tmp_path / "cache"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_cache.os, "fsync", full)
    with pytest.raises(DiskError, match=f"Cannot write the image cache in {cache}: No space left "
                                        "on device. Free disk space, or pass cache='memory'"):
        input_pipeline.make_dataset(source, image_size=16, batch_size=4, training=True,
                                    cache=str(cache))
    assert list(cache.iterdir()) == []


def test_a_cache_path_that_is_a_file_is_refused(tree, tmp_path):
    source = sources.load_folder_source(tree, split="train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParameterError, match=f"cache='{tmp_path / 'file'}' is a file; cache must "
                                             "be 'none', 'memory' or a folder"):
        input_pipeline.make_dataset(source, image_size=16, batch_size=4, training=True,
                                    cache=str(tmp_path / "file"))


@pytest.mark.integration
@pytest.mark.parametrize("cache", ["none", "file"])
def test_per_replica_batches_under_a_two_replica_mirrored_strategy(tree, tmp_path, cache):
    cache = str(tmp_path / "cache") if cache == "file" else cache
    # Logical devices must be set before TF initialises, so this runs in its own interpreter.
    out = run_python(f"""
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import image_trees
        from mri_tfdata.data import input_pipeline, sources
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        contexts = []
        def source_fn(ctx):
            contexts.append(ctx)
            return sources.load_folder_source({str(tree)!r}, split="train", input_context=ctx)
        dataset = input_pipeline.distribute_dataset(strategy, source_fn, global_batch_size=8,
                                                    image_size=16, training=True, seed=1,
                                                    cache={cache!r})
        steps = 0
        for images, labels in dataset:
            per_replica = strategy.experimental_local_results(images)
            label_parts = strategy.experimental_local_results(labels)
            assert len(per_replica) == 2, per_replica
            for x, y in zip(per_replica, label_parts):
                assert x.shape == (4, 16, 16, 3) and x.dtype == tf.uint8, x.shape
                np.testing.assert_array_equal(image_trees.labels_from_pixels(x.numpy()), y.numpy())
            steps += 1
        assert steps == 3, steps
        assert [c.num_replicas_in_sync for c in contexts] == [2]
        print("ok", steps)
    """)
    assert "ok 3" in out


def test_a_global_batch_not_divisible_by_the_replicas_is_a_user_error(tree):
    class TwoReplicas:
        num_replicas_in_sync = 2

    with pytest.raises(UserError, match="multiple of 2"):
        input_pipeline.distribute_dataset(TwoReplicas(), lambda ctx: None, global_batch_size=5,
                                          image_size=16, training=True)


def test_a_memory_cache_above_its_bound_caches_in_files_under_the_cache_root(
        tree, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    passes = []
    build = image_cache.open_or_build
    monkeypatch.setattr(image_cache, "open_or_build",
                        lambda decoded, **kw: (passes.append(kw["root"]), build(decoded, **kw))[1])
    source = sources.load_folder_source(tree, split="train")
    need = source.num_examples * 24 * 24 * 3
    within = input_pipeline.make_dataset(source, image_size=24, batch_size=5, training=False,
                                         cache="memory", memory_limit=need)
    assert passes == []
    want = epoch(within)
    # Available memory small enough that the share cannot hold the split.
    monkeypatch.setattr(input_pipeline, "available_memory",
                        lambda: int(need / input_pipeline.MEMORY_CACHE_SHARE) - 1)
    above = input_pipeline.make_dataset(source, image_size=24, batch_size=5, training=False,
                                        cache="memory")
    assert passes == [tmp_path / "mri_tfdata" / "images"]
    got = epoch(above)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert any((tmp_path / "mri_tfdata" / "images").iterdir())
