"""Preconditions and staging of an export: the output place, the dataset's state, its
lock while it is read, and the temporary output next to OUT that becomes OUT only when
the export is complete and validated (see :mod:`bidspack.ops.export`)."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from bidspack.errors import OutputError, ValidationFailed
from bidspack.provenance.manifest import MANIFEST_TSV, Row, read_manifest
from bidspack.txn import dataset_lock, pending
from bidspack.txn.beside import remove_stale, staged_beside
from bidspack.txn.transaction import STATE_DIR

VERIFY = "run 'bidspack verify DATASET'"


def check_output(out: Path, dataset: Path, *, folder: bool) -> None:
    """Refuse an *out* that exists (unless *folder* and an empty folder) or that lies
    inside *dataset* (an export must not change the dataset).

    Raises:
        OutputError: naming *out*.
    """
    if out.is_symlink() or out.exists():
        if not folder:
            raise OutputError(out, "exists", hint="give a new file name")
        if out.is_symlink() or not out.is_dir():
            raise OutputError(out, "exists and is not a folder", hint="give a new folder")
        if any(out.iterdir()):
            raise OutputError(out, "exists and is not empty", hint="give a new or empty folder")
    ds, target = dataset.resolve(), out.resolve()
    if target == ds or ds in target.parents:
        raise OutputError(out, "lies inside the dataset", hint="export to a place outside DATASET")


def check_dataset(dataset: Path) -> dict[str, Row]:
    """The manifest rows of *dataset*, after checking that it is a bidspack dataset
    without unfinished transactions.

    Raises:
        ValidationFailed: no ``dataset_description.json``, no manifest, or a manifest
            that cannot be read (not UTF-8, a size that is not a number ...).
        OutputError: unfinished transactions.
    """
    if not (dataset / "dataset_description.json").is_file():
        raise ValidationFailed(dataset, "not a BIDS dataset (no dataset_description.json)")
    waiting = pending(dataset)
    if waiting:
        raise OutputError(
            dataset,
            f"{len(waiting)} unfinished transaction(s) from an interrupted run",
            hint="run 'bidspack recover DATASET' first",
        )
    try:
        rows = read_manifest(dataset)
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            dataset / MANIFEST_TSV, f"is not UTF-8 text (offset {exc.start})", hint=VERIFY
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationFailed(
            dataset / MANIFEST_TSV, f"is not a bidspack manifest ({exc!r})", hint=VERIFY
        ) from exc
    if not rows:
        raise ValidationFailed(dataset, f"no manifest ({MANIFEST_TSV}); not a bidspack dataset")
    return rows


@contextlib.contextmanager
def reading(dataset: Path) -> Iterator[None]:
    """Hold the dataset lock while reading, so no bidspack step changes the dataset
    under the export. A dataset without ``.bidspack/`` (a clone) is not given one, and
    a read-only dataset is read without the lock (nothing can change it either)."""
    if not dataset.is_dir():
        raise ValidationFailed(dataset, "is not a folder" if dataset.exists() else "not found")
    with contextlib.ExitStack() as stack:
        if (dataset / STATE_DIR).is_dir():
            try:
                stack.enter_context(dataset_lock(dataset))
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
        yield


@contextlib.contextmanager
def staged_output(out: Path, *, folder: bool) -> Iterator[Path]:
    """Yield a new temporary file or folder next to *out*; rename it to *out* when the
    block succeeds, remove it when it fails (any exception, interrupts included). What
    a killed export left beside *out* is removed first
    (:mod:`bidspack.txn.beside`)."""
    remove_stale(out.absolute())
    with staged_beside(out, create="folder" if folder else "file") as tmp:
        yield tmp
