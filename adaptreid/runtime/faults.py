"""Fault injection for the crash-safety tests.

``ADAPTREID_CRASH_AT=<point>[@<n>]`` makes the process SIGKILL itself the ``n``-th time (default
1st) it reaches ``point``. Points: ``cluster`` (pseudo-labels computed, not yet saved),
``train_step`` (inside an epoch, after an optimiser step), ``checkpoint_write`` (a checkpoint's
temporary file written, not yet renamed into place). Unset (the normal case), this costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def crash_point(point: str) -> None:
    spec = os.environ.get("ADAPTREID_CRASH_AT")
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
