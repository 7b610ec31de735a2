"""Builds the brain_tumor_mri TFDS dataset quietly: `mri-build --manual_dir=DIR --config=dedup`.

It runs TFDS's own `tfds build builders/brain_tumor_mri` with the same flags, from any folder:
  --manual_dir=DIR      the unzipped Kaggle download (DIR/Training, DIR/Testing), or its zip
  --config=NAME         default, dedup, folders or folders_dedup (your own class folders)
  --data_dir=DIR        where the build goes (default: $TFDS_DATA_DIR, else
                        $HOME/tensorflow_datasets); ~ and $VARIABLES are expanded
  --beam_pipeline_options=...  run the build's Apache Beam steps on every core or a cluster
  --overwrite           build again over an existing build
  --verbosity=1         also the libraries' logs and TensorFlow's start-up lines
`--helpfull` lists every flag of `tfds build`.

Unlike `tfds build` itself, it prints only the build's own lines (progress, counts, skips, the
result): TensorFlow's C++ start-up block, the cuInit error of a machine without GPU and Apache
Beam's import warnings are printed while `tfds` imports them, before it imports the builder, so
only a command that starts before them can hide them.
"""

import pathlib
import sys

from mri_tfdata.cli import console

console.setup_command(sys.argv)  # Before TensorFlow loads: a command starts quietly.

from mri_tfdata.cli import runner  # noqa: E402
from mri_tfdata.cli.shared_flags import expand_path  # noqa: E402
from mri_tfdata.core.errors import ParameterError  # noqa: E402

# The builder's folder, a sibling of this package in a clone and in an install alike. `tfds build`
# loads the builder from it; the library never imports the builder itself.
BUILDER_DIR = pathlib.Path(__file__).resolve().parents[1] / "builders" / "brain_tumor_mri"


# The folders `tfds build` takes; it expands no "~" in them (`--data_dir=~/x` writes part of the
# build into a folder literally named "~"), and no shell does after `=`.
_PATH_FLAGS = ("manual_dir", "data_dir", "download_dir", "extract_dir")


def tfds_argv(argv: list[str]) -> list[str]:
    """The `tfds build` command line run for `mri-build`'s command line `argv`: the builder's
    folder first, help requests as `--help`, ~ and $VARIABLES expanded in the folder flags.

    Raises:
      ParameterError: a folder flag names an environment variable that is not set.
    """
    args = []
    for arg in argv[1:]:
        name, equals, value = arg.lstrip("-").partition("=")
        if runner.help_request(["", arg]):
            arg = "--help"
        elif arg.startswith("-") and equals and name in _PATH_FLAGS:
            try:
                arg = f"--{name}={expand_path(value)}"
            except ValueError as e:
                raise ParameterError(f"--{name}={value}: {e}.") from None
        args.append(arg)
    return ["tfds", "build", str(BUILDER_DIR), *args]


def console_main() -> None:
    """The `mri-build` command."""
    if runner.help_request(sys.argv) == "short":
        sys.stdout.write(__doc__.strip() + "\n")  # in a moment, without importing TensorFlow
        sys.exit(0)
    try:
        argv = tfds_argv(sys.argv)
    except ParameterError as e:
        runner.print_error(str(e))
        sys.exit(e.exit_code)
    from absl import logging as absl_logging

    # Beam warns through the root logger when tfds imports it ("apitools not found"); with absl's
    # handler there, such records meet the command's filter instead of a handler of their own.
    absl_logging.use_absl_handler()
    sys.argv = argv
    from tensorflow_datasets.scripts.cli import main as tfds_cli

    tfds_cli.launch_cli()


if __name__ == "__main__":
    console_main()
