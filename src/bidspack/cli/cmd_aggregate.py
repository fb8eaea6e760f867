"""``bidspack aggregate SOURCE OUT``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bidspack.cli.base import json_option, map_errors, render
from bidspack.errors import PlanError
from bidspack.io.sources import UNIT_TO_UM
from bidspack.io.voxels import VoxelSizeError, to_um


def _triple(value: str | None, what: str, cast: type) -> tuple | None:
    """``"4,1.8,1.8"`` -> ``(4.0, 1.8, 1.8)`` (z, y, x); ``None`` stays ``None``."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    try:
        if len(parts) != 3:
            raise ValueError
        return tuple(cast(p) for p in parts)
    except ValueError:
        raise PlanError(None, f"{what} must be three numbers Z,Y,X, not {value!r}") from None


def _micrometres(value: str | None, what: str, unit: str) -> tuple[float, float, float] | None:
    """``"4,1.8,1.8"`` in *unit* -> ``(z, y, x)`` in micrometres (exact decimal
    conversion); ``None`` stays ``None``."""
    zyx = _triple(value, what, float)
    if zyx is None:
        return None
    return (to_um(zyx[0], unit), to_um(zyx[1], unit), to_um(zyx[2], unit))


def _voxel_sizes(
    value: str | None, unit: str
) -> tuple[float | None, float | None, float | None] | None:
    """``--voxel-size``: ``Z,Y,X`` (an empty or ``-`` entry leaves that axis to the
    file, e.g. ``4,,`` gives Z only) or ``Y,X`` (a 2D image), in *unit*, as ``(z, y, x)``
    micrometres with ``None`` for axes not given."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) == 2:
        parts = ["", *parts]
    if len(parts) != 3 or all(p in ("", "-") for p in parts):
        raise PlanError(None, f"--voxel-size must be Z,Y,X or Y,X numbers, not {value!r}")
    out: list[float | None] = []
    for p in parts:
        if p in ("", "-"):
            out.append(None)
            continue
        try:
            out.append(to_um(float(p), unit))
        except (ValueError, VoxelSizeError):
            raise PlanError(None, f"--voxel-size: {p!r} is not a number") from None
    return (out[0], out[1], out[2])


def _index_or_name(value: str | None) -> int | str | None:
    """``"2"`` -> 2 (an index); other text stays a name."""
    return int(value) if value is not None and value.isdigit() else value


def _label_images(values: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise PlanError(None, f"--label-image must be NAME=PATH, not {value!r}")
        if name in out:
            raise PlanError(None, f"--label-image {name!r} is given twice")
        out[name] = Path(path)
    return out


@click.command("aggregate", short_help="One stack (slices, TIFF, CZI) to OME-Zarr or OME-TIFF.")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--voxel-size",
    metavar="Z,Y,X",
    help="Voxel size of the axes the files do not carry (Z,Y,X; an empty entry leaves an "
    "axis to the file; Y,X for a 2D image). A value contradicting the file is an error.",
)
@click.option(
    "--override-voxel-size",
    is_flag=True,
    help="Let --voxel-size replace sizes the file carries (recorded in the output record).",
)
@click.option(
    "--unit",
    type=click.Choice(sorted(UNIT_TO_UM)),
    default="um",
    show_default=True,
    help="Unit of --voxel-size and --origin.",
)
@click.option(
    "--origin",
    metavar="Z,Y,X",
    help="Position of the first voxel (in --unit): the OME-Zarr translation or the "
    "OME-TIFF Plane position; default the source's OME-XML Plane position when it is in "
    "a length unit.",
)
@click.option("--label", "is_label", is_flag=True, help="SOURCE is a label image (no new values).")
@click.option(
    "--label-image",
    "label_images",
    multiple=True,
    metavar="NAME=PATH",
    help="A label image of SOURCE (same shape), written as NGFF label labels/NAME "
    "(.ome.zarr only; repeatable).",
)
@click.option("--scene", help="Vendor files: scene index or name (default: the first).")
@click.option("--channel", help="Vendor files: channel index or name (default: 0).")
@click.option("--time", "time_point", type=click.IntRange(min=0), help="Vendor files: time point.")
@click.option("--name", help="Image name in the metadata (default: OUT's name).")
@click.option(
    "--ngff-version",
    type=click.Choice(["0.5", "0.4"]),
    default="0.5",
    show_default=True,
    help="OME-NGFF version of .ome.zarr output (0.5: Zarr v3, sharded).",
)
@click.option("--chunk", metavar="Z,Y,X", help="Zarr chunk shape (default: the version's).")
@click.option("--workers", type=click.IntRange(min=1), help="Local threads (default: CPUs).")
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Run the OME-Zarr encoding on an existing dask.distributed cluster "
    "(e.g. tcp://10.0.0.5:8786).",
)
@json_option
@map_errors
def aggregate_cmd(
    source: Path,
    out: Path,
    voxel_size: str | None,
    override_voxel_size: bool,
    origin: str | None,
    unit: str,
    is_label: bool,
    label_images: tuple[str, ...],
    scene: str | None,
    channel: str | None,
    time_point: int | None,
    name: str | None,
    ngff_version: str,
    chunk: str | None,
    workers: int | None,
    scheduler: str | None,
    as_json: bool,
) -> None:
    """Aggregate SOURCE (a folder of 2D TIFF slices, a multi-page TIFF/OME-TIFF, or a
    vendor file such as CZI read through bioio: one --scene/--channel/--time) into
    one image OUT: a multiscale OME-Zarr (OUT ending in .ome.zarr) or a tiled OME-TIFF
    pyramid (.ome.tif, .ome.tiff, .ome.btf), with physical voxel sizes.

    Memory stays bounded whatever the stack depth; the written pixels are checked
    against the source's pixel hash before OUT appears. OUT must not exist.
    """
    from bidspack.ops.aggregate import aggregate, plan_aggregate

    voxel = _voxel_sizes(voxel_size, unit)
    origin_um = _micrometres(origin, "--origin", unit)
    plan = plan_aggregate(
        source,
        out,
        voxel_size_um=voxel,
        override_voxel_size=override_voxel_size,
        kind="label" if is_label else "intensity",
        name=name,
        labels=_label_images(label_images),
        scene=_index_or_name(scene),
        channel=_index_or_name(channel),
        time=time_point,
        origin_um=origin_um,
    )
    records = aggregate(
        plan,
        ngff_version=ngff_version,
        chunk=_triple(chunk, "--chunk", int),
        workers=workers,
        scheduler=scheduler,
    )
    counts = render(records, as_json=as_json, title="bidspack aggregate")
    if counts["error"]:
        sys.exit(1)
