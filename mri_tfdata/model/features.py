"""A split's frozen-backbone features: extracted once, cached on disk, keyed by their inputs."""

import dataclasses
import hashlib
import json
import os
import re
import time
import weakref
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mri_tfdata.core import atomic
from mri_tfdata.data import input_pipeline
from mri_tfdata.model import architecture
from mri_tfdata.runtime import progress

# Part of every cache key: bump it when the extraction itself changes (resizing, preprocessing,
# file layout), so that features computed by older code are never served.
CACHE_FORMAT_VERSION = 3  # 3: JPEGs decoded at a DCT scale (decoding.decode_and_resize)


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """Names one cache file: a readable prefix and a hash of everything the features depend on."""

    name: str
    digest: str

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.digest}.npz"


@dataclasses.dataclass
class FeatureSet:
    """Pooled backbone features of one split, in the split's fixed order."""

    features: np.ndarray  # float32 [N, FEATURE_DIM]
    labels: np.ndarray  # int32 [N]
    key: CacheKey
    path: Path | None  # the cache file, or None when caching is off
    from_cache: bool  # True when read from disk, False when extracted by this call


def default_cache_dir() -> Path:
    """Where `--feature_cache=auto` keeps features: `$XDG_CACHE_HOME/mri_tfdata/features`.

    Outside any workdir on purpose: every run and every tuner trial on the same data, image size,
    weights and precision finds the same files, whatever its --workdir.
    """
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mri_tfdata" / "features"


def resolve_cache_dir(feature_cache: str) -> Path | None:
    """Maps `--feature_cache` to a folder: "off" -> None, "auto" -> the default, else PATH."""
    if feature_cache == "off":
        return None
    if feature_cache == "auto":
        return default_cache_dir()
    return Path(feature_cache).expanduser()


def use_fast_path(feature_cache: str, *, fine_tune_blocks: int, augment: bool) -> bool:
    """Decides whether training takes the cached-feature fast path, and logs which path and why.

    The backbone's pooled output is a pure function of the image only while the backbone stays
    frozen and no random augmentation changes the image from epoch to epoch.

    Args:
      feature_cache: the `--feature_cache` value: "auto", "off" or a directory.
      fine_tune_blocks: backbone blocks unfrozen in a second phase (0 = frozen throughout).
      augment: whether random augmentation is on.

    Returns:
      True for the fast path, False for the end-to-end path.
    """
    if feature_cache == "off":
        logging.info("Training path: end-to-end (--feature_cache=off).")
        return False
    reasons = []
    if fine_tune_blocks:
        reasons.append(f"the backbone is fine-tuned (--fine_tune_blocks={fine_tune_blocks})")
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

    Hashing every byte (~94 MB for ResNet50) takes about half a CPU second, less than one batch of
    extraction, and unlike a sample it cannot miss a changed weight.
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
      A CacheKey whose digest changes when any of the inputs changes.
    """
    fields = {
        "format": CACHE_FORMAT_VERSION,
        "cache_id": cache_id,
        "image_size": int(image_size),
        "weights": weights_fingerprint,
        "precision": precision,
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", cache_id).strip("_")[-80:]
    return CacheKey(name=f"{readable}-{int(image_size)}px-{precision}", digest=digest)


# The global batch of feature extraction, whatever the training batch: large enough to keep the
# device busy, small enough for ResNet50's activations at 256 px to fit a CPU host's memory.
INFERENCE_BATCH = 64

# backbone -> {(strategy, element_spec): traced step}. Tracing ResNet50 takes seconds, and a run
# extracts two or three splits with the same backbone; the weak keys let models be freed.
_STEPS = weakref.WeakKeyDictionary()


def _extraction_step(backbone: keras.Model, strategy, element_spec):
    """The tf.function that runs one (distributed) batch through the backbone, traced once."""
    steps = _STEPS.setdefault(backbone, {})
    key = (id(strategy), element_spec)
    if key not in steps:
        # A weak reference, so that the cached function does not keep its own key alive.
        backbone_ref = weakref.ref(backbone)

        # One function for all strategies: on the default strategy `run` and `gather` are
        # identities. Every batch is padded to the full size, so the signature is static and
        # ResNet50 is traced (and its kernels prepared) once.
        @tf.function(input_signature=[element_spec])
        def step(batch):
            def replica_fn(images, labels, valid):
                # float32 storage whatever the policy: bfloat16/float16 values are exact in float32.
                # The mask travels as int32: collective gathers do not take booleans.
                return (tf.cast(backbone_ref()(images, training=False), tf.float32),
                        tf.cast(labels, tf.int32), tf.cast(valid, tf.int32))

            features, labels, valid = (strategy.gather(t, axis=0)
                                       for t in strategy.run(replica_fn, args=batch))
            valid = tf.cast(valid, tf.bool)
            return tf.boolean_mask(features, valid), tf.boolean_mask(labels, valid)

        steps[key] = step
    return steps[key]


def _padded(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Pads each batch to batch_size examples, with a mask of the real ones: static shapes."""
    image_shape = dataset.element_spec[0].shape[1:]

    def pad(images, labels):
        missing = batch_size - tf.shape(images)[0]
        images = tf.pad(images, [[0, missing]] + [[0, 0]] * len(image_shape))
        valid = tf.range(batch_size) < batch_size - missing
        return (tf.ensure_shape(images, [batch_size, *image_shape]),
                tf.ensure_shape(tf.pad(labels, [[0, missing]]), [batch_size]), valid)

    return dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def extract_features(backbone: keras.Model, dataset: tf.data.Dataset, *, batch_size: int,
                     strategy=None,
                     num_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Runs the backbone over every batch of `dataset`, in order, with a progress bar.

    The results stay on the device until the end: no batch waits for the previous one's features
    to reach the host, so the input pipeline, the transfer and the backbone overlap.

    Args:
      backbone: `architecture.build_backbone(...)`, built in `strategy`'s scope.
      dataset: batches of (uint8 images, labels) in a fixed order, every example once
        (`input_pipeline.make_dataset(..., training=False)`).
      batch_size: the global batch of `dataset`; a shorter last batch is padded to it.
      strategy: the tf.distribute strategy; batches are split across its replicas and the
        replicas' results gathered back, in the dataset's order on one worker (across workers
        the pairs stay matched but follow the sharding's order). Default: the current strategy.
      num_examples: the progress bar's target, if known.

    Returns:
      (features float32 [N, FEATURE_DIM], labels int32 [N]).
    """
    strategy = strategy or tf.distribute.get_strategy()
    dataset = _padded(dataset, batch_size)
    if strategy.num_replicas_in_sync > 1:
        # Across workers, every batch must go to exactly one worker (the pipeline itself does not
        # shard); `gather` then collects every example once. Within one worker the order is kept.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        dataset = dataset.with_options(options)
    elif tf.config.list_logical_devices("GPU"):
        # Strategies prefetch to their devices themselves; without one, do it here.
        dataset = dataset.apply(tf.data.experimental.prefetch_to_device("/gpu:0"))
    distributed = strategy.experimental_distribute_dataset(dataset)
    step = _extraction_step(backbone, strategy, distributed.element_spec)
    progbar = keras.utils.Progbar(num_examples, unit_name="image",
                                  verbose=progress.progress_verbose())
    all_features, all_labels = [], []
    start = time.perf_counter()
    for index, batch in enumerate(distributed):
        features, labels = step(batch)
        all_features.append(features)
        all_labels.append(labels)
        # Counted, not read back from the device (the last batch may be short).
        done = (index + 1) * batch_size
        progbar.update(min(done, num_examples) if num_examples else done)
    features = tf.concat(all_features, 0).numpy() if all_features else np.zeros(
        (0, architecture.FEATURE_DIM), np.float32)
    labels = tf.concat(all_labels, 0).numpy() if all_labels else np.zeros(0, np.int32)
    seconds = time.perf_counter() - start
    logging.info("Extracted %d feature vectors in %.1f s (%.1f images/s).",
                 len(labels), seconds, len(labels) / max(seconds, 1e-9))
    return features, labels


def _checksum(features: np.ndarray, labels: np.ndarray) -> str:
    """A hash of the arrays' values: a file that is a valid .npz but holds other numbers fails it."""
    digest = hashlib.sha256(np.ascontiguousarray(features, np.float32).tobytes())
    digest.update(np.ascontiguousarray(labels, np.int32).tobytes())
    return digest.hexdigest()


def _write_cache_file(path: Path, features: np.ndarray, labels: np.ndarray, key: CacheKey) -> None:
    meta = json.dumps({"digest": key.digest, "name": key.name, "count": int(len(labels)),
                       "feature_dim": int(features.shape[1]),
                       "checksum": _checksum(features, labels)})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise atomic.disk_error(path.parent, e, what="create the feature cache folder") from None
    atomic.write_atomic(path, lambda f: np.savez(f, features=features, labels=labels,
                                                 meta=np.array(meta)))


def _read_valid(path: Path, key: CacheKey,
                expected_count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Reads a cache file; None (with the reason logged) when absent, unreadable or inconsistent."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = dict(json.loads(str(data["meta"])))
            features, labels = data["features"], data["labels"]
    except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile) as e:
        logging.warning("Feature cache %r is unreadable (%s: %s), probably left half-written; "
                        "extracting the features again.", str(path), type(e).__name__, e)
        return None
    count = meta.get("count")
    problems = []
    if meta.get("digest") != key.digest:
        problems.append(f"key {meta.get('digest')} != {key.digest}")
    if features.shape != (count, architecture.FEATURE_DIM) or labels.shape != (count,):
        problems.append(f"shapes {features.shape}/{labels.shape} != recorded count {count}")
    elif meta.get("checksum") != _checksum(features, labels):
        problems.append("its arrays do not match their recorded checksum")
    if count != expected_count:
        problems.append(f"{count} examples, the split has {expected_count}")
    if problems:
        logging.warning("Feature cache %r is inconsistent (%s); extracting the features again.",
                        str(path), "; ".join(problems))
        return None
    return features.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


def load_or_extract(source, *, backbone: keras.Model, image_size: int, cache_dir: Path | None,
                    batch_size: int = INFERENCE_BATCH, strategy=None) -> FeatureSet:
    """Returns the features of a split, from the disk cache when a valid file exists.

    Args:
      source: a `sources.Source` of the whole split (no input_context: every example once).
      backbone: the model's own backbone, built in `strategy`'s scope under the active precision.
      image_size: the side images are resized to.
      batch_size: the global batch for extraction (any size gives the same features; it is not
        the training batch).
      cache_dir: directory of cache files (`resolve_cache_dir`), or None to extract without caching.
      strategy: the tf.distribute strategy (default: the current one).

    Returns:
      A FeatureSet; `from_cache` says whether it was read from disk.
    """
    key = cache_key(cache_id=source.cache_id, image_size=image_size,
                    weights_fingerprint=weights_fingerprint(backbone),
                    precision=backbone.dtype_policy.name)
    path = cache_dir / key.filename if cache_dir is not None else None
    if path is not None:
        cached = _read_valid(path, key, source.num_examples)
        if cached is not None:
            logging.info("Features of %s: %d vectors from cache %s.", source.description,
                         len(cached[1]), path)
            return FeatureSet(*cached, key=key, path=path, from_cache=True)
    logging.info("Features of %s: extracting %d images at %d px (cache: %s).", source.description,
                 source.num_examples, image_size, path or "off")
    dataset = input_pipeline.make_dataset(source, image_size=image_size, batch_size=batch_size,
                                          training=False)
    features, labels = extract_features(backbone, dataset, batch_size=batch_size,
                                        strategy=strategy, num_examples=source.num_examples)
    if len(labels) != source.num_examples:
        raise RuntimeError(f"extracted {len(labels)} feature vectors from {source.description}, "
                           f"which declares {source.num_examples} examples")
    if path is not None:
        _write_cache_file(path, features, labels, key)
        logging.info("Wrote feature cache %s (%.1f MB).", path, path.stat().st_size / 1e6)
    return FeatureSet(features, labels, key=key, path=path, from_cache=False)
