"""``bidspack rename-subject``: rename subject labels everywhere, in one transaction.

What a label touches (BIDS 1.11.1, "Common principles" and "Modality agnostic files"):

- ``sub-<label>`` directories (raw, ``derivatives/*``, ``sourcedata``) and every file
  or directory whose name carries the ``sub-<label>`` entity (``.ome.zarr`` too);
- TSV cells: ``participants.tsv`` / ``samples.tsv`` ``participant_id``, ``*_scans.tsv``
  file names, any cell naming the entity;
- JSON sidecar values that hold paths: ``IntendedFor``, ``Sources``, ``RawSources``,
  ``AssociatedEmptyRoom`` (strings and lists of strings);
- the OME-XML ``Image`` ``Name`` of OME-TIFFs when it carries the label (the
  ImageDescription of the first IFD, rewritten on a staged copy);
- the group metadata of OME-Zarr images (NGFF multiscale ``name``, omero channel
  ``label``; ``zarr.json`` or ``.zattrs`` of the image and of its NGFF labels);
- bidspack's own records: ``code/bidspack/plan.json`` and ``.bidspack/steps/*``.

Everything is planned first (``--dry-run`` lists every change), then applied as one
transaction (:mod:`bidspack.txn`): renames, then replaced files.

Files are untrusted input: planning reads every file that will be rewritten as it
will be rewritten, so a broken one stops the rename before anything changes, with a
:class:`~bidspack.errors.PlanError` naming the file: ``dataset_description.json`` or a
sidecar that is not valid JSON (or not an object), a TSV or JSON file that is not UTF-8
(a Latin-1 ``participants.tsv``), a TSV row whose cell count differs from the header's
(a value containing a tab). A file that is a symbolic link leading outside the dataset
is never read (:class:`~bidspack.errors.UnsafeInputError`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import tifffile

from bidspack.bids.schema import is_valid_label, sanitize_label
from bidspack.bids.tables import json_text
from bidspack.errors import PlanError, UnsafeInputError
from bidspack.io.ometiff import pad_description
from bidspack.provenance import datalad as dl
from bidspack.provenance.manifest import read_manifest
from bidspack.provenance.record import PROVENANCE_DIR, StepProvenance
from bidspack.provenance.record import stage as stage_provenance
from bidspack.provenance.renames import RENAMES, with_renames
from bidspack.records import Record
from bidspack.safety import is_within
from bidspack.txn import Transaction, dataset_lock
from bidspack.txn.transaction import STATE_DIR

PATH_KEYS = ("IntendedFor", "Sources", "RawSources", "AssociatedEmptyRoom")
_SUB_DIR = re.compile(r"^sub-(.+)$")


def _entity_re(label: str) -> re.Pattern[str]:
    """``sub-<label>`` as a whole entity (followed by ``_``, ``/``, ``.`` or the end)."""
    return re.compile(rf"(?<![0-9A-Za-z+])sub-{re.escape(label)}(?=[_/.\s]|$)")


@dataclass
class RenamePlan:
    """All changes of a rename: path renames and rewritten files (dataset-relative)."""

    mapping: dict[str, str]
    renames: list[tuple[str, str]] = field(default_factory=list)
    #: new path -> (current path, what is rewritten)
    rewrites: dict[str, tuple[str, str]] = field(default_factory=dict)

    def records(self) -> Iterator[Record]:
        """One ``plan`` record per change."""
        for old, new in self.renames:
            yield Record("rename", old, "notneeded", f"-> {new}", {"to": new})
        for path, (_, kind) in sorted(self.rewrites.items()):
            yield Record("rewrite", path, "notneeded", f"update labels in {kind}", {"kind": kind})


def subjects(dataset: Path) -> list[str]:
    """Subject labels of the raw dataset (from ``sub-*`` folders)."""
    return sorted(
        m.group(1) for p in Path(dataset).iterdir() if p.is_dir() and (m := _SUB_DIR.match(p.name))
    )


def read_map(path: Path) -> dict[str, str]:
    """Read a two-column TSV (``old``, ``new``; ``sub-`` prefixes allowed, header optional).

    Raises:
        PlanError: unreadable file or a line without two columns.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PlanError(path, f"cannot read the rename map ({exc.strerror})") from exc
    out: dict[str, str] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) != 2:
            raise PlanError(f"{path}:{i}", "expected two tab-separated columns: old, new")
        if i == 1 and cells[0].strip().lower() in ("old", "old_label", "from"):
            continue
        out[_strip(cells[0])] = _strip(cells[1])
    return out


def _strip(label: str) -> str:
    label = label.strip()
    return label[4:] if label.startswith("sub-") else label


def read_text(path: Path) -> str:
    """The text of *path*, which must be UTF-8.

    Raises:
        PlanError: not UTF-8 (the first bad byte and its offset named) or unreadable.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PlanError(path, f"cannot be read ({exc.strerror})") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(
            path,
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            hint="BIDS text files are UTF-8; convert it, e.g. iconv -f latin1 -t utf-8",
        ) from exc


def read_json(path: Path, *, text: str | None = None) -> object:
    """The JSON value of *path* (UTF-8, see :func:`read_text`).

    Raises:
        PlanError: not UTF-8 or not valid JSON (line and column named).
    """
    text = read_text(path) if text is None else text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(
            path, f"is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from exc
    except RecursionError as exc:
        raise PlanError(path, "is not valid JSON (nested too deeply)") from exc


def check_tsv(path: Path, text: str) -> None:
    """Every row of the TSV *text* has as many cells as its header.

    Raises:
        PlanError: naming ``<path>:<line>`` and both counts (a value containing a tab
            adds a cell).
    """
    lines = text.splitlines()
    if not lines:
        return
    width = len(lines[0].split("\t"))
    for i, line in enumerate(lines[1:], 2):
        if line and len(line.split("\t")) != width:
            raise PlanError(
                f"{path}:{i}",
                f"has {len(line.split(chr(9)))} tab-separated cells, the header has {width} "
                "(a value containing a tab?)",
            )


def _check_link(dataset: Path, path: Path, rel: str) -> None:
    """Refuse to read *path* when it is a symbolic link leading outside *dataset*."""
    if path.is_symlink() and not is_within(path, dataset):
        raise UnsafeInputError(
            path,
            f"{rel} is a symbolic link to {os.readlink(path)!r}, outside the dataset; "
            "it is not read",
        )


def build_rename_plan(dataset: Path, mapping: dict[str, str]) -> RenamePlan:
    """Plan renaming subject labels ``old -> new`` in *dataset*.

    Raises:
        PlanError: unknown old label, invalid new label, a new label that exists
            already (and is not renamed away) or is given twice, nothing to rename; a
            file to rewrite (or ``dataset_description.json``) that is not UTF-8, not
            valid JSON or a TSV with rows of the wrong width.
        UnsafeInputError: a file to read is a symbolic link leading outside *dataset*.
    """
    dataset = Path(dataset)
    description = dataset / "dataset_description.json"
    if not description.is_file():
        raise PlanError(dataset, "not a BIDS dataset (no dataset_description.json)")
    _check_link(dataset, description, "dataset_description.json")
    if not isinstance(read_json(description), dict):
        raise PlanError(description, "is not a JSON object")
    mapping = {_strip(k): _strip(v) for k, v in mapping.items() if _strip(k) != _strip(v)}
    if not mapping:
        raise PlanError(dataset, "nothing to rename")
    existing = set(subjects(dataset))
    targets: dict[str, str] = {}
    for old, new in mapping.items():
        if old not in existing:
            raise PlanError(dataset, f"there is no subject sub-{old}")
        if not is_valid_label(new):
            raise PlanError(dataset, f"sub-{new} is not a valid BIDS label (letters, digits, +)")
        if new in targets:
            raise PlanError(
                dataset, f"sub-{targets[new]} and sub-{old} would both become sub-{new}"
            )
        if new in existing and new not in mapping:
            raise PlanError(dataset, f"sub-{new} exists already; renaming sub-{old} would collide")
        targets[new] = old
    if set(mapping) & set(mapping.values()):
        raise PlanError(dataset, "chained or swapped renames are not supported in one run")
    plan = RenamePlan(mapping)
    patterns = {old: _entity_re(old) for old in mapping}

    def renamed(text: str) -> str:
        for old, new in mapping.items():
            text = patterns[old].sub(f"sub-{new}", text)
        return text

    # Walk top-down; record a rename for each entry whose name carries an old label,
    # the path of its parent already renamed (renames apply in order).
    for dirpath, dirnames, filenames in os.walk(dataset):
        rel_dir = Path(dirpath).relative_to(dataset)
        if rel_dir.parts and rel_dir.parts[0] == STATE_DIR:
            dirnames[:] = []
            continue
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            rel = (rel_dir / name).as_posix()
            new_name = renamed(name)
            if new_name != name:
                plan.renames.append(
                    (
                        renamed(rel_dir.as_posix()) + "/" + name if rel_dir.parts else name,
                        renamed(rel),
                    )
                )
            full = Path(dirpath) / name
            if full.is_file() and not _is_history(rel):
                kind = _content_kind(dataset, rel, full, patterns, renamed)
                if kind:
                    plan.rewrites[renamed(rel)] = (rel, kind)
            if name.endswith(".ome.zarr") and full.is_dir():
                for meta in _zarr_group_metadata(full):
                    inner = meta.relative_to(full).as_posix()
                    _check_link(dataset, meta, f"{rel}/{inner}")
                    text = meta.read_text(encoding="utf-8", errors="replace")
                    if any(p.search(text) for p in patterns.values()):
                        read_json(meta)
                        plan.rewrites[f"{renamed(rel)}/{inner}"] = (
                            f"{rel}/{inner}",
                            "OME-Zarr metadata",
                        )
        dirnames[:] = [d for d in dirnames if not d.endswith(".ome.zarr")]
    state = dataset / STATE_DIR / "steps"
    if state.is_dir():
        for p in sorted(state.iterdir()):
            _check_link(dataset, p, p.relative_to(dataset).as_posix())
            text = read_text(p)
            if any(pat.search(text) for pat in patterns.values()):
                rel = p.relative_to(dataset).as_posix()
                new_rel = f"{STATE_DIR}/steps/{renamed(p.name)}"
                if new_rel != rel:
                    plan.renames.append((rel, new_rel))
                plan.rewrites[new_rel] = (rel, "bidspack step record")
    return plan


def _zarr_group_metadata(root: Path) -> list[Path]:
    """The group metadata files of an OME-Zarr image that can name it: the image's and
    its NGFF label images' ``zarr.json`` / ``.zattrs`` (multiscale ``name``, omero
    channel ``label``); chunk folders are not walked."""
    groups = [root, *sorted(p for p in (root / "labels").glob("*") if p.is_dir())]
    return [g / f for g in groups for f in ("zarr.json", ".zattrs") if (g / f).is_file()]


def _content_kind(
    dataset: Path,
    rel: str,
    path: Path,
    patterns: dict[str, re.Pattern[str]],
    renamed: Callable[[str], str],
) -> str | None:
    """What in this file carries a label, or ``None``. A file that will be rewritten is
    read as the rewrite reads it, so a broken one stops the plan (see module doc)."""
    if not rel.endswith((".ome.tif", ".ome.btf", ".tsv", ".json")):
        return None
    _check_link(dataset, path, rel)
    if rel.endswith((".ome.tif", ".ome.btf")):
        try:
            xml = tifffile.tiffcomment(path)
        except Exception:
            return None
        text = xml.decode("utf-8", "replace") if isinstance(xml, bytes) else str(xml or "")
        if not any(p.search(text) for p in patterns.values()):
            return None
        if isinstance(xml, bytes):
            try:
                xml.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PlanError(path, f"its OME-XML is not UTF-8 (offset {exc.start})") from exc
        return "OME-XML Image name"
    if path.stat().st_size > 50 << 20:
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    if not any(p.search(text) for p in patterns.values()):
        return None
    text = read_text(path)  # it will be rewritten: it must be UTF-8
    if rel.endswith(".tsv"):
        check_tsv(path, text)
        return "TSV cells"
    data = read_json(path, text=text)
    if rel.startswith("code/bidspack/"):
        return "bidspack plan"
    return "JSON path values" if _json_rewrite(data, renamed) != data else None


def _is_history(rel: str) -> bool:
    """Files that record what happened and are never rewritten by a rename: the
    provenance records (each names the labels its step ran with; the rename's own
    record says old -> new) and the dataset's record of renames."""
    return rel.startswith(f"{PROVENANCE_DIR}/") or rel == RENAMES


def _json_rewrite(data: object, fn: Callable[[str], str]) -> object:
    """Apply *fn* to the path values (:data:`PATH_KEYS`) of a sidecar, recursively."""
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if k in PATH_KEYS:
                out[k] = (
                    [fn(x) if isinstance(x, str) else x for x in v]
                    if isinstance(v, list)
                    else (fn(v) if isinstance(v, str) else v)
                )
            else:
                out[k] = _json_rewrite(v, fn)
        return out
    if isinstance(data, list):
        return [_json_rewrite(x, fn) for x in data]
    return data


def apply_rename(dataset: Path, plan: RenamePlan) -> Iterator[Record]:
    """Apply a rename plan as one transaction (lock held), yielding records."""
    dataset = Path(dataset)
    patterns = {old: _entity_re(old) for old in plan.mapping}

    def renamed(text: str) -> str:
        for old, new in plan.mapping.items():
            text = patterns[old].sub(f"sub-{new}", text)
        return text

    with dataset_lock(dataset):
        from bidspack.ops.session import recover_records

        yield from recover_records(dataset)
        txn = Transaction(dataset)
        old_rows = read_manifest(dataset)
        prov = StepProvenance(
            "rename-subject",
            "rename",
            relabel=renamed,
            parameters={"mapping": {f"sub-{o}": f"sub-{n}" for o, n in plan.mapping.items()}},
        )
        try:
            for old, new in plan.renames:
                txn.rename(old, new)
            for new_rel, (cur_rel, kind) in sorted(plan.rewrites.items()):
                src = dataset / cur_rel
                staged = txn.stage_path(new_rel)
                if kind == "OME-XML Image name":
                    shutil.copyfile(src, staged)
                    _rename_in_omexml(staged, renamed)
                elif kind == "JSON path values":
                    data = read_json(src)
                    staged.write_text(json_text(_json_rewrite(data, renamed)), encoding="utf-8")
                else:
                    staged.write_text(renamed(read_text(src)), encoding="utf-8")
                old_pixels = old_rows.get(cur_rel, {}).get("pixel_hash")
                if old_pixels:  # OME-XML rewritten, pixels unchanged
                    prov.pixel_hashes[new_rel] = old_pixels
            txn.stage_path(RENAMES).write_text(
                with_renames(dataset, dict(plan.mapping)), encoding="utf-8"
            )
            stage_provenance(txn, prov)
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        if dl.is_datalad(dataset):
            names = ", ".join(f"sub-{o} -> sub-{n}" for o, n in plan.mapping.items())
            dl.save(dataset, f"bidspack rename-subject: {names}")
    for old, new in plan.renames:
        yield Record("rename", old, "ok", f"-> {new}", {"to": new})
    for new_rel, (_, kind) in sorted(plan.rewrites.items()):
        yield Record("rewrite", new_rel, "ok", f"updated labels in {kind}", {"kind": kind})


def _rename_in_omexml(path: Path, renamed: Callable[[str], str]) -> None:
    """Rewrite the OME-XML (ImageDescription of IFD 0) of *path* with *renamed*,
    in place when it fits the space written (bidspack pads it), else appended."""
    with tifffile.TiffFile(path, mode="r+") as tif:
        tag = tif.pages[0].tags[270]  # type: ignore[union-attr]
        space = int(tag.count) - 1  # the count includes the terminating NUL
        value = tag.value
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        new = renamed(text.rstrip())
        try:
            new = pad_description(new, space)
        except ValueError:
            new = pad_description(new)  # longer than the space: tifffile appends it
        tag.overwrite(new.encode("utf-8"))


def sanitize_mapping(dataset: Path) -> dict[str, str]:
    """``old -> sanitized`` for every subject label that is not a valid BIDS label."""
    return {s: sanitize_label(s) for s in subjects(dataset) if not is_valid_label(s)}


def rename_subjects(
    dataset: Path, mapping: dict[str, str], *, dry_run: bool = False, validate: bool = True
) -> Iterator[Record]:
    """Plan and apply (unless *dry_run*) a subject rename, then validate.

    Raises:
        PlanError: see :func:`build_rename_plan`.
    """
    plan = build_rename_plan(dataset, mapping)
    if dry_run:
        yield from plan.records()
        return
    yield from apply_rename(dataset, plan)
    if validate:
        from bidspack.ops.validate import validate_dataset

        yield from validate_dataset(dataset)
