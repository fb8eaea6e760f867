"""Fault injection for crash-safety tests: ``BIDSPACK_FAULT=<point>[@<n>][:<mode>]``.

When the named fault point is reached for the *n*-th time (default 1) in this process,
the process is killed with SIGKILL (mode ``kill``, the default) or an I/O error is
raised: ``enospc`` (OSError ENOSPC, disk full) or ``eacces`` (PermissionError EACCES).

Points, in the order a transaction reaches them:

- ``stage``: before each output is staged (``@2`` = after one output is staged);
- ``staged``: all outputs staged, before the journal;
- ``journal``: journal written and fsynced, before the commit marker;
- ``committed``: commit marker written, before the first rename;
- ``apply``: between two renames of the apply phase (``@n``: before the n-th
  operation after the first);
- ``recover``: between two operations of a roll-forward by recovery.

Used by the tests only; harmless when the variable is unset.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "BIDSPACK_FAULT"
POINTS = ("stage", "staged", "journal", "committed", "apply", "recover")
MODES = ("kill", "enospc", "eacces")
_seen: Counter[str] = Counter()


def parse(spec: str) -> tuple[str, int, str]:
    """``"apply@2:enospc"`` -> ``("apply", 2, "enospc")``.

    Raises:
        ValueError: unknown point or mode.
    """
    point_n, _, mode = spec.partition(":")
    point, _, n = point_n.partition("@")
    mode = mode or "kill"
    if point not in POINTS or mode not in MODES:
        raise ValueError(f"bad {ENV} value {spec!r}")
    return point, int(n or 1), mode


def fault_point(point: str) -> None:
    """Trigger the configured fault if *point* is reached for the configured time."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, n, mode = parse(spec)
    if want != point:
        return
    _seen[point] += 1
    if _seen[point] != n:
        return
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {point})")
    raise PermissionError(errno.EACCES, f"Permission denied (injected at {point})")
