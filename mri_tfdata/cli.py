"""Runs an absl entry point so that user mistakes end in one clear paragraph, not a traceback."""

import sys
import textwrap

from absl import app, flags

from mri_tfdata.errors import FlagError, UserError

FLAGS = flags.FLAGS


def _print_error(message: str) -> None:
    paragraph = " ".join(str(message).split())
    # Paths and flags stay whole (copyable): no breaks at their hyphens or inside them.
    sys.stderr.write(textwrap.fill(f"error: {paragraph}", width=100, break_on_hyphens=False,
                                   break_long_words=False) + "\n")


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags like absl does, but exits with status 2 and one paragraph on a bad flag."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _print_error(f"{e}. Run with --helpfull to list the flags and their accepted values.")
        sys.exit(2)


def run(main) -> None:
    """Runs `main(argv)` under absl; a UserError prints its message and exits with its code."""

    def guarded_main(argv):
        try:
            return main(argv)
        except UserError as e:
            _print_error(str(e))
            sys.exit(e.exit_code)

    app.run(guarded_main, flags_parser=parse_flags)


def require(condition: bool, message: str) -> None:
    """Raises FlagError(message) unless `condition`; for validating flag values in entry points."""
    if not condition:
        raise FlagError(message)
