"""Named points where a test can kill the process, to show that every state transition is safe.

Production code calls `point("name")` right after each durable step (a file published, a state
recorded). With MRI_TFDATA_KILL_AT=name (or name@N, the N-th time the point is passed) the process
kills itself there with SIGKILL, as a power cut or an OOM killer would: no cleanup runs.
"""

import collections
import os
import signal

ENV = "MRI_TFDATA_KILL_AT"

_passed = collections.Counter()


def point(name: str) -> None:
    """Kills this process here if MRI_TFDATA_KILL_AT names this point (and this passage)."""
    target = os.environ.get(ENV)
    if not target:
        return
    _passed[name] += 1
    wanted, _, count = target.partition("@")
    if wanted == name and _passed[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
