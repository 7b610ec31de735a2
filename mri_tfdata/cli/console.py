"""What the commands print: TensorFlow's start-up noise hidden, progress bars only on a terminal.

`setup_command` runs from the package's `__init__` (and tuning's), which Python executes before
the body of `python -m mri_tfdata.train` and before a console script imports its module, so
before anything imports TensorFlow. At the default --verbosity it hides:
  * the C++ start-up block (oneDNN, "Could not find cuda drivers", CPU features), printed twice
    because two of TF's shared libraries each log from static initialisers while being loaded,
    before TF_CPP_MIN_LOG_LEVEL is read: only a redirect of file descriptor 2 around the first
    `import tensorflow` can hide it;
  * later C++ lines such as the cuInit "CUDA error (303)" on a machine without GPU (TF's level 3);
  * INFO lines that TensorFlow's own Python code logs through absl (SavedModel signature renaming,
    "Writing fingerprint", ...) and the duplicate "INFO:tensorflow:" lines of TF's own handler.
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

# The lines of the C++ start-up block; anything else written while TensorFlow loads is kept.
_STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ (port\.cc|cudart_stub\.cc|cpu_feature_guard\.cc):\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler")

# INFO lines stay visible from these package folders only (not the repository root: a .venv
# inside it holds TensorFlow, whose INFO records carry the same absl logger name as ours).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_OWN_DIRS = tuple(os.path.join(_ROOT, name) + os.sep for name in ("mri_tfdata", "tuning",
                                                                  "builders"))

_done = False


def is_command(argv) -> bool:
    """True in an mri-* script and for `python -m <package>.<command>`: argv[0] is "-m" while the
    packages import, then the file of the command, one of this project's modules."""
    if not argv:
        return False
    first = argv[0]
    return (first == "-m" or os.path.basename(first).startswith("mri-")
            or os.path.abspath(first).startswith(_OWN_DIRS))


def verbosity_from_argv(argv) -> int:
    """absl's --verbosity (or -v) as given on the command line; 0 when absent or unreadable.

    Read by hand because absl parses the flags inside app.run, long after TensorFlow is imported.
    """
    value = None
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        for name in ("--verbosity", "-verbosity", "--v", "-v"):
            if arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
            elif arg == name and i + 1 < len(args):
                value = args[i + 1]
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0  # absl reports the bad value itself when it parses the flags


def setup_command(argv) -> None:
    """Quietens TensorFlow for a command (see the module docstring); no-op for library use.

    Imports nothing heavy and is idempotent; call it before TensorFlow is imported.
    """
    global _done
    if _done or not is_command(argv):
        return
    _done = True
    quiet = verbosity_from_argv(argv) < 1
    if quiet:
        # Read once, at import; 3 also hides E lines. A level the user chose is kept.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from absl import logging as absl_logging

        absl_logging.get_absl_handler().addFilter(_ProjectInfoOnly())
    if "tensorflow" in sys.modules:
        _after_tensorflow_import(quiet)
    else:
        sys.meta_path.insert(0, _QuietTensorflowImport(quiet))


class _ProjectInfoOnly(logging.Filter):
    """Lets WARNING and above through from anyone, INFO only from this project's packages."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or record.pathname.startswith(_OWN_DIRS)


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
