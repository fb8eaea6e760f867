"""``bidspack init --datalad`` and ``bidspack release DATASET VERSION``.

A release is refused on a bad version string (checked with the regular expression
below and with ``git check-ref-format refs/tags/<version>``, before anything is
committed), on a dirty tree, on validation errors, on verify mismatches and on an
existing tag. Otherwise it adds an entry to ``CHANGES`` (BIDS "CHANGES" file,
CPAN Changes format: ``<version> <YYYY-MM-DD>`` then ``  - <change>`` lines), commits
it as a transactional step (manifest and provenance updated), saves, and tags.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bidspack.errors import OutputError, ToolError, ValidationFailed
from bidspack.provenance import datalad as dl
from bidspack.provenance.record import StepProvenance
from bidspack.provenance.record import stage as stage_provenance
from bidspack.records import Record
from bidspack.safety import check_text_field
from bidspack.txn import Transaction, dataset_lock

_VERSION = re.compile(r"v?\d+\.\d+\.\d+(?:[.-][0-9A-Za-z.-]+)?")
#: Longest version string accepted (a tag name).
MAX_VERSION_LENGTH = 128


def check_version(dataset: Path, version: str) -> str:
    """Check that *version* is a release version and a tag name git accepts.

    The whole string must match ``v?MAJOR.MINOR.PATCH`` with an optional ``.``/``-``
    suffix of letters, digits, ``.`` and ``-`` (no whitespace, no trailing newline), be
    at most :data:`MAX_VERSION_LENGTH` characters, and pass the real
    ``git check-ref-format refs/tags/<version>`` (which refuses ``..``, ``.lock``,
    a trailing ``.`` ...).

    Raises:
        OutputError: the version is refused (its text shown escaped, ``'1.0.0\\n'``).
        ToolError: git is not installed.
    """
    shown = repr(version)
    if len(version) > MAX_VERSION_LENGTH:
        raise OutputError(dataset, f"version is longer than {MAX_VERSION_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in version):
        raise OutputError(
            dataset, f"version {shown} contains whitespace or a control character (newline ...)"
        )
    if not _VERSION.fullmatch(version):
        raise OutputError(dataset, f"{shown} is not a version (e.g. 1.0.0 or v1.0.0)")
    git = shutil.which("git")
    if git is None:
        raise ToolError(dataset, "git is not installed", hint="install git")
    proc = subprocess.run(
        [git, "check-ref-format", f"refs/tags/{version}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise OutputError(
            dataset,
            f"version {shown} is not a tag name git accepts "
            f"(git check-ref-format refs/tags/{version} failed)",
            hint="no '..', no trailing '.' or '.lock'",
        )
    return version


def init_datalad(dataset: Path) -> Iterator[Record]:
    """Make an existing bidspack dataset a DataLad dataset (one save of everything)."""
    dataset = Path(dataset)
    if not (dataset / "dataset_description.json").is_file():
        raise OutputError(dataset, "not a BIDS dataset (no dataset_description.json)")
    if dl.is_datalad(dataset):
        yield Record("init", ".", "notneeded", "already a DataLad dataset")
        return
    with dataset_lock(dataset):
        dl.create(dataset)
    yield Record("init", ".", "ok", "DataLad dataset created and saved (SHA256E)")


def release(dataset: Path, version: str, *, note: str | None = None) -> Iterator[Record]:
    """Cut release *version* of a DataLad bidspack dataset (see module docstring).

    *version* (:func:`check_version`) and *note* (no control characters) are checked
    before anything is read or written.

    Raises:
        OutputError: not a DataLad dataset, dirty tree, bad or existing version tag.
        UnsafeInputError: *note* contains a newline, tab or other control character.
        ToolError: git or datalad is missing or failed.
        ValidationFailed: validation errors or verify mismatches (each listed first as
            an error record).
    """
    dataset = Path(dataset)
    check_version(dataset, version)
    if note is not None:
        check_text_field(note, what="--note", origin=dataset)
    if not dl.is_datalad(dataset):
        raise OutputError(
            dataset,
            "not a DataLad dataset",
            hint="bidspack init DATASET --datalad, or package with --datalad",
        )
    if version in dl.tags(dataset):
        raise OutputError(dataset, f"tag {version} exists already")
    dirty = dl.dirty(dataset)
    if dirty:
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise OutputError(
            dataset,
            f"{len(dirty)} uncommitted change(s): {shown}",
            hint="save or revert them first",
        )
    from bidspack.ops.validate import validate_dataset
    from bidspack.ops.verify import verify

    bad = [r for r in validate_dataset(dataset) if r.status == "error"]
    bad += [r for r in verify(dataset) if r.status == "error" and r.path != "."]
    if bad:
        yield from bad
        raise ValidationFailed(dataset, f"{len(bad)} validation/verify error(s); no release")
    entry = f"{version} {time.strftime('%Y-%m-%d', time.gmtime())}\n  - {note or 'Release.'}\n"
    with dataset_lock(dataset):
        txn = Transaction(dataset)
        try:
            old = (
                (dataset / "CHANGES").read_text(encoding="utf-8")
                if (dataset / "CHANGES").is_file()
                else ""
            )
            txn.stage_path("CHANGES").write_text(
                entry + ("\n" + old if old else ""), encoding="utf-8"
            )
            stage_provenance(
                txn, StepProvenance("release", version, parameters={"version": version})
            )
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        dl.save(dataset, f"Release {version}")
        dl.tag(dataset, version, f"bidspack release {version}")
    yield Record("release", "CHANGES", "ok", f"added {version}")
    yield Record("release", ".", "ok", f"saved and tagged {version}")
