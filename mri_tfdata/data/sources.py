"""Where encoded images come from: a TFDS build of brain_tumor_mri, or a Kaggle-layout folder."""

import dataclasses
import functools
import hashlib
import os
import pathlib
import types
from typing import Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants as tfds_constants
from absl import logging

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import dicom, images, kaggle_layout


@dataclasses.dataclass(frozen=True)
class Undecoded:
    """The files of a source opened without decoding them (load_folder_source with
    check_decoding=False): the first pass over its images decodes them, and the files it cannot
    decode leave the source (`skip_undecodable`)."""

    paths: tuple  # each example's file, in order
    without: Callable[[Sequence[int]], "Source"]  # the source without the examples at positions
    split: str  # the split string it was opened with, for the log
    refused: tuple  # (file, reason) of each file refused when the split was opened
    total: int  # the files the split selected, refused ones included


@dataclasses.dataclass(frozen=True)
class Source:
    """One split of a dataset, as encoded images that the input pipeline decodes exactly once.

    Attributes:
      dataset: tf.data.Dataset of (encoded JPEG/PNG bytes: tf.string scalar,
        label: tf.int64 scalar), in a deterministic order.
      num_examples: Number of elements of `dataset`.
      class_names: Class names in label order.
      cache_id: Identifies the content (dataset, config, version, split, shard); a file cache keyed
        by it never serves another source's images.
      description: A short human-readable description for logs.
      index: Returns (names, labels) of the examples in `dataset`'s order without decoding an
        image: names are file paths relative to the dataset root (TFDS: the `filename` feature).
        None for a source that has none (names are then the positions).
      undecoded: for a source whose files no one has decoded yet, what the first pass needs to
        name and drop those it cannot decode; None when every example is known to decode.
    """

    dataset: tf.data.Dataset
    num_examples: int
    class_names: tuple
    cache_id: str
    description: str
    index: Optional[Callable[[], tuple[tuple, np.ndarray]]] = None
    undecoded: Optional[Undecoded] = None

    @functools.cached_property
    def _names_and_labels(self) -> tuple[tuple, np.ndarray]:
        if self.index is not None:
            return self.index()
        labels = np.array([int(label) for _, label in self.dataset.as_numpy_iterator()], np.int64)
        return tuple(str(i) for i in range(len(labels))), labels

    @property
    def names(self) -> tuple:
        """Each example's file name, in order (for reports that name the files)."""
        return self._names_and_labels[0]

    @property
    def labels(self) -> np.ndarray:
        """Each example's label, in order, read without decoding any image."""
        return self._names_and_labels[1]

    @functools.cached_property
    def content_hashes(self) -> tuple[str, ...]:
        """The sha256 of each example's encoded bytes, in order, without decoding an image.

        Byte-identical files give equal hashes: a folder source reads the files themselves, and
        the TFDS build stores a file's bytes as they are, or converted to PNG by a deterministic
        encoder (images.prepare_image), so identical files stay identical there too. Only bytes
        are read, nothing is decoded: far less work than one epoch.
        """
        return tuple(hashlib.sha256(data).hexdigest()
                     for data, _ in self.dataset.as_numpy_iterator())


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shard_suffix(input_context) -> str:
    if input_context is None or input_context.num_input_pipelines == 1:
        return ""
    return f"/shard{input_context.input_pipeline_id}of{input_context.num_input_pipelines}"


def _tfds_index(builder, split: str) -> tuple[tuple, np.ndarray]:
    """(filenames, labels) of a TFDS split, in order, reading neither image bytes nor pixels."""
    records = builder.as_dataset(
        split=split, shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False),
        decoders=tfds.decode.PartialDecoding({"label": True, "filename": True}))
    pairs = [(ex["filename"].decode(), int(ex["label"])) for ex in tfds.as_numpy(records)]
    return tuple(n for n, _ in pairs), np.array([label for _, label in pairs], np.int64)


def _not_built(name: str, config: str, data_dir: Optional[str]) -> UserError:
    """The error for a dataset missing from `data_dir`, or from TFDS's default folder when None.

    The suggested command must run as printed: a path, never "~" (no shell expands it after
    `--data_dir=`), and no --data_dir at all for the default, which `mri-build` uses too.
    """
    where = data_dir or tfds_constants.get_default_data_dir()
    target = f" --data_dir={data_dir}" if data_dir else ""
    return UserError(
        "The TFDS dataset {dataset!s} is not built in {where!s}. Build it with `mri-build "
        "--config={config!s}{target!s} --manual_dir=DIR` (DIR holding the Kaggle download), or "
        "pass the {data_dir!n} it was built into.",
        dataset=f"{name}/{config}", where=where, config=config, target=target)


def load_tfds_source(*, split: str, data_dir: Optional[str] = None, config: str = "default",
                     name: str = "brain_tumor_mri", input_context=None) -> Source:
    """Opens a split of a built TFDS dataset without decoding its images.

    Args:
      split: A TFDS split string, e.g. "train", "train[:90%]", "train[90%:]", "test".
      data_dir: The TFDS data_dir the dataset was built into; None for the TFDS default.
      config: The builder config ("default" or "dedup" for brain_tumor_mri).
      name: The registered dataset name.
      input_context: A tf.distribute.InputContext; each input pipeline then reads its own
        disjoint, equal-as-possible part of the split (tfds.even_splits), so that together the
        workers read every example exactly once.

    Returns:
      A Source of (encoded image, label).

    Raises:
      UserError: The dataset is not built in `data_dir` (the fix: an `mri-build` command), or
        the split does not exist.
    """
    if data_dir is not None and "://" not in str(data_dir):
        # As a shell would have: the message below names (and TFDS reads) the folder meant.
        data_dir = os.path.expandvars(os.path.expanduser(str(data_dir)))
    not_built = _not_built(name, config, data_dir)
    # The builder's code is not imported: TFDS reads a built dataset from its own files, and the
    # library never depends on builders/ (which depends on it).
    try:
        builder = tfds.builder(name, config=config, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise not_built from None
    if not builder.is_prepared():
        raise not_built
    read_split = split
    if input_context is not None and input_context.num_input_pipelines > 1:
        # Example-level split per worker: file-level sharding (ReadConfig(input_context=...)) fails
        # when the split has fewer files than workers, as this small dataset does.
        read_split = tfds.even_splits(split, n=input_context.num_input_pipelines)[
            input_context.input_pipeline_id]
    try:
        dataset = builder.as_dataset(
            split=read_split, shuffle_files=False,
            # Keeps the JPEG/PNG bytes: the pipeline decodes once, straight to the target size.
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(try_autocache=False))
    except (ValueError, KeyError) as e:
        raise UserError(
            f"Cannot read split {split!r} of {name}/{config}: {str(e).rstrip('.')}. Valid splits "
            f"are {', '.join(builder.info.splits)}, optionally sliced like 'train[:90%]'.") from e
    dataset = dataset.map(lambda ex: (ex["image"], ex["label"]),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    num_examples = int(dataset.cardinality())

    class_names = tuple(builder.info.features["label"].names)
    data_root = str(pathlib.Path(builder.data_dir_root).expanduser().resolve())
    cache_id = (f"tfds/{name}/{config}/{builder.version}/{split}{_shard_suffix(input_context)}"
                f"/{_short_hash(data_root)}")
    return Source(dataset=dataset, num_examples=num_examples, class_names=class_names,
                  cache_id=cache_id,
                  description=f"TFDS {name}/{config}:{builder.version} {split} in {data_root}",
                  index=functools.partial(_tfds_index, builder, read_split))


def _stable_order(examples: list) -> list:
    # Sorted listings run class by class, so "train[:90%]" would hold no pituitary image; order by
    # a hash of the stable relative path instead (as TFDS orders by a hash of the example key).
    return sorted(examples, key=lambda e: hashlib.sha256(e.relpath.encode()).digest())


def _select(files_by_split: dict, split: str) -> list:
    """Applies a TFDS split string (slices and '+') to lists of files, with TFDS rounding."""
    infos = {name: types.SimpleNamespace(num_examples=len(files), shard_lengths=[len(files)])
             for name, files in files_by_split.items()}
    try:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    except (ValueError, AssertionError) as e:
        raise UserError(
            f"Invalid split {split!r} for this folder: {str(e).rstrip('.')}. Use one of "
            f"{', '.join(files_by_split)}, optionally sliced like 'train[:90%]' or 'train[90%:]'."
        ) from e
    selected = []
    for instruction in instructions:
        selected += files_by_split[instruction.splitname][instruction.from_:instruction.to]
    return selected


def _name_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    """Names each (file, reason) refused in a warning."""
    for path, reason in skipped:
        logging.warning("Skipping %r: %s", path, reason)


def _count_skipped(count: int, split: str, total: int) -> None:
    if count:
        logging.warning("%s: skipped %d unusable image file(s) of %d.", split, count, total)


def _usable(selected: list, split: str, *, decode: bool = True) -> tuple[list, list]:
    """(example, FileCheck, frame) of the files that pass mri_tfdata.data.images' checks, and the
    (file, reason) of the rest, each named in a warning; with `decode`, also their count (else
    the pass that decodes the files counts them with its own, `replay_skipped`)."""
    verdicts = images.check_files([e.path for e in selected], decode=decode)
    refused = [(str(e.path), v.error) for e, v in zip(selected, verdicts) if v.error]
    _name_skipped(refused)
    if decode:
        _count_skipped(len(refused), split, len(selected))
    return _frames([(e, v) for e, v in zip(selected, verdicts) if not v.error]), refused


def _frames(kept: list) -> list:
    """(example, FileCheck, frame) of every image: a DICOM file gives one per frame, named
    `relpath#N` when it has several (data.dicom.frame_key); other files have frame -1."""
    frames = [(e, v, v.dicom_info.frames if v.dicom_info else 0) for e, v in kept]
    return [(dataclasses.replace(e, relpath=dicom.frame_key(e.relpath, i, count)), v, i)
            if count else (e, v, -1)
            for e, v, count in frames for i in range(max(count, 1))]


def load_folder_source(root: Union[str, pathlib.Path], *, split: str, class_names=None,
                       input_context=None, dicom_window: Optional[dicom.Window] = None,
                       check_decoding: bool = True) -> Source:
    """Opens a split of a Kaggle-layout folder (Training/<class>/*.jpg, Testing/<class>/*.jpg).

    Junk (hidden files, .ipynb_checkpoints, non-images) is ignored as the TFDS builder ignores it.
    Every selected file is checked as the builder checks it (mri_tfdata.data.images: regular file,
    header, size limit, a decode with the pipeline's own decoder, in parallel); unusable files are
    logged by name and skipped. Images TF cannot decode as intended are converted to RGB PNG
    bytes once, as the builder converts them.

    Args:
      root: The folder holding the split folders.
      split: "train", "test" or "validation" with optional TFDS slicing, e.g. "train[:90%]".
        Slices are taken over the split's files in a fixed pseudo-random order (a hash of each
        relative path), so they are deterministic and mix the classes.
      class_names: The classes in label order; None takes them from the training split's class
        folders, sorted (the Kaggle classes for a Kaggle tree; kaggle_layout.infer_class_names).
        A class folder of any split that is not among them is refused.
      input_context: A tf.distribute.InputContext; pipeline i of n then reads every n-th selected
        file from the i-th, so the workers' shards are disjoint and cover the split.
      dicom_window: the display window of DICOM files (data.dicom), replacing their own; None
        for each file's own window (or its min-max). Every frame of a DICOM file is an example,
        read once by the pipeline (data.dicom.encoded_frame) before its image cache.
      check_decoding: decode every file now (at a reduced scale) to refuse those that fail;
        False checks them up to their headers only and leaves the decoding to the first pass
        over the images, which must then drop and name those it cannot decode
        (`skip_undecodable`): each file is then decoded once.

    Returns:
      A Source of (encoded image, label).

    Raises:
      UserError: The folder is not a Kaggle layout, the split is invalid, or no readable image
        remains.
    """
    root = pathlib.Path(root).expanduser()
    split_dirs = kaggle_layout.find_split_dirs(root)
    class_names = kaggle_layout.infer_class_names(split_dirs["train"], class_names)
    files_by_split = {name: _stable_order(kaggle_layout.list_examples(folder, class_names))
                      for name, folder in split_dirs.items()}
    selected = _select(files_by_split, split)
    if input_context is not None:
        selected = selected[input_context.input_pipeline_id::input_context.num_input_pipelines]

    kept, refused = _usable(selected, split, decode=check_decoding)
    if not kept:
        raise _no_readable_image(root, split)
    undecoded = None if check_decoding else dict(refused=tuple(refused), total=len(selected))
    return _folder_source(kept, root=root, split=split, class_names=class_names,
                          input_context=input_context, dicom_window=dicom_window,
                          undecoded=undecoded)


def _no_readable_image(root: pathlib.Path, split: str) -> UserError:
    return UserError(f"Split {split!r} of {root} holds no readable image (after slicing and "
                     "sharding); check the folder and the split string.")


def _folder_source(kept: list, *, root: pathlib.Path, split: str, class_names,
                   input_context, dicom_window: Optional[dicom.Window],
                   undecoded: Optional[dict] = None, cache_id: Optional[str] = None) -> Source:
    """The Source of the (example, FileCheck, frame) triples `kept`; `undecoded` (the refused
    files and the total) when they are still to be decoded; `cache_id` None computes it from
    their listing."""
    labels = np.array([e.label for e, _, _ in kept], np.int64)
    # The content key: relative paths, sizes and modification times of the files read, so that
    # editing, adding or removing an image gives a new cache_id; and the window DICOM files
    # are read with, which changes their pixels.
    listing = "\n".join(f"{e.relpath}:{e.path.stat().st_size}:{e.path.stat().st_mtime_ns}"
                        for e, _, _ in kept)
    if dicom_window is not None and any(frame >= 0 for _, _, frame in kept):
        listing += f"\ndicom_window={dicom_window}"
    cache_id = cache_id or (f"folder/{root.resolve().name}/{split}{_shard_suffix(input_context)}"
                            f"/{_short_hash(str(root.resolve()) + listing)}")
    names = tuple(e.relpath for e, _, _ in kept)

    def without(positions: Sequence[int]) -> Source:
        # The same cache_id: the files are the same, and so is which of them fail to decode.
        dropped = set(positions)
        rest = [k for i, k in enumerate(kept) if i not in dropped]
        if not rest:
            raise _no_readable_image(root, split)
        return _folder_source(rest, root=root, split=split, class_names=class_names,
                              input_context=input_context, dicom_window=dicom_window,
                              cache_id=cache_id)

    return Source(dataset=_read_files(kept, labels, dicom_window), num_examples=len(kept),
                  class_names=class_names, cache_id=cache_id,
                  description=f"folder {root} {split} ({len(kept)} images)",
                  index=lambda: (names, labels),
                  undecoded=Undecoded(tuple(str(e.path) for e, _, _ in kept), without, split,
                                      **undecoded) if undecoded is not None else None)


def skip_undecodable(source: Source, decoded: Sequence[int]
                     ) -> tuple[Source, list[tuple[int, str, str]]]:
    """The source without the examples the first pass over its images could not decode.

    Args:
      source: a source opened with check_decoding=False (`source.undecoded` set); any other is
        returned as it is.
      decoded: the positions of the examples that pass decoded.

    Returns:
      (the source of the decoded examples, known to decode; the (position, file, reason) of
      each one left out, each named in a warning as load_folder_source names them).

    Raises:
      UserError: no example decoded.
    """
    if source.undecoded is None:
        return source, []
    missing = sorted(set(range(source.num_examples)) - set(int(i) for i in decoded))
    skipped = []
    for position in missing:
        path = source.undecoded.paths[position]
        skipped.append((position, path, images.decode_failure(path)
                        or "it could not be read or decoded in the pass over the images"))
    return replay_skipped(source, skipped), skipped


def replay_skipped(source: Source, skipped: Sequence[tuple[int, str, str]]) -> Source:
    """The source without the examples `skipped` ((position, file, reason), as
    skip_undecodable found them), each named in a warning again, then counted with those
    refused at opening, as load_folder_source counts them; `source` itself when it has no
    undecoded files."""
    undecoded = source.undecoded
    if undecoded is None:
        return source
    _name_skipped([(path, reason) for _, path, reason in skipped])
    _count_skipped(len(undecoded.refused) + len(skipped), undecoded.split, undecoded.total)
    if not skipped:
        return dataclasses.replace(source, undecoded=None)
    return undecoded.without([position for position, _, _ in skipped])


def _read_files(kept: list, labels: np.ndarray,
                dicom_window: Optional[dicom.Window] = None) -> tf.data.Dataset:
    """(encoded bytes, label) of the (example, FileCheck, frame) triples `kept`, in order."""
    paths = [str(e.path) for e, _, _ in kept]
    if not any(v.replacement or frame >= 0 for _, v, frame in kept):
        # The usual case: every file is read as it is, with no per-element branch.
        return tf.data.Dataset.from_tensor_slices((paths, labels)).map(
            lambda path, label: (tf.io.read_file(path), label),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Converted images travel inline (rare), DICOM frames are read to PNG bytes by data.dicom;
    # all others are read lazily, in parallel.
    contents = [v.replacement or b"" for _, v, _ in kept]
    frames = np.array([frame for _, _, frame in kept], np.int64)
    recipes = dicom.recipe_columns([v.dicom_info for _, v, _ in kept], dicom_window)

    def read(path, content, frame, recipe, label):
        data = tf.cond(
            frame >= 0, lambda: dicom.encoded_frame(path, frame, recipe, window=dicom_window),
            lambda: tf.cond(tf.strings.length(content) > 0, lambda: content,
                            lambda: tf.io.read_file(path)))
        return data, label

    return tf.data.Dataset.from_tensor_slices((paths, contents, frames, recipes, labels)).map(
        read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
