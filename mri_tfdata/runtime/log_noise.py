"""What a command prints at the default verbosity: its own lines, plainly; libraries' only as errors.

Shared by the commands (cli.console) and the TFDS builder, which TFDS's own `tfds build` CLI
imports: both hide the libraries' INFO and WARNING records (TensorFlow, TFDS, Beam, absl) and
Python warnings raised outside this project, and print this project's records without absl's
"I1204 14:53:36.945268 140237382658944 file.py:93]" prefix. --verbosity=1 shows everything.
"""

import logging
import os
import re
import warnings

# Records stay visible from these package folders (not the repository root: a .venv inside it
# holds TensorFlow, whose records carry the same absl logger name as ours).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OWN_DIRS = tuple(os.path.join(_ROOT, name) + os.sep for name in ("mri_tfdata", "tuning",
                                                                 "builders"))
# Python modules whose warnings stay visible.
_OWN_MODULES = r"(mri_tfdata|tuning|builders|brain_tumor_mri)(\.|$)"
# Library loggers that log through their own handlers rather than absl's.
_LIBRARY_LOGGERS = ("apache_beam", "tensorflow_datasets", "tensorflow", "keras_tuner", "absl")


def is_own(record: logging.LogRecord) -> bool:
    return record.pathname.startswith(OWN_DIRS)


class OwnRecordsOnly(logging.Filter):
    """Lets through this project's records at any level, and others' from ERROR up."""

    def filter(self, record):
        return record.levelno >= logging.ERROR or is_own(record)


class PlainFormatter(logging.Formatter):
    """The message alone for INFO, "warning: message" (or error, ...) above it."""

    def format(self, record):
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


_KNOWN_NOISE = re.compile(r"Converting string literal type hint|Unparseable argument"
                          r"|Discarding unparseable args|has no dataset_info\.json"
                          r"|\.dtype` is deprecated")


class NoKnownNoise(logging.Filter):
    """Drops the harmless library lines a quiet run would otherwise show even when verbose."""

    def filter(self, record):
        return is_own(record) or not _KNOWN_NOISE.search(str(record.msg))


def quiet_libraries() -> None:
    """Hides TensorFlow's C++ logs (when set before it loads), libraries' Python warnings and the
    INFO/WARNING records of their own loggers. A TF_CPP_MIN_LOG_LEVEL the user set is kept."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # 3 also hides E lines (cuInit)
    warnings.simplefilter("ignore")
    warnings.filterwarnings("default", module=_OWN_MODULES)
    for name in _LIBRARY_LOGGERS:
        if name != "absl":  # our own records go through absl's logger
            logging.getLogger(name).setLevel(logging.ERROR)


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


def quiet_tfds_build(argv) -> None:
    """For the TFDS builder when `tfds build` imports it: at the default verbosity, libraries
    quiet and the TFDS CLI's handler showing this project's INFO lines and everyone's errors."""
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler()
    handler.addFilter(NoKnownNoise())
    if verbosity_from_argv(argv) < 1:
        quiet_libraries()  # Beam's worker processes read TF_CPP_MIN_LOG_LEVEL when they start
        handler.addFilter(OwnRecordsOnly())
        logging.getLogger("tensorflow_datasets").setLevel(logging.WARNING)
