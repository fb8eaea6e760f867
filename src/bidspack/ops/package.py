"""``bidspack package``: a submission folder + packaging spec -> BIDS microscopy dataset.

:func:`build_plan` scans the submission (read-only) and returns a :class:`~bidspack.plan.Plan`
in which every input file is converted, copied or excluded with a reason;
:func:`apply_plan` stages every output in a transaction, validates the staged dataset,
and commits it atomically, yielding records. Sources: BIDS 1.11.1 "Microscopy"; the
OME-TIFF layout of :mod:`bidspack.io.ometiff`.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from bidspack.bids import metadata
from bidspack.bids.metadata import SIDECAR_FROM_FILE, omexml_metadata
from bidspack.bids.paths import micr_path
from bidspack.bids.schema import is_valid_label, sanitize_label
from bidspack.bids.tables import json_text, write_text
from bidspack.errors import (
    BidspackError,
    OutputError,
    PlanError,
    ResourceLimitError,
    SourceError,
    SpecError,
    UnsafeInputError,
)
from bidspack.io.ometiff import ome_tiff_extension, write_ome_tiff
from bidspack.io.omezarr import write_ome_zarr
from bidspack.io.sources import (
    ChannelTimeStack,
    ImageSource,
    is_tiff,
    left_out_of,
    open_files,
    open_source,
    slice_index,
)
from bidspack.io.tree import JUNK_REASON, Scan, is_junk, refusal, scan
from bidspack.io.voxels import VoxelSize, VoxelSizeError, resolve_voxel_size, zarr_zyx
from bidspack.ops.session import (
    check_output,
    is_bidspack_dataset,
    locked_output,
)
from bidspack.plan import Action, Plan
from bidspack.provenance import datalad as dl
from bidspack.provenance.record import StepProvenance
from bidspack.provenance.record import stage as stage_provenance
from bidspack.provenance.renames import current_labels
from bidspack.records import Record
from bidspack.safety import (
    MAX_LABEL_LENGTH,
    check_relpath,
    check_text_field,
    entry_kind,
    is_within,
)
from bidspack.safety import render_template as _render
from bidspack.spec import Channel, PackagingSpec
from bidspack.txn import Transaction
from bidspack.txn.steps import fingerprint, hash_inputs, load_record, record_path, text_xxh3

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Execution:
    """Where OME-Zarr encoding runs: *workers* local threads (default: CPU count) or a
    ``dask.distributed`` *scheduler* (a ``tcp://`` address or a ``Client``); see
    :func:`bidspack.io.omezarr.write_ome_zarr`."""

    workers: int | None = None
    scheduler: object = None


@dataclass(frozen=True)
class SubjectFolder:
    """A subject folder of the submission and what the spec makes of it."""

    folder: str
    groups: dict[str, str]
    label: str
    sample: str


def _listed(found: Scan) -> list[str]:
    """Every entry of a scan, read or refused (what an exclude covers), sorted."""
    return sorted([*found.files, *(p for p, _ in found.refused)])


def check_roots(submission: Path, dataset: Path) -> None:
    """Refuse a dataset inside the submission or a submission inside the dataset
    (symlinks resolved): the submission is never written, and a re-run never packages
    the dataset into itself.

    Raises:
        OutputError: naming both folders.
    """
    if is_within(dataset, submission):
        raise OutputError(
            dataset,
            f"is inside the submission {submission}; the submission is never written",
            hint="choose an output folder outside the submission",
        )
    if is_within(submission, dataset):
        raise OutputError(
            dataset,
            f"contains the submission {submission}; a dataset must not hold its submission",
            hint="choose an output folder outside the submission",
        )


def _subjects(
    submission: Path,
    spec: PackagingSpec,
    excluded: Callable[[str], str | None],
    follow_symlinks: bool,
    renames: dict[str, str],
) -> tuple[list[SubjectFolder], list[Action]]:
    """Match top-level folders against the subject pattern; return subjects and the
    exclude (and refuse) actions for excluded (and unreadable) top-level entries.
    *renames* maps labels the dataset renamed to their current labels."""
    subjects: list[SubjectFolder] = []
    actions: list[Action] = []
    unmatched: list[str] = []
    by_label: dict[str, str] = {}
    by_folded: dict[str, tuple[str, str]] = {}
    for name in sorted(os.listdir(submission)):
        reason = excluded(name)
        if reason is not None:
            found = scan(submission, name, follow_symlinks=follow_symlinks)
            actions.append(Action("exclude", None, tuple(_listed(found) or [name]), reason=reason))
            continue
        why = refusal(submission, name, follow_symlinks=follow_symlinks)
        if why is not None:
            actions.append(Action("refuse", None, (name,), reason=why))
            continue
        _check_name(submission, name)
        m = spec.pattern.fullmatch(name) if (submission / name).is_dir() else None
        if m is None:
            unmatched.append(name)
            continue
        groups = {k: m.group(k) for k in spec.pattern.groupindex if m.group(k) is not None}
        raw_label = _render(spec.label_template, groups)
        raw_sample = _render(spec.sample_template, groups)
        label, sample = raw_label, raw_sample
        if spec.sanitize:
            label, sample = sanitize_label(raw_label), sanitize_label(raw_sample)
        for what, value in (("participant label", label), ("sample label", sample)):
            if len(value) > MAX_LABEL_LENGTH:
                raise PlanError(
                    submission / name,
                    f"{what} {value[:40]!r}... has {len(value)} characters; at most "
                    f"{MAX_LABEL_LENGTH} fit in BIDS file names",
                    hint="use fewer pattern groups in subjects.label / subjects.sample",
                )
            if not is_valid_label(value):
                raise PlanError(
                    submission / name,
                    f"{what} {value!r} is not a valid BIDS label (letters and digits only)",
                    hint="set subjects.sanitize = true or change subjects.label",
                )
        fresh, label = label, renames.get(label, label)
        if label in by_label:
            via = f" ({fresh!r} was renamed to {label!r} in this dataset)" if fresh != label else ""
            raise PlanError(
                submission,
                f"subject folders {by_label[label]} and {name} both map to participant label "
                f"{label!r}{via}",
                hint="change subjects.label in the spec, or rename the subject in the "
                "dataset (bidspack rename-subject) so that every folder has its own label",
            )
        if label.casefold() in by_folded:
            first, first_label = by_folded[label.casefold()]
            raise PlanError(
                submission,
                f"subject folders {first} and {name} map to participant labels "
                f"{first_label!r} and {label!r}, which differ only in case; they would "
                "collide on case-insensitive file systems (macOS, Windows)",
            )
        by_label[label] = name
        by_folded[label.casefold()] = (name, label)
        subjects.append(SubjectFolder(name, groups, label, sample))
    if unmatched:
        shown = ", ".join(map(repr, unmatched[:10])) + (" ..." if len(unmatched) > 10 else "")
        raise PlanError(
            submission,
            f"{len(unmatched)} top-level entr{'y' if len(unmatched) == 1 else 'ies'} match "
            f"neither subjects.pattern nor an exclude: {shown}",
            hint="add an [[exclude]] entry with a reason, or fix the pattern",
        )
    if not subjects:
        raise PlanError(submission, "no subject folder matches subjects.pattern")
    return subjects, actions


def _check_name(submission: Path, rel: str) -> None:
    """A submission path bidspack reads or writes must be representable in TSV/JSON
    files and file names (no tab, newline or other control character; valid UTF-8).

    Raises:
        PlanError: naming the file.
    """
    try:
        check_text_field(rel, what="file name")
    except UnsafeInputError as exc:
        raise PlanError(
            submission / rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
            exc.reason,
            hint="rename the file in a copy of the submission, or exclude it",
        ) from exc


def open_planned(
    submission: Path, reader: str, sources: Sequence[str], select: dict[str, Any]
) -> ImageSource:
    """The one way packaging opens an image, at planning and when applying the plan:

    - ``reader = "file"``: the spec names one file (a TIFF stack, a single 2D TIFF read
      as one plane, or a vendor file with *select*; ``select["whole"]``: all its
      channels and time points, :class:`~bidspack.io.sources.ChannelTimeStack`);
    - ``reader = "folder"``: the TIFFs of a channel folder (*sources*): one file with
      more than one plane is a stack, anything else a slice folder.

    Raises:
        PlanError: *select* given for a folder.
        SourceError: see :func:`bidspack.io.sources.open_source` / ``open_files``.
    """
    files = [submission / s for s in sources]
    if reader == "file" and select.get("whole"):
        if is_tiff(files[0]):
            raise PlanError(files[0], "whole is for vendor and container files, not TIFFs")
        return ChannelTimeStack(files[0], scene=select.get("scene"))
    if reader == "file":
        return open_source(files[0], **select)
    if select:
        raise PlanError(files[0].parent, "a folder, but the spec's 'select' is for vendor files")
    return open_files(files[0].parent, files)


def _open_action_source(submission: Path, action: Action) -> ImageSource:
    """The image a convert action reads, opened as planning opened it."""
    p = action.params
    return open_planned(submission, p["reader"], action.sources, p.get("select", {}))


def _voxel_size(
    spec: PackagingSpec, ch: Channel, src: ImageSource, rel: str, override: bool
) -> VoxelSize:
    """The voxel size of a channel image, axis by axis with origins
    (:func:`bidspack.io.voxels.resolve_voxel_size`).

    Raises:
        SpecError: an axis neither the file nor the spec gives, a spec value that
            contradicts the file's (without *override*), or a 2D image (no Z size)
            for OME-TIFF output, which the BIDS validator rejects.
    """
    try:
        voxel = resolve_voxel_size(
            src.info.found_sizes(), ch.voxel_size_um, src.shape, override=override
        )
    except VoxelSizeError as exc:
        raise SpecError(
            spec.source, f"{rel}: {exc}", location=f"channels[{ch.index}].voxel_size"
        ) from exc
    if voxel.is_2d and "ome-tiff" in spec.output["formats"]:
        raise SpecError(
            spec.source,
            f"{rel}: a 2D image with no Z size cannot be an OME-TIFF of a valid BIDS "
            "dataset: the BIDS validator's PIXEL_SIZE_INCONSISTENT check (schema "
            "rules.checks.micr) needs PixelSize[2] and PhysicalSizeZ",
            location=f"channels[{ch.index}].voxel_size",
            hint="give voxel_size.z (e.g. the section thickness), or write OME-Zarr only: "
            '[output] formats = ["ome-zarr"] (a two-value PixelSize)',
        )
    return voxel


def _split_variants(
    spec: PackagingSpec, submission: Path, reader: str, files: list[str], ch: Channel
) -> list[Channel]:
    """The spec entry *ch* as the images it makes: itself; with ``whole``, itself with
    ``select["whole"]`` (every channel and time point in one image); with ``split``,
    one entry per channel and/or time point of its vendor or container file:
    ``select`` gains the index, ``entities`` the ``stain`` (the channel name made a
    BIDS label; ``c<index>`` for every channel when a name is missing or two collide)
    and the ``run`` (time index + 1).

    Raises:
        PlanError: ``split`` on a slice folder or a TIFF stack.
        SpecError: ``whole`` with OME-Zarr output.
        SourceError: the file cannot be read.
    """
    if ch.whole:
        if "ome-zarr" in spec.output["formats"]:
            raise SpecError(
                spec.source,
                f"{files[0]}: whole (C and T axes) is written as OME-TIFF only",
                location=f"channels[{ch.index}].whole",
                hint='[output] formats = ["ome-tiff"], or split = ["channel", "time"] for OME-Zarr',
            )
        return [replace(ch, select={**ch.select, "whole": True})]
    if not ch.split:
        return [ch]
    if reader != "file" or is_tiff(Path(files[0])):
        raise PlanError(
            submission / files[0],
            "split is for vendor and container files holding several channels or time points",
        )
    src = open_planned(submission, reader, files, ch.select)
    names = [re.sub(r"[^A-Za-z0-9]", "", str(n or "")) for n in src.channel_names]
    if len(names) != src.n_channels or "" in names or len(set(names)) != len(names):
        names = [f"c{i}" for i in range(src.n_channels)]
    channels: list[int | None] = list(range(src.n_channels)) if "channel" in ch.split else [None]
    times: list[int | None] = list(range(src.n_times)) if "time" in ch.split else [None]
    out = []
    for c in channels:
        for t in times:
            select, entities = dict(ch.select), dict(ch.entities)
            if c is not None:
                select["channel"], entities["stain"] = c, names[c]
            if t is not None:
                select["time"], entities["run"] = t, str(t + 1)
            out.append(replace(ch, select=select, entities=entities))
    return out


def _file_metadata(
    spec: PackagingSpec, ch: Channel, src: ImageSource
) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """Sidecar fields the source file carries (``src.instrument``, BIDS field names) for
    this channel image, a warning per field whose spec value differs (the spec wins;
    the warning names both values), and the origin (``"file"`` or ``"spec"``) of every
    sidecar field besides ``PixelSize``, sorted by name."""
    found = dict(src.instrument)
    fields = {k: v for k, v in found.items() if k in SIDECAR_FROM_FILE and v not in (None, "")}
    given = {**spec.raw.get("sidecar", {}), **ch.sidecar}
    warnings = [
        f"sidecar {k}: the spec says {given[k]!r}, the file {v!r} (the spec's value is used)"
        for k, v in sorted(fields.items())
        if k in given and given[k] != v
    ]
    origins = {k: "file" for k in fields} | {k: "spec" for k in given}
    return fields, warnings, dict(sorted(origins.items()))


def build_plan(
    submission: Path,
    spec: PackagingSpec,
    *,
    follow_symlinks: bool = False,
    renames: dict[str, str] | None = None,
    override_voxel_size: bool = False,
) -> Plan:
    """Scan *submission* (read-only) and plan every output of the dataset.

    Symbolic links, FIFOs, sockets and devices are never read: each becomes a
    ``refuse`` action with the reason. With *follow_symlinks*, links that resolve to a
    file or folder inside the submission are followed (listed in the plan parameters).
    *renames* (old participant label -> current label, from the dataset's
    :mod:`bidspack.provenance.renames`) maps folders to the labels the dataset uses now.
    Voxel sizes are decided axis by axis (:func:`bidspack.io.voxels.resolve_voxel_size`)
    and every value's origin ("file" or "spec") is kept in the convert actions'
    ``voxel_size_origin``; *override_voxel_size* lets spec values replace
    contradicting file values (recorded in ``voxel_size_overridden``). Sidecar fields
    the source files carry (``instrument``) are filled in; spec values win, each
    difference a ``metadata_warnings`` entry naming both values.

    Raises:
        PlanError: unmatched or colliding subject folders, unaccounted files,
            missing required channel folders, two outputs with one path.
        SourceError: an image folder is invalid (gaps, duplicate indices, mixed
            shapes/dtypes, unreadable files); with several such images, one
            error lists every one of them.
        SpecError: voxel size missing or contradicting the files (without
            *override_voxel_size*).
        UnsafeInputError: a channel folder that leads outside the submission.
    """
    submission = Path(submission)
    if not submission.is_dir():
        raise PlanError(submission, "submission folder does not exist or is not a folder")
    patterns = [
        (
            e.matcher,
            e.reason + (f" (evidence: code/bidspack/evidence/exclude{i}_*)" if e.evidence else ""),
        )
        for i, e in enumerate(spec.excludes)
    ]

    def excluded(rel: str) -> str | None:
        parts = PurePosixPath(rel).parts
        for regex, reason in patterns:
            assert regex is not None  # compiled by load_spec
            for i in range(1, len(parts) + 1):
                if regex.fullmatch("/".join(parts[:i])):
                    return reason
        if spec.exclude_junk and is_junk(rel):
            return JUNK_REASON
        return None

    subjects, actions = _subjects(submission, spec, excluded, follow_symlinks, renames or {})
    unreadable: list[BidspackError] = []
    followed: list[list[str]] = []
    out = spec.output
    converts: list[Action] = []
    copies: list[Action] = []
    targets: dict[str, str] = {}
    pipelines: dict[str, bool] = {}

    def claim(target: str, source: str) -> None:
        if target in targets:
            raise PlanError(
                submission, f"{targets[target]} and {source} would both be written to {target}"
            )
        targets[target] = source

    for subj in subjects:
        accounted: set[str] = set()
        images: dict[str, _Image] = {}
        found = scan(submission, subj.folder, follow_symlinks=follow_symlinks)
        followed.extend([link, target] for link, target in found.followed)
        refused = dict(found.refused)
        present = {*found.files, *found.dirs}
        for ch in spec.channels:
            rel = f"{subj.folder}/{ch.folder}"
            step = f"sub-{subj.label}/{ch.folder}"
            if rel in refused:
                raise PlanError(submission / rel, f"channel folder is {refused[rel]}")
            if rel not in present:
                if ch.required:
                    raise PlanError(
                        submission / rel,
                        "channel folder is missing",
                        hint="set required = false for this channel in the spec to skip it",
                    )
                actions.append(Action("skip", None, (), reason="channel folder absent", step=step))
                continue
            files = [f for f in found.files if f == rel or f.startswith(rel + "/")]
            accounted.update(files)
            kept: list[str] = []
            for f in files:
                reason = excluded(f)
                if reason is not None:
                    actions.append(Action("exclude", None, (f,), reason=reason, step=step))
                else:
                    _check_name(submission, f)
                    kept.append(f)
            base = rel if (submission / rel).is_dir() else str(PurePosixPath(rel).parent)
            image_files = (
                [f for f in kept if is_tiff(Path(f)) and str(PurePosixPath(f).parent) == base]
                if ch.image != "none"
                else []
            )
            if (submission / rel).is_file() and ch.image != "none":
                image_files = kept
            if ch.image != "none":
                if not image_files:
                    raise PlanError(submission / rel, "no TIFF image in this channel folder")
                reader = "file" if (submission / rel).is_file() else "folder"
                try:
                    variants = _split_variants(spec, submission, reader, image_files, ch)
                except (SourceError, ResourceLimitError) as exc:
                    unreadable.append(exc)  # every unreadable image is named at once
                    continue
                for ch in variants:  # one image per split channel/time point
                    try:
                        src = open_planned(submission, reader, image_files, ch.select)
                    except (SourceError, ResourceLimitError) as exc:
                        unreadable.append(exc)  # every unreadable image is named at once
                        continue
                    voxel = _voxel_size(spec, ch, src, rel, override_voxel_size)
                    file_fields, meta_warnings, origins = _file_metadata(spec, ch, src)
                    entities = {"subject": subj.label, "sample": subj.sample, **ch.entities}
                    if ch.type == "derivative" and ch.desc:
                        entities["description"] = ch.desc
                    tiff_ext = ome_tiff_extension(src.shape, src.dtype)
                    stem = micr_path(entities, ch.suffix, "")
                    if ch.type == "derivative":
                        stem = f"derivatives/{ch.pipeline}/{stem}"
                        pipelines.setdefault(str(ch.pipeline), False)
                    src_rels = tuple(Path(p).relative_to(submission).as_posix() for p in src.files)
                    common: dict[str, Any] = {
                        "shape_zyx": list(src.shape),
                        "dtype": src.dtype.name,
                        **voxel.to_json(),  # sizes, their origins, any override
                        "image": ch.image,
                        "name": PurePosixPath(stem).name,
                        "channel_name": ch.entities.get("stain"),
                        "reader": reader,
                    }
                    if ch.select:
                        common["select"] = dict(ch.select)
                    ome_meta = omexml_metadata(src.instrument)
                    if ome_meta:
                        common["instrument"] = ome_meta
                    if origins:  # where every sidecar value beyond PixelSize comes from
                        common["sidecar_origin"] = origins
                    if meta_warnings:
                        common["metadata_warnings"] = meta_warnings
                    left_out = left_out_of(src, ch.split)
                    if left_out:  # said in the plan and the run, never dropped silently
                        common["left_out"] = list(left_out)
                    if ch.split:
                        common["split"] = {k: ch.select[k] for k in ch.split}
                    tcz = src.tcz
                    if tcz is not None:
                        common["tcz"] = list(tcz)
                        common["channel_names"] = list(src.channel_names)
                    for fmt in out["formats"]:
                        if fmt == "ome-zarr":
                            target = stem + ".ome.zarr"
                            params = {**common, "format": fmt, "ngff_version": out["ngff_version"]}
                        else:
                            target = stem + tiff_ext
                            params = {
                                **common,
                                "format": fmt,
                                "compression": out["compression"],
                                "compression_level": out["compression_level"],
                                "tile": out["tile"],
                            }
                        claim(target, rel)
                        if fmt == "ome-zarr":
                            images[ch.folder] = _Image(
                                rel, src.shape, voxel.zyx_um, src_rels, len(converts), reader
                            )
                        converts.append(Action("convert", target, src_rels, params, step=step))
                    if "ome-zarr" not in out["formats"]:
                        images[ch.folder] = _Image(
                            rel, src.shape, voxel.zyx_um, src_rels, None, reader
                        )
                    claim(stem + ".json", rel)
                    sidecar = metadata.micr_sidecar(
                        voxel.zyx_um, file_fields, spec.raw.get("sidecar", {}), ch.sidecar
                    )
                    converts.append(Action("write", stem + ".json", (), step=step, content=sidecar))
            used = set(image_files)
            for f in kept:
                if f in used:
                    continue
                inner = PurePosixPath(f).relative_to(subj.folder).as_posix()
                if ch.extras == "derivative":
                    target = f"derivatives/{ch.pipeline}/sub-{subj.label}/{inner}"
                    pipelines[str(ch.pipeline)] = True
                else:
                    target = f"sourcedata/sub-{subj.label}/{inner}"
                claim(target, f)
                copies.append(Action("copy", target, (f,), step=step))
        _attach_labels(spec, submission, images, converts)
        # Entries that are never read: excluded if an exclude covers them, else refused.
        for f, why in found.refused:
            reason = excluded(f)
            step = f"sub-{subj.label}"
            if reason is None:
                actions.append(Action("refuse", None, (f,), reason=why, step=step))
            else:
                actions.append(Action("exclude", None, (f,), reason=reason, step=step))
        # Everything else in the subject folder must be excluded explicitly.
        rest = [f for f in found.files if f not in accounted]
        loose: list[str] = []
        for f in rest:
            reason = excluded(f)
            if reason is None:
                loose.append(f)
            else:
                actions.append(
                    Action("exclude", None, (f,), reason=reason, step=f"sub-{subj.label}")
                )
        if loose:
            shown = ", ".join(loose[:10]) + (" ..." if len(loose) > 10 else "")
            raise PlanError(
                submission / subj.folder,
                f"{len(loose)} file(s) belong to no channel and no exclude: {shown}",
                hint="list the folder as a channel, or exclude it with a reason",
            )
    if len(unreadable) == 1:
        raise unreadable[0]
    if unreadable:
        same = SourceError if all(isinstance(e, SourceError) for e in unreadable) else PlanError
        raise same(
            submission,
            f"{len(unreadable)} images cannot be read:\n"
            + "\n".join(f"  {exc.message}" for exc in unreadable),
        )
    writes = _metadata_actions(spec, subjects, pipelines)
    plan_params: dict[str, Any] = {"spec": spec.source.name, "output": dict(out)}
    renamed = {k: v for k, v in (renames or {}).items() if v in {s.label for s in subjects}}
    if renamed:
        plan_params["renamed_subjects"] = renamed
    if follow_symlinks:
        plan_params["follow_symlinks"] = True
        plan_params["followed_symlinks"] = followed
    if override_voxel_size:  # the user's explicit choice, recorded with the plan
        plan_params["override_voxel_size"] = True
    return Plan("package", plan_params, [*writes, *converts, *copies, *_merge_excludes(actions)])


@dataclass(frozen=True)
class _Image:
    """A subject's planned image: submission-relative folder, ``(z, y, x)`` shape, voxel
    size in micrometres, source files, and the index of its OME-Zarr convert action."""

    rel: str
    shape: tuple[int, int, int]
    voxel_um: tuple[float | None, float, float]
    sources: tuple[str, ...]
    zarr_action: int | None
    reader: str


def _attach_labels(
    spec: PackagingSpec, submission: Path, images: dict[str, _Image], converts: list[Action]
) -> None:
    """Give each intensity image's OME-Zarr convert action the label images that name
    it in ``labels_of`` (``params["labels"]``: name and source files, in spec order).

    Raises:
        PlanError: a label image's shape or voxel size differs from its image's.
    """
    for ch in spec.channels:
        label, image = images.get(ch.folder), images.get(ch.labels_of or "")
        if ch.labels_of is None or label is None or image is None:
            continue
        if label.shape != image.shape:
            raise PlanError(
                submission / label.rel,
                f"label image of shape {label.shape} (z, y, x) cannot be an NGFF label of "
                f"{image.rel} of shape {image.shape}",
                hint="NGFF labels have their image's shape; remove labels_of from the spec",
            )
        if not all(
            (a is None and b is None)
            or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6))
            for a, b in zip(label.voxel_um, image.voxel_um, strict=True)
        ):
            raise PlanError(
                submission / label.rel,
                f"voxel size {label.voxel_um} um differs from {image.voxel_um} um of "
                f"{image.rel}, the image it is a label of",
            )
        assert image.zarr_action is not None  # the spec requires ome-zarr output
        action = converts[image.zarr_action]
        entry = {
            "name": ch.label_name,
            "folder": label.rel,
            "sources": list(label.sources),
            "reader": label.reader,
        }
        params = {**action.params, "labels": [*action.params.get("labels", []), entry]}
        converts[image.zarr_action] = replace(action, params=params)


def _action_inputs(action: Action) -> list[str]:
    """Every submission file an action reads: its sources, and those of the NGFF label
    images of an OME-Zarr convert action."""
    extra = [s for lb in action.params.get("labels", []) for s in lb["sources"]]
    return [*action.sources, *extra]


def _merge_excludes(actions: list[Action]) -> list[Action]:
    """Keep skip actions; group exclude actions with one reason and step into one."""
    merged: dict[tuple[str, str], list[str]] = {}
    others: list[Action] = []
    for a in actions:
        if a.kind == "exclude":
            merged.setdefault((a.step, a.reason), []).extend(a.sources)
        else:
            others.append(a)
    excl = [
        Action("exclude", None, tuple(srcs), reason=r, step=s) for (s, r), srcs in merged.items()
    ]
    return [*others, *excl]


def _metadata_actions(
    spec: PackagingSpec, subjects: list[SubjectFolder], pipelines: dict[str, bool]
) -> list[Action]:
    ds = spec.dataset
    readme = ds.get("README") or (
        f"# {ds['Name']}\n\nMicroscopy dataset in BIDS {metadata.BIDS_VERSION} format, packaged "
        "with bidspack from a lab submission.\n\nRaw images are under sub-*/micr/, images "
        "made by the lab's pipelines under derivatives/, and non-image files of the "
        "submission under sourcedata/.\n"
    )
    acts = [
        Action("write", "dataset_description.json", content=metadata.dataset_description(ds)),
        Action("write", "README.md", content=readme if readme.endswith("\n") else readme + "\n"),
    ]
    subjects = sorted(subjects, key=lambda s: s.label)
    prow = []
    srow = []

    def cell(column: str, value: str, folder: str) -> str:
        try:
            return check_text_field(value, what=f"{column} value")
        except UnsafeInputError as exc:
            raise PlanError(folder, f"{exc.reason}: cannot be written to a TSV table") from exc

    for s in subjects:
        row = {"participant_id": f"sub-{s.label}"}
        row.update(
            {c.name: cell(c.name, c.resolve(s.groups), s.folder) for c in spec.participant_columns}
        )
        prow.append(row)
        srow_ = {
            "sample_id": f"sample-{s.sample}",
            "participant_id": f"sub-{s.label}",
            "sample_type": spec.sample_type,
        }
        srow_.update(
            {c.name: cell(c.name, c.resolve(s.groups), s.folder) for c in spec.sample_columns}
        )
        srow.append(srow_)
    pcols = {c.name: c.meta for c in spec.participant_columns}
    ptsv, pjson = metadata.table_files(("participant_id",), prow, pcols)
    scols = {c.name: c.meta for c in spec.sample_columns}
    stsv, sjson = metadata.table_files(("sample_id", "participant_id", "sample_type"), srow, scols)
    acts += [
        Action("write", "participants.tsv", content=ptsv),
        Action("write", "participants.json", content=pjson),
        Action("write", "samples.tsv", content=stsv),
        Action("write", "samples.json", content=sjson),
        Action("write", "code/bidspack/" + spec.source.name, content=spec.text),
    ]
    for i, ex in enumerate(spec.excludes):
        if ex.evidence is None:
            continue
        summ = json.loads(ex.evidence.read_text(encoding="utf-8"))
        # the compared folders' names come from an untrusted file: only their last
        # component, reduced to safe characters, becomes part of a dataset path
        a, b = (_safe_component(str(summ[k])) for k in ("a", "b"))
        folder = check_relpath(f"code/bidspack/evidence/exclude{i}_{a}_vs_{b}", what="evidence")
        for name in ("summary.json", "different.csv", "report.html"):
            f = ex.evidence.parent / name
            if entry_kind(f) != "file":  # absent, or a link/FIFO: never followed
                continue
            try:
                content = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PlanError(f, f"cannot read hashdiff evidence ({exc})") from exc
            acts.append(
                Action(
                    "write",
                    f"{folder}/{name}",
                    content=content,
                    reason=f"evidence for excluding {ex.path}",
                )
            )
    for pipeline, has_extras in sorted(pipelines.items()):
        acts.append(
            Action(
                "write",
                f"derivatives/{pipeline}/dataset_description.json",
                content=metadata.derivative_description(
                    pipeline, name=ds["Name"], authors=ds.get("Authors"), license=ds.get("License")
                ),
            )
        )
        acts.append(
            Action(
                "write",
                f"derivatives/{pipeline}/README.md",
                content=(
                    f"# {ds['Name']} - {pipeline}\n\nImages made by the lab's '{pipeline}' "
                    "pipeline from the raw images of this dataset (two folders up), packaged "
                    "with bidspack. See the raw dataset's README for the study.\n"
                ),
            )
        )
        if has_extras:
            acts.append(
                Action("write", f"derivatives/{pipeline}/.bidsignore", content="sub-*/*/\n")
            )
    return acts


def _safe_component(name: str) -> str:
    """The last path component of *name* with anything but letters, digits, ``.``,
    ``_`` and ``-`` replaced by ``_`` (never empty, never ``.`` or ``..``), at most 64
    characters."""
    last = PurePosixPath(name.replace("\\", "/")).name
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", last).strip(".")[:64]
    return clean or "folder"


def _steps(plan: Plan) -> list[tuple[str, list[Action]]]:
    """Group the plan's actions by step, ``dataset`` first (dataset_description.json,
    tables and the plan itself: a run stopped later leaves a dataset that bidspack
    recognises, and that ``validate`` describes as incomplete), then the channel steps."""
    groups: dict[str, list[Action]] = {}
    for a in plan:
        groups.setdefault(a.step, []).append(a)
    order = (["dataset"] if "dataset" in groups else []) + [s for s in groups if s != "dataset"]
    return [(s, groups[s]) for s in order]


def select_steps(
    steps: list[tuple[str, list[Action]]], only: Sequence[str] | None, submission: Path
) -> list[tuple[str, list[Action]]]:
    """The steps whose name (``sub-<label>/<folder>``, ``sub-<label>`` for a subject's
    loose excludes, or ``dataset``) matches one of *only* (exact names or
    :mod:`fnmatch` globs such as ``sub-45670ko/*``); every step if *only* is empty.

    Raises:
        PlanError: a pattern matches no step.
    """
    if not only:
        return steps
    names = [name for name, _ in steps]
    for pattern in only:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise PlanError(
                submission,
                f"--step {pattern!r} matches no step of the plan",
                hint=f"steps: {shown}",
            )
    return [
        (name, acts)
        for name, acts in steps
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in only)
    ]


def apply_plan(
    plan: Plan,
    submission: Path,
    dataset: Path,
    *,
    validate: bool = True,
    progress: ProgressFn | None = None,
    recover_first: bool = True,
    datalad: bool = False,
    run_cmd: str | None = None,
    only: Sequence[str] | None = None,
    dask: Execution | None = None,
) -> Iterator[Record]:
    """Carry out *plan* as transactional steps, then validate the dataset.

    Each step (one subject's channel folder, then the dataset-level metadata) is staged
    and committed atomically with its step record (:mod:`bidspack.txn.steps`); a step
    whose inputs and parameters are unchanged is ``notneeded``. An error inside a step
    leaves the dataset as before that step; a dataset folder created by this run is
    removed again if no step was committed. The submission is only read.

    The dataset folder must be new, empty, or a bidspack dataset (re-run / resume).
    Unfinished transactions are recovered first (``recover_first``) or refused.

    With *datalad* the folder is made a DataLad dataset first; in a DataLad dataset
    every committed step is saved (one ``datalad save``) with a run record whose
    command is *run_cmd* with ``--step <step>`` (see :mod:`bidspack.provenance.datalad`),
    so that ``datalad rerun`` of that commit replays that step only.

    With *only* (step names or globs, see :func:`select_steps`) the other steps are
    left as they are. *dask* says where OME-Zarr encoding runs (not part of a step's
    fingerprint: the bytes are the same wherever it runs).

    Yields one record per step action, ``notneeded`` records for finished steps, then
    the validation records (an error record per validation error).

    Raises:
        OutputError: the folder is neither new, empty nor a bidspack dataset; another
            process holds the dataset lock; unfinished transactions and
            ``recover_first`` is false.
        PlanError: a pattern of *only* matches no step.
        BidspackError: any error of a step (after cleaning up that step).
    """
    submission = Path(submission)
    dataset = Path(dataset)
    check_roots(submission, dataset)
    steps = select_steps(_steps(plan), only, submission)
    check_output(dataset)
    client = None
    if dask is not None and isinstance(dask.scheduler, str) and "://" in dask.scheduler:
        from bidspack.io.omezarr.runner import connect

        client = connect(dask.scheduler)  # one connection for every step of the run
        dask = Execution(workers=dask.workers, scheduler=client)
    try:
        # the lock is taken before anything else is created, checked or cleaned: a run
        # that does not hold it changes nothing (and removes nothing on failure)
        with locked_output(dataset, recover_first=recover_first) as session:
            yield from session.recovered
            session.keep = False  # a failure before the first image step leaves nothing
            for rec in _apply_locked(
                plan, steps, submission, dataset, datalad, run_cmd, progress, dask
            ):
                if rec.action == "step" and rec.status == "ok" and rec.path != "dataset":
                    session.keep = True
                yield rec
    finally:
        if client is not None:
            client.close()
    if validate:
        from bidspack.ops.validate import validate_dataset

        yield from validate_dataset(dataset)


def _apply_locked(
    plan: Plan,
    steps: list[tuple[str, list[Action]]],
    submission: Path,
    dataset: Path,
    datalad: bool,
    run_cmd: str | None,
    progress: ProgressFn | None,
    dask: Execution | None,
) -> Iterator[Record]:
    """The steps of :func:`apply_plan`, with the dataset lock held."""
    if datalad and not dl.is_datalad(dataset):
        dl.create(dataset)
        yield Record("datalad", ".", "ok", "created DataLad dataset (SHA256E)")
    use_datalad = dl.is_datalad(dataset)
    total = sum(1 for _, acts in steps if any(a.kind == "convert" for a in acts))
    done = 0
    for step, actions in steps:
        status = "notneeded"
        for rec in _run_step(
            step, actions, plan, submission, dataset, progress, (done, total), dask
        ):
            status = rec.status if rec.status != "notneeded" else status
            yield rec
        done += any(a.kind == "convert" for a in actions)
        if status == "ok" and use_datalad:
            targets = [a.target for a in actions if a.target]
            dl.save(
                dataset,
                dl.run_message(
                    f"bidspack package: {step}",
                    f"{run_cmd or 'bidspack package'} --step {shlex.quote(step)}",
                    dataset,
                    targets,
                ),
            )


def excluded_path(a: Action) -> str:
    """Where an exclude action points: its one file, or the folder of its files."""
    if len(a.sources) == 1:
        return a.sources[0]
    return str(PurePosixPath(a.sources[0]).parent)


def _run_step(
    step: str,
    actions: list[Action],
    plan: Plan,
    submission: Path,
    dataset: Path,
    progress: ProgressFn | None,
    counter: tuple[int, int],
    dask: Execution | None = None,
) -> Iterator[Record]:
    """Run one step as one transaction (or report it ``notneeded``)."""
    for a in actions:
        if a.kind == "exclude":
            yield Record(
                "exclude",
                excluded_path(a),
                "excluded",
                a.reason,
                {"files": len(a.sources), "step": step},
            )
        elif a.kind == "skip":
            yield Record("skip", a.step, "impossible", a.reason)
        elif a.kind == "refuse":
            yield Record(
                "refuse",
                a.sources[0],
                "impossible",
                a.reason,
                {"files": len(a.sources), "step": step},
            )
    work = [a for a in actions if a.kind in ("write", "copy", "convert")]
    if step == "dataset":
        work.append(Action("write", "code/bidspack/plan.json", content=json_text(plan.to_dict())))
    if not work:
        return
    previous = load_record(dataset, step)
    inputs = hash_inputs(submission, [s for a in work for s in _action_inputs(a)], previous)
    described = [
        {**a.to_dict(), **({"content_xxh3": text_xxh3(a.content)} if a.content else {})}
        for a in work
    ]
    fp = fingerprint(described, inputs)
    targets = [a.target for a in work if a.target]
    if (
        previous
        and previous.get("fingerprint") == fp
        and all((dataset / t).exists() for t in targets)
    ):
        yield Record(
            "step",
            step,
            "notneeded",
            "inputs and parameters unchanged",
            {"fingerprint": fp, "outputs": len(targets)},
        )
        return
    txn = Transaction(dataset)
    prov = StepProvenance(
        "package",
        step,
        parameters={
            "spec": plan.parameters.get("spec"),
            "fingerprint": fp,
            "actions": [a.to_dict() for a in work if a.kind == "convert"],
        },
        used=[{"path": f"submission:{rel}", "xxh3_128": v["xxh3"]} for rel, v in inputs.items()],
    )
    try:
        records = list(_stage(work, submission, txn, progress, counter, dask or Execution()))
        prov.pixel_hashes = {
            (r.path + "/0" if r.path.endswith(".ome.zarr") else r.path): r.details["pixel_hash"]
            for r in records
            if "pixel_hash" in r.details
        }
        for r in records:
            for name, digest in r.details.get("labels", {}).items():
                prov.pixel_hashes[f"{r.path}/labels/{name}/0"] = digest
        for old in (previous or {}).get("outputs", []):
            if old not in targets and (dataset / old).exists():
                txn.delete(old)
        rec_path = txn.stage_path(record_path(step))
        rec_path.write_text(
            json_text({"step": step, "fingerprint": fp, "outputs": targets, "inputs": inputs}),
            encoding="utf-8",
        )
        stage_provenance(txn, prov)
        txn.commit()
    except BaseException:
        txn.abort()
        raise
    yield from records
    yield Record(
        "step",
        step,
        "ok",
        f"committed {len(targets)} file(s)",
        {"fingerprint": fp, "transaction": txn.id},
    )


def _stage(
    work: list[Action],
    submission: Path,
    txn: Transaction,
    progress: ProgressFn | None,
    counter: tuple[int, int],
    dask: Execution,
) -> Iterator[Record]:
    done, total = counter
    for action in work:
        assert action.target is not None
        if action.kind == "write":
            assert action.content is not None
            write_text(txn.stage_path(action.target), action.content)
            yield Record("write", action.target, "ok", "metadata", {"step": action.step})
        elif action.kind == "copy":
            shutil.copyfile(submission / action.sources[0], txn.stage_path(action.target))
            yield Record(
                "copy", action.target, "ok", f"from {action.sources[0]}", {"step": action.step}
            )
        elif action.kind == "convert":
            p = action.params
            files = [submission / s for s in action.sources]
            src = _open_action_source(submission, action)
            if progress:
                progress(action.target, done, total)
            extra: dict[str, Any] = {}
            if p.get("format") == "ome-zarr":
                labels = {
                    lb["name"]: open_planned(submission, lb["reader"], lb["sources"], {})
                    for lb in p.get("labels", [])
                }
                zres = write_ome_zarr(
                    txn.stage_path(action.target),
                    src,
                    physical_size_zyx_um=zarr_zyx(p["voxel_size_zyx_um"]),
                    name=p["name"],
                    kind=p["image"],
                    version=p["ngff_version"],
                    labels=labels,
                    workers=dask.workers,
                    scheduler=dask.scheduler,
                )
                digest, levels = zres.pixel_hash, [list(lv) for lv in zres.levels]
                kind = f"OME-Zarr {zres.version}"
                if zres.labels:
                    kind += " with labels " + ", ".join(lb.name for lb in zres.labels)
                    extra["labels"] = {lb.name: lb.pixel_hash for lb in zres.labels}
            else:
                res = write_ome_tiff(
                    txn.stage_path(action.target),
                    src,
                    physical_size_zyx_um=tuple(p["voxel_size_zyx_um"]),
                    name=p["name"],
                    kind=p["image"],
                    channel_name=p.get("channel_name"),
                    instrument=p.get("instrument"),
                    compression=p["compression"],
                    compression_level=p["compression_level"],
                    tile=p["tile"],
                    workdir=txn.workdir(),
                )
                digest, levels = res.pixel_hash, [list(lv) for lv in res.levels]
                kind = "OME-TIFF"
            if progress:
                progress(action.target, done + 1, total)
            yield Record(
                "convert",
                action.target,
                "ok",
                f"{len(files)} file(s) -> {kind} {tuple(src.shape)} {src.dtype}" + _notes(p),
                {
                    "pixel_hash": digest,
                    "levels": levels,
                    "sources": len(files),
                    "step": action.step,
                    **extra,
                },
            )


def _inputs_of(srcs: Sequence[str]) -> dict[str, Any]:
    """Where a convert action's files are: folder, count, Z range of slices."""
    parents = {str(PurePosixPath(s).parent) for s in srcs}
    out: dict[str, Any] = {"files": len(srcs)}
    if len(srcs) == 1:
        out["file"] = srcs[0]
        return out
    out["folder"] = parents.pop() if len(parents) == 1 else sorted(parents)
    zs = [slice_index(PurePosixPath(s).name) for s in srcs]
    if all(z is not None for z in zs):
        out["z"] = [zs[0], zs[-1]]
    return out


def _describe_inputs(info: dict[str, Any]) -> str:
    """``24 files in sub/640_N4/, Z 0-23`` or ``1 file: sub/stack.tif``."""
    if "file" in info:
        return f"1 file: {info['file']}"
    folder = info["folder"]
    where = f"{folder}/" if isinstance(folder, str) else ", ".join(f"{f}/" for f in folder)
    z = f", Z {info['z'][0]}-{info['z'][1]}" if "z" in info else ""
    return f"{info['files']} files in {where}{z}"


def _notes(p: dict[str, Any]) -> str:
    """What a convert action's message must say besides its inputs: a 2D image, voxel
    sizes the spec overrode, sidecar values the spec replaced, and what a vendor file
    holds beyond the image (never left out silently)."""
    out = ""
    if p.get("tcz"):
        t, c, z = p["tcz"]
        names = ", ".join(n or "?" for n in p.get("channel_names", []))
        out += f"; one image with C and T axes: {t} time point(s) x {c} channel(s)"
        out += f" ({names}) x {z} plane(s)"
    if p.get("voxel_size_zyx_um") and p["voxel_size_zyx_um"][0] is None:
        out += "; 2D image (PixelSize x, y; no Z size)"
    for axis, (was, now) in sorted(p.get("voxel_size_overridden", {}).items()):
        out += f"; voxel size {axis} {now} um overrides the file's {was} um"
    for w in p.get("metadata_warnings", []):
        out += f"; warning: {w}"
    if p.get("left_out"):
        out += f"; left out: {'; '.join(p['left_out'])}"
    return out


def _planned_record(a: Action) -> Record:
    """The dry-run record of one action (see :func:`package`)."""
    details = a.to_dict()
    if a.kind == "convert":
        info = _inputs_of(a.sources)
        details["inputs"] = info
        p = a.params
        fmt = "OME-Zarr" if p.get("format") == "ome-zarr" else "OME-TIFF"
        shape = tuple(p["shape_zyx"]) if p.get("shape_zyx") else ""
        msg = f"{_describe_inputs(info)} -> {fmt} {shape} {p.get('dtype', '')}".rstrip()
        for lb in p.get("labels", []):
            msg += f"; label {lb['name']}: {_describe_inputs(_inputs_of(lb['sources']))}"
        msg += _notes(p)
        return Record("convert", a.target or "", "planned", msg, details)
    if a.kind == "copy":
        return Record("copy", a.target or "", "planned", f"from {a.sources[0]}", details)
    if a.kind == "write":
        return Record("write", a.target or "", "planned", a.reason or "metadata", details)
    if a.kind == "exclude":
        details["files"] = len(a.sources)
        return Record("exclude", excluded_path(a), "excluded", a.reason, details)
    # skipped or refused inputs: named, with the reason
    where = a.target or (a.sources[0] if a.sources else a.step)
    return Record(a.kind, where, "impossible", a.reason, details)


def dry_run_records(steps: list[tuple[str, list[Action]]], dataset: Path) -> Iterator[Record]:
    """The records of a dry run: every action of *steps* in the order a run applies
    them (exclusions first in each step), and, for an existing bidspack *dataset*,
    one ``step`` record per step saying whether it was committed already (a real run
    re-checks it) or is still missing."""
    existing = Path(dataset).is_dir() and is_bidspack_dataset(Path(dataset))
    for step, acts in steps:
        for a in sorted(acts, key=lambda a: a.kind not in ("exclude", "skip", "refuse")):
            yield _planned_record(a)
        if step == "dataset":  # _run_step adds the plan itself
            target = "code/bidspack/plan.json"
            plan_write = {"kind": "write", "target": target, "step": "dataset"}
            yield Record("write", target, "planned", "this plan", plan_write)
        if existing and any(a.kind in ("write", "copy", "convert") for a in acts):
            if load_record(Path(dataset), step) is not None:
                yield Record(
                    "step", step, "notneeded", "committed earlier (re-checked by a real run)"
                )
            else:
                yield Record("step", step, "planned", "not committed yet: a real run does it")


def package(
    submission: Path,
    dataset: Path,
    spec: PackagingSpec,
    *,
    dry_run: bool = False,
    validate: bool = True,
    progress: ProgressFn | None = None,
    recover_first: bool = True,
    datalad: bool = False,
    run_cmd: str | None = None,
    only: Sequence[str] | None = None,
    dask: Execution | None = None,
    follow_symlinks: bool = False,
    override_voxel_size: bool = False,
) -> Iterator[Record]:
    """Plan and (unless *dry_run*) apply a packaging run; see :func:`build_plan` and
    :func:`apply_plan` (*only*: the steps to apply).

    A dry run writes nothing and yields one record per action of the selected steps:
    action = the action's kind; status ``planned`` for outputs (``convert``, ``copy``,
    ``write``), ``excluded`` for excluded inputs, ``impossible`` for skipped and refused
    ones; the message names the inputs (folder, file count, Z index range of slices);
    details are the action's JSON form (``specs/plan.schema.json``) plus ``inputs``
    (convert) or ``files`` (exclude). For an existing dataset, ``step`` records say
    which steps are committed and which are missing (:func:`dry_run_records`). In a
    real run, exclusions are ``excluded`` records too.

    Raises:
        BidspackError: see :func:`build_plan` and :func:`apply_plan`.
    """
    check_roots(Path(submission), Path(dataset))
    renames = current_labels(Path(dataset)) if Path(dataset).is_dir() else {}
    plan = build_plan(
        submission,
        spec,
        follow_symlinks=follow_symlinks,
        renames=renames,
        override_voxel_size=override_voxel_size,
    )
    if dry_run:
        yield from dry_run_records(select_steps(_steps(plan), only, Path(submission)), dataset)
        return
    yield from apply_plan(
        plan,
        submission,
        dataset,
        validate=validate,
        progress=progress,
        recover_first=recover_first,
        datalad=datalad,
        run_cmd=run_cmd,
        only=only,
        dask=dask,
    )


__all__ = ["BidspackError", "apply_plan", "build_plan", "package"]
