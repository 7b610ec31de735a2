"""How progress is shown: live Keras progress bars on a terminal, one line per epoch elsewhere."""

import sys


def progress_verbose() -> int:
    """Keras `verbose=` for fit, predict and Progbar: live bars on a terminal, else one line.

    Keras's Progbar redraws with \\r and \\b in every POSIX process ("posix" in sys.modules), so
    output redirected to a log file fills with them; verbose=2 prints one line per epoch or call.
    """
    return 1 if sys.stdout.isatty() else 2
