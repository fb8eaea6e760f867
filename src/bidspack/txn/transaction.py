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

A transaction folder is untrusted input (a dataset may be copied from elsewhere or
changed by hand): before anything is applied or deleted, :func:`check_transaction`
validates every pending folder: its name, the kinds of its entries (``journal.json``
and ``COMMITTED`` regular files, ``tree/`` and ``backup/`` real folders, never symbolic
links), ``journal.json`` (at most :data:`MAX_JOURNAL_BYTES`, UTF-8 JSON, valid against
``specs/journal.schema.json``), every ``path``/``to`` (:func:`bidspack.safety.check_relpath`
and :func:`bidspack.safety.inside` the dataset, so ``..`` or a symlinked folder cannot
lead out; bidspack's own ``.bidspack/txn`` and lock are never targets) and every
symbolic link in ``tree/`` (it must resolve inside the dataset where it is staged and
where it will be moved). A refused folder raises
:class:`~bidspack.errors.UnsafeInputError` naming the file and the entry, and nothing
of any pending transaction is moved or deleted.

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
from pathlib import Path, PurePosixPath
from typing import Any

from bidspack.errors import OutputError, UnsafeInputError
from bidspack.safety import check_relpath, check_text_field, entry_kind, inside, is_within
from bidspack.txn.faults import fault_point

STATE_DIR = ".bidspack"
JOURNAL_VERSION = 1
#: Largest ``journal.json`` read (bytes): about 300 000 operations of long paths.
MAX_JOURNAL_BYTES = 64 << 20
#: Operations a journal may hold.
JOURNAL_OPS = ("put", "replace", "delete", "rename")
#: Dataset-relative paths a journal must never name (the engine's own state).
_RESERVED = (f"{STATE_DIR}/txn", f"{STATE_DIR}/lock")
_REFUSED_HINT = (
    "this transaction folder was not written by bidspack or was changed; nothing was "
    "applied: inspect it, then remove it"
)


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
        """Create the staging folders of a new transaction of *dataset*.

        Raises:
            UnsafeInputError: *txn_id* is not a plain folder name.
            FileExistsError: a transaction *txn_id* exists already.
        """
        self.dataset = Path(dataset)
        self.id = txn_id or f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}"
        _check_id(self.id, self.dataset / STATE_DIR / "txn")
        self.root = self.dataset / STATE_DIR / "txn" / self.id
        self.tree = self.root / "tree"
        self.work = self.root / "work"
        self.tree.mkdir(parents=True, exist_ok=False)
        self.work.mkdir(parents=True, exist_ok=True)
        self._ops: list[dict[str, Any]] = []
        self._staged: list[str] = []

    # -- building -----------------------------------------------------------------
    def stage_path(self, rel: str) -> Path:
        """Where to write the output file (or directory) *rel*; registers it.

        Raises:
            UnsafeInputError: *rel* is not a safe relative path
                (:func:`bidspack.safety.check_relpath`).
        """
        rel = check_relpath(rel, what="staged path", origin=self.dataset)
        fault_point("stage")
        if rel in self._staged:
            return self.tree / rel
        p = self.tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        self._staged.append(rel)
        return p

    def stage_dir(self, rel: str) -> Path:
        """Create and return the staging directory for the output directory *rel*.

        Raises:
            UnsafeInputError: see :meth:`stage_path`.
        """
        p = self.stage_path(rel)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def delete(self, rel: str) -> None:
        """Delete the existing file or directory *rel* at commit.

        Raises:
            UnsafeInputError: *rel* is not a safe relative path.
        """
        rel = check_relpath(rel, what="path to delete", origin=self.dataset)
        self._ops.append({"op": "delete", "path": rel})

    def rename(self, rel: str, to: str) -> None:
        """Rename the existing file or directory *rel* to *to* (must not exist) at commit.

        Raises:
            UnsafeInputError: *rel* or *to* is not a safe relative path.
        """
        rel = check_relpath(rel, what="path to rename", origin=self.dataset)
        to = check_relpath(to, what="new name", origin=self.dataset)
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

        Raises:
            OutputError: a registered output was never written.
            UnsafeInputError: an operation's path leads outside the dataset (through a
                symbolic link) or a staged symbolic link does (checked before the
                commit point, see :func:`check_transaction`).
        """
        fault_point("staged")
        ops = _check_ops(self.journal(), self.dataset, self.root, origin=self.root / "journal.json")
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
        _apply(self.root, self.dataset, "apply", ops)
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


def _check_id(txn_id: str, base: Path) -> None:
    """*txn_id* must be one plain folder name (no ``/``, ``..``, control characters)."""
    what = "transaction folder name"
    check_text_field(txn_id, what=what, origin=base)
    if check_relpath(txn_id, what=what, origin=base) != txn_id or "/" in txn_id:
        raise UnsafeInputError(base, f"{what} {txn_id!r} is not a plain folder name")


def _read_journal(path: Path) -> list[dict[str, Any]]:
    """The operations of ``journal.json`` *path*: read with a size bound, parsed as UTF-8
    JSON and validated against ``specs/journal.schema.json``."""
    import jsonschema

    from bidspack.spec import load_schema

    kind = entry_kind(path)
    if kind != "file":
        raise UnsafeInputError(
            path,
            "is a symbolic link; a journal must be a regular file"
            if kind == "symlink"
            else f"is not a regular file ({kind})",
            hint=_REFUSED_HINT,
        )
    with open(path, "rb") as fh:
        data = fh.read(MAX_JOURNAL_BYTES + 1)
    if len(data) > MAX_JOURNAL_BYTES:
        raise UnsafeInputError(
            path,
            f"is larger than {MAX_JOURNAL_BYTES} bytes; not a bidspack journal",
            hint=_REFUSED_HINT,
        )
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UnsafeInputError(
            path, f"is not UTF-8 text (byte {exc.start})", hint=_REFUSED_HINT
        ) from exc
    except json.JSONDecodeError as exc:
        raise UnsafeInputError(
            path,
            f"is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})",
            hint=_REFUSED_HINT,
        ) from exc
    except RecursionError as exc:
        raise UnsafeInputError(path, "is nested too deeply", hint=_REFUSED_HINT) from exc
    validator = jsonschema.Draft202012Validator(load_schema("journal"))
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        where = where.lstrip(".") or "the journal"
        if error.validator == "not":
            reason = "'to' is only allowed for op 'rename'"
        elif error.validator == "const" and list(error.absolute_path) == ["version"]:
            reason = f"version {error.instance!r} is not {JOURNAL_VERSION}"
        else:
            reason = error.message
        if len(reason) > 300:
            reason = reason[:300] + " ..."
        raise UnsafeInputError(
            path, f"{where}: {reason} (specs/journal.schema.json)", hint=_REFUSED_HINT
        )
    ops: list[dict[str, Any]] = doc["ops"]
    return ops


def _contained(root: Path, rel: str, *, what: str, shown: str, origin: Path) -> None:
    """The folders of the checked relative path *rel* resolve inside *root*."""
    parent = PurePosixPath(rel).parent.as_posix()
    if parent != "." and not is_within(root / parent, root):
        raise UnsafeInputError(
            origin,
            f"{what} {shown!r} leads outside {root} through a symbolic link in {parent!r}",
        )


def _target(dataset: Path, rel: str, *, what: str, origin: Path) -> str:
    """*rel* checked as a dataset path an operation changes; returned normalised.

    Every folder on the way must resolve inside *dataset*. The last component itself
    may be a symbolic link (the engine moves links, never follows them); anything
    else must resolve inside too."""
    clean = check_relpath(rel, what=what, origin=origin)
    if clean in (STATE_DIR, *_RESERVED) or clean.startswith(_RESERVED[0] + "/"):
        raise UnsafeInputError(origin, f"{what} {rel!r} names bidspack's own transaction state")
    _contained(dataset, clean, what=what, shown=rel, origin=origin)
    if entry_kind(dataset / clean) != "symlink":
        inside(dataset, clean, what=what, origin=origin)
    return clean


def _check_staged_links(tree: Path, dataset: Path, origin: Path) -> None:
    """Every symbolic link under *tree* resolves inside *dataset*, both where it is
    staged and where it will be moved (a relative link changes meaning when moved)."""
    if entry_kind(tree) != "dir":
        return
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*dirnames, *filenames]:
            staged = Path(dirpath) / name
            if not staged.is_symlink():
                continue
            rel = staged.relative_to(tree).as_posix()
            target = os.readlink(staged)
            final = (dataset / rel).parent / target
            if not (is_within(staged, dataset) and is_within(final, dataset)):
                raise UnsafeInputError(
                    origin.parent / "tree" / rel,
                    f"staged entry {rel!r} is a symbolic link to {target!r}, outside the dataset",
                    hint=_REFUSED_HINT,
                )


def _check_ops(
    ops: list[dict[str, Any]], dataset: Path, root: Path, *, origin: Path
) -> list[dict[str, Any]]:
    """Check every operation of a journal (see :func:`check_transaction`); return them
    with normalised paths."""
    tree, backup = root / "tree", root / "backup"
    for name, allowed in (("tree", ("dir", "missing")), ("backup", ("dir", "missing"))):
        found = entry_kind(root / name)
        if found not in allowed:
            raise UnsafeInputError(
                root / name,
                f"is a {'symbolic link' if found == 'symlink' else found}, not a folder",
                hint=_REFUSED_HINT,
            )
    checked: list[dict[str, Any]] = []
    for i, op in enumerate(ops):
        kind = op.get("op")
        if kind not in JOURNAL_OPS:
            raise UnsafeInputError(origin, f"ops[{i}].op {kind!r} is not one of {JOURNAL_OPS}")
        what = f"ops[{i}].path"
        rel = _target(dataset, op.get("path", ""), what=what, origin=origin)
        if kind in ("put", "replace"):
            _contained(tree, rel, what=what, shown=rel, origin=origin)
        if kind in ("replace", "delete"):
            _contained(backup, rel, what=what, shown=rel, origin=origin)
        if kind == "rename":
            to = _target(dataset, op.get("to", ""), what=f"ops[{i}].to", origin=origin)
            checked.append({"op": kind, "path": rel, "to": to})
        else:
            checked.append({"op": kind, "path": rel})
    _check_staged_links(tree, dataset, origin)
    return checked


def check_transaction(dataset: Path, txn_id: str) -> list[dict[str, Any]] | None:
    """Validate the pending transaction folder *txn_id* of *dataset* before it is
    recovered: the journal's operations if it is committed (to roll forward), ``None``
    if it is not (to roll back: only its folder is removed).

    Raises:
        UnsafeInputError: the folder name, the folder or one of its entries is refused
            (a symbolic link, not a folder or file), the journal is too large, not UTF-8
            JSON, not valid against ``specs/journal.schema.json``, or names a path that
            is unsafe or leads outside *dataset*, or a staged symbolic link leads
            outside. The message names the file and the entry.
    """
    dataset = Path(dataset)
    base = dataset / STATE_DIR / "txn"
    _check_id(txn_id, base)
    root = inside(dataset, f"{STATE_DIR}/txn/{txn_id}", what="transaction folder", origin=base)
    kind = entry_kind(root)
    if kind != "dir":
        raise UnsafeInputError(
            root,
            f"is a {'symbolic link' if kind == 'symlink' else kind}, not a transaction folder",
            hint=_REFUSED_HINT,
        )
    marker, journal = root / "COMMITTED", root / "journal.json"
    marker_kind = entry_kind(marker)
    if marker_kind not in ("file", "missing"):
        raise UnsafeInputError(
            marker, f"is a {marker_kind}, not the commit marker file", hint=_REFUSED_HINT
        )
    if marker_kind == "missing" or entry_kind(journal) == "missing":
        return None
    try:
        return _check_ops(_read_journal(journal), dataset, root, origin=journal)
    except UnsafeInputError as exc:
        if exc.hint is not None:
            raise
        raise UnsafeInputError(exc.path, exc.reason, hint=_REFUSED_HINT) from exc


def _apply(root: Path, dataset: Path, point: str, ops: list[dict[str, Any]] | None = None) -> None:
    """Carry out a committed journal (idempotent), then delete the transaction folder.

    Without *ops* (already checked by the caller) the journal is read and checked
    first (:func:`check_transaction`); nothing is changed when it is refused.
    """
    if ops is None:
        ops = check_transaction(dataset, root.name)
        if ops is None:
            raise OutputError(root, "is not a committed transaction")
    tree, backup = root / "tree", root / "backup"
    for i, op in enumerate(ops):
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
        else:  # pragma: no cover - checked by check_transaction
            raise UnsafeInputError(root / "journal.json", f"unknown operation {op['op']!r}")
    _fsync(dataset)
    shutil.rmtree(root)


def recover(dataset: Path) -> list[tuple[str, str]]:
    """Finish or undo every unfinished transaction of *dataset*, oldest first.

    Every pending transaction folder is checked first (:func:`check_transaction`); if
    one is refused, nothing of any of them is applied or removed.

    Returns ``(transaction id, "rolled back" | "rolled forward")`` per transaction.

    Raises:
        UnsafeInputError: a transaction folder or its journal is refused (see
            :func:`check_transaction`).
    """
    dataset = Path(dataset)
    base = dataset / STATE_DIR / "txn"
    checked = [(txn_id, check_transaction(dataset, txn_id)) for txn_id in pending(dataset)]
    done: list[tuple[str, str]] = []
    for txn_id, ops in checked:
        root = base / txn_id
        if ops is not None:
            _apply(root, dataset, "recover", ops)
            done.append((txn_id, "rolled forward"))
        else:
            shutil.rmtree(root)
            done.append((txn_id, "rolled back"))
    return done
