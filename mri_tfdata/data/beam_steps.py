"""The TFDS build's Apache Beam steps: read and check every file, de-duplicate, report the rest.

The functions that run on workers live here, in the installed package, not in the builder's
folder: Beam ships them to worker processes by reference (module and name), and `tfds build
builders/brain_tumor_mri` imports the builder under a module name only the launching process
can import.
"""

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from mri_tfdata.data import dicom, images, kaggle_layout

# Earlier splits win when de-duplicating: an image of train is dropped from validation and test.
SPLIT_ORDER = ("train", "validation", "test")
DROP_REASONS = ("duplicates_within_split", "in_earlier_split")


@dataclasses.dataclass(frozen=True)
class CheckedFile:
    """One listed file after reading: the bytes to store, or why it is not stored.

    Attributes:
      split: the split it was listed in.
      relpath: its path relative to the split folders' parent, the example key.
      label: index into the build's class names.
      sha256: hex digest of the file's bytes; None when the file could not be read.
      image: the JPEG or PNG bytes to store (see images.prepare_image); None when not stored.
      corrupt: why the file is not a usable image, or None.
      dropped: one of DROP_REASONS when de-duplication dropped it, or None.
    """

    split: str
    relpath: str
    label: int
    sha256: str | None = None
    image: bytes | None = None
    corrupt: str | None = None
    dropped: str | None = None


def read_and_check(split: str, file: kaggle_layout.LabeledFile) -> CheckedFile:
    """Reads, hashes and checks one file exactly as images.read_image does."""
    checked = CheckedFile(split, file.relpath, file.label)
    try:
        data = images.read_file(file.path)
    except (images.CorruptImageError, OSError) as e:
        return dataclasses.replace(checked, corrupt=str(e))
    try:
        stored = images.prepare_image(data)
    except images.CorruptImageError as e:
        # Hashed anyway: de-duplication then treats a corrupt copy like any other copy.
        return dataclasses.replace(checked, sha256=hashlib.sha256(data).hexdigest(),
                                   corrupt=str(e))
    return dataclasses.replace(checked, sha256=stored.sha256, image=stored.data)


def read_and_check_frames(split: str, file: kaggle_layout.LabeledFile) -> Iterator[CheckedFile]:
    """read_and_check, except that a DICOM file gives one CheckedFile per frame: its pixels as a
    lossless PNG (images.read_dicom_frames; no header value is stored), keyed `relpath#N` when it
    has several frames (dicom.frame_key)."""
    if not dicom.is_dicom_path(file.path):
        yield read_and_check(split, file)
        return
    checked = CheckedFile(split, file.relpath, file.label)
    try:
        frames = images.read_dicom_frames(file.path)
    except (images.CorruptImageError, OSError) as e:
        yield dataclasses.replace(checked, corrupt=str(e) if isinstance(e, images.CorruptImageError)
                                  else f"cannot read it ({e.strerror or e})")
        return
    for i, stored in enumerate(frames):
        yield dataclasses.replace(checked, relpath=dicom.frame_key(file.relpath, i, len(frames)),
                                  sha256=stored.sha256, image=stored.data)


def content_key(file: CheckedFile) -> str:
    """The de-duplication key; a file that could not be read has no hash and is its own group."""
    return file.sha256 or f"unread:{file.relpath}"


def keep_first(key_and_files: tuple[str, Sequence[CheckedFile]]) -> Iterator[CheckedFile]:
    """Keeps the first file of one content hash (in split order, then path order), drops the rest.

    A dropped file in the kept file's split is a duplicate within the split; one in a later split
    occurs in an earlier split (a test image leaked from train).
    """
    _, files = key_and_files
    first, *rest = sorted(files, key=lambda f: (SPLIT_ORDER.index(f.split), f.relpath))
    yield first
    for file in rest:
        reason = DROP_REASONS[0] if file.split == first.split else DROP_REASONS[1]
        yield dataclasses.replace(file, image=None, dropped=reason)


def example_of(file: CheckedFile, split: str) -> Iterator[tuple[str, dict]]:
    """The (key, example) pair of a stored file of `split`; nothing for any other file."""
    if file.split == split and file.image is not None:
        yield file.relpath, {
            "image": file.image,
            "label": file.label,
            "filename": file.relpath,
            "sha256": file.sha256,
        }


def check_files(pipeline, files: Sequence[tuple[str, kaggle_layout.LabeledFile]], dedup: bool):
    """The Beam steps shared by all splits: a PCollection of CheckedFile, one per listed file.

    Args:
      pipeline: the beam.Pipeline TFDS builds the dataset with.
      files: (split, file) pairs, as listed by kaggle_layout.
      dedup: keep one file per content hash (see keep_first).
    """
    beam = tfds.core.lazy_imports.apache_beam
    # Create spreads the list over the workers, so reading and checking (the costly part: a
    # hash and a full decode per image) runs on every core or machine the runner has.
    checked = (pipeline
               | "ListFiles" >> beam.Create(files)
               | "ReadAndCheck" >> beam.FlatMapTuple(read_and_check_frames))
    if dedup:
        checked = (checked
                   | "GroupByContent" >> beam.GroupBy(content_key)
                   | "KeepFirstOfEachContent" >> beam.FlatMap(keep_first))
    return checked


def write_report(checked, path: str) -> None:
    """Adds the Beam steps that write every file not stored (corrupt or dropped) to a JSON file.

    Workers find the corrupt and duplicate files, but the counts belong in the dataset's metadata,
    which the launching process writes. Beam returns no data to it, so (as TFDS's BeamWriter does
    for shard lengths) the few rows are collected into one file it reads after the pipeline.
    Beam metrics would carry counts, but not the file names the build log lists.
    """
    beam = tfds.core.lazy_imports.apache_beam
    _ = (checked
         | "NotStored" >> beam.FlatMap(_report_row)
         | "CollectReport" >> beam.combiners.ToList()
         | "WriteReport" >> beam.Map(_write_json, path=path))


def _report_row(file: CheckedFile) -> Iterator[list]:
    if file.image is None:
        yield [file.split, file.relpath, file.corrupt, file.dropped]


def _write_json(rows: list, path: str) -> None:
    epath.Path(path).write_text(json.dumps(sorted(rows)))


def read_report(path: str, listed: dict[str, int], dedup: bool) -> dict:
    """Logs every file not stored, deletes the report file and returns the dataset's metadata.

    Args:
      path: the file write_report wrote.
      listed: number of files listed per split.
      dedup: whether de-duplication ran (adds "dedup_dropped" to the metadata).

    Returns:
      {"skipped_corrupt_files": {split: count}} and, with dedup,
      {"dedup_dropped": {split: {reason: count}}}, every listed split included.
    """
    report = epath.Path(path)
    rows = json.loads(report.read_text())
    report.unlink()
    metadata = {"skipped_corrupt_files": {}}
    if dedup:
        metadata["dedup_dropped"] = {}
    for split in listed:
        corrupt = [(relpath, why) for s, relpath, why, _ in rows if s == split and why]
        for relpath, why in corrupt:
            logging.warning("Skipping corrupt image %r: %s", relpath, why)
        log = logging.warning if corrupt else logging.info
        names = ", ".join(relpath for relpath, _ in corrupt)
        log("%s: skipped %d corrupt image file(s)%s", split, len(corrupt),
            f": {names}" if corrupt else ".")
        metadata["skipped_corrupt_files"][split] = len(corrupt)
        if dedup:
            metadata["dedup_dropped"][split] = _log_dropped(split, rows, listed[split])
    return metadata


def _log_dropped(split: str, rows: list, listed: int) -> dict[str, int]:
    dropped = {reason: 0 for reason in DROP_REASONS}
    for s, relpath, _, reason in rows:
        if s == split and reason:
            dropped[reason] += 1
            logging.info("dedup: dropping %r, %s.", relpath,
                         f"a duplicate within {split}" if reason == DROP_REASONS[0]
                         else "it also occurs in an earlier split")
    logging.warning(
        "dedup: %s: dropped %d duplicate(s) within the split and %d image(s) also in an earlier "
        "split; %d of %d kept.", split, *dropped.values(), listed - sum(dropped.values()), listed)
    return dropped
