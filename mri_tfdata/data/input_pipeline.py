"""The tf.data pipeline: decode once, resize, cache uint8 images, shuffle, batch, prefetch."""

import os
import pathlib
from typing import Callable, Optional

import tensorflow as tf
from absl import logging

from mri_tfdata.core import caches
from mri_tfdata.core.errors import ParameterError
from mri_tfdata.data import epoch_order, image_cache
from mri_tfdata.data.decoding import decode_and_resize
from mri_tfdata.data.sources import Source


# The memory cache takes at most this share of the memory available when the pipeline is built;
# a split whose decoded images need more is cached in files under caches.cache_dir("images").
MEMORY_CACHE_SHARE = 0.25


def available_memory() -> int:
    """Bytes of memory available to new allocations: MemAvailable, else the free pages."""
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def bounded_cache(cache: str, *, num_examples: int, image_size: int,
                  memory_limit: Optional[int] = None) -> str:
    """`cache`, except that "memory" becomes the file cache's folder when the split's decoded
    images need more than `memory_limit` bytes (default MEMORY_CACHE_SHARE of available_memory())."""
    if cache != "memory":
        return cache
    if memory_limit is None:
        memory_limit = int(MEMORY_CACHE_SHARE * available_memory())
    needed = num_examples * image_size * image_size * 3
    if needed <= memory_limit:
        return cache
    folder = caches.cache_dir("images")
    logging.info("The memory cache would hold %.2f GB of decoded images, more than its bound of "
                 "%.2f GB (%d%% of the available memory); caching them in files under %s instead.",
                 needed / 1e9, memory_limit / 1e9, round(100 * MEMORY_CACHE_SHARE), folder)
    return str(folder)


def file_cache_key(source: Source, image_size: int) -> str:
    """The file cache's folder name for these images: unique to the source's content (dataset,
    config, version, split, shard), the size and caches.FORMAT_VERSION (what decoding gives)."""
    return caches.cache_key(f"{source.cache_id}-{image_size}px", cache_id=source.cache_id,
                            image_size=image_size)


def make_dataset(source: Source, *, image_size: int, batch_size: int, training: bool,
                 cache: str = "none", shuffle_buffer: int = 1024,
                 seed: Optional[int] = None,
                 memory_limit: Optional[int] = None,
                 order: Optional[epoch_order.EpochOrder] = None) -> tf.data.Dataset:
    """Builds the input pipeline of one split for one replica (or one device).

    source -> decode + resize (parallel) -> cache -> shuffle -> batch -> prefetch. The cache holds
    decoded uint8 images, so after the first epoch no JPEG is decoded again; a file cache is
    written on first use, in one parallel decoding pass (see image_cache). Images stay uint8: the
    float conversion and ResNet preprocessing run inside the model, on the accelerator.

    Args:
      source: The split to read (see mri_tfdata.data.sources).
      image_size: Side of the square output images in pixels.
      batch_size: Batch size of this pipeline (per replica under a strategy).
      training: Shuffle examples (reshuffled every epoch; within `shuffle_buffer` examples, or
        over the whole split from a file cache) and drop the last partial batch; off for
        evaluation, which keeps the source order and every example.
      cache: "none", "memory", or a folder for a file cache that survives processes, keyed by
        `file_cache_key` (never stale), visible only when complete, rebuilt when damaged.
        "memory" holds at most `memory_limit` bytes; a larger split is cached in files under
        caches.cache_dir("images") instead (`bounded_cache`), said in one log line.
      shuffle_buffer: Number of examples in the shuffle buffer (capped at the split size); unused
        with a file cache.
      seed: Shuffle seed; with a seed the order is reproducible (and tf.data deterministic),
        without one it differs between runs.
      memory_limit: the memory cache's bound in bytes; None = MEMORY_CACHE_SHARE of the memory
        available now.
      order: with a seed (and no file cache), the fit's EpochOrder: each epoch's order is drawn
        from (seed, epoch), so a fit resumed at any epoch goes on with the same orders.

    Returns:
      A tf.data.Dataset of (uint8 [batch, image_size, image_size, 3], int32 [batch]).

    Raises:
      ParameterError: `cache` is a file.
      DiskError: the file cache cannot be written.
    """
    cache = bounded_cache(cache, num_examples=source.num_examples, image_size=image_size,
                          memory_limit=memory_limit)
    deterministic = seed is not None or not training
    options = _options(deterministic=deterministic)
    in_files = cache not in ("none", "memory")

    def decode(encoded, label):
        return decode_and_resize(encoded, image_size=image_size), tf.cast(label, tf.int32)

    # A file cache is shared by every later pipeline of the same key, including evaluation ones
    # that rely on the source order, so it is always written in that order. The options apply
    # here already, so that the file cache's writing pass runs with them too.
    dataset = source.dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                                 deterministic=deterministic or in_files)
    dataset = dataset.with_options(options)
    if in_files:
        dataset = _from_file_cache(dataset, source, cache=cache, image_size=image_size,
                                   batch_size=batch_size, training=training, seed=seed)
    else:
        if cache == "memory":
            dataset = dataset.cache()
        if training:
            # Shuffle examples after the cache (a cached order would otherwise repeat every
            # epoch) and before batching, so batches differ in composition, not just in order.
            buffer = max(1, min(shuffle_buffer, source.num_examples))
            if seed is not None and order is not None:
                dataset = epoch_order.shuffled(dataset, buffer=buffer, seed=seed, order=order)
            else:
                dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size, drop_remainder=training,
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(options)


def decoded_in_order(source: Source, *, image_size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of every image of `source` that decodes, in the source's order, with its position.

    The pass over a split that runs once (feature extraction): each image is decoded here and
    nowhere else, and one that fails to decode or read is left out rather than ending the pass,
    so its position is missing from the batches (sources.skip_undecodable names it).

    Returns:
      A tf.data.Dataset of (uint8 [batch, image_size, image_size, 3], int32 positions [batch]).
    """
    def decode(position, example):
        return (decode_and_resize(example[0], image_size=image_size),
                tf.cast(position, tf.int32))

    # enumerate before reading: a file that cannot be read still takes its position.
    dataset = source.dataset.enumerate().map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                                             deterministic=True)
    dataset = dataset.ignore_errors().batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE,
                                            deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic=True))


def _from_file_cache(decoded: tf.data.Dataset, source: Source, *, cache: str, image_size: int,
                     batch_size: int, training: bool, seed: Optional[int]) -> tf.data.Dataset:
    """Batches read straight out of the file cache in the folder `cache`, written first if absent
    (for training, a full shuffle of the split)."""
    root = pathlib.Path(cache).expanduser()
    if root.exists() and not root.is_dir():
        raise ParameterError("{cache} is a file; {cache!n} must be 'none', 'memory' or a folder "
                             "for the decoded-image cache.", cache=cache)
    cached = image_cache.open_or_build(decoded, root=root, key=file_cache_key(source, image_size),
                                       count=source.num_examples, image_size=image_size)
    return image_cache.batches(cached, batch_size=batch_size, training=training, seed=seed)


def _options(*, deterministic: bool) -> tf.data.Options:
    """The options of every pipeline make_dataset builds."""
    options = tf.data.Options()
    # Out-of-order parallel map and batch are faster; order only matters when a seed asks for a
    # reproducible run, or for evaluation, whose predictions are matched to the source order.
    options.deterministic = deterministic
    # The sources shard explicitly by example (input_context), the same way for TFDS and folder
    # sources; AUTO would shard file-less folder sources by DATA (every worker reads everything)
    # and fail on TFDS splits with fewer files than workers.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # The autotuner off: it can leave a cold epoch running at one thread's rate, whatever its
    # algorithm or min_parallelism. Without it every AUTOTUNE map and batch runs on as many
    # threads as the host has cores, and AUTOTUNE prefetch buffers still grow on demand.
    options.autotune.enabled = False
    # No private thread pool: a fixed size would not follow the host, and the shared pool is as
    # fast (benchmarks/input_pipeline.py measures both).
    return options


def distribute_dataset(strategy: tf.distribute.Strategy,
                       source_fn: Callable[[tf.distribute.InputContext], Source], *,
                       global_batch_size: int, image_size: int, training: bool,
                       cache: str = "none", shuffle_buffer: int = 1024,
                       seed: Optional[int] = None,
                       order: Optional[epoch_order.EpochOrder] = None,
                       ) -> tf.distribute.DistributedDataset:
    """Builds one pipeline per worker, each batching its own shard at the per-replica batch size.

    Args:
      strategy: The tf.distribute strategy.
      source_fn: Called with each worker's tf.distribute.InputContext; returns that worker's
        Source (e.g. `lambda ctx: load_folder_source(root, split=s, input_context=ctx)`).
      global_batch_size: Batch size summed over all replicas.
      image_size, training, cache, shuffle_buffer, seed, order: As for make_dataset.

    Returns:
      A distributed dataset of per-replica (uint8 images, int32 labels) batches.

    Raises:
      ParameterError: global_batch_size is not a multiple of the number of replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ParameterError("{global_batch_size} is not a multiple of the {replicas!s} replicas; "
                             "pass a multiple of {replicas!s}.",
                             global_batch_size=global_batch_size, replicas=replicas)

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(source_fn(input_context), image_size=image_size,
                            batch_size=input_context.get_per_replica_batch_size(global_batch_size),
                            training=training, cache=cache, shuffle_buffer=shuffle_buffer,
                            seed=seed, order=order)

    return strategy.distribute_datasets_from_function(dataset_fn)
