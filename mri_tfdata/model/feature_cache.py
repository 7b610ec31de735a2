"""The on-disk cache of split features: one .npz per split, named by all that they depend on."""

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import keras
import numpy as np
from absl import logging

from mri_tfdata.core import atomic, caches
from mri_tfdata.data import input_pipeline, sources
from mri_tfdata.model import architecture, features


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """Names one cache file as `caches.cache_key` does: a readable prefix and a digest of everything
    the features depend on."""

    name: str
    digest: str

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.digest}.npz"


@dataclasses.dataclass
class FeatureSet:
    """Pooled backbone features of one split, in the split's fixed order."""

    features: np.ndarray  # float32 [N, FEATURE_DIM]
    labels: np.ndarray  # int32 [N]
    key: CacheKey
    path: Path | None  # the cache file, or None when caching is off
    from_cache: bool  # True when read from disk, False when extracted by this call
    # The split as its features hold it: the source passed in, without the files that failed to
    # decode when it was opened without decoding them (sources.skip_undecodable).
    source: object = None


def resolve_cache_dir(feature_cache: str) -> Path | None:
    """Maps a `feature_cache` setting to a folder: "off" -> None, "auto" -> the package's
    `caches.cache_dir("features")` (shared by every run and trial, whatever its workdir), else
    the folder it names."""
    if feature_cache == "off":
        return None
    if feature_cache == "auto":
        return caches.cache_dir("features")
    return Path(feature_cache).expanduser()


def use_fast_path(feature_cache: str, *, fine_tune_blocks: int, augment: bool) -> bool:
    """Decides whether training takes the cached-feature fast path, and logs which path and why.

    The backbone's pooled output is a pure function of the image only while the backbone stays
    frozen and no random augmentation changes the image from epoch to epoch.

    Args:
      feature_cache: "auto", "off" or a directory (`resolve_cache_dir`).
      fine_tune_blocks: backbone blocks unfrozen in a second phase (0 = frozen throughout).
      augment: whether random augmentation is on.

    Returns:
      True for the fast path, False for the end-to-end path.
    """
    if feature_cache == "off":
        logging.info("Training path: end-to-end (feature_cache='off').")
        return False
    reasons = []
    if fine_tune_blocks:
        reasons.append(f"the backbone is fine-tuned (fine_tune_blocks={fine_tune_blocks})")
    if augment:
        reasons.append("augmentation is on, so the features change every epoch")
    if reasons:
        log = logging.warning if feature_cache != "auto" else logging.info
        log("Training path: end-to-end, feature cache unused because %s.", " and ".join(reasons))
        return False
    logging.info(
        "Training path: fast (frozen backbone, no augmentation): features computed once and cached "
        "in %s, the head trained on them.", resolve_cache_dir(feature_cache))
    return True


def weights_fingerprint(backbone: keras.Model) -> str:
    """Hashes shapes, dtypes and values of all the backbone's weights (BatchNorm statistics too).

    Every byte is hashed: unlike a sample, the hash cannot miss a changed weight, and it costs
    less than one batch of extraction.
    """
    digest = hashlib.blake2b(digest_size=16)
    for weight in backbone.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.data)
    return digest.hexdigest()


def cache_key(*, cache_id: str, image_size: int, weights_fingerprint: str,
              precision: str) -> CacheKey:
    """The key of one split's features.

    Args:
      cache_id: the Source's cache_id (dataset name, config, version and split).
      image_size: the side the images are resized to before the backbone.
      weights_fingerprint: `weights_fingerprint(backbone)`.
      precision: the backbone's dtype policy name, e.g. "float32" or "mixed_bfloat16".

    Returns:
      A CacheKey whose digest changes when any of the inputs (or caches.FORMAT_VERSION) changes.
    """
    fields = {"cache_id": cache_id, "image_size": int(image_size),
              "weights": weights_fingerprint, "precision": precision}
    return CacheKey(name=caches.readable_name(f"{cache_id}-{int(image_size)}px-{precision}"),
                    digest=caches.content_digest(**fields))


def _checksum(vectors: np.ndarray, labels: np.ndarray) -> str:
    """A hash of the arrays' values: a valid .npz that holds other numbers fails it."""
    # The arrays' own buffers, not bytes copies: the features are the run's largest array.
    digest = hashlib.sha256(np.ascontiguousarray(vectors, np.float32))
    digest.update(np.ascontiguousarray(labels, np.int32))
    return digest.hexdigest()


def _write_cache_file(path: Path, vectors: np.ndarray, labels: np.ndarray, key: CacheKey,
                      skipped=()) -> None:
    meta = json.dumps({"digest": key.digest, "name": key.name, "count": int(len(labels)),
                       "feature_dim": int(vectors.shape[1]),
                       "checksum": _checksum(vectors, labels),
                       "skipped": [[int(i), str(f), str(r)] for i, f, r in skipped]})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise atomic.disk_error(path.parent, e, what="create the feature cache folder") from None
    atomic.write_atomic(path, lambda f: np.savez(f, features=vectors, labels=labels,
                                                 meta=np.array(meta)))


def _read_valid(path: Path, key: CacheKey,
                expected_count: int) -> tuple[np.ndarray, np.ndarray, list] | None:
    """Reads a cache file of a split of `expected_count` examples: (features, labels, the
    (position, file, reason) of each example left out as undecodable, which the features lack);
    None (with the reason logged) when absent, unreadable or inconsistent."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = dict(json.loads(str(data["meta"])))
            vectors, labels = data["features"], data["labels"]
            skipped = [(int(i), str(f), str(r)) for i, f, r in meta.get("skipped", [])]
    except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile) as e:
        logging.warning("Feature cache %r is unreadable (%s: %s), probably left half-written; "
                        "extracting the features again.", str(path), type(e).__name__, e)
        return None
    count = meta.get("count")
    problems = []
    if meta.get("digest") != key.digest:
        problems.append(f"key {meta.get('digest')} != {key.digest}")
    if vectors.shape != (count, architecture.FEATURE_DIM) or labels.shape != (count,):
        problems.append(f"shapes {vectors.shape}/{labels.shape} != recorded count {count}")
    elif meta.get("checksum") != _checksum(vectors, labels):
        problems.append("its arrays do not match their recorded checksum")
    kept = expected_count - len(skipped)
    if count != kept or not all(0 <= i < expected_count for i, _, _ in skipped):
        problems.append(f"{count} examples, the split has {kept}")
    if problems:
        logging.warning("Feature cache %r is inconsistent (%s); extracting the features again.",
                        str(path), "; ".join(problems))
        return None
    return vectors.astype(np.float32, copy=False), labels.astype(np.int32, copy=False), skipped


def load_or_extract(source, *, backbone: keras.Model, image_size: int, cache_dir: Path | None,
                    batch_size: int = features.INFERENCE_BATCH, strategy=None,
                    fingerprint: str | None = None) -> FeatureSet:
    """Returns the features of a split, from the disk cache when a valid file exists.

    Args:
      source: a `sources.Source` of the whole split (no input_context: every example once).
      backbone: the model's own backbone, built in `strategy`'s scope under the active precision.
      image_size: the side images are resized to.
      batch_size: the global batch for extraction (any size gives the same features; it is not
        the training batch).
      cache_dir: directory of cache files (`resolve_cache_dir`), or None to extract without caching.
      strategy: the tf.distribute strategy (default: the current one).
      fingerprint: `weights_fingerprint(backbone)` when the caller has it for the backbone's
        current weights (e.g. for several splits in a row); None computes it.

    A source opened without decoding its files (`source.undecoded`) is decoded here, once: the
    files that fail are named, counted and left out (sources.skip_undecodable), and the
    FeatureSet's `source` is the split without them, which callers use from then on. A cache hit
    names the same files again, from the cache file.

    Returns:
      A FeatureSet; `from_cache` says whether it was read from disk.
    """
    key = cache_key(cache_id=source.cache_id, image_size=image_size,
                    weights_fingerprint=fingerprint or weights_fingerprint(backbone),
                    precision=backbone.dtype_policy.name)
    path = cache_dir / key.filename if cache_dir is not None else None
    if path is not None:
        cached = _read_valid(path, key, source.num_examples)
        if cached is not None:
            vectors, labels, skipped = cached
            logging.info("Features of %s: %d vectors from cache %s.", source.description,
                         len(labels), path)
            return FeatureSet(vectors, labels, key=key, path=path, from_cache=True,
                              source=sources.replay_skipped(source, skipped))
    logging.info("Features of %s: extracting %d images at %d px (cache: %s).", source.description,
                 source.num_examples, image_size, path or "off")
    skipped, extracted = [], source
    if source.undecoded is None:
        dataset = input_pipeline.make_dataset(source, image_size=image_size,
                                              batch_size=batch_size, training=False)
        vectors, labels = features.extract_features(backbone, dataset, batch_size=batch_size,
                                                    strategy=strategy,
                                                    num_examples=source.num_examples)
    else:
        dataset = input_pipeline.decoded_in_order(source, image_size=image_size,
                                                  batch_size=batch_size)
        vectors, positions = features.extract_features(backbone, dataset, batch_size=batch_size,
                                                       strategy=strategy,
                                                       num_examples=source.num_examples)
        extracted, skipped = sources.skip_undecodable(source, positions)
        labels = source.labels[positions].astype(np.int32)
    if len(labels) != extracted.num_examples:
        raise RuntimeError(f"extracted {len(labels)} feature vectors from {source.description}, "
                           f"which declares {extracted.num_examples} examples")
    if path is not None:
        _write_cache_file(path, vectors, labels, key, skipped)
        logging.info("Wrote feature cache %s (%.1f MB).", path, path.stat().st_size / 1e6)
    return FeatureSet(vectors, labels, key=key, path=path, from_cache=False, source=extracted)
