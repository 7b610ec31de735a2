"""Writes a PNG grid of one input batch: `mri-show-batch --source=folder --data_dir=DIR`.

To check the inputs by eye, with their class names:

    mri-show-batch --source=folder --data_dir=DIR --out=batch.png
    mri-show-batch --source=tfds --tfds_data_dir=DIR --split=test --out=batch.png
"""

import math
import pathlib
import sys
from typing import Sequence, Union

from mri_tfdata.cli import console

console.setup_command(sys.argv)  # Before TensorFlow loads: a command starts quietly.

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from mri_tfdata.cli import runner, shared_flags  # noqa: E402


def save_batch_grid(images: np.ndarray, labels: Sequence[int], class_names: Sequence[str],
                    path: Union[str, pathlib.Path], *, columns: int = 4,
                    title: str = "") -> pathlib.Path:
    """Saves images as a grid with each image's class name as its title.

    Args:
      images: uint8 [N, H, W, 3] images, as the input pipeline delivers them.
      labels: N class indices.
      class_names: Names in label order.
      path: The PNG to write; its folder is created if needed.
      columns: Images per row.
      title: Optional figure title.

    Returns:
      The path written.
    """
    # Imported here: matplotlib is only needed for pictures, and Agg renders without a display.
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    images = np.asarray(images)
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows + 0.4),
                                squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index])
            axis.set_title(class_names[int(labels[index])], fontsize=11)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_enum("source", "folder", ["folder", "tfds"],
                      "Read a Kaggle-layout folder (--data_dir) or a TFDS build "
                      "(--tfds_data_dir).")
    shared_flags.define_path("data_dir", None, "Kaggle-layout folder (Training/<class>/*.jpg).")
    shared_flags.define_path("tfds_data_dir", None, "TFDS data_dir of the brain_tumor_mri build.")
    flags.DEFINE_string("tfds_config", "default", "brain_tumor_mri config: default, dedup, folders "
                      "or folders_dedup.")
    flags.DEFINE_list("classes", None, "source=folder: the class folders in label order; "
                      "default the Training/ subfolders, sorted (Kaggle order for Kaggle names).")
    flags.DEFINE_string("split", "train", "Split, TFDS syntax (e.g. train[:90%]).")
    flags.DEFINE_integer("image_size", 256, "Side of the images in pixels, as the model gets them.")
    shared_flags.define_dicom_window_flag()
    flags.DEFINE_integer("batch_size", 16, "Images in the grid.")
    flags.DEFINE_integer("seed", None, "Shuffle seed; omit for a different batch every run.")
    shared_flags.define_path("out", "batch.png", "The PNG to write.")
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")


def main(argv: list[str]) -> None:
    del argv
    runner.require(FLAGS.batch_size > 0 and FLAGS.image_size > 0,
                "--batch_size and --image_size must be positive.")
    runner.require(FLAGS.source != "folder" or FLAGS.data_dir,
                "--source=folder needs --data_dir, the folder holding Training/ and Testing/.")
    out = pathlib.Path(FLAGS.out).expanduser()
    runner.refuse_existing(out, "out")
    # TensorFlow loads only once the flags are known to be valid.
    from mri_tfdata.data import input_pipeline
    from mri_tfdata.data.dataspec import DataSpec

    source = DataSpec(source=FLAGS.source, data_dir=FLAGS.data_dir,
                      tfds_data_dir=FLAGS.tfds_data_dir, tfds_config=FLAGS.tfds_config,
                      class_names=tuple(FLAGS.classes) if FLAGS.classes else None,
                      dicom_window=shared_flags.dicom_window_from_flags()).open(FLAGS.split)
    batch_size = min(FLAGS.batch_size, source.num_examples)
    # The training pipeline itself (shuffled, uint8, resized), so the picture shows what the
    # model gets; augmentation, if enabled, happens later inside the model.
    dataset = input_pipeline.make_dataset(source, image_size=FLAGS.image_size,
                                          batch_size=batch_size, training=True,
                                          shuffle_buffer=1024, seed=FLAGS.seed)
    images, labels = next(iter(dataset))
    save_batch_grid(images.numpy(), labels.numpy(), source.class_names, out,
                    title=f"{source.description}: {FLAGS.image_size} px")
    logging.info("Wrote %s (%d images).", out, batch_size)
    print(out)


def console_main():
    """The `mri-show-batch` command."""
    runner.run(main, define_flags=_define_flags)


if __name__ == "__main__":
    console_main()
