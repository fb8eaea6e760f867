"""Outputs that are not part of a dataset (``bidspack aggregate``, ``bidspack export``):
written beside OUT under a hidden name, renamed to OUT only when complete.

A staged entry is ``.<OUT name>.partial-<pid>-<random>`` in OUT's folder; helper entries
of the same run may be named ``.<OUT name>.work-<pid>-...``. ``os.replace`` (rename(2))
puts the finished entry in place atomically, so OUT never holds a partial result. A run
killed before its cleanup leaves its entries behind; :func:`remove_stale` removes those
of processes that no longer run.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal


def _alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def work_prefix(out: Path) -> str:
    """Name prefix for this run's helper entries beside *out* (``tempfile`` ``prefix``)."""
    return f".{out.name}.work-{os.getpid()}-"


def remove_stale(out: Path) -> list[Path]:
    """Remove the staged and helper entries beside *out* left by runs that were killed
    (their process no longer runs). Entries of running processes, this one included,
    are left alone. Returns what was removed."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?:partial|work)-(\d+)-.*$")
    removed = []
    for entry in sorted(out.parent.glob(f".{out.name}.*")) if out.parent.is_dir() else []:
        m = pattern.match(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def staged_beside(out: Path, *, create: Literal["file", "folder"] | None) -> Iterator[Path]:
    """Yield a new hidden path beside *out*; rename it to *out* when the block succeeds,
    remove it when it fails (any exception, interrupts included).

    *create*: make it an empty ``"file"`` or ``"folder"`` first, or leave it absent for
    a writer that creates it (``None``). Missing parent folders of *out* are created.
    The rename replaces an empty folder at *out*, not a full one or a file.
    """
    out = out.absolute()  # a sane name and parent also for "." or "x/.."
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:  # a name no other run uses; created exclusively when asked to
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            if create == "folder":
                tmp.mkdir()
            elif create == "file":
                tmp.touch(exist_ok=False)
            elif tmp.exists() or tmp.is_symlink():
                continue
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
