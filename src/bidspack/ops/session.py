"""The output folder of an operation that writes a bidspack dataset (``package``,
``derive ...``): which folders may be written, the lock, recovery first, and cleaning
up after a first run that committed nothing.

:func:`locked_output` is the one way such an operation takes its folder: the lock is
taken before anything is created, checked or cleaned, so a run that does not hold it
changes nothing; unfinished transactions are recovered (or refused) before the folder
is checked; a run that fails before its first commit removes only what it created.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bidspack.errors import OutputError
from bidspack.provenance import datalad as dl
from bidspack.provenance.manifest import MANIFEST_TSV
from bidspack.records import Record
from bidspack.txn import dataset_lock, recover
from bidspack.txn.transaction import STATE_DIR, pending

#: Entries of an output folder that do not make it "not empty" (state, version control).
HOUSEKEEPING = {STATE_DIR, ".git", ".datalad", ".gitattributes", ".gitignore"}


def is_bidspack_dataset(dataset: Path) -> bool:
    """A dataset bidspack made: step records, a manifest (e.g. in a DataLad clone), or
    unfinished transactions (a run killed inside its first step)."""
    dataset = Path(dataset)
    return (
        (dataset / STATE_DIR / "steps").is_dir()
        or (dataset / MANIFEST_TSV).is_file()
        or bool(pending(dataset))
    )


def check_output(dataset: Path) -> None:
    """The output folder must be absent, empty (but for housekeeping entries) or a
    bidspack dataset.

    Raises:
        OutputError: it is a file, or holds something else.
    """
    dataset = Path(dataset)
    if dataset.exists() and not dataset.is_dir():
        raise OutputError(dataset, "exists and is not a folder")
    if not dataset.is_dir() or is_bidspack_dataset(dataset):
        return
    if any(p.name not in HOUSEKEEPING for p in dataset.iterdir()):
        raise OutputError(
            dataset,
            "exists, is not empty and is not a bidspack dataset",
            hint="choose a new or empty output folder",
        )


def is_pristine(dataset: Path) -> bool:
    """Nothing in *dataset* but bidspack's lock file (checked with the lock held): a run
    that fails before its first commit may remove the folder again."""
    entries = {p.name for p in dataset.iterdir()}
    state = {p.name for p in (dataset / STATE_DIR).iterdir()} if STATE_DIR in entries else set()
    return entries <= {STATE_DIR} and state <= {"lock", "txn"} and not pending(dataset)


def remove_pristine(dataset: Path, *, keep_folder: bool) -> None:
    """Remove what a failed first run created in a folder that was pristine when it
    took the lock (so everything in it is this run's): its entries and, unless the
    folder existed before the run, the folder (``rmdir``: never a folder another
    process put something in since)."""
    for entry in list(dataset.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if not keep_folder:
        with contextlib.suppress(OSError):
            dataset.rmdir()


def recover_records(dataset: Path, *, recover_first: bool = True) -> Iterator[Record]:
    """Recover unfinished transactions of *dataset* (lock held by the caller); in a
    DataLad dataset, save what an interrupted step changed.

    Raises:
        OutputError: there are unfinished transactions and *recover_first* is false.
    """
    waiting = pending(dataset)
    if waiting and not recover_first:
        raise OutputError(
            dataset,
            f"{len(waiting)} unfinished transaction(s) from an interrupted run",
            hint="run 'bidspack recover DATASET' first",
        )
    for txn_id, what in recover(dataset):
        yield Record("recover", f"{STATE_DIR}/txn/{txn_id}", "ok", what)
    if dl.is_datalad(dataset) and dl.dirty(dataset):
        dl.save(dataset, "bidspack recover: save the changes of an interrupted step")
        yield Record("recover", ".", "ok", "saved the changes of an interrupted step (DataLad)")


@dataclass
class OutputSession:
    """What :func:`locked_output` yields: the records of the recovery it did, and
    whether the folder was pristine when the lock was taken. ``keep`` says whether a
    failure keeps what the run committed: ``None`` (default) keeps it once any step
    record exists; ``package`` sets ``False`` and then ``True`` after its first image
    step (its metadata step alone is not worth keeping)."""

    recovered: list[Record]
    pristine: bool
    keep: bool | None = None


@contextlib.contextmanager
def locked_output(dataset: Path, *, recover_first: bool = True) -> Iterator[OutputSession]:
    """Hold *dataset*'s lock for the block, after recovering unfinished transactions
    and checking the folder (:func:`check_output`). If the block fails in a folder that
    was pristine (nothing in it but this run's lock) and the session was not marked
    ``keep`` (default: no step record exists), what this run created is removed again
    (:func:`remove_pristine`): bad input found while writing leaves no partial output.

    Raises:
        OutputError: the folder is a file or holds something else; another process
            holds the lock; unfinished transactions and not *recover_first*.
    """
    dataset = Path(dataset)
    check_output(dataset)  # before the lock creates anything
    existed = dataset.exists()
    with dataset_lock(dataset):
        session = OutputSession([], is_pristine(dataset))
        try:
            session.recovered = list(recover_records(dataset, recover_first=recover_first))
            check_output(dataset)
            yield session
        except BaseException:
            kept = session.keep
            if kept is None:
                kept = (dataset / STATE_DIR / "steps").exists()
            if session.pristine and not kept:
                remove_pristine(dataset, keep_folder=existed)
            raise
