"""The `python -m mri_tfdata.synthetic --out=DIR` command: writes the synthetic Kaggle tree."""

from absl import flags

from mri_tfdata.cli import runner, shared_flags
from mri_tfdata.data.synthetic import write_synthetic_dataset


def _define_flags() -> None:
    shared_flags.define_path("out", None, "Folder to write the Kaggle-style tree into (new or empty).")
    flags.DEFINE_integer("train_per_class", 40, "Training images per class.")
    flags.DEFINE_integer("test_per_class", 10, "Testing images per class.")
    flags.DEFINE_integer("image_size", 128, "Width and height of the images in pixels.")
    flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives identical files.")
    flags.DEFINE_integer(
        "leaked_test_images",
        0,
        "Training images also copied into Testing/ (mimics the published leak).",
    )


def main(argv: list[str]) -> None:
    """Entry point: python -m mri_tfdata.synthetic --out=DIR."""
    del argv
    FLAGS = flags.FLAGS  # pylint: disable=invalid-name
    runner.require(
        FLAGS.out is not None, "--out is required: the folder to write the synthetic dataset to."
    )
    runner.require(
        FLAGS.train_per_class >= 1 and FLAGS.test_per_class >= 1,
        "--train_per_class and --test_per_class must be at least 1.",
    )
    runner.require(
        FLAGS.image_size >= 16, f"--image_size={FLAGS.image_size} is too small; use 16 or more."
    )
    runner.require(
        0 <= FLAGS.leaked_test_images <= 4 * FLAGS.train_per_class,
        "--leaked_test_images must be between 0 and 4 * --train_per_class.",
    )
    root = write_synthetic_dataset(
        FLAGS.out,
        train_per_class=FLAGS.train_per_class,
        test_per_class=FLAGS.test_per_class,
        image_size=FLAGS.image_size,
        seed=FLAGS.seed,
        leaked_test_images=FLAGS.leaked_test_images,
    )
    print(root)


if __name__ == "__main__":
    # Defined here, not at import, so that importing this module adds no flags to other programs.
    _define_flags()
    runner.run(main)
