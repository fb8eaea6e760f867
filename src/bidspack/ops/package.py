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
import re
import shlex
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from bidspack.bids import metadata
from bidspack.bids.paths import micr_path
from bidspack.bids.schema import is_valid_label, sanitize_label
from bidspack.bids.tables import json_text, write_text
from bidspack.errors import BidspackError, OutputError, PlanError, SpecError
from bidspack.io.ometiff import ome_tiff_extension, write_ome_tiff
from bidspack.io.omezarr import write_ome_zarr
from bidspack.io.sources import ImageSource, is_tiff, open_files, open_source
from bidspack.plan import Action, Plan
from bidspack.provenance import datalad as dl
from bidspack.provenance.manifest import MANIFEST_TSV
from bidspack.provenance.record import StepProvenance
from bidspack.provenance.record import stage as stage_provenance
from bidspack.records import Record
from bidspack.spec import Channel, PackagingSpec
from bidspack.txn import Transaction, dataset_lock, recover
from bidspack.txn.steps import fingerprint, hash_inputs, load_record, record_path, text_xxh3
from bidspack.txn.transaction import STATE_DIR, pending

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Execution:
    """Where OME-Zarr encoding runs: *workers* local threads (default: CPU count) or a
    ``dask.distributed`` *scheduler* (a ``tcp://`` address or a ``Client``); see
    :func:`bidspack.io.omezarr.write_ome_zarr`."""

    workers: int | None = None
    scheduler: object = None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob to regex: ``**`` crosses ``/``, ``*`` and ``?`` do not."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(rf"^{out}$")


@dataclass(frozen=True)
class SubjectFolder:
    """A subject folder of the submission and what the spec makes of it."""

    folder: str
    groups: dict[str, str]
    label: str
    sample: str


def _files_under(root: Path, rel: str) -> list[str]:
    base = root / rel
    if base.is_file():
        return [rel]
    return sorted(p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file())


def _subjects(
    submission: Path, spec: PackagingSpec, excluded: Callable[[str], str | None]
) -> tuple[list[SubjectFolder], list[Action]]:
    """Match top-level folders against the subject pattern; return subjects and the
    exclude actions for excluded top-level entries."""
    subjects: list[SubjectFolder] = []
    actions: list[Action] = []
    unmatched: list[str] = []
    by_label: dict[str, str] = {}
    for entry in sorted(submission.iterdir(), key=lambda p: p.name):
        name = entry.name
        reason = excluded(name)
        if reason is not None:
            actions.append(
                Action("exclude", None, tuple(_files_under(submission, name)), reason=reason)
            )
            continue
        m = spec.pattern.fullmatch(name) if entry.is_dir() else None
        if m is None:
            unmatched.append(name)
            continue
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        raw_label = spec.label_template.format(**groups)
        raw_sample = spec.sample_template.format(**groups)
        label, sample = raw_label, raw_sample
        if spec.sanitize:
            label, sample = sanitize_label(raw_label), sanitize_label(raw_sample)
        for what, value in (("participant label", label), ("sample label", sample)):
            if not is_valid_label(value):
                raise PlanError(
                    submission / name,
                    f"{what} {value!r} is not a valid BIDS label (letters and digits only)",
                    hint="set subjects.sanitize = true or change subjects.label",
                )
        if label in by_label:
            raise PlanError(
                submission,
                f"subject folders {by_label[label]} and {name} both map to participant label "
                f"{label!r}",
            )
        by_label[label] = name
        subjects.append(SubjectFolder(name, groups, label, sample))
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        raise PlanError(
            submission,
            f"{len(unmatched)} top-level entr{'y' if len(unmatched) == 1 else 'ies'} match "
            f"neither subjects.pattern nor an exclude: {shown}",
            hint="add an [[exclude]] entry with a reason, or fix the pattern",
        )
    if not subjects:
        raise PlanError(submission, "no subject folder matches subjects.pattern")
    return subjects, actions


def _open_image(
    submission: Path, rel: str, tiffs: list[str], select: dict[str, Any]
) -> ImageSource:
    """A channel's image: a slice folder, a TIFF stack, or one scene/channel/time point
    (*select*) of a vendor file."""
    path = submission / rel
    if path.is_file():
        return open_source(path, **select)
    if select:
        raise PlanError(path, "a folder, but the spec's 'select' is for vendor files")
    return open_files(path, [submission / t for t in tiffs])


def _open_action_source(submission: Path, action: Action) -> ImageSource:
    """The image a convert action reads (see :func:`_open_image`)."""
    files = [submission / s for s in action.sources]
    if len(files) == 1 and not is_tiff(files[0]):
        return open_source(files[0], **action.params.get("select", {}))
    return open_files(files[0].parent, files)


def _voxel_size(
    spec: PackagingSpec, ch: Channel, src: ImageSource, rel: str
) -> tuple[float, float, float]:
    given = ch.voxel_size_um
    found = src.info.physical_size
    if given is None and found is None:
        raise SpecError(
            spec.source,
            f"{rel}: the files carry no physical voxel size; give voxel_size in the spec",
            location=f"channels[{ch.index}].voxel_size",
        )
    if given is None:
        assert found is not None
        return found
    if found is not None and not all(
        math.isclose(a, b, rel_tol=1e-6) for a, b in zip(given, found, strict=True)
    ):
        raise SpecError(
            spec.source,
            f"{rel}: voxel_size {given} um (z, y, x) contradicts the file's OME-XML {found} um",
            location=f"channels[{ch.index}].voxel_size",
        )
    return given


def build_plan(submission: Path, spec: PackagingSpec) -> Plan:
    """Scan *submission* (read-only) and plan every output of the dataset.

    Raises:
        PlanError: unmatched or colliding subject folders, unaccounted files,
            missing required channel folders, two outputs with one path.
        SourceError: an image folder is invalid (gaps, duplicate indices, mixed
            shapes/dtypes, unreadable files).
        SpecError: voxel size missing or contradicting the files.
    """
    submission = Path(submission)
    if not submission.is_dir():
        raise PlanError(submission, "submission folder does not exist or is not a folder")
    patterns = [
        (
            _glob_regex(e.path),
            e.reason + (f" (evidence: code/bidspack/evidence/exclude{i}_*)" if e.evidence else ""),
        )
        for i, e in enumerate(spec.excludes)
    ]

    def excluded(rel: str) -> str | None:
        parts = PurePosixPath(rel).parts
        for regex, reason in patterns:
            for i in range(1, len(parts) + 1):
                if regex.match("/".join(parts[:i])):
                    return reason
        return None

    subjects, actions = _subjects(submission, spec, excluded)
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
        for ch in spec.channels:
            rel = f"{subj.folder}/{ch.folder}"
            step = f"sub-{subj.label}/{ch.folder}"
            if not (submission / rel).exists():
                if ch.required:
                    raise PlanError(
                        submission / rel,
                        "channel folder is missing",
                        hint="set required = false for this channel in the spec to skip it",
                    )
                actions.append(Action("skip", None, (), reason="channel folder absent", step=step))
                continue
            files = _files_under(submission, rel)
            accounted.update(files)
            kept: list[str] = []
            for f in files:
                reason = excluded(f)
                if reason is not None:
                    actions.append(Action("exclude", None, (f,), reason=reason, step=step))
                else:
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
                src = _open_image(submission, rel, image_files, ch.select)
                voxel = _voxel_size(spec, ch, src, rel)
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
                    "voxel_size_zyx_um": list(voxel),
                    "image": ch.image,
                    "name": PurePosixPath(stem).name,
                    "channel_name": ch.entities.get("stain"),
                }
                if ch.select:
                    common["select"] = dict(ch.select)
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
                        images[ch.folder] = _Image(rel, src.shape, voxel, src_rels, len(converts))
                    converts.append(Action("convert", target, src_rels, params, step=step))
                if "ome-zarr" not in out["formats"]:
                    images[ch.folder] = _Image(rel, src.shape, voxel, src_rels, None)
                claim(stem + ".json", rel)
                sidecar = metadata.micr_sidecar(voxel, spec.raw.get("sidecar", {}), ch.sidecar)
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
        # Everything else in the subject folder must be excluded explicitly.
        rest = [f for f in _files_under(submission, subj.folder) if f not in accounted]
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
    writes = _metadata_actions(spec, subjects, pipelines)
    params = {"spec": spec.source.name, "output": dict(out)}
    return Plan("package", params, [*writes, *converts, *copies, *_merge_excludes(actions)])


@dataclass(frozen=True)
class _Image:
    """A subject's planned image: submission-relative folder, ``(z, y, x)`` shape, voxel
    size in micrometres, source files, and the index of its OME-Zarr convert action."""

    rel: str
    shape: tuple[int, int, int]
    voxel_um: tuple[float, float, float]
    sources: tuple[str, ...]
    zarr_action: int | None


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
            math.isclose(a, b, rel_tol=1e-6)
            for a, b in zip(label.voxel_um, image.voxel_um, strict=True)
        ):
            raise PlanError(
                submission / label.rel,
                f"voxel size {label.voxel_um} um differs from {image.voxel_um} um of "
                f"{image.rel}, the image it is a label of",
            )
        assert image.zarr_action is not None  # the spec requires ome-zarr output
        action = converts[image.zarr_action]
        entry = {"name": ch.label_name, "folder": label.rel, "sources": list(label.sources)}
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
    for s in subjects:
        row = {"participant_id": f"sub-{s.label}"}
        row.update({c.name: c.resolve(s.groups) for c in spec.participant_columns})
        prow.append(row)
        srow_ = {
            "sample_id": f"sample-{s.sample}",
            "participant_id": f"sub-{s.label}",
            "sample_type": spec.sample_type,
        }
        srow_.update({c.name: c.resolve(s.groups) for c in spec.sample_columns})
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
        folder = f"code/bidspack/evidence/exclude{i}_{summ['a']}_vs_{summ['b']}"
        for name in ("summary.json", "different.csv", "report.html"):
            f = ex.evidence.parent / name
            if f.is_file():
                acts.append(
                    Action(
                        "write",
                        f"{folder}/{name}",
                        content=f.read_text(encoding="utf-8"),
                        reason=f"evidence for excluding {ex.path}",
                    )
                )
    for pipeline, has_extras in sorted(pipelines.items()):
        acts.append(
            Action(
                "write",
                f"derivatives/{pipeline}/dataset_description.json",
                content=metadata.derivative_description(pipeline, name=ds["Name"]),
            )
        )
        if has_extras:
            acts.append(
                Action("write", f"derivatives/{pipeline}/.bidsignore", content="sub-*/*/\n")
            )
    return acts


def _steps(plan: Plan) -> list[tuple[str, list[Action]]]:
    """Group the plan's actions by step, channel steps first and ``dataset`` last."""
    groups: dict[str, list[Action]] = {}
    for a in plan:
        groups.setdefault(a.step, []).append(a)
    order = [s for s in groups if s != "dataset"] + (["dataset"] if "dataset" in groups else [])
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


#: Entries of an output folder that do not make it "not empty" (state, version control).
_HOUSEKEEPING = {STATE_DIR, ".git", ".datalad", ".gitattributes", ".gitignore"}


def _is_bidspack_dataset(dataset: Path) -> bool:
    """A dataset bidspack made: step records, or a manifest (e.g. in a DataLad clone)."""
    return (dataset / STATE_DIR / "steps").is_dir() or (dataset / MANIFEST_TSV).is_file()


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
    steps = select_steps(_steps(plan), only, submission)
    created = not dataset.exists()
    had_state = (dataset / STATE_DIR).exists()
    if not created:
        if not dataset.is_dir():
            raise OutputError(dataset, "exists and is not a folder")
        if not _is_bidspack_dataset(dataset) and any(
            p.name not in _HOUSEKEEPING for p in dataset.iterdir()
        ):
            raise OutputError(
                dataset,
                "exists, is not empty and is not a bidspack dataset",
                hint="choose a new or empty output folder",
            )
    committed = 0
    client = None
    if dask is not None and isinstance(dask.scheduler, str) and "://" in dask.scheduler:
        from bidspack.io.omezarr.runner import connect

        client = connect(dask.scheduler)  # one connection for every step of the run
        dask = Execution(workers=dask.workers, scheduler=client)
    try:
        with dataset_lock(dataset):
            yield from recover_records(dataset, recover_first=recover_first)
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
                committed += status == "ok"
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
    except BaseException:
        if created and committed == 0:
            shutil.rmtree(dataset, ignore_errors=True)
        elif not had_state and committed == 0:
            shutil.rmtree(dataset / STATE_DIR, ignore_errors=True)
        raise
    finally:
        if client is not None:
            client.close()
    if validate:
        from bidspack.ops.validate import validate_dataset

        yield from validate_dataset(dataset)


def recover_records(dataset: Path, *, recover_first: bool = True) -> Iterator[Record]:
    """Recover unfinished transactions of *dataset* (lock held by the caller).

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
                a.sources[0] if len(a.sources) == 1 else str(PurePosixPath(a.sources[0]).parent),
                "notneeded",
                a.reason,
                {"files": len(a.sources), "step": step},
            )
        elif a.kind == "skip":
            yield Record("skip", a.step, "impossible", a.reason)
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
                    lb["name"]: open_files(
                        submission / lb["folder"], [submission / s for s in lb["sources"]]
                    )
                    for lb in p.get("labels", [])
                }
                zres = write_ome_zarr(
                    txn.stage_path(action.target),
                    src,
                    physical_size_zyx_um=tuple(p["voxel_size_zyx_um"]),
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
                f"{len(files)} file(s) -> {kind} {tuple(src.shape)} {src.dtype}",
                {
                    "pixel_hash": digest,
                    "levels": levels,
                    "sources": len(files),
                    "step": action.step,
                    **extra,
                },
            )


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
) -> Iterator[Record]:
    """Plan and (unless *dry_run*) apply a packaging run; see :func:`build_plan` and
    :func:`apply_plan` (*only*: the steps to apply). A dry run yields one ``plan`` record
    per action (of the selected steps) and writes nothing.

    Raises:
        BidspackError: see :func:`build_plan` and :func:`apply_plan`.
    """
    plan = build_plan(submission, spec)
    if dry_run:
        selected = {name for name, _ in select_steps(_steps(plan), only, Path(submission))}
        for a in plan:
            if a.step in selected:
                yield Record(
                    "plan", a.target or ",".join(a.sources[:1]), "notneeded", a.kind, a.to_dict()
                )
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
