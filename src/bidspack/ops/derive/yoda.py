"""``derive ... --datalad``: a derived dataset in the YODA layout, for every derive verb.

With ``--datalad`` the output folder of a derive verb becomes a DataLad dataset
(:func:`bidspack.provenance.datalad.create`: text in git, arrays and Parquet tables
annexed under SHA256E keys, ``.bidspack/`` git-ignored) and the source dataset is one
of its inputs, installed as a DataLad subdataset:

- The source must be a DataLad (or plain git) dataset with a commit and a clean work
  tree (:func:`check_source`); otherwise the run stops with a
  :class:`~bidspack.errors.SourceError` before anything is written.
- It is cloned (``datalad clone -d OUT SOURCE OUT/sourcedata/<name>``) to
  ``sourcedata/<name>`` (:data:`SOURCEDATA`; ``<name>`` is the source folder's name,
  ``raw`` if that name is not a plain file name), so OUT's ``.gitmodules`` and gitlink
  pin the commit used. ``sourcedata/`` is the BIDS place for inputs: bids-validator
  and bidspack's own checks do not descend into it, so no ``.bidsignore`` entry is
  needed. The images the run reads are fetched first (``datalad get``).
- The verb then reads its images from that subdataset: the recorded
  ``SourceDatasets`` URL and the command in ``GeneratedBy`` name it by its path
  relative to the derived dataset (:func:`source_url`), ``Version`` is the pinned
  commit (or its tag).
- Every committed step is saved with one ``datalad save`` whose message is a DataLad
  run record (:func:`bidspack.provenance.datalad.run_message`): the command is the
  whole derive command with relative paths and without ``--datalad``
  (``bidspack derive patches sourcedata/ds . --size 64 ...``), the inputs are the
  source images in the subdataset, the outputs the step's files. ``datalad rerun
  COMMIT`` (in a clone of OUT) gets the inputs (installing the subdataset at the
  pinned commit), runs that command and saves the result. A clone has no step records
  (``.bidspack/`` is not in git), so the rerun recomputes every step; the outputs are
  byte-identical (no timestamps, seeded decisions), only new provenance records are
  committed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bidspack.errors import OutputError, SourceError
from bidspack.provenance import datalad as dl
from bidspack.records import Record
from bidspack.txn import dataset_lock
from bidspack.txn.transaction import STATE_DIR

#: Where the inputs of a derived dataset are installed (YODA: ``sourcedata/`` or
#: ``inputs/``; BIDS validators skip ``sourcedata/``).
SOURCEDATA = "sourcedata"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _git(path: Path, *args: str) -> str | None:
    """stdout of ``git -C path args`` (stripped), ``None`` when git fails."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def input_name(source: Path) -> str:
    """The subdataset's folder name under ``sourcedata/``: the source folder's name if
    it is a plain name (letters, digits, ``.``, ``_``, ``-``), else ``raw``."""
    name = Path(source).absolute().name
    return name if _NAME.match(name) and name not in (".", "..") else "raw"


def is_input(source: Path, out: Path | None = None) -> bool:
    """Whether *source* is ``<dataset>/sourcedata/<name>`` registered as a subdataset in
    that dataset's ``.gitmodules`` (and, if *out* is given, ``<dataset>`` is *out*)."""
    src = Path(source).absolute()
    root = src.parent.parent
    if src.parent.name != SOURCEDATA or (out is not None and Path(out).absolute() != root):
        return False
    modules = root / ".gitmodules"
    if not modules.is_file():
        return False
    got = _git(root, "config", "-f", ".gitmodules", "--get-regexp", r"^submodule\..*\.path$")
    return bool(got) and f"{SOURCEDATA}/{src.name}" in {
        line.split(" ", 1)[-1] for line in (got or "").splitlines()
    }


def source_url(source: Path, out: Path | None = None) -> str:
    """How a derived dataset names its source: the path relative to the derived dataset
    (``sourcedata/<name>``) when the source is its installed input (:func:`is_input`),
    else the source's ``file://`` URL. The relative form makes the recorded texts
    independent of where the derived dataset (or a clone of it) lies."""
    if is_input(source, out):
        return f"{SOURCEDATA}/{Path(source).absolute().name}"
    return Path(source).absolute().as_uri()


def check_source(source: Path) -> str:
    """The commit of *source*, a DataLad or git dataset with a clean work tree.

    Raises:
        SourceError: *source* is not a git/DataLad dataset, has no commit, or has
            uncommitted changes (nothing has been written).
    """
    source = Path(source)
    top = _git(source, "rev-parse", "--show-toplevel") if (source / ".git").exists() else None
    if top is None or Path(top).resolve() != source.resolve():
        raise SourceError(
            source,
            "is not a DataLad (or git) dataset; --datalad installs the source as a "
            "subdataset pinned at a commit",
            hint="package it with 'bidspack package ... --datalad' or run "
            "'bidspack init SOURCE --datalad', or derive without --datalad",
        )
    commit = _git(source, "rev-parse", "--verify", "-q", "HEAD")
    if not commit:
        raise SourceError(source, "has no commit to pin", hint="save the dataset first")
    status = _git(source, "status", "--porcelain", "--untracked-files=normal")
    if status:
        first = status.splitlines()[0][3:]
        raise SourceError(
            source,
            f"has uncommitted changes ({len(status.splitlines())}, e.g. {first}); "
            "--datalad pins a commit, so the source must be clean",
            hint="'datalad save' (or git commit) the source first",
        )
    return commit


@dataclass
class YodaSource:
    """The source as installed in the derived dataset.

    Attributes:
        path: ``OUT/sourcedata/<name>`` (the verb reads its images from here).
        rel: ``sourcedata/<name>``.
        commit: the pinned commit.
        records: what was done (``datalad`` records).
    """

    path: Path
    rel: str
    commit: str
    records: list[Record] = field(default_factory=list)


def adopt_source(
    source: Path, out: Path, images: Sequence[str], *, name: str | None = None
) -> YodaSource:
    """Make *out* a DataLad dataset with *source* installed at ``sourcedata/<name>``
    (pinned at the source's commit) and the *images* (source-relative paths: files or
    folders) fetched.

    *name*: the folder under ``sourcedata/`` (default :func:`input_name`); a verb
    with several inputs (``derive select``: a classification and its patch dataset)
    installs each under a name of its own by calling this once per input.

    The checks (:func:`check_source`, *out* new, empty or a bidspack dataset) come
    before anything is written. On a re-run the installed subdataset is reused; if the
    source has moved to another commit the subdataset is updated to it (the new pin is
    saved). The dataset lock of *out* is held while it is changed.

    Raises:
        SourceError: see :func:`check_source`.
        OutputError: *out* is not new, empty or a bidspack dataset; ``sourcedata/<name>``
            exists and is not the installed subdataset; *name* is not a plain name.
        ToolError: datalad or git failed.
    """
    from bidspack.ops.session import check_output

    source, out = Path(source).absolute(), Path(out).absolute()
    if name is not None and (not _NAME.match(name) or name in (".", "..")):
        raise OutputError(None, f"{name!r} is not a plain folder name for {SOURCEDATA}/")
    commit = check_source(source)
    check_output(out)
    name = name or input_name(source)
    rel = f"{SOURCEDATA}/{name}"
    sub = out / rel
    records: list[Record] = []
    out.mkdir(parents=True, exist_ok=True)
    with dataset_lock(out):
        if not dl.is_datalad(out):
            dl.create(out)
            records.append(Record("datalad", ".", "ok", "created DataLad dataset (SHA256E)"))
        if is_input(sub, out) and (sub / ".git").exists():
            if _git(sub, "rev-parse", "HEAD") != commit:
                dl.run(["datalad", "update", "-s", "origin", "--how", "reset"], sub)
                if _git(sub, "rev-parse", "HEAD") != commit:
                    raise OutputError(
                        sub,
                        f"could not be updated to the source's commit {commit}",
                        hint="check that its 'origin' remote is the source dataset",
                    )
                dl.save(out, f"bidspack: update {rel} to {commit[:12]}")
                records.append(Record("datalad", rel, "ok", f"updated to {commit}"))
        elif sub.exists() or sub.is_symlink():
            raise OutputError(sub, "exists and is not the installed source subdataset")
        else:
            dl.run(["datalad", "clone", "-d", ".", str(source), rel], out)
            records.append(Record("datalad", rel, "ok", f"installed the source at {commit}"))
        if images:
            dl.run(["datalad", "get", "-d", ".", *images], sub)
            records.append(Record("datalad", rel, "ok", f"got {len(images)} image(s)"))
        # marks OUT as a bidspack dataset in progress (check_output accepts it): the
        # verb's session may now take the folder that holds the subdataset
        (out / STATE_DIR / "steps").mkdir(parents=True, exist_ok=True)
    return YodaSource(sub, rel, commit, records)


class _Committing(Protocol):
    """What :func:`record_steps` needs of a :class:`~.dataset.DerivedDataset`."""

    path: Path
    on_commit: Callable[[Any], None] | None


def run_command(command: str) -> str:
    """The command a run record replays: *command* as recorded in ``GeneratedBy``
    (``bidspack derive <verb> sourcedata/<name> . ...``, relative paths), checked."""
    import shlex

    args = shlex.split(command)
    if len(args) < 5 or args[:2] != ["bidspack", "derive"] or args[4] != ".":
        raise OutputError(None, f"not a derive command with the output '.': {command}")
    if "://" in args[3]:
        raise OutputError(
            None, f"the source of the recorded command is not the installed input: {args[3]}"
        )
    return command


def record_steps(
    derived: _Committing, *, summary: str, command: str, inputs: Sequence[str]
) -> None:
    """Save every step *derived* commits from now on with one ``datalad save`` whose
    message is a run record: *command* (:func:`run_command`), *inputs* (paths relative
    to the derived dataset), the step's outputs."""
    cmd = run_command(command)

    def save(step: Any) -> None:
        out = Path(derived.path)
        dl.save(
            out,
            dl.run_message(
                f"{summary}: {step.name}", cmd, out, list(step.outputs), inputs=list(inputs)
            ),
        )

    derived.on_commit = save


__all__ = [
    "SOURCEDATA",
    "YodaSource",
    "adopt_source",
    "check_source",
    "input_name",
    "is_input",
    "record_steps",
    "run_command",
    "source_url",
]
