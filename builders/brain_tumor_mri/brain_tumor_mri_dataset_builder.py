"""The `brain_tumor_mri` TFDS builder: the Kaggle Brain Tumor MRI Dataset, read from manual_dir."""

import dataclasses
import hashlib
import pathlib

import tensorflow_datasets as tfds
from absl import logging

from mri_tfdata import images, kaggle_layout
from mri_tfdata.errors import UserError

# Earlier splits win when de-duplicating: an image of train is dropped from validation and test.
_SPLIT_ORDER = ("train", "validation", "test")


@dataclasses.dataclass(eq=False)
class BrainTumorMriConfig(tfds.core.BuilderConfig):
    """A configuration of the builder.

    Attributes:
      dedup: Drop exact duplicates (same sha256) within a split, and drop from a later split
        (validation, test) every image that occurs in an earlier one (train first).
    """

    dedup: bool = False


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the Kaggle Brain Tumor MRI Dataset (4 classes, manual download)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: the Kaggle tree or its zip, configs `default` and `dedup`.",
        "1.1.0": "Grey JPEGs and PNGs keep their bytes; files TensorFlow cannot decode, links to "
                 "files already listed and non-regular files are skipped.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download the Kaggle "Brain Tumor MRI Dataset" (Masoud Nickparvar) from
    {kaggle_layout.DOWNLOAD_URL}
    (the Download button, or
    `kaggle datasets download -d masoudnickparvar/brain-tumor-mri-dataset`).
    Then either drop the downloaded zip archive, as it is, into manual_dir, or unpack it there so
    that manual_dir holds
        Training/{{glioma,meningioma,notumor,pituitary}}/*.jpg
        Testing/{{glioma,meningioma,notumor,pituitary}}/*.jpg
    One wrapping folder above Training/ and Testing/ is fine; so are lower-case train/ and test/,
    an optional validation/ (or val/) folder, and the class folder names of older versions
    (glioma_tumor, meningioma_tumor, no_tumor, pituitary_tumor).
    manual_dir is `tfds build --manual_dir=DIR` (default: <data_dir>/downloads/manual/).
    """
    BUILDER_CONFIGS = [
        BrainTumorMriConfig(name="default", description="The images as published."),
        BrainTumorMriConfig(
            name="dedup",
            dedup=True,
            description="No exact duplicates within a split, no test image leaked from train.",
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    # No encoding_format: the stored bytes are the original JPEG, or a PNG when the
                    # file had to be converted; decoding (tf.io.decode_image) handles both.
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=kaggle_layout.CLASS_NAMES),
                    "filename": tfds.features.Text(),
                    "sha256": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=kaggle_layout.DOWNLOAD_URL,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        split_dirs = kaggle_layout.find_split_dirs(self._data_root(dl_manager))
        files = {}
        for split in _SPLIT_ORDER:
            if split in split_dirs:
                examples = kaggle_layout.list_examples(split_dirs[split])
                # Hashed up front only for dedup, which must see every file before keeping any.
                files[split] = [(example, _sha256(example.path) if self.builder_config.dedup
                                 else None) for example in examples]
                logging.info("%s: %d image files in %s.", split, len(examples), split_dirs[split])
        if self.builder_config.dedup:
            files = self._deduplicate(files)
        self.info.metadata["skipped_corrupt_files"] = {}
        return {split: self._generate_examples(split, pairs) for split, pairs in files.items()}

    def _data_root(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
        """Returns the unpacked tree in manual_dir, or else the extracted zip archive in it."""
        # dl_manager.manual_dir fails by itself, quoting MANUAL_DOWNLOAD_INSTRUCTIONS, when absent
        # or empty.
        manual_dir = pathlib.Path(dl_manager.manual_dir)
        try:
            kaggle_layout.find_split_dirs(manual_dir)
            return manual_dir
        except UserError:
            archives = sorted(
                p
                for p in manual_dir.iterdir()
                if p.suffix.lower() == ".zip" and not kaggle_layout.is_junk(p)
            )
            if not archives:
                raise
        if len(archives) > 1:
            raise UserError(
                f"{manual_dir} holds {len(archives)} zip archives "
                f"({', '.join(p.name for p in archives)}) and no unpacked Training/ and Testing/ "
                "folders; keep only the Kaggle archive there."
            )
        logging.info("Extracting %s.", archives[0])
        return pathlib.Path(dl_manager.extract(archives[0]))

    def _deduplicate(self, files: dict) -> dict:
        """Keeps the first file (in split order, then path order) of every sha256."""
        seen_in_earlier_splits = set()
        kept_files, dropped = {}, {}
        for split, pairs in files.items():
            kept, seen, leaked, duplicates = [], set(), 0, 0
            for example, digest in pairs:
                if digest is None:
                    kept.append((example, digest))  # Unreadable: generation reports it.
                elif digest in seen_in_earlier_splits:
                    leaked += 1
                    logging.info(
                        "dedup: dropping %s, it also occurs in an earlier split.", example.relpath
                    )
                elif digest in seen:
                    duplicates += 1
                    logging.info(
                        "dedup: dropping %s, a duplicate within %s.", example.relpath, split
                    )
                else:
                    seen.add(digest)
                    kept.append((example, digest))
            seen_in_earlier_splits |= seen
            kept_files[split] = kept
            dropped[split] = {"duplicates_within_split": duplicates, "in_earlier_split": leaked}
            logging.warning(
                "dedup: %s: dropped %d duplicate(s) within the split and %d image(s) "
                "also in an earlier split; %d of %d kept.",
                split,
                duplicates,
                leaked,
                len(kept),
                len(pairs),
            )
        self.info.metadata["dedup_dropped"] = dropped
        return kept_files

    def _generate_examples(self, split: str, pairs: list):
        """Yields (relpath, example), skipping and logging corrupt files one by one."""
        skipped = []
        for example, _ in pairs:
            try:
                image = images.read_image(example.path)
            except (images.CorruptImageError, OSError) as e:
                logging.warning("Skipping corrupt image %r: %s", example.relpath, e)
                skipped.append(example.relpath)
                continue
            yield example.relpath, {
                "image": image.data,
                "label": example.label,
                "filename": example.relpath,
                "sha256": image.sha256,
            }
        # Recorded when the split is done, so the metadata saved with the dataset holds the count.
        self.info.metadata["skipped_corrupt_files"][split] = len(skipped)
        log = logging.warning if skipped else logging.info
        log(
            "%s: skipped %d corrupt image file(s)%s",
            split,
            len(skipped),
            f": {', '.join(skipped)}" if skipped else ".",
        )


def _sha256(path: pathlib.Path) -> str | None:
    """The file's hash, or None when it cannot be read (generation then skips and reports it)."""
    try:
        return hashlib.sha256(images.read_file(path)).hexdigest()
    except (images.CorruptImageError, OSError):
        return None
