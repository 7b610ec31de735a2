"""The tf.data pipeline: decode once, resize, cache uint8 images, shuffle, batch, prefetch."""

import atexit
import contextlib
import hashlib
import os
import pathlib
import re
import shutil
import socket
import uuid
from typing import Callable, Optional

import tensorflow as tf
from absl import logging

from mri_tfdata.atomic import DiskError, disk_error
from mri_tfdata.errors import UserError
from mri_tfdata.images import decode_and_resize
from mri_tfdata.sources import Source

# Part of every file-cache key: bump it when decode_and_resize changes its pixels, so that caches
# written by an older version are not served.
CACHE_FORMAT = 2  # 2: JPEGs decoded at a DCT scale
_CACHE_PREFIX = "cache"  # tf.data writes <dir>/cache.index and <dir>/cache.data-*.
_PARTIAL_MARK = ".partial-"


def _cache_key(source: Source, image_size: int) -> str:
    """A directory name unique to (dataset, config, version, split, shard, size, cache format)."""
    ident = f"{source.cache_id}|{image_size}px|format{CACHE_FORMAT}"
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", source.cache_id).strip("_")[-80:]
    return f"{slug}-{image_size}px-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(root: pathlib.Path, key: str) -> None:
    """Removes partial caches of `key` left by dead processes of this host (never live ones)."""
    host = socket.gethostname()
    for partial in root.glob(f"{key}{_PARTIAL_MARK}*"):
        owner = partial.name[len(key) + len(_PARTIAL_MARK):].removesuffix(".staging")
        parts = owner.rsplit("-", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() \
                and not _pid_alive(int(parts[1])):
            logging.info("Removing the partial cache %s of a killed process.", partial)
            shutil.rmtree(partial, ignore_errors=True)


def _publish(partial: pathlib.Path, final: pathlib.Path) -> None:
    """Makes a complete cache visible under its final name, atomically.

    The files are hard-linked into a staging folder that is then renamed: readers see either no
    cache or a complete one, and this process can go on reading its own partial folder.
    """
    if final.exists() or not (partial / f"{_CACHE_PREFIX}.index").exists():
        return
    # Named after the partial folder, so that _remove_stale_partials also cleans it up after a kill.
    staging = partial.with_name(f"{partial.name}.staging")
    staging.mkdir()
    for path in partial.iterdir():
        os.link(path, staging / path.name)
    try:
        os.rename(staging, final)
        logging.info("File cache complete: %s", final)
    except OSError:  # Another process published the same cache first; its copy is as good.
        shutil.rmtree(staging, ignore_errors=True)


def _file_cache(dataset: tf.data.Dataset, *, root: pathlib.Path, key: str) -> tf.data.Dataset:
    """Caches `dataset` in root/key, such that a half-written cache is never read.

    tf.data's own .cache(filename) keeps writes in temporary files until a full pass, but a killed
    writer leaves a lockfile that makes every later run fail, and two processes would share one
    filename. So each process writes under its own partial name and publishes after a full pass.
    """
    final = root / key
    if (final / f"{_CACHE_PREFIX}.index").exists():
        logging.info("Reading the file cache %s", final)
        return dataset.cache(str(final / _CACHE_PREFIX))
    if final.exists():
        raise UserError(f"The cache folder {final} exists but holds no complete cache; remove it "
                        "(it is rebuilt from the images) or pass another --cache folder.")
    _remove_stale_partials(root, key)
    owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial = root / f"{key}{_PARTIAL_MARK}{owner}"
    try:
        partial.mkdir(parents=True)
    except OSError as e:
        raise disk_error(partial, e, what="create the image cache folder") from None
    atexit.register(shutil.rmtree, partial, True)  # Published files live on through their links.
    logging.info("Writing the file cache %s (published on completion of the first epoch).", final)

    def publish():
        try:
            _publish(partial, final)
        except OSError as e:  # E.g. a filesystem without hard links: the run goes on, uncached.
            logging.warning("Could not publish the file cache %s: %s", final, e)
        return True

    # Runs once the cache has seen the end of its input, i.e. after tf.data wrote cache.index;
    # it yields no element (the filter drops its output), so the data stream is unchanged.
    zeros = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype),
                                  dataset.element_spec)
    trigger = (tf.data.Dataset.range(1)
               .map(lambda _: tf.py_function(publish, [], tf.bool))
               .filter(tf.logical_not)
               .map(lambda _: zeros))
    return dataset.cache(str(partial / _CACHE_PREFIX)).concatenate(trigger)


# What TF says when the OS refuses a write: the cause is the folder, not the pipeline.
_DISK_TROUBLE = ("No space left on device", "Read-only file system", "Permission denied",
                 "Disk quota exceeded")


@contextlib.contextmanager
def named_cache_errors(cache: str):
    """Turns a failed write of the file cache (inside TF) into one paragraph naming the folder."""
    try:
        yield
    except tf.errors.OpError as e:
        reason = next((r for r in _DISK_TROUBLE if r in (e.message or "")), None)
        if cache in ("none", "memory") or reason is None:
            raise
        raise DiskError(f"Cannot write the image cache in {cache}: {reason}. Free disk space, "
                        "or pass --cache=memory (or another folder); the run resumes from its "
                        "last finished epoch.") from None


def make_dataset(source: Source, *, image_size: int, batch_size: int, training: bool,
                 cache: str = "none", shuffle_buffer: int = 1024,
                 seed: Optional[int] = None) -> tf.data.Dataset:
    """Builds the input pipeline of one split for one replica (or one device).

    source -> decode + resize (parallel) -> cache -> shuffle -> batch -> prefetch. The cache holds
    decoded uint8 images, so after the first epoch no JPEG is decoded again. Images stay uint8:
    the float conversion and ResNet preprocessing run inside the model, on the accelerator.

    Args:
      source: The split to read (see mri_tfdata.sources).
      image_size: Side of the square output images in pixels.
      batch_size: Batch size of this pipeline (per replica under a strategy).
      training: Shuffle examples (reshuffled every epoch) and drop the last partial batch; off
        for evaluation, which keeps the source order and every example.
      cache: "none", "memory", or a folder for a file cache that survives processes. The file
        cache is keyed by the source's cache_id and image_size, so a change never serves stale
        images; it becomes visible only when complete.
      shuffle_buffer: Number of examples in the shuffle buffer (capped at the split size).
      seed: Shuffle seed; with a seed the order is reproducible (and tf.data deterministic),
        without one it differs between runs.

    Returns:
      A tf.data.Dataset of (uint8 [batch, image_size, image_size, 3], int32 [batch]).

    Raises:
      UserError: The cache folder cannot be used.
    """
    deterministic = seed is not None or not training

    def decode(encoded, label):
        return decode_and_resize(encoded, image_size=image_size), tf.cast(label, tf.int32)

    # A file cache is shared by every later pipeline of the same key, including evaluation ones
    # that rely on the source order, so it is always written in that order.
    dataset = source.dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                                 deterministic=deterministic or cache not in ("none", "memory"))
    if cache == "memory":
        dataset = dataset.cache()
    elif cache != "none":
        root = pathlib.Path(cache).expanduser()
        if root.exists() and not root.is_dir():
            raise UserError(f"--cache={cache} is a file; pass 'none', 'memory' or a folder for "
                            "the decoded-image cache.")
        dataset = _file_cache(dataset, root=root, key=_cache_key(source, image_size))
    if training:
        # Shuffle examples after the cache (a cached order would otherwise repeat every epoch)
        # and before batching, so batches differ in composition, not just in order.
        dataset = dataset.shuffle(max(1, min(shuffle_buffer, source.num_examples)), seed=seed,
                                  reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=training,
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    # Out-of-order parallel map and batch are faster; order only matters when a seed asks for a
    # reproducible run, or for evaluation, whose predictions are matched to the source order.
    options.deterministic = deterministic
    # The sources shard explicitly by example (input_context), the same way for TFDS and folder
    # sources; AUTO would shard file-less folder sources by DATA (every worker reads everything)
    # and fail on TFDS splits with fewer files than workers.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # No private thread pool: on 2 cores, 2 or 4 private threads gave the same cold-epoch rate as
    # the shared pool (benchmarks/input_pipeline.py), and a fixed size would not follow the host.
    return dataset.with_options(options)


def distribute_dataset(strategy: tf.distribute.Strategy,
                       source_fn: Callable[[tf.distribute.InputContext], Source], *,
                       global_batch_size: int, image_size: int, training: bool,
                       cache: str = "none", shuffle_buffer: int = 1024,
                       seed: Optional[int] = None) -> tf.distribute.DistributedDataset:
    """Builds one pipeline per worker, each batching its own shard at the per-replica batch size.

    Args:
      strategy: The tf.distribute strategy.
      source_fn: Called with each worker's tf.distribute.InputContext; returns that worker's
        Source (e.g. `lambda ctx: load_folder_source(root, split=s, input_context=ctx)`).
      global_batch_size: Batch size summed over all replicas.
      image_size, training, cache, shuffle_buffer, seed: As for make_dataset.

    Returns:
      A distributed dataset of per-replica (uint8 images, int32 labels) batches.

    Raises:
      UserError: global_batch_size is not a multiple of the number of replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UserError(f"The batch size {global_batch_size} is not a multiple of the "
                        f"{replicas} replicas; pass a multiple of {replicas}.")

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(source_fn(input_context), image_size=image_size,
                            batch_size=input_context.get_per_replica_batch_size(global_batch_size),
                            training=training, cache=cache, shuffle_buffer=shuffle_buffer,
                            seed=seed)

    return strategy.distribute_datasets_from_function(dataset_fn)
