"""Runs a command as a user would, in a fresh process, and times it wall to wall."""

import subprocess
import sys
import time

from absl import logging


def run(command: list[str], *, what: str) -> tuple[float, str]:
    """Runs `command`; returns (seconds, its stdout and stderr). Exits naming `what` if it fails."""
    logging.info("%s: %s", what.capitalize(), " ".join(command))
    start = time.perf_counter()
    proc = subprocess.run(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.stdout.write(proc.stdout[-5000:])
        raise SystemExit(f"the {what} failed with exit code {proc.returncode}")
    return seconds, proc.stdout
