"""``bidspack derive VERB SOURCE_DATASET OUT``: derived datasets (``derive patches``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from bidspack.cli.base import (
    json_option,
    make_console,
    map_errors,
    progress_bar,
    render,
    validation_lines,
)
from bidspack.records import Record


@click.group("derive", short_help="Derived datasets from a bidspack dataset (training patches).")
def derive_cmd() -> None:
    """Make a derived dataset (a standalone BIDS derivative dataset) from the images
    of a bidspack dataset; see docs/derived-datasets.md."""


F = TypeVar("F", bound=Callable[..., Any])

_SELECTION_OPTIONS = (
    click.option("--suffix", help="Only images with this BIDS suffix (SPIM, 2PE, ...)."),
    click.option("--sub", help="Only this subject label."),
    click.option("--ses", help="Only this session label."),
    click.option("--sample", help="Only this sample label."),
    click.option("--stain", help="Only this stain label."),
    click.option("--acq", help="Only this acquisition label."),
    click.option("--run", "run_", help="Only this run index."),
    click.option("--chunk", help="Only this chunk index."),
    click.option("--desc", help="Only images with this desc label."),
    click.option(
        "--pipeline",
        help="'raw' for raw images only, or a derivatives/<pipeline> name (default: both).",
    ),
    click.option(
        "--format",
        "fmt",
        type=click.Choice(["auto", "ome-zarr", "ome-tiff"]),
        default="auto",
        show_default=True,
        help="Which file of a source image written in both formats (auto: the OME-Zarr).",
    ),
)


def image_selection(func: F) -> F:
    """The options that select source images by BIDS entities (every derive verb that
    reads a source dataset: patches, crops)."""
    for option in reversed(_SELECTION_OPTIONS):
        func = option(func)
    return func


def run_options(func: F) -> F:
    """``--no-validate`` and ``--no-recover``: every derive verb that writes a dataset."""
    func = click.option(
        "--no-recover",
        is_flag=True,
        help="Refuse to run if an interrupted run left unfinished transactions.",
    )(func)
    return click.option("--no-validate", is_flag=True, help="Skip the final validation.")(func)


datalad_option = click.option(
    "--datalad",
    is_flag=True,
    help="YODA layout: OUT a DataLad dataset, SOURCE (a clean DataLad/git dataset) "
    "installed at OUT/sourcedata/<name>, each step saved with a run record.",
)


def dask_options(func: F) -> F:
    """``--workers N`` and ``--scheduler ADDRESS``: where a derive verb runs its Dask
    tasks (local threads, or an existing ``dask.distributed`` cluster). They change no
    output byte; the verb records them in its provenance, not in its data files."""
    func = click.option(
        "--scheduler",
        metavar="ADDRESS",
        help="Run the tasks on an existing dask.distributed cluster (e.g. "
        "tcp://10.0.0.5:8786; the datasets must be at the same paths on its workers). "
        "Same bytes as a local run.",
    )(func)
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        help="Dask worker threads (local; with --scheduler: tasks in flight / 2). "
        "Same bytes whatever the number.",
    )(func)


def _planes(value: tuple[str, ...]) -> tuple[str, ...]:
    """``--planes xy,xz --planes yz`` or ``--planes 'xy xz'`` -> ``("xy", "xz", "yz")``."""
    return tuple(p for v in value for p in v.replace(",", " ").split())


@derive_cmd.command("patches", short_help="2D patches with duplicate decisions and an index.")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@image_selection
@click.option(
    "--planes",
    multiple=True,
    default=("xy",),
    show_default=True,
    help="Planes: xy, xz, yz (comma-separated or repeated). xz/yz only for near-isotropic voxels.",
)
@click.option("--size", type=int, default=224, show_default=True, help="Patch side (voxels).")
@click.option("--stride", type=int, help="Tile step in voxels (default: --size).")
@click.option(
    "--edge",
    type=click.Choice(["keep-if-half", "pad", "drop"]),
    default="keep-if-half",
    show_default=True,
    help="The tile crossing an image edge: kept shifted inside if at least half is "
    "inside, zero-padded, or dropped.",
)
@click.option(
    "--intensity",
    type=click.Choice(["percentile", "dtype-max", "none"]),
    default="percentile",
    show_default=True,
    help="Conversion to uint8: per-volume 0.5/99.5 percentiles, CEM's value/type-max, "
    "or none (uint8 sources).",
)
@click.option("--slice-step", type=int, default=1, show_default=True, help="Use every n-th slice.")
@click.option(
    "--isotropy-tolerance",
    type=float,
    default=0.2,
    show_default=True,
    help="xz/yz planes only when |x - z| / x <= this (the CEM rule).",
)
@click.option(
    "--dedup-scope",
    type=click.Choice(["volume", "dataset"]),
    default="volume",
    show_default=True,
    help="Duplicates within each source image, or across all of them.",
)
@click.option(
    "--hamming",
    type=int,
    default=12,
    show_default=True,
    help="Near duplicates: dHash Hamming distance <= this.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the greedy order.")
@click.option("--no-tsv", is_flag=True, help="Write index.parquet only (no index.tsv copy).")
@click.option("--dry-run", is_flag=True, help="Print the plan (images, planes, patch counts).")
@dask_options
@run_options
@datalad_option
@json_option
@map_errors
def patches_cmd(
    source: Path,
    out: Path,
    suffix: str | None,
    sub: str | None,
    ses: str | None,
    sample: str | None,
    stain: str | None,
    acq: str | None,
    run_: str | None,
    chunk: str | None,
    desc: str | None,
    pipeline: str | None,
    fmt: str,
    planes: tuple[str, ...],
    size: int,
    stride: int | None,
    edge: str,
    intensity: str,
    slice_step: int,
    isotropy_tolerance: float,
    dedup_scope: str,
    hamming: int,
    seed: int,
    no_tsv: bool,
    dry_run: bool,
    workers: int | None,
    scheduler: str | None,
    no_validate: bool,
    no_recover: bool,
    datalad: bool,
    as_json: bool,
) -> None:
    """Cut 2D patches from the images of the bidspack dataset SOURCE into the derived
    dataset OUT: per image and plane a sharded Zarr v3 array (n, size, size) uint8, and
    index.parquet (+ index.tsv) with one row per patch: source voxels and micrometres,
    pixel hash, dHash, and the duplicate decision with its reason (removed patches
    stay listed).

    One transactional step per source image, then one for the index; a re-run keeps
    unchanged steps (notneeded). --dry-run lists the plan and reads no pixel.
    With --datalad, `datalad rerun COMMIT` (in a clone of OUT) replays the derive
    command on the pinned source and reproduces the files byte for byte.
    """
    from bidspack.ops.derive.patches import PatchParams, derive_patches

    params = PatchParams(
        planes=_planes(planes),
        size=size,
        stride=stride,
        edge=edge,
        intensity=intensity,
        slice_step=slice_step,
        isotropy_tolerance=isotropy_tolerance,
        dedup_scope=dedup_scope,
        hamming=hamming,
        seed=seed,
        tsv=not no_tsv,
    )
    entities = {
        "sub": sub,
        "ses": ses,
        "sample": sample,
        "stain": stain,
        "acq": acq,
        "run": run_,
        "chunk": chunk,
        "desc": desc,
    }
    seen: list[Record] = []

    def keep(recs: Iterable[Record]) -> Iterator[Record]:
        for r in recs:
            seen.append(r)
            yield r

    with progress_bar(not as_json and not dry_run, "cutting patches") as progress:
        records = derive_patches(
            source,
            out,
            params,
            suffix=suffix,
            pipeline=pipeline,
            fmt=fmt,
            entities=entities,
            dry_run=dry_run,
            validate=not no_validate,
            recover_first=not no_recover,
            progress=progress,
            datalad=datalad,
            workers=workers,
            scheduler=scheduler,
        )
        counts = render(
            keep(records),
            as_json=as_json,
            title="bidspack derive patches" + (" (dry run)" if dry_run else ""),
            quiet_ok=False,
        )
    if not as_json:
        console = make_console()
        if dry_run:
            total = sum(int(r.details.get("patches", 0)) for r in seen if r.status == "planned")
            console.print(f"plan: {total} patches; nothing was written (dry run).")
        elif not no_validate:
            for line in validation_lines(seen):
                console.print(line)
    if counts["error"]:
        sys.exit(1)


@derive_cmd.command("subvolume", short_help="The 3D block around patches, re-read from the source.")
@click.argument("patches_out", type=click.Path(path_type=Path))
@click.argument("patch_ids", nargs=-1, required=True)
@click.option(
    "--depth",
    type=int,
    default=5,
    show_default=True,
    help="Slices along the patch plane's normal, centred on the patch's slice.",
)
@click.option(
    "--edge",
    type=click.Choice(["shift", "clip"]),
    default="shift",
    show_default=True,
    help="At the volume's ends: move the block inside (always --depth slices) or cut it "
    "(a shorter block).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    help="Write the block(s): one id: a .ome.tif, .tif or .npy file; several ids: a new "
    "folder of <patch_id>.ome.tif (see --format). Without it nothing is written.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ome-tiff", "tiff", "npy"]),
    help="Output format (default: from the file name; ome-tiff for a folder).",
)
@click.option("--raw", is_flag=True, help="Source values and dtype (no uint8 conversion).")
@click.option(
    "--source",
    type=click.Path(path_type=Path),
    help="The source dataset folder (default: SourceDatasets of PATCHES_OUT).",
)
@json_option
@map_errors
def subvolume_cmd(
    patches_out: Path,
    patch_ids: tuple[str, ...],
    depth: int,
    edge: str,
    out: Path | None,
    fmt: str | None,
    raw: bool,
    source: Path | None,
    as_json: bool,
) -> None:
    """The 3D block (CEM's "flipbook") around each PATCH_ID of the derived patches
    dataset PATCHES_OUT: --depth slices along the plane's normal with the patch's rows
    and columns, re-read from the source dataset and converted to uint8 with the
    patch's recorded intensity parameters; the patch's own slice equals the stored
    patch (checked). Axes (normal, rows, columns): xy z,y,x; xz y,z,x; yz x,z,y.
    """
    from bidspack.ops.derive.subvolume import derive_subvolume

    records = derive_subvolume(
        patches_out,
        list(patch_ids),
        out=out,
        depth=depth,
        edge=edge,
        raw=raw,
        source=source,
        fmt=fmt,
    )
    counts = render(records, as_json=as_json, title="bidspack derive subvolume")
    if counts["error"]:
        sys.exit(1)


@derive_cmd.command("export", short_help="Patches as TIFF files or one HDF5 file.")
@click.argument("patches_out", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tiff", "hdf5"]),
    required=True,
    help="tiff: a folder of one TIFF per patch (+ patches.tsv); hdf5: one file.",
)
@click.option("--kept-only", is_flag=True, help="Only kept patches (not the duplicates).")
@click.option(
    "--loc-names",
    is_flag=True,
    help="TIFF names in CEM's -LOC- convention: "
    "<stem>-LOC-<axis>_<slice>_<r0>-<r1>_<c0>-<c1>.tiff (default: <patch_id>.tiff).",
)
@json_option
@map_errors
def export_cmd(
    patches_out: Path, dest: Path, fmt: str, kept_only: bool, loc_names: bool, as_json: bool
) -> None:
    """Export the patches of the derived patches dataset PATCHES_OUT to DEST, a new
    folder (tiff) or file (hdf5) outside any dataset, written beside DEST and renamed
    into place when complete. An existing DEST is refused. See docs/derived-datasets.md.
    """
    from bidspack.ops.derive.export import export_patches

    records = export_patches(patches_out, dest, fmt=fmt, kept_only=kept_only, loc_names=loc_names)
    counts = render(records, as_json=as_json, title="bidspack derive export")
    if counts["error"]:
        sys.exit(1)


# -- derive crops (docs/crops.md) ---------------------------------------------------------------


def _crops_triple(value: str | None, option: str, *, integer: bool = False) -> tuple | None:
    """``"5"`` -> ``(5, 5, 5)``; ``"2,1,1"`` -> ``(2, 1, 1)`` (z, y, x); ``None`` stays."""
    if value is None:
        return None
    parts = [p for p in value.replace(" ", ",").split(",") if p]
    try:
        nums = [int(p) if integer else float(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 3
    if len(nums) != 3:
        kind = "integers" if integer else "numbers"
        raise click.BadParameter(f"{value!r}: one or three {kind} Z,Y,X", param_hint=option)
    return tuple(nums)


@derive_cmd.command("crops", short_help="Image + mask crops around SWC tracings or labels.")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--swc",
    "swc",
    multiple=True,
    type=click.Path(path_type=Path),
    help="SWC file or folder of SWC files (*.swc, *.swc.txt); repeat for more.",
)
@click.option(
    "--swc-unit",
    type=click.Choice(["um", "nm", "voxel"]),
    help="Unit of the SWC coordinates (default: the unit the header states).",
)
@click.option("--swc-voxel-size", help="Z,Y,X micrometres of one SWC unit (--swc-unit voxel).")
@click.option("--swc-offset", help="Z,Y,X micrometres added to the SWC positions.")
@click.option(
    "--mode",
    type=click.Choice(["line", "radius"]),
    default="line",
    show_default=True,
    help="Segments as 26-connected lines, or with the node radii (swept spheres).",
)
@click.option(
    "--labels",
    type=click.Choice(["tree", "file", "binary"]),
    default="tree",
    show_default=True,
    help="One label per tree, per SWC file, or 1.",
)
@click.option(
    "--soma",
    type=click.Choice(["sphere", "segments"]),
    default="sphere",
    show_default=True,
    help="Single-node and 3-point somata as a sphere, or as plain nodes.",
)
@click.option(
    "--mask",
    "mask_path",
    type=click.Path(path_type=Path),
    help="Label image (TIFF file or slice folder) of the selected image's shape.",
)
@click.option("--mask-desc", help="desc label of a packaged label image of the source dataset.")
@click.option("--mask-pipeline", help="derivatives/<pipeline> of that label image.")
@click.option(
    "--per-tree",
    is_flag=True,
    help="One crop per tree (SWC) or per label value (mask), not one of the union.",
)
@click.option("--margin", help="Margin in micrometres: one number or Z,Y,X (default 0).")
@click.option("--margin-voxels", help="Margin in voxels: one number or Z,Y,X.")
@click.option(
    "--formats",
    default="ome-tiff",
    show_default=True,
    help="Output formats, comma-separated: ome-tiff (image + mask files), ome-zarr "
    "(mask as NGFF label).",
)
@click.option(
    "--export",
    "export",
    nargs=2,
    type=(click.Choice(["hdf5"]), click.Path(path_type=Path)),
    help="Also write FILE: one HDF5 file with image/mask per crop (outside the datasets).",
)
@image_selection
@click.option("--no-tsv", is_flag=True, help="Write crops.parquet only (no crops.tsv copy).")
@click.option("--dry-run", is_flag=True, help="Print the plan (crops, boxes); write nothing.")
@run_options
@datalad_option
@json_option
@map_errors
def crops_cmd(
    source: Path,
    out: Path,
    swc: tuple[Path, ...],
    swc_unit: str | None,
    swc_voxel_size: str | None,
    swc_offset: str | None,
    mode: str,
    labels: str,
    soma: str,
    mask_path: Path | None,
    mask_desc: str | None,
    mask_pipeline: str | None,
    per_tree: bool,
    margin: str | None,
    margin_voxels: str | None,
    formats: str,
    export: tuple[str, Path] | None,
    suffix: str | None,
    sub: str | None,
    ses: str | None,
    sample: str | None,
    stain: str | None,
    acq: str | None,
    run_: str | None,
    chunk: str | None,
    desc: str | None,
    pipeline: str | None,
    fmt: str,
    no_tsv: bool,
    dry_run: bool,
    no_validate: bool,
    no_recover: bool,
    datalad: bool,
    as_json: bool,
) -> None:
    """Crop image + mask pairs of the bidspack dataset SOURCE to the annotated region
    into the derived dataset OUT: SWC tracings (--swc) rasterised in the image's voxel
    grid, or an existing label image (--mask FILE|FOLDER, --mask-desc). Outputs: per
    crop an OME-TIFF image and mask and/or an OME-Zarr with the mask as NGFF label,
    both carrying the crop's physical origin; crops.parquet (+ crops.tsv); optionally
    one HDF5 file (--export hdf5 FILE). --dry-run prints the plan. See docs/crops.md.
    """
    from bidspack.ops.derive.crops import CropParams, MaskSpec, derive_crops

    params = CropParams(
        mode=mode,
        labels=labels,
        soma=soma,
        per_tree=per_tree,
        margin_um=_crops_triple(margin, "--margin"),
        margin_voxels=_crops_triple(margin_voxels, "--margin-voxels", integer=True),
        swc_unit=swc_unit,
        swc_voxel_size=_crops_triple(swc_voxel_size, "--swc-voxel-size"),
        swc_offset_um=_crops_triple(swc_offset, "--swc-offset"),
        formats=tuple(f for f in formats.replace(" ", ",").split(",") if f),
        tsv=not no_tsv,
    )
    entities = {
        "sub": sub,
        "ses": ses,
        "sample": sample,
        "stain": stain,
        "acq": acq,
        "run": run_,
        "chunk": chunk,
        "desc": desc,
    }
    records = derive_crops(
        source,
        out,
        params,
        swc=list(swc),
        mask=MaskSpec(mask_path, mask_desc, mask_pipeline),
        suffix=suffix,
        pipeline=pipeline,
        fmt=fmt,
        entities=entities,
        export_hdf5_file=export[1] if export else None,
        dry_run=dry_run,
        validate=not no_validate,
        recover_first=not no_recover,
        datalad=datalad,
    )
    seen: list[Record] = []

    def keep(recs: Iterable[Record]) -> Iterator[Record]:
        for r in recs:
            seen.append(r)
            yield r

    counts = render(
        keep(records),
        as_json=as_json,
        title="bidspack derive crops" + (" (dry run)" if dry_run else ""),
        quiet_ok=False,
    )
    if not as_json:
        console = make_console()
        if dry_run:
            n = sum(1 for r in seen if r.action == "crop" and r.status == "planned")
            console.print(f"plan: {n} crop(s); nothing was written (dry run).")
        elif not no_validate:
            for line in validation_lines(seen):
                console.print(line)
    if counts["error"]:
        sys.exit(1)


# -- derive classify / train-classifier / select (docs/classification.md) -----------------------


def _render_derived(
    records: Iterable[Record], *, as_json: bool, title: str, dry_run: bool, validate: bool
) -> None:
    """Render records; after a run, the validation verdict; exit 1 on an error record."""
    seen: list[Record] = []

    def keep(recs: Iterable[Record]) -> Iterator[Record]:
        for r in recs:
            seen.append(r)
            yield r

    counts = render(keep(records), as_json=as_json, title=title + (" (dry run)" if dry_run else ""))
    if not as_json:
        console = make_console()
        if dry_run:
            total = sum(int(r.details.get("patches", 0)) for r in seen if r.status == "planned")
            console.print(f"plan: {total} patches; nothing was written (dry run).")
        elif validate:
            for line in validation_lines(seen):
                console.print(line)
    if counts["error"]:
        sys.exit(1)


@derive_cmd.command("classify", short_help="Score and decide every patch (rules, sklearn, torch).")
@click.argument("patches", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--model",
    default="rules",
    show_default=True,
    help="'rules' (the documented rule filter), a .json model of 'derive train-classifier', "
    "or a PyTorch state_dict (.pth) in CEM500K's ResNet34 layout.",
)
@click.option(
    "--kind",
    type=click.Choice(["rules", "sklearn", "torch"]),
    help="Model kind (default: from --model: rules, .json sklearn, .pth/.pt torch).",
)
@click.option("--threshold", type=float, help="Kept when score > this (default: the model's, 0.5).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Patches per batch.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="torch: CUDA when available (auto), or the CPU.",
)
@click.option("--threads", type=int, help="torch CPU threads (default 4, at most the CPU count).")
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    help="CSV (patch_id,label) to evaluate the decisions on (AUROC, precision, recall).",
)
@click.option(
    "--min-contrast", type=float, default=4.0, show_default=True, help="rules: std > this."
)
@click.option(
    "--min-entropy",
    type=float,
    default=2.0,
    show_default=True,
    help="rules: entropy (bits) > this.",
)
@click.option(
    "--max-saturated",
    type=float,
    default=0.25,
    show_default=True,
    help="rules: fraction of pixels == 255 < this.",
)
@click.option(
    "--max-empty",
    type=float,
    default=0.5,
    show_default=True,
    help="rules: fraction of pixels <= --empty-level < this.",
)
@click.option(
    "--empty-level", type=int, default=10, show_default=True, help="rules: the empty grey level."
)
@click.option("--no-tsv", is_flag=True, help="Write classification.parquet only (no TSV copy).")
@click.option("--dry-run", is_flag=True, help="Print the plan (arrays, batches, model).")
@dask_options
@run_options
@datalad_option
@json_option
@map_errors
def classify_cmd(
    patches: Path,
    out: Path,
    model: str,
    kind: str | None,
    threshold: float | None,
    batch_size: int,
    device: str,
    threads: int | None,
    labels: Path | None,
    min_contrast: float,
    min_entropy: float,
    max_saturated: float,
    max_empty: float,
    empty_level: int,
    no_tsv: bool,
    dry_run: bool,
    workers: int | None,
    scheduler: str | None,
    no_validate: bool,
    no_recover: bool,
    datalad: bool,
    as_json: bool,
) -> None:
    """Classify every patch of the patch dataset PATCHES (derive patches or derive
    select) into the derived dataset OUT: classification.parquet with each patch's
    score, decision (kept when score > threshold) and reason; the model (kind, sha256,
    threshold, device, versions) and the evaluation on --labels are in
    dataset_description.json. One transactional step per patch array, then the table.

    --workers/--scheduler (rules and sklearn kinds; an error for torch) score the
    batches as Dask tasks: the same bytes whatever the workers, recorded in the
    provenance only. With --datalad, PATCHES (a clean DataLad dataset) is installed at
    OUT/sourcedata/<name> and `datalad rerun COMMIT` (in a clone) replays each step.
    """
    from bidspack.ops.derive.classify import ClassifyParams, DaskSettings, derive_classify
    from bidspack.ops.derive.models import RuleThresholds

    params = ClassifyParams(
        model=model,
        kind=kind,
        threshold=threshold,
        batch_size=batch_size,
        threads=threads,
        device=device,
        rules=RuleThresholds(
            min_contrast=min_contrast,
            min_entropy=min_entropy,
            max_saturated=max_saturated,
            max_empty=max_empty,
            empty_level=empty_level,
        ),
        tsv=not no_tsv,
        dask=DaskSettings(workers=workers, scheduler=scheduler),
    )
    with progress_bar(not as_json and not dry_run, "classify") as progress:
        records = derive_classify(
            patches,
            out,
            params,
            labels=labels,
            dry_run=dry_run,
            validate=not no_validate,
            recover_first=not no_recover,
            progress=progress,
            datalad=datalad,
        )
        _render_derived(
            records,
            as_json=as_json,
            title="bidspack derive classify",
            dry_run=dry_run,
            validate=not no_validate,
        )


@derive_cmd.command("train-classifier", short_help="Train the sklearn patch classifier.")
@click.argument("patches", type=click.Path(path_type=Path))
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    required=True,
    help="CSV with patch_id,label (1/0, true/false, good/bad, keep/reject).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Model file to write (.json); its sidecar is <name>.training.json.",
)
@click.option("--seed", type=int, default=1227, show_default=True, help="Seed of the split.")
@click.option("--test-size", type=float, default=0.15, show_default=True, help="Held-out fraction.")
@click.option(
    "--c", "c", type=float, default=1.0, show_default=True, help="Inverse regularisation."
)
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Kept when > this.")
@click.option(
    "--empty-level", type=int, default=10, show_default=True, help="Empty grey level (feature)."
)
@json_option
@map_errors
def train_classifier_cmd(
    patches: Path,
    labels: Path,
    output: Path,
    seed: int,
    test_size: float,
    c: float,
    threshold: float,
    empty_level: int,
    as_json: bool,
) -> None:
    """Train a logistic regression on the documented features of the labelled patches
    of PATCHES, hold out --test-size of them (stratified, --seed) and write the model
    (plain JSON, no pickle) with its sha256 and metrics (AUROC, precision, recall,
    confusion matrix) in a sidecar. Use it with 'derive classify --model FILE.json'.
    """
    from bidspack.ops.derive.classify import train_classifier

    records = train_classifier(
        patches,
        labels,
        output,
        seed=seed,
        test_size=test_size,
        c=c,
        threshold=threshold,
        empty_level=empty_level,
    )
    counts = render(records, as_json=as_json, title="bidspack derive train-classifier")
    if counts["error"]:
        sys.exit(1)


@derive_cmd.command("select", short_help="A query's patches as a derived dataset of their own.")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--query",
    required=True,
    help="e.g. \"decision == 'kept' and score > 0.7 and plane == 'xy'\" (columns op value, "
    "in (...), and/or/not, parentheses).",
)
@click.option(
    "--patches",
    type=click.Path(path_type=Path),
    help="The classification's patch dataset (default: the one its SourceDatasets names).",
)
@click.option("--no-tsv", is_flag=True, help="Write index.parquet only (no TSV copy).")
@click.option("--dry-run", is_flag=True, help="Print the plan (patches per array).")
@run_options
@datalad_option
@json_option
@map_errors
def select_cmd(
    source: Path,
    out: Path,
    query: str,
    patches: Path | None,
    no_tsv: bool,
    dry_run: bool,
    no_validate: bool,
    no_recover: bool,
    datalad: bool,
    as_json: bool,
) -> None:
    """Copy the patches of SOURCE (a classification or a patch dataset) that --query
    selects into the derived dataset OUT: Zarr arrays of the selected patches and
    index.parquet (patch_id, array, row, parent_array, parent_row, the query columns);
    SourceDatasets names both parents. The query is parsed, never evaluated as Python.
    With --datalad both parents are installed under OUT/sourcedata/, pinned.
    """
    from bidspack.ops.derive.select import derive_select

    with progress_bar(not as_json and not dry_run, "select") as progress:
        records = derive_select(
            source,
            out,
            query,
            patches=patches,
            tsv=not no_tsv,
            dry_run=dry_run,
            validate=not no_validate,
            recover_first=not no_recover,
            progress=progress,
            datalad=datalad,
        )
        _render_derived(
            records,
            as_json=as_json,
            title="bidspack derive select",
            dry_run=dry_run,
            validate=not no_validate,
        )
