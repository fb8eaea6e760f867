"""``bidspack sample URL... OUT``: random cubes from remote OME-Zarr/N5 volumes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from bidspack.cli.base import json_option, map_errors, progress_bar, render
from bidspack.errors import PlanError

#: Byte units of ``--budget`` (decimal and binary).
BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value: str) -> int:
    """``"5GB"`` -> 5_000_000_000; ``"1.5GiB"`` -> 1_610_612_736; ``"1000"`` -> 1000.

    Raises:
        PlanError: not a number with one of :data:`BYTE_UNITS`.
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", value)
    if m is None or m.group(2).lower() not in BYTE_UNITS:
        raise PlanError(
            None, f"--budget must be a size such as 5GB, 500MiB or 1000000, not {value!r}"
        )
    return int(float(m.group(1)) * BYTE_UNITS[m.group(2).lower()])


@click.command("sample", short_help="Random cubes from remote OME-Zarr/N5 up to a byte budget.")
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--budget",
    required=True,
    help="Decoded bytes of cubes per source, e.g. 5GB, 500MiB (decimal and binary units).",
)
@click.option(
    "--size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Cube side in voxels (clipped to the volume; 2D images: squares).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed of the positions."
)
@click.option(
    "--level",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Multiscale level to sample (0: full resolution).",
)
@click.option(
    "--channel", type=click.IntRange(min=0), help="Channel index, when the image has several."
)
@click.option(
    "--time",
    "time_point",
    type=click.IntRange(min=0),
    help="Time point, when the image has several.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Most HTTP requests in flight at once.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Retries of a transient failure (5xx, timeout, reset), with backoff.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds one request may take.",
)
@click.option(
    "--ngff-version",
    type=click.Choice(["0.5", "0.4"]),
    default="0.5",
    show_default=True,
    help="OME-NGFF version of the cube images.",
)
@json_option
@map_errors
def sample_cmd(
    urls: tuple[str, ...],
    out: Path,
    budget: str,
    size: int,
    seed: int,
    level: int,
    channel: int | None,
    time_point: int | None,
    max_connections: int,
    retries: int,
    timeout: float,
    ngff_version: str,
    as_json: bool,
) -> None:
    """Download random cubes from remote OME-Zarr (NGFF 0.4/0.5) or N5 multiscales at
    http(s):// or s3:// URLs (s3 needs s3fs) into OUT, up to --budget decoded bytes per
    source (the CEM ngff_download.py job).

    Positions are uniformly random and depend only on the source's metadata, the URL,
    --size, --seed and --budget; they are written to OUT/plan.json first. Each cube is
    an OME-Zarr image with its physical position (OUT/cubes/...), listed in
    OUT/manifest.tsv and .parquet with its voxel and µm bounds and hashes. Rerun the
    same command to resume an interrupted run: finished cubes are verified, not
    downloaded again. See docs/remote-sampling.md.
    """
    from bidspack.io.remote import RemoteOptions
    from bidspack.ops.sample import plan_sample, sample

    options = RemoteOptions(max_connections=max_connections, retries=retries, timeout_s=timeout)
    plan = plan_sample(
        list(urls),
        out,
        budget=parse_bytes(budget),
        size=size,
        seed=seed,
        level=level,
        channel=channel,
        time=time_point,
        ngff_version=ngff_version,
        options=options,
    )
    with progress_bar(not as_json, "cubes") as bar:
        progress = None if bar is None else (lambda done, total: bar("", done, total))
        counts = render(sample(plan, progress=progress), as_json=as_json, title="bidspack sample")
    if counts["error"]:
        sys.exit(1)
