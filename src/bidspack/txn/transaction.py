"""Transactional steps: staged outputs, a journal, a commit point, atomic renames.

One transaction ``<id>`` lives in ``<dataset>/.bidspack/txn/<id>/`` (on the dataset's
filesystem, so ``os.replace`` is atomic):

1. *Stage*: new or changed files and directories (e.g. ``.ome.zarr`` trees) are
   written under ``tree/`` at their dataset-relative paths; deletions and renames
   are only recorded. Scratch files go to ``work/``.
2. *Journal*: ``journal.json`` lists the operations in order: ``put`` (new path),
   ``replace`` (existing path; the old one is moved to ``backup/`` first), ``delete``
   (moved to ``backup/``), ``rename`` (``path`` -> ``to``, files or directories).
   Staged files, the journal and the folders are fsynced.
3. *Commit point*: the file ``COMMITTED`` is written and fsynced.
4. *Apply*: operations are carried out in order, each by atomic renames and each
   idempotent (it checks what is already done), so a crash at any moment can be
   resumed. Folders left empty by deletes and renames are removed.
5. *Done*: the transaction folder, with the backups, is removed.

:func:`recover` rolls back a transaction without ``COMMITTED`` (deletes its folder:
the dataset was never touched) and rolls forward one with it (repeats step 4). Both
are idempotent; a crash during recovery is recovered by the next recovery.
:func:`dataset_lock` makes sure only one process changes a dataset at a time.
Fault points for tests are in :mod:`bidspack.txn.faults`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bidspack.errors import OutputError
from bidspack.txn.faults import fault_point

STATE_DIR = ".bidspack"
JOURNAL_VERSION = 1


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for dirpath, _, filenames in os.walk(path):
            for f in filenames:
                _fsync(Path(dirpath) / f)
            _fsync(Path(dirpath))
    elif path.exists():
        _fsync(path)


def pending(dataset: Path) -> list[str]:
    """Ids of unfinished transactions of *dataset* (sorted)."""
    base = Path(dataset) / STATE_DIR / "txn"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


@contextlib.contextmanager
def dataset_lock(dataset: Path) -> Iterator[Path]:
    """Hold the exclusive lock of *dataset* (creating ``.bidspack/``) for the block.

    The lock is an ``flock`` on ``.bidspack/lock``, released by the kernel if the
    process dies, so a crash never leaves a stale lock.

    Raises:
        OutputError: another process holds the lock (its pid is named).
    """
    state = Path(dataset) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    lock_path = state / "lock"
    fh = open(lock_path, "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise OutputError(
                dataset,
                f"another bidspack process ({holder}) is changing this dataset",
                hint="wait for it to finish",
            ) from exc
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        yield lock_path
    finally:
        with contextlib.suppress(OSError):
            fh.seek(0)
            fh.truncate()
        fh.close()


class Transaction:
    """A set of changes to *dataset* that is applied completely or not at all.

    Usage: :meth:`stage_path` / :meth:`stage_dir` for outputs (write them there),
    :meth:`delete` and :meth:`rename` for changes to existing paths, then
    :meth:`commit`; :meth:`abort` throws everything away before the commit point.
    All paths are dataset-relative POSIX strings.
    """

    def __init__(self, dataset: Path, txn_id: str | None = None):
        self.dataset = Path(dataset)
        self.id = txn_id or f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}"
        self.root = self.dataset / STATE_DIR / "txn" / self.id
        self.tree = self.root / "tree"
        self.work = self.root / "work"
        self.tree.mkdir(parents=True, exist_ok=False)
        self.work.mkdir(parents=True, exist_ok=True)
        self._ops: list[dict[str, Any]] = []
        self._staged: list[str] = []

    # -- building -----------------------------------------------------------------
    def stage_path(self, rel: str) -> Path:
        """Where to write the output file (or directory) *rel*; registers it."""
        fault_point("stage")
        if rel in self._staged:
            return self.tree / rel
        p = self.tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        self._staged.append(rel)
        return p

    def stage_dir(self, rel: str) -> Path:
        """Create and return the staging directory for the output directory *rel*."""
        p = self.stage_path(rel)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def delete(self, rel: str) -> None:
        """Delete the existing file or directory *rel* at commit."""
        self._ops.append({"op": "delete", "path": rel})

    def rename(self, rel: str, to: str) -> None:
        """Rename the existing file or directory *rel* to *to* (must not exist) at commit."""
        self._ops.append({"op": "rename", "path": rel, "to": to})

    def workdir(self) -> Path:
        """A scratch folder, removed with the transaction."""
        return self.work

    @property
    def staged(self) -> list[str]:
        """Dataset-relative paths staged so far, in order."""
        return list(self._staged)

    # -- committing -------------------------------------------------------------------
    def journal(self) -> list[dict[str, Any]]:
        """The operations :meth:`commit` will journal, in order (renames and deletes
        first, as recorded, then the staged outputs)."""
        ops = list(self._ops)
        for rel in self._staged:
            if not (self.tree / rel).exists():
                raise OutputError(rel, "was registered for staging but never written")
            kind = "replace" if (self.dataset / rel).exists() else "put"
            ops.append({"op": kind, "path": rel})
        return ops

    def commit(self) -> list[dict[str, Any]]:
        """Journal, mark committed, apply. Returns the journaled operations.

        Before the commit marker any error leaves the dataset untouched (call
        :meth:`abort`); after it, an error leaves the transaction for :func:`recover`.
        """
        fault_point("staged")
        ops = self.journal()
        for rel in self._staged:
            _fsync_tree(self.tree / rel)
        _fsync_tree(self.tree)
        journal = self.root / "journal.json"
        journal.write_text(
            json.dumps({"version": JOURNAL_VERSION, "ops": ops}, indent=1), encoding="utf-8"
        )
        _fsync(journal)
        _fsync(self.root)
        fault_point("journal")
        marker = self.root / "COMMITTED"
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write(self.id + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        _fsync(self.root)
        fault_point("committed")
        _apply(self.root, self.dataset, "apply")
        return ops

    def abort(self) -> None:
        """Throw away everything staged. Only valid before the commit point."""
        if (self.root / "COMMITTED").exists():
            return  # past the commit point: leave it to recover()
        shutil.rmtree(self.root, ignore_errors=True)


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _prune_empty_parents(dataset: Path, rel: str) -> None:
    parent = (dataset / rel).parent
    while parent != dataset and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _apply(root: Path, dataset: Path, point: str) -> None:
    """Carry out a committed journal (idempotent), then delete the transaction folder."""
    journal = json.loads((root / "journal.json").read_text(encoding="utf-8"))
    tree, backup = root / "tree", root / "backup"
    for i, op in enumerate(journal["ops"]):
        if i:
            fault_point(point)
        rel = op["path"]
        final = dataset / rel
        if op["op"] == "put":
            if (tree / rel).exists():
                if final.is_dir() and not final.is_symlink():
                    shutil.rmtree(final)  # a half-applied put cannot exist; stale dir only
                _move(tree / rel, final)
        elif op["op"] == "replace":
            if (tree / rel).exists():
                if final.exists() and not (backup / rel).exists():
                    _move(final, backup / rel)
                elif final.exists():
                    # backup taken in an earlier attempt and final re-created? keep backup
                    if final.is_dir():
                        shutil.rmtree(final)
                    else:
                        final.unlink()
                _move(tree / rel, final)
        elif op["op"] == "delete":
            if final.exists() or final.is_symlink():
                _move(final, backup / rel)
            _prune_empty_parents(dataset, rel)
        elif op["op"] == "rename":
            dst = dataset / op["to"]
            if (final.exists() or final.is_symlink()) and not dst.exists():
                _move(final, dst)
            _prune_empty_parents(dataset, rel)
        else:  # pragma: no cover - journals are written by this module
            raise ValueError(f"unknown journal operation {op['op']!r}")
    _fsync(dataset)
    shutil.rmtree(root)


def recover(dataset: Path) -> list[tuple[str, str]]:
    """Finish or undo every unfinished transaction of *dataset*, oldest first.

    Returns ``(transaction id, "rolled back" | "rolled forward")`` per transaction.
    """
    base = Path(dataset) / STATE_DIR / "txn"
    done: list[tuple[str, str]] = []
    for txn_id in pending(dataset):
        root = base / txn_id
        if (root / "COMMITTED").exists() and (root / "journal.json").exists():
            _apply(root, Path(dataset), "recover")
            done.append((txn_id, "rolled forward"))
        else:
            shutil.rmtree(root)
            done.append((txn_id, "rolled back"))
    return done
