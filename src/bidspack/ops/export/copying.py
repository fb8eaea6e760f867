"""The copy of a dataset that the ``ro-crate`` and ``bagit`` exports hold: which files are
exported, the copy (hashed while copied) and its check against the manifest (see
:mod:`bidspack.ops.export`).

The dataset is untrusted input (:func:`check_tree`, before any export reads it): a
symbolic link that leads outside the dataset (a file or a folder) is never followed,
and a FIFO, socket or device is never opened; both stop the export with an
:class:`~bidspack.errors.UnsafeInputError` naming the entry. Links inside the dataset
(git-annex files) are followed. JSON and TSV files are copied only when they are UTF-8
(JSON: also valid JSON), as BIDS requires."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bidspack.errors import IntegrityError, UnsafeInputError, ValidationFailed
from bidspack.provenance.digests import CHUNK
from bidspack.provenance.manifest import Row, listed
from bidspack.records import Record
from bidspack.safety import entry_kind, is_within
from bidspack.txn.transaction import STATE_DIR

#: Folder and file names never exported (bidspack's state, version control).
EXCLUDED_NAMES = frozenset(
    {STATE_DIR, ".git", ".datalad", ".gitattributes", ".gitignore", ".gitmodules"}
)
VERIFY_HINT = "run 'bidspack verify DATASET'; the export needs a dataset equal to its manifest"
#: Text files checked while copied (UTF-8; ``.json`` also parsed), up to this size.
TEXT_SUFFIXES = (".json", ".tsv")
MAX_TEXT_CHECK_BYTES = 64 << 20


@dataclass(frozen=True)
class Copied:
    """Size and sha256 of one file copied into an export."""

    size: int
    sha256: str


def dataset_files(dataset: Path) -> list[str]:
    """Dataset-relative POSIX paths of every file to export, sorted (see
    :data:`EXCLUDED_NAMES`; symbolic links to files count as files)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(dataset):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_NAMES)
        here = Path(dirpath)
        for name in filenames:
            if name not in EXCLUDED_NAMES:
                found.append((here / name).relative_to(dataset).as_posix())
    return sorted(found)


def check_entry(dataset: Path, rel: str) -> None:
    """The dataset entry *rel* may be read: a regular file or folder, or a symbolic
    link that resolves inside *dataset* (a broken one is left to the copy, which
    reports it). Never opens the entry.

    Raises:
        UnsafeInputError: a symbolic link leading outside *dataset*, or a FIFO, socket
            or device (directly or as the link's target), naming *rel*.
    """
    path = dataset / rel
    kind = entry_kind(path)
    if kind == "symlink":
        if not is_within(path, dataset):
            raise UnsafeInputError(
                rel,
                f"is a symbolic link to {os.readlink(path)!r}, outside the dataset; "
                "export does not follow it",
                hint="replace the link by the file, or remove it",
            )
        kind = entry_kind(path.resolve())
        if kind == "missing":
            return
    if kind not in ("file", "dir"):
        raise UnsafeInputError(
            rel, f"is a {kind}, not a regular file; export copies regular files only"
        )


def check_tree(dataset: Path) -> int:
    """Check every entry an export may read (:func:`check_entry`): the files of
    :func:`dataset_files` and symbolic links to folders (which the walk does not
    follow). Return the number of files.

    Raises:
        UnsafeInputError: see :func:`check_entry`.
    """
    count = 0
    for dirpath, dirnames, filenames in os.walk(dataset):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_NAMES)
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                check_entry(dataset, (here / name).relative_to(dataset).as_posix())
        for name in filenames:
            if name not in EXCLUDED_NAMES:
                check_entry(dataset, (here / name).relative_to(dataset).as_posix())
                count += 1
    return count


def _check_text(rel: str, data: bytes) -> None:
    """A copied ``.json``/``.tsv`` file is UTF-8 (and valid JSON).

    Raises:
        ValidationFailed: naming *rel*, the bad byte or the JSON error.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            rel,
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "BIDS text files are UTF-8",
        ) from exc
    if rel.endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(
                rel, f"is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
            ) from exc
        except RecursionError as exc:
            raise ValidationFailed(rel, "is not valid JSON (nested too deeply)") from exc


def copy_dataset(dataset: Path, dest: Path) -> dict[str, Copied]:
    """Copy the files of *dataset* (:func:`dataset_files`) to *dest* (an existing
    folder), hashing each while it is copied; modification times are kept.

    Raises:
        IntegrityError: a file's content is not present (a broken symbolic link, such as
            a git-annex file that was not fetched).
        UnsafeInputError: a symbolic link leading outside *dataset*, a FIFO, socket or
            device (:func:`check_entry`).
        ValidationFailed: a ``.json``/``.tsv`` file that is not UTF-8 or not valid JSON.
    """
    out: dict[str, Copied] = {}
    for rel in dataset_files(dataset):
        src, dst = dataset / rel, dest / rel
        check_entry(dataset, rel)
        if src.is_symlink() and not src.exists():
            raise IntegrityError(
                rel, "content not present (broken link)", hint="'datalad get' it first"
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        sha, size = hashlib.sha256(), 0
        text = rel.endswith(TEXT_SUFFIXES) and ".zarr/" not in rel
        kept: list[bytes] = []
        with open(src, "rb") as fi, open(dst, "xb") as fo:
            while chunk := fi.read(CHUNK):
                sha.update(chunk)
                fo.write(chunk)
                size += len(chunk)
                if text and size <= MAX_TEXT_CHECK_BYTES:
                    kept.append(chunk)
        if text and size <= MAX_TEXT_CHECK_BYTES:
            _check_text(rel, b"".join(kept))
        st = src.stat()
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        out[rel] = Copied(size, sha.hexdigest())
    return out


def _array_sha256(files: Mapping[str, str]) -> str:
    """sha256 of a Zarr array from its files' sha256 (``array-relative path -> sha256``),
    as :func:`bidspack.provenance.digests.array_digest` computes it."""
    sha = hashlib.sha256()
    for rel in sorted(files, key=lambda r: PurePosixPath(r).parts):
        sha.update(f"{rel}\0{files[rel]}\n".encode())
    return sha.hexdigest()


def crosscheck(rows: Mapping[str, Row], sha256: Mapping[str, str]) -> int:
    """Compare exported files (``dataset-relative path -> sha256``) with the manifest
    *rows*: every row must be exported with its sha256 (a Zarr array row through its
    array digest) and every exported file that belongs in the manifest must be listed.
    Return the number of rows checked.

    Raises:
        IntegrityError: naming the first file that is modified, missing or unlisted.
    """
    arrays: dict[str, dict[str, str]] = {}
    unlisted: list[str] = []
    for rel, digest in sha256.items():
        if rel in rows:
            if digest != rows[rel]["sha256"]:
                raise IntegrityError(rel, "sha256 differs from the manifest", hint=VERIFY_HINT)
            continue
        owner = next(
            (p.as_posix() for p in PurePosixPath(rel).parents if p.as_posix() in rows), None
        )
        if owner is not None:
            arrays.setdefault(owner, {})[rel[len(owner) + 1 :]] = digest
        elif listed(rel):
            unlisted.append(rel)
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        raise IntegrityError(
            unlisted[0], f"present but not in the manifest{more}", hint=VERIFY_HINT
        )
    for rel, row in sorted(rows.items()):
        if rel in sha256:
            continue
        if rel not in arrays:
            raise IntegrityError(rel, "listed in the manifest but not exported", hint=VERIFY_HINT)
        if _array_sha256(arrays[rel]) != row["sha256"]:
            raise IntegrityError(rel, "array digest differs from the manifest", hint=VERIFY_HINT)
    return len(rows)


def copy_record(copied: Mapping[str, Copied], checked: int) -> Record:
    """The record of the copy stage: files and bytes copied, manifest rows checked."""
    size = sum(c.size for c in copied.values())
    return Record(
        "copy",
        ".",
        "ok",
        f"{len(copied)} files copied ({size} bytes); {checked} manifest rows equal to their sha256",
        {"files": len(copied), "bytes": size, "checked": checked},
    )
