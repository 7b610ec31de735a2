"""What the commands print: TensorFlow's start-up noise hidden, progress bars only on a terminal.

Each command module calls `setup_command` before its other imports, so before anything imports
TensorFlow. At the default --verbosity it hides:
  * the C++ start-up block (oneDNN, "Could not find cuda drivers", CPU features), printed twice
    because two of TF's shared libraries each log from static initialisers while being loaded,
    before TF_CPP_MIN_LOG_LEVEL is read: only a redirect of file descriptor 2 around the first
    `import tensorflow` can hide it;
  * later C++ lines such as the cuInit "CUDA error (303)" on a machine without GPU (TF's level 3);
  * the records that libraries log (TensorFlow's SavedModel INFO lines, TFDS's deprecation
    warnings, ...), Python warnings raised outside the project, and the duplicate
    "INFO:tensorflow:" lines of TF's own handler (runtime.log_noise);
and prints the project's own log lines plainly, without absl's prefix.
--verbosity=1 shows everything again; a TF_CPP_MIN_LOG_LEVEL set by the user decides the C++
level. Importing the package as a library (tests, notebooks) changes nothing.
"""

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

from mri_tfdata.runtime import log_noise

# The lines of the C++ start-up block; anything else written while TensorFlow loads is kept.
_STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ (port\.cc|cudart_stub\.cc|cpu_feature_guard\.cc):\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler")

_OWN_DIRS = log_noise.OWN_DIRS

_done = False


def is_command(argv) -> bool:
    """True in an mri-* script or a `python -m` run of one of the package's own modules.

    `python -m` sets argv[0] to "-m" while it imports the packages, then to the module's file.
    """
    if not argv:
        return False
    path = os.path.abspath(argv[0])
    return (argv[0] == "-m" or os.path.basename(argv[0]).startswith("mri-")
            or path.startswith(_OWN_DIRS))


verbosity_from_argv = log_noise.verbosity_from_argv


def setup_command(argv) -> None:
    """Quietens TensorFlow for a command (see the module docstring); no-op for library use.

    Imports nothing heavy and is idempotent; call it before TensorFlow is imported.
    """
    global _done
    if _done or not is_command(argv):
        return
    _done = True
    quiet = verbosity_from_argv(argv) < 1
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler()
    handler.addFilter(log_noise.NoKnownNoise())
    if quiet:
        log_noise.quiet_libraries()  # before TensorFlow reads TF_CPP_MIN_LOG_LEVEL
        handler.addFilter(log_noise.OwnRecordsOnly())
        handler.setFormatter(log_noise.PlainFormatter())
    if "tensorflow" in sys.modules:
        _after_tensorflow_import(quiet)
    else:
        sys.meta_path.insert(0, _QuietTensorflowImport(quiet))


@contextlib.contextmanager
def _drop_startup_noise():
    """Redirects file descriptor 2 to a temp file; on exit writes back all but the noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _STARTUP_NOISE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietTensorflowImport:
    """A meta-path finder: the first `import tensorflow`, by whoever asks, runs quietly."""

    def __init__(self, quiet: bool):
        self._quiet = quiet

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the ordinary finders, this one being gone
        if spec is None or spec.loader is None:
            return spec
        inner, quiet = spec.loader, self._quiet

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return inner.create_module(spec)

            def exec_module(self, module):
                module.__loader__ = module.__spec__.loader = inner  # leave no trace of the wrapper
                with _drop_startup_noise() if quiet else contextlib.nullcontext():
                    inner.exec_module(module)
                _after_tensorflow_import(quiet)

        spec.loader = _Loader()
        return spec


def _after_tensorflow_import(quiet: bool) -> None:
    tf_logger = sys.modules["tensorflow"].get_logger()
    # TF gave its logger its own stderr handler at import (the root logger had none yet); once
    # app.run installs absl's handler on the root logger, every TF record would print twice.
    for handler in list(tf_logger.handlers):
        tf_logger.removeHandler(handler)
    if quiet:
        tf_logger.setLevel(logging.WARNING)
