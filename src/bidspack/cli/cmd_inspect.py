"""``bidspack inspect PATH...``: the image sources under some paths (metadata only)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from bidspack.cli.base import make_console, map_errors, plain


def _fmt(values: Sequence[float | None] | None) -> str:
    return "" if not values else ", ".join("-" if v is None else f"{v:.6g}" for v in values)


@click.command("inspect", short_help="List the image sources under paths (metadata only).")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@map_errors
def inspect_cmd(paths: tuple[Path, ...], as_json: bool) -> None:
    """List every image source under PATHS: TIFF stacks and slice folders, MRC, NRRD,
    HDF5 datasets, Imaris files, N5/Zarr/OME-Zarr images, videos and vendor files
    (CZI ...): format, shape, axes, dtype, voxel size (µm) and the file's unit,
    translation, channels, resolution levels; for N5/Zarr/HDF5 containers which images
    hold ground truth or inference labels (OpenOrganelle/CellMap naming, see
    docs/sources.md) and totals. Files that cannot be read are listed with the reason;
    links are not followed, FIFOs never opened. No pixel is decoded.

    Exits 1 when an entry is unreadable, 0 otherwise.
    """
    from rich.table import Table

    from bidspack.ops.inspect import inspect_paths

    inv = inspect_paths(list(paths))
    if as_json:
        sys.stdout.write(json.dumps(inv.to_dict(), ensure_ascii=False) + "\n")
    else:
        console = make_console()
        table = Table(title="bidspack inspect: image sources")
        for col in (
            "path",
            "format",
            "shape (axes)",
            "dtype",
            "voxel z,y,x µm",
            "unit",
            "translation z,y,x µm",
            "channels",
            "levels",
            "role",
        ):
            table.add_column(col, overflow="fold")
        for s in inv.sources:
            table.add_row(
                plain(s.path),
                plain(s.format),
                plain(f"{'x'.join(map(str, s.shape))} ({s.axes})"),
                plain(s.dtype),
                plain(_fmt(s.physical_size_zyx_um) or "none in file"),
                plain(s.unit or ""),
                plain(_fmt(s.translation_zyx_um)),
                plain(", ".join(c or "?" for c in s.channels) if s.channels else ""),
                plain(s.levels),
                plain(s.role),
            )
        console.print(table)
        for title, rows in (("unreadable", inv.unreadable), ("not read", inv.refused)):
            if rows:
                t = Table(title=title)
                t.add_column("path", overflow="fold")
                t.add_column("reason", overflow="fold")
                for r in rows:
                    t.add_row(plain(r["path"]), plain(r["reason"]))
                console.print(t)
        if inv.containers:
            t = Table(title="containers")
            for col in ("path", "images", "labels", "ground truth", "inference"):
                t.add_column(col, overflow="fold")
            for c in inv.containers:
                t.add_row(
                    plain(c["path"]),
                    plain(c["images"]),
                    plain(c["labels"]),
                    plain(c["ground_truth"]),
                    plain(c["inference"]),
                )
            console.print(t)
        tot = inv.totals
        console.print(
            plain(
                f"sources: {tot['sources']}  unreadable: {tot['unreadable']}  "
                f"not read: {tot['refused']}  containers: {tot['containers']} "
                f"(with ground truth: {tot['with_ground_truth']}, with inference: "
                f"{tot['with_inference']}, with both: {tot['with_both']})"
            )
        )
    if inv.unreadable:
        sys.exit(1)
