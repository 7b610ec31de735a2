"""The file cache of decoded images: raw chunk files, published whole, checked, read in parallel."""

import errno
import json
import os
import pathlib
import shutil
import socket
import uuid

import numpy as np
import tensorflow as tf
from absl import logging

from mri_tfdata import faults
from mri_tfdata.atomic import DiskError, disk_error

# Part of the manifest: bump it when the folder's layout changes. (What the pixels are is part of
# the folder's name, the key, which input_pipeline derives.)
LAYOUT = 1
MANIFEST = "manifest.json"
PARTIAL_MARK = ".partial-"
# Bytes of images per chunk file: large enough that reading one is a single sequential read, small
# enough that the parallel readers hold a few chunks, not the split, in memory.
_CHUNK_BYTES = 16 * 1024 * 1024


class _Damaged(Exception):
    """The cache folder exists but is not a complete, intact cache of this key."""


def _disk_error(root: pathlib.Path, error: OSError) -> DiskError:
    reason = error.strerror or str(error)
    return DiskError(f"Cannot write the image cache in {root}: {reason}. Free disk space, or pass "
                     "--cache=memory (or another folder); the run resumes from its last finished "
                     "epoch.")


def _fingerprint(images: tf.Tensor) -> str:
    """A 64-bit hash of a chunk's pixels (TF's own, so the reader checks it in the graph)."""
    return tf.fingerprint(tf.reshape(images, [1, -1]))[0].numpy().tobytes().hex()


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
    """Writes every (image, label) of `decoded`, in order, as chunk files and a manifest."""
    per_chunk = max(1, _CHUNK_BYTES // (image_size * image_size * 3))
    chunks, labels = [], []
    for index, (images, chunk_labels) in enumerate(decoded.batch(per_chunk).prefetch(1)):
        name = f"images-{index:05d}.u8"
        with open(partial / name, "wb") as f:
            f.write(images.numpy().tobytes())
            f.flush()
            os.fsync(f.fileno())
        chunks.append({"file": name, "count": int(images.shape[0]),
                       "fingerprint": _fingerprint(images)})
        labels += chunk_labels.numpy().tolist()
        faults.point("image_cache_chunk_written")
    if len(labels) != count:
        raise RuntimeError(f"the source yielded {len(labels)} images; it declares {count}")
    manifest = {"layout": LAYOUT, "key": key, "count": count, "image_size": image_size,
                "chunks": chunks, "labels": labels}
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


def _read_manifest(folder: pathlib.Path, *, key: str, count: int, image_size: int) -> dict:
    """The manifest of a complete, intact cache; _Damaged (saying why) for anything else."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        chunks, labels = manifest["chunks"], manifest["labels"]
        counts = [int(chunk["count"]) for chunk in chunks]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _Damaged(f"its manifest is missing or unreadable ({type(e).__name__}: {e})") \
            from None
    expected = {"layout": LAYOUT, "key": key, "count": count, "image_size": image_size}
    for field, value in expected.items():
        if manifest.get(field) != value:
            raise _Damaged(f"its manifest says {field}={manifest.get(field)!r}, not {value!r}")
    if sum(counts) != count or len(labels) != count:
        raise _Damaged(f"its manifest lists {sum(counts)} images and {len(labels)} labels, "
                       f"not {count}")
    image_bytes = image_size * image_size * 3
    for chunk, n in zip(chunks, counts):
        path = folder / chunk["file"]
        size = path.stat().st_size if path.is_file() else None
        if size != n * image_bytes:
            raise _Damaged(f"{path.name} holds {size} bytes, not {n * image_bytes}")
    return manifest


def _chunks(folder: pathlib.Path, manifest: dict, image_size: int) -> tf.data.Dataset:
    """(images uint8 [n, size, size, 3], labels int32 [n], fingerprint) per chunk file, in order."""
    counts = np.array([int(chunk["count"]) for chunk in manifest["chunks"]], np.int64)
    starts = np.cumsum(counts) - counts
    paths = [str(folder / chunk["file"]) for chunk in manifest["chunks"]]
    labels = tf.constant(manifest["labels"], tf.int32)

    def read(path, start, n):
        images = tf.reshape(tf.io.decode_raw(tf.io.read_file(path), tf.uint8),
                            [n, image_size, image_size, 3])
        return images, labels[start:start + n]

    return tf.data.Dataset.from_tensor_slices((paths, starts, counts)).map(
        read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _verify(folder: pathlib.Path, manifest: dict, image_size: int) -> None:
    """Reads every chunk once, in parallel, and compares its fingerprint with the manifest's.

    About the cost of one warm epoch; it catches bytes changed in place, which sizes do not.
    """
    hashes = _chunks(folder, manifest, image_size).map(
        lambda images, _: tf.fingerprint(tf.reshape(images, [1, -1]))[0],
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    try:
        found = [h.tobytes().hex() for h in hashes.as_numpy_iterator()]
    except tf.errors.OpError as e:
        raise _Damaged(f"a chunk cannot be read ({e.message.splitlines()[0]})") from None
    for chunk, fingerprint in zip(manifest["chunks"], found):
        if fingerprint != chunk["fingerprint"]:
            raise _Damaged(f"{chunk['file']} does not match its recorded fingerprint")


def _discard(folder: pathlib.Path) -> None:
    """Moves a damaged cache aside (one rename: readers see it or not) and deletes it."""
    aside = folder.with_name(f"{folder.name}{PARTIAL_MARK}{_owner()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # Another process discarded it first.
        return
    shutil.rmtree(aside, ignore_errors=True)


def _open(folder: pathlib.Path, *, key: str, count: int, image_size: int) -> tf.data.Dataset:
    manifest = _read_manifest(folder, key=key, count=count, image_size=image_size)
    _verify(folder, manifest, image_size)
    logging.info("Reading the image cache %s (%d images).", folder, count)
    return _chunks(folder, manifest, image_size).unbatch()


def open_or_build(decoded: tf.data.Dataset, *, root: pathlib.Path, key: str, count: int,
                  image_size: int) -> tf.data.Dataset:
    """The examples of `decoded`, in its order, from the cache root/key; built first if needed.

    An absent cache is written now, in one pass over `decoded` (its parallel decoding is the
    cold epoch's work). A cache that is incomplete, of another layout or key, truncated or
    changed on disk is logged, removed and rebuilt. Reading runs one parallel map over the chunk
    files, so a warm epoch runs at about the memory cache's rate.

    Args:
      decoded: (uint8 image [image_size, image_size, 3], int32 label) examples, in source order.
      root: the --cache folder.
      key: the cache's folder name, unique to what the images are (see input_pipeline).
      count: the number of examples `decoded` yields.
      image_size: side of the images.

    Returns:
      A tf.data.Dataset of (uint8 image, int32 label), in the order of `decoded`.

    Raises:
      DiskError: the cache cannot be written (full disk, read-only folder); nothing is left.
    """
    folder = root / key
    if folder.exists():
        try:
            return _open(folder, key=key, count=count, image_size=image_size)
        except _Damaged as e:
            logging.warning("The image cache %s is damaged (%s); rebuilding it.", folder, e)
            _discard(folder)
    _build(decoded, root, key, count=count, image_size=image_size)
    try:
        return _open(folder, key=key, count=count, image_size=image_size)
    except _Damaged as e:  # Damaged right after it was written: the folder is not usable.
        raise DiskError(f"The image cache {folder} does not read back as written ({e}); check "
                        "the disk, or pass --cache=memory.") from None
