"""``bidspack aggregate``: one slice folder, stack or vendor file (CZI ... through bioio:
one scene, channel and time point) -> one OME-TIFF or OME-Zarr image, outside any BIDS
dataset (the conversion ``bidspack package`` runs per channel folder).

The output format follows OUT's name: ``.ome.zarr`` gives a multiscale OME-Zarr
(:func:`bidspack.io.omezarr.write_ome_zarr`: NGFF 0.5 sharded or 0.4, Dask locally or on
a ``dask.distributed`` cluster, optional NGFF labels); ``.ome.tif``, ``.ome.tiff`` or
``.ome.btf`` a tiled OME-TIFF pyramid (:func:`bidspack.io.ometiff.write_ome_tiff`). The
image is planned first (source, shape, voxel size, format, labels: every problem is a
clean error before anything is written), then written to a hidden sibling of OUT
(:func:`bidspack.txn.beside.staged_beside`) that is renamed to OUT only after the
written pixels hashed like the source's: OUT never exists half-written, and an existing
OUT is never replaced. What a killed run left beside OUT is removed by the next run
(:func:`bidspack.txn.beside.remove_stale`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidspack.bids.metadata import omexml_metadata
from bidspack.errors import OutputError, PlanError
from bidspack.io.ometiff import Compression, write_ome_tiff
from bidspack.io.omezarr import DEFAULT_VERSION, NGFF_VERSIONS, write_ome_zarr
from bidspack.io.sources import ImageSource, left_out_of, open_source
from bidspack.io.voxels import VoxelSize, VoxelSizeError, resolve_voxel_size
from bidspack.records import Record
from bidspack.safety import is_within
from bidspack.txn.beside import remove_stale, staged_beside, work_prefix

#: Output name endings and the format each gives.
SUFFIXES = {
    ".ome.zarr": "ome-zarr",
    ".ome.tif": "ome-tiff",
    ".ome.tiff": "ome-tiff",
    ".ome.btf": "ome-tiff",
}


@dataclass
class AggregatePlan:
    """What :func:`aggregate` will write.

    Attributes:
        source: the opened image, ``(z, y, x)``.
        out: the output path.
        fmt: ``"ome-zarr"`` or ``"ome-tiff"``.
        voxel: the voxel size decision: ``(z, y, x)`` micrometres (``z`` ``None``: a 2D
            image), the origin of each axis ("file", "spec") and any override.
        name: image name (multiscale / OME ``Image`` name).
        kind: ``"intensity"`` or ``"label"``.
        labels: NGFF label images (name -> opened source), OME-Zarr only.
        origin_um: ``(z, y, x)`` micrometres of the first voxel (OME-Zarr translation,
            OME-TIFF ``Plane`` position), given or from the source's OME-XML; ``None``:
            none.
    """

    source: ImageSource
    out: Path
    fmt: str
    voxel: VoxelSize
    name: str
    kind: str
    labels: dict[str, ImageSource] = field(default_factory=dict)
    origin_um: tuple[float, float, float] | None = None

    @property
    def voxel_um(self) -> tuple[float | None, float, float]:
        """``(z, y, x)`` voxel size in micrometres (``z`` ``None``: a 2D image)."""
        return self.voxel.zyx_um

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-able details (paths as given)."""
        selected = {
            k: getattr(self.source, k)
            for k in ("scene", "channel", "channel_name", "time")
            if hasattr(self.source, k)
        }
        return {
            **selected,
            "source": str(self.source.path),
            "format": self.fmt,
            "shape_zyx": list(self.source.shape),
            "dtype": self.source.dtype.name,
            **self.voxel.to_json(),  # sizes, their origins, any override
            "instrument": omexml_metadata(self.source.instrument),
            "image": self.kind,
            "labels": {n: str(s.path) for n, s in self.labels.items()},
            "origin_zyx_um": list(self.origin_um) if self.origin_um else None,
            "left_out": list(left_out_of(self.source)),
        }


def output_format(out: Path) -> tuple[str, str]:
    """``(format, stem)`` from OUT's name: ``"ome-zarr"`` or ``"ome-tiff"`` (see
    :data:`SUFFIXES`), and the name without that ending.

    Raises:
        PlanError: any other name.
    """
    for suffix, fmt in SUFFIXES.items():
        if out.name.lower().endswith(suffix):
            return fmt, out.name[: -len(suffix)]
    raise PlanError(out, "the output name must end in .ome.zarr, .ome.tif, .ome.tiff or .ome.btf")


def plan_aggregate(
    source: Path,
    out: Path,
    *,
    voxel_size_um: tuple[float | None, float | None, float | None] | None = None,
    override_voxel_size: bool = False,
    kind: str = "intensity",
    name: str | None = None,
    labels: Mapping[str, Path] | None = None,
    scene: int | str | None = None,
    channel: int | str | None = None,
    time: int | None = None,
    origin_um: tuple[float, float, float] | None = None,
) -> AggregatePlan:
    """Check everything :func:`aggregate` needs before writing anything.

    The voxel size is decided axis by axis (:func:`bidspack.io.voxels.resolve_voxel_size`):
    the file's values, *voxel_size_um* for axes the file lacks (``None`` entries: none
    given), Z unset for a single-plane (2D) image; a given value that contradicts the
    file's is an error unless *override_voxel_size*.

    Raises:
        PlanError: unknown output format, a voxel size axis neither given nor in the
            file, a given voxel size contradicting the file's, labels for an OME-TIFF
            or a label image, a label image of another shape or non-integer pixels.
        OutputError: OUT exists, or lies inside the source folder.
        SourceError: SOURCE or a label image is not a readable slice folder, stack or
            vendor file (:mod:`bidspack.io.vendor`); *scene*, *channel* or *time* do not
            exist in it, or are given for a TIFF source.
    """
    out = Path(out)
    fmt, stem = output_format(out)
    if out.exists() or out.is_symlink():
        raise OutputError(out, "already exists", hint="choose a new output path")
    if Path(source).is_dir() and is_within(out, Path(source)):
        raise OutputError(
            out,
            f"is inside the source folder {source}; a source is never written",
            hint="choose an output path outside the source",
        )
    src = open_source(Path(source), scene=scene, channel=channel, time=time)
    try:
        voxel = resolve_voxel_size(
            src.info.found_sizes(),
            voxel_size_um,
            src.shape,
            override=override_voxel_size,
            given_as="--voxel-size",
        )
    except VoxelSizeError as exc:
        raise PlanError(
            src.path, str(exc), hint="--voxel-size Z,Y,X in micrometres unless --unit says"
        ) from exc
    opened: dict[str, ImageSource] = {}
    for lname, lpath in (labels or {}).items():
        if fmt != "ome-zarr":
            raise PlanError(out, "NGFF labels (--label-image) need an .ome.zarr output")
        if kind != "intensity":
            raise PlanError(out, "NGFF labels belong to an intensity image, not to a label image")
        lsrc = open_source(Path(lpath))
        if lsrc.shape != src.shape:
            raise PlanError(
                lsrc.path,
                f"label image {lname!r} has shape {lsrc.shape} (z, y, x), the image "
                f"{src.shape}: NGFF labels must match their image",
            )
        if lsrc.dtype.kind not in "ui":
            raise PlanError(lsrc.path, f"label image pixels are {lsrc.dtype}, not integers")
        opened[lname] = lsrc
    if kind == "label" and src.dtype.kind not in "ui":
        raise PlanError(src.path, f"label image pixels are {src.dtype}, not integers")
    origin = origin_um or src.info.origin
    return AggregatePlan(src, out, fmt, voxel, name or stem, kind, opened, origin)


def aggregate(
    plan: AggregatePlan,
    *,
    ngff_version: str = DEFAULT_VERSION,
    chunk: tuple[int, int, int] | None = None,
    workers: int | None = None,
    scheduler: object = None,
    compression: Compression = "zlib",
    compression_level: int = 6,
    tile: int = 256,
) -> Iterator[Record]:
    """Write the image of *plan* (from :func:`plan_aggregate`); yield one record.

    ``ngff_version``, ``chunk``, ``workers`` and ``scheduler`` (a ``tcp://`` address of a
    ``dask.distributed`` scheduler, or a ``Client``) apply to OME-Zarr output;
    ``compression``, ``compression_level`` and ``tile`` to OME-TIFF output.

    Raises:
        PlanError: options that do not fit the format (e.g. a scheduler for OME-TIFF) or
            that the writer rejects (bad chunk shape, NGFF version).
        SourceError: a plane cannot be decoded.
        IntegrityError: the written pixels do not hash like the source's.
        ToolError: the Dask scheduler cannot be reached.
        OutputError: OUT appeared meanwhile.
    """
    out = plan.out
    if plan.fmt == "ome-tiff" and (scheduler is not None or chunk is not None):
        raise PlanError(out, "--scheduler and --chunk apply to .ome.zarr output only")
    if str(ngff_version) not in NGFF_VERSIONS:
        raise PlanError(
            out, f"OME-NGFF version {ngff_version} is not supported ({', '.join(NGFF_VERSIONS)})"
        )
    removed = remove_stale(out)
    with staged_beside(out, create=None) as partial:
        if plan.fmt == "ome-zarr":
            try:
                zres = write_ome_zarr(
                    partial,
                    plan.source,
                    physical_size_zyx_um=plan.voxel.for_zarr,
                    name=plan.name,
                    kind="label" if plan.kind == "label" else "intensity",
                    version=str(ngff_version),
                    chunk=chunk,
                    workers=workers,
                    scheduler=scheduler,
                    labels=plan.labels,
                    origin_zyx_um=plan.origin_um,
                )
            except ValueError as exc:
                raise PlanError(out, str(exc)) from exc
            details: dict[str, Any] = {
                "pixel_hash": zres.pixel_hash,
                "levels": [list(lv) for lv in zres.levels],
                "files": zres.files,
                "bytes": zres.nbytes,
                "labels": {lb.name: lb.pixel_hash for lb in zres.labels},
            }
            what = f"OME-Zarr {zres.version}, {len(zres.levels)} level(s), {zres.files} file(s)"
            if zres.labels:
                what += ", labels " + ", ".join(lb.name for lb in zres.labels)
        else:
            with tempfile.TemporaryDirectory(dir=out.parent, prefix=work_prefix(out)) as work:
                tres = write_ome_tiff(
                    partial,
                    plan.source,
                    physical_size_zyx_um=plan.voxel_um,
                    name=plan.name,
                    kind="label" if plan.kind == "label" else "intensity",
                    instrument=omexml_metadata(plan.source.instrument),
                    compression=compression,
                    compression_level=compression_level,
                    tile=tile,
                    workdir=Path(work),
                    max_workers=workers,
                    origin_zyx_um=plan.origin_um,
                )
            details = {
                "pixel_hash": tres.pixel_hash,
                "levels": [list(lv) for lv in tres.levels],
                "files": 1,
                "bytes": partial.stat().st_size,
            }
            what = f"OME-TIFF, {len(tres.levels)} level(s)"
        if out.exists() or out.is_symlink():
            raise OutputError(out, "appeared while it was being written; nothing replaced")
    shape = "x".join(map(str, plan.source.shape))
    for entry in removed:
        yield Record("recover", str(entry), "ok", "removed what an interrupted run left")
    yield Record(
        "aggregate",
        str(out),
        "ok",
        f"{len(plan.source.files)} file(s) {shape} {plan.source.dtype} -> {what}"
        + (f"; left out: {'; '.join(left)}" if (left := left_out_of(plan.source)) else ""),
        {**plan.describe(), **details},
    )
