"""The file cache of decoded images: one raw array, published whole, checked, read in parallel."""

import concurrent.futures
import dataclasses
import errno
import json
import os
import pathlib
import shutil
import socket
import uuid
import zlib

import numpy as np
import tensorflow as tf
from absl import logging

from mri_tfdata.core import caches, faults
from mri_tfdata.core.atomic import DiskError, disk_error

MANIFEST = "manifest.json"
IMAGES = "images.u8"  # uint8 [count, size, size, 3], C order, no header
PARTIAL_MARK = ".partial-"
# The images are written and checksummed in segments of about this many bytes: a few decoded
# batches in flight while writing, and as many checksums as there are cores to spread them over.
_SEGMENT_BYTES = 16 * 1024 * 1024


class _Damaged(Exception):
    """The cache folder exists but is not a complete, intact cache of this key."""


@dataclasses.dataclass(frozen=True)
class CachedImages:
    """A complete cache, opened: the images memory-mapped (read from the page cache), in order."""

    images: np.ndarray  # uint8 [count, size, size, 3], a read-only memory map
    labels: np.ndarray  # int32 [count]


def _disk_error(root: pathlib.Path, error: OSError) -> DiskError:
    return DiskError("Cannot write the image cache in {root!s}: {reason!s}. Free disk space, or "
                     "pass {cache:'memory'} (or another folder); a training run resumes from its "
                     "last finished epoch.", root=root, reason=error.strerror or str(error))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_stale_partials(root: pathlib.Path, key: str) -> None:
    """Removes folders of `key` left by dead processes of this host (never live ones)."""
    host = socket.gethostname()
    for partial in root.glob(f"{key}{PARTIAL_MARK}*"):
        parts = partial.name[len(key) + len(PARTIAL_MARK):].rsplit("-", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() \
                and not _pid_alive(int(parts[1])):
            logging.info("Removing the partial image cache %s of a killed process.", partial)
            shutil.rmtree(partial, ignore_errors=True)


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(decoded: tf.data.Dataset, partial: pathlib.Path, *, key: str, count: int,
           image_size: int) -> None:
    """Writes every (image, label) of `decoded`, in order, as the images file and a manifest."""
    per_segment = max(1, _SEGMENT_BYTES // (image_size * image_size * 3))
    checksums, labels = [], []
    with open(partial / IMAGES, "wb") as f:
        for images, segment_labels in decoded.batch(per_segment).prefetch(1):
            data = images.numpy()  # C-contiguous: written and checksummed without a copy
            f.write(data.data)
            checksums.append(zlib.crc32(data))
            labels += segment_labels.numpy().tolist()
            faults.point("image_cache_segment_written")
        f.flush()
        os.fsync(f.fileno())
    if len(labels) != count:
        raise RuntimeError(f"the source yielded {len(labels)} images; it declares {count}")
    manifest = {"format": caches.FORMAT_VERSION, "key": key, "count": count,
                "image_size": image_size, "segment_images": per_segment, "crc32": checksums,
                "labels": labels}
    with open(partial / MANIFEST, "w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync(partial)  # The folder's entries are durable before the rename makes them visible.


def _build(decoded: tf.data.Dataset, root: pathlib.Path, key: str, *, count: int,
           image_size: int) -> None:
    """Writes the cache under a partial name of this process, then renames it into place.

    A kill at any moment leaves a partial folder (removed by the next run), never a cache that
    looks complete; of concurrent writers the first rename wins and the others discard theirs.
    """
    _remove_stale_partials(root, key)
    partial = root / f"{key}{PARTIAL_MARK}{_owner()}"
    try:
        partial.mkdir(parents=True)
    except OSError as e:
        raise disk_error(partial, e, what="create the image cache folder") from None
    logging.info("Writing the image cache %s (one decoding pass over %d images).",
                 root / key, count)
    try:
        _write(decoded, partial, key=key, count=count, image_size=image_size)
        faults.point("image_cache_written")
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise _disk_error(root, e) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        os.rename(partial, root / key)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise _disk_error(root, e) from None
        logging.info("Another process published the image cache %s first; reading its copy.",
                     root / key)
        return
    _fsync(root)
    logging.info("Image cache complete: %s", root / key)


def _open(folder: pathlib.Path, *, key: str, count: int, image_size: int) -> CachedImages:
    """Opens a complete, intact cache; _Damaged (saying why) for anything else.

    Checks the manifest against the key, the sizes against the manifest, and every segment's
    CRC-32 (in parallel threads: zlib releases the GIL), which catches bytes changed in place.
    That reads the file once, at memory speed, when it is opened, not every epoch.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        labels = np.array(manifest["labels"], np.int32)
        checksums, per_segment = manifest["crc32"], int(manifest["segment_images"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _Damaged(f"its manifest is missing or unreadable ({type(e).__name__}: {e})") \
            from None
    expected = {"format": caches.FORMAT_VERSION, "key": key, "count": count,
                "image_size": image_size}
    for field, value in expected.items():
        if manifest.get(field) != value:
            raise _Damaged(f"its manifest says {field}={manifest.get(field)!r}, not {value!r}")
    if labels.shape != (count,) or len(checksums) != -(-count // per_segment):
        raise _Damaged(f"its manifest lists {len(labels)} labels and {len(checksums)} checksums "
                       f"for {count} images")
    path = folder / IMAGES
    size = path.stat().st_size if path.is_file() else None
    if size != count * image_size * image_size * 3:
        raise _Damaged(f"{IMAGES} holds {size} bytes, not {count * image_size * image_size * 3}")
    images = np.memmap(path, np.uint8, mode="r", shape=(count, image_size, image_size, 3))
    segments = [images[i:i + per_segment] for i in range(0, count, per_segment)]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        found = list(pool.map(zlib.crc32, segments))
    bad = [i for i, (a, b) in enumerate(zip(found, checksums)) if a != b]
    if bad:
        raise _Damaged(f"{len(bad)} segment(s) of {IMAGES} do not match their CRC-32, the first "
                       f"holding images {bad[0] * per_segment} onwards")
    return CachedImages(images=images, labels=labels)


def _discard(folder: pathlib.Path) -> None:
    """Moves a damaged cache aside (one rename: readers see it or not) and deletes it."""
    aside = folder.with_name(f"{folder.name}{PARTIAL_MARK}{_owner()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # Another process discarded it first.
        return
    shutil.rmtree(aside, ignore_errors=True)


def open_or_build(decoded: tf.data.Dataset, *, root: pathlib.Path, key: str, count: int,
                  image_size: int) -> CachedImages:
    """Opens the cache root/key of the examples of `decoded`, building it first if needed.

    An absent cache is written now, in one pass over `decoded` (its parallel decoding is the
    cold epoch's work). A cache that is incomplete, of another format or key, truncated or
    changed on disk is logged, removed and rebuilt.

    Args:
      decoded: (uint8 image [image_size, image_size, 3], int32 label) examples, in source order.
      root: the cache folder (make_dataset's `cache`).
      key: the cache's folder name, unique to what the images are (input_pipeline.file_cache_key).
      count: the number of examples `decoded` yields.
      image_size: side of the images.

    Returns:
      The opened cache, its examples in the order of `decoded` (read them with `batches`).

    Raises:
      DiskError: the cache cannot be written (full disk, read-only folder); nothing is left.
    """
    folder = root / key
    if folder.exists():
        try:
            cached = _open(folder, key=key, count=count, image_size=image_size)
            logging.info("Reading the image cache %s (%d images).", folder, count)
            return cached
        except _Damaged as e:
            logging.warning("The image cache %s is damaged (%s); rebuilding it.", folder, e)
            _discard(folder)
    _build(decoded, root, key, count=count, image_size=image_size)
    try:
        return _open(folder, key=key, count=count, image_size=image_size)
    except _Damaged as e:  # Damaged right after it was written: the folder is not usable.
        raise DiskError("The image cache {folder!s} does not read back as written ({reason!s}); "
                        "check the disk, or pass {cache:'memory'}.", folder=folder,
                        reason=e) from None


def _aligned(count: int, shape: list) -> np.ndarray:
    """An uninitialised uint8 array at a 64-byte boundary, which TF adopts without copying it."""
    size = count * int(np.prod(shape))
    buffer = np.empty(size + 64, np.uint8)
    offset = -buffer.ctypes.data % 64
    return buffer[offset:offset + size].reshape(count, *shape)


def batches(cached: CachedImages, *, batch_size: int, training: bool,
            seed: int | None = None) -> tf.data.Dataset:
    """Batches of (uint8 images, int32 labels) read from an opened cache by a parallel map.

    Each batch is one copy out of the page cache, made by numpy in a tf.data worker thread, so a
    warm epoch costs about what one from the memory cache does.

    Args:
      cached: from `open_or_build`.
      batch_size: examples per batch.
      training: a new random permutation of all examples every epoch (a full shuffle, where the
        memory cache's buffer shuffles within 1,024 examples), batches of exactly batch_size;
        otherwise the cache's order with a last, partial batch.
      seed: the permutation's seed; None for a different order in every run.

    Returns:
      A tf.data.Dataset of (uint8 [batch, size, size, 3], int32 [batch]).
    """
    images, labels = cached.images, cached.labels
    count, shape = len(labels), list(images.shape[1:])

    def gather(indices):
        indices = np.sort(indices)  # Reads in file order; a batch's inner order does not matter.
        # mode="clip": "raise" would copy through a buffer (numpy's take docs); they are valid.
        out = np.take(images, indices, axis=0, out=_aligned(len(indices), shape), mode="clip")
        return out, labels[indices]

    def take(start):
        rows = images[start:start + batch_size]
        out = _aligned(len(rows), shape)
        out[...] = rows
        return out, labels[start:start + batch_size]

    def read(fn, arg):
        x, y = tf.numpy_function(fn, [arg], [tf.uint8, tf.int32], stateful=False)
        size = batch_size if training else None
        return tf.ensure_shape(x, [size, *shape]), tf.ensure_shape(y, [size])

    if training:
        dataset = (tf.data.Dataset.range(count)
                   .shuffle(count, seed=seed, reshuffle_each_iteration=True)
                   .batch(batch_size, drop_remainder=True)
                   .map(lambda indices: read(gather, indices),
                        num_parallel_calls=tf.data.AUTOTUNE))
    else:
        dataset = tf.data.Dataset.range(0, count, batch_size).map(
            lambda start: read(take, start), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
    return dataset
