"""The `mri-export` command: a run's model.keras as a SavedModel for TF Serving and Vertex AI.

Usage: mri-export --model=runs/demo/model.keras [--out=DIR]. The signatures are described in
mri_tfdata.serving.export.
"""

import pathlib
import sys

from mri_tfdata.cli import console

console.setup_command(sys.argv)  # Before TensorFlow loads: a command starts quietly.

from absl import flags, logging  # noqa: E402

from mri_tfdata.cli import runner, shared_flags  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags() -> None:
    shared_flags.define_path("model", None, "The model.keras of a training run (or its workdir).")
    shared_flags.define_path("out", None, "The SavedModel folder to write. Default: export/ beside "
                             "the model.")
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")


def main(argv):
    runner.require(len(argv) == 1, f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    runner.require(bool(FLAGS.model),
                   "--model is required: the model.keras file of a training run.")
    from mri_tfdata.serving import export  # imports TensorFlow

    model_path = pathlib.Path(FLAGS.model).expanduser()
    model_dir = model_path if model_path.is_dir() else model_path.parent
    out = pathlib.Path(FLAGS.out).expanduser() if FLAGS.out else model_dir / export.EXPORT_DIR
    runner.refuse_existing(out, "out")
    export.export_model(model_path, out)
    logging.info("Wrote the SavedModel %s (signatures serve_bytes = serving_default, serve).", out)
    print(out)


def console_main():
    """The `mri-export` command."""
    runner.run(main, define_flags=_define_flags)


if __name__ == "__main__":
    console_main()
