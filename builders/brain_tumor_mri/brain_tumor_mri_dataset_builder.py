"""The `brain_tumor_mri` TFDS builder: the Kaggle Brain Tumor MRI Dataset, read from manual_dir."""

import collections
import dataclasses
import os
import pathlib
import sys

import tensorflow_datasets as tfds
from absl import logging

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import beam_steps, kaggle_layout
from mri_tfdata.runtime import log_noise

# Run by TFDS's own `tfds build` CLI, which prints a traceback around any exception.
UNDER_TFDS_CLI = os.path.basename(sys.argv[0]) == "tfds"
if UNDER_TFDS_CLI:
    # Imported by `tfds build`: quiet before Beam runs (see runtime.log_noise).
    log_noise.quiet_tfds_build(sys.argv)


@dataclasses.dataclass(eq=False)
class BrainTumorMriConfig(tfds.core.BuilderConfig):
    """A configuration of the builder.

    Attributes:
      dedup: Drop exact duplicates (same sha256) within a split, and drop from a later split
        (validation, test) every image that occurs in an earlier one (train first).
      classes_from_data: Take the classes from the training split's class folders, sorted (the
        Kaggle classes for the Kaggle tree), as Keras' flow_from_directory does; otherwise the
        four Kaggle classes, and any other class folder is refused.
    """

    dedup: bool = False
    classes_from_data: bool = False


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the Kaggle Brain Tumor MRI Dataset (manual download), or for any tree of
    class folders in the same layout (configs `folders`, `folders_dedup`)."""

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
    Your own classes: any class folder names in the same layout, with --config=folders (or
    folders_dedup); the classes are the Training/ subfolders, sorted.
    """
    BUILDER_CONFIGS = [
        BrainTumorMriConfig(name="default", description="The images as published."),
        BrainTumorMriConfig(
            name="dedup",
            dedup=True,
            description="No exact duplicates within a split, no test image leaked from train.",
        ),
        BrainTumorMriConfig(
            name="folders",
            classes_from_data=True,
            description="Your own class folders: the classes are Training/'s subfolders, sorted.",
        ),
        BrainTumorMriConfig(
            name="folders_dedup",
            dedup=True,
            classes_from_data=True,
            description="Your own class folders, deduplicated as the dedup config.",
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
                    # With classes from the data, the names are set when manual_dir is read
                    # (_split_generators); the build's dataset_info keeps them for its readers.
                    "label": tfds.features.ClassLabel(
                        names=None if self.builder_config.classes_from_data
                        else kaggle_layout.CLASS_NAMES),
                    "filename": tfds.features.Text(),
                    "sha256": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=kaggle_layout.DOWNLOAD_URL,
            metadata=tfds.core.MetadataDict(),
        )

    def _download_and_prepare(self, dl_manager, download_config=None):
        """Without --beam_pipeline_options, builds in this process with Beam's FnApiRunner.

        Beam's DirectRunner would first download its Prism runner from GitHub, and Beam would
        read tfds's own arguments as its options; neither helps a local build.
        """
        download_config = download_config or tfds.download.DownloadConfig()
        if download_config.beam_runner is None and download_config.beam_options is None:
            beam = tfds.core.lazy_imports.apache_beam
            from apache_beam.runners.portability import fn_api_runner

            download_config = dataclasses.replace(
                download_config, beam_runner=fn_api_runner.FnApiRunner(),
                beam_options=beam.options.pipeline_options.PipelineOptions(flags=[]))
        try:
            return super()._download_and_prepare(dl_manager, download_config)
        except UserError as e:
            if not UNDER_TFDS_CLI:
                raise
            # A mistake the user can fix (the manual_dir's tree): one paragraph, no traceback.
            sys.stderr.write(f"error: {' '.join(str(e).split())}\n")
            sys.exit(1)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager, pipeline):
        # With a `pipeline` argument TFDS builds with Apache Beam: reading and checking the files
        # is shared by all splits (dedup compares them across splits), then each split takes its
        # own. See docs/data.md, "On every core, or on a cluster", for runners.
        split_dirs = kaggle_layout.find_split_dirs(self._data_root(dl_manager))
        class_names = self._class_names(split_dirs["train"])
        files = []
        for split in beam_steps.SPLIT_ORDER:
            if split in split_dirs:
                # Listed here, not on workers: it takes a second, and a bad tree fails at once.
                examples = kaggle_layout.list_examples(split_dirs[split], class_names)
                files += [(split, example) for example in examples]
                logging.info("%s: %d image files in %s.", split, len(examples), split_dirs[split])
        # Files per split, for the report _process_pipeline_result reads after the pipeline.
        self._listed = collections.Counter(split for split, _ in files)
        checked = beam_steps.check_files(pipeline, files, dedup=self.builder_config.dedup)
        beam_steps.write_report(checked, self._report_path())
        return {split: self._generate_examples(checked, split) for split in self._listed}

    def _class_names(self, train_dir: pathlib.Path) -> tuple:
        """The classes of the build: the Kaggle ones, or (classes_from_data) the training split's
        class folders, then set as the label feature's names."""
        if not self.builder_config.classes_from_data:
            try:
                return kaggle_layout.infer_class_names(train_dir, kaggle_layout.CLASS_NAMES)
            except UserError as e:
                raise UserError(f"{e} For a tree with your own classes, build with "
                                "--config=folders (or folders_dedup).") from None
        class_names = kaggle_layout.infer_class_names(train_dir)
        self.info.features["label"].names = list(class_names)
        logging.info("Classes, in label order: %s.", ", ".join(class_names))
        return class_names

    def _process_pipeline_result(self, pipeline_result) -> None:
        # Runs after the pipeline and before TFDS saves the metadata with the dataset.
        del pipeline_result
        metadata = beam_steps.read_report(
            self._report_path(), self._listed, dedup=self.builder_config.dedup)
        self.info.metadata.update(metadata)

    def _report_path(self) -> str:
        # In the dataset's folder while it is built (a temporary one TFDS renames when done), so
        # that every worker of a distributed runner can write it where the driver reads it.
        return os.path.join(self.data_dir, f"{self.name}-report.json")

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

    def _generate_examples(self, checked, split: str):
        """The (relpath, example) pairs of one split, from the files checked for all splits."""
        beam = tfds.core.lazy_imports.apache_beam
        return checked | f"{split.capitalize()}Examples" >> beam.FlatMap(
            beam_steps.example_of, split=split)
