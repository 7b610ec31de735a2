"""Runs a command as a user would, in a fresh process, and times it wall to wall."""

import os
import subprocess
import sys
import time

from absl import logging


def run_with_line_times(command: list[str], *, what: str) -> tuple[float, list[tuple[float, str]]]:
    """Runs `command`; returns (seconds, [(seconds since the start when the line was written,
    line)] of its stdout and stderr). The child's Python output is unbuffered so each line arrives
    as it is written. Exits naming `what` if it fails."""
    logging.info("%s: %s", what.capitalize(), " ".join(command))
    lines = []
    start = time.perf_counter()
    with subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line))
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.stdout.write("".join(line for _, line in lines)[-5000:])
        raise SystemExit(f"the {what} failed with exit code {proc.returncode}")
    return seconds, lines


def run(command: list[str], *, what: str) -> tuple[float, str]:
    """Runs `command`; returns (seconds, its stdout and stderr). Exits naming `what` if it fails."""
    seconds, lines = run_with_line_times(command, what=what)
    return seconds, "".join(line for _, line in lines)
