"""Staged, journaled, atomic commits of new files into a dataset folder.

Protocol of one transaction ``<id>`` (all under ``<dataset>/.bidspack/txn/<id>/``, on
the dataset's filesystem so that ``os.replace`` is atomic):

1. *Stage*: outputs are written under ``tree/`` at their dataset-relative paths;
   scratch files go to ``work/``.
2. *Journal*: ``journal.json`` lists every ``put`` (dataset-relative path); staged
   files and the journal are fsynced.
3. *Commit point*: the empty file ``COMMITTED`` is created and fsynced.
4. *Apply*: each staged file is renamed to its final path (parents created).
5. *Done*: the transaction folder is removed.

A crash before 3 leaves nothing visible: :func:`recover` deletes the transaction
folder (roll back). A crash after 3 is rolled forward by :func:`recover`, which
applies the remaining puts; both are idempotent. Only one process may change a
dataset at a time (:func:`dataset_lock`, an ``flock`` on ``.bidspack/lock``).
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

from bidspack.errors import OutputError

STATE_DIR = ".bidspack"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def dataset_lock(dataset: Path) -> Iterator[Path]:
    """Hold the exclusive lock of *dataset* (creating ``.bidspack/``) for the block.

    Raises:
        OutputError: another process holds the lock (its pid is named).
    """
    state = dataset / STATE_DIR
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
                dataset, f"another bidspack process ({holder}) is changing this dataset"
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
    """A staged set of new files for *dataset* (see module docstring).

    Use :meth:`stage_path` to get where to write an output, :meth:`workdir` for
    scratch space, then :meth:`commit` (or :meth:`abort`).

    Raises (from :meth:`commit`):
        OutputError: a target already exists in the dataset.
    """

    def __init__(self, dataset: Path, txn_id: str | None = None):
        self.dataset = Path(dataset)
        self.id = txn_id or time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        self.root = self.dataset / STATE_DIR / "txn" / self.id
        self.tree = self.root / "tree"
        self.work = self.root / "work"
        self.tree.mkdir(parents=True, exist_ok=False)
        self.work.mkdir(parents=True, exist_ok=True)

    def stage_path(self, rel: str) -> Path:
        """Where to write the output whose dataset-relative path is *rel*."""
        p = self.tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def workdir(self) -> Path:
        """A scratch folder removed with the transaction."""
        return self.work

    def staged(self) -> list[str]:
        """Dataset-relative paths of every staged file, sorted."""
        return sorted(
            p.relative_to(self.tree).as_posix() for p in self.tree.rglob("*") if p.is_file()
        )

    def commit(self) -> list[str]:
        """Journal, mark committed, and rename every staged file into the dataset.

        Returns the dataset-relative paths put into place.
        """
        puts = self.staged()
        for rel in puts:
            if (self.dataset / rel).exists():
                raise OutputError(self.dataset / rel, "exists already; bidspack does not overwrite")
        for rel in puts:
            _fsync_path(self.tree / rel)
        journal = self.root / "journal.json"
        journal.write_text(json.dumps({"version": 1, "puts": puts}, indent=1), encoding="utf-8")
        _fsync_path(journal)
        marker = self.root / "COMMITTED"
        marker.touch()
        _fsync_path(marker)
        _fsync_path(self.root)
        _apply(self.root, self.dataset)
        return puts

    def abort(self) -> None:
        """Throw the staged outputs away (nothing was visible in the dataset)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _apply(root: Path, dataset: Path) -> None:
    """Roll a committed transaction forward (idempotent), then delete its folder."""
    journal = json.loads((root / "journal.json").read_text(encoding="utf-8"))
    tree = root / "tree"
    for rel in journal["puts"]:
        src = tree / rel
        if src.exists():
            dst = dataset / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    _fsync_path(dataset)
    shutil.rmtree(root)


def recover(dataset: Path) -> list[tuple[str, str]]:
    """Finish or undo every unfinished transaction of *dataset*.

    Returns ``(txn id, "rolled back" | "rolled forward")`` for each one found.
    """
    base = Path(dataset) / STATE_DIR / "txn"
    done: list[tuple[str, str]] = []
    if not base.is_dir():
        return done
    for root in sorted(base.iterdir()):
        if (root / "COMMITTED").exists() and (root / "journal.json").exists():
            _apply(root, Path(dataset))
            done.append((root.name, "rolled forward"))
        else:
            shutil.rmtree(root, ignore_errors=True)
            done.append((root.name, "rolled back"))
    return done
