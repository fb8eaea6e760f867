"""``bidspack validate DATASET``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

from bidspack.cli.base import (
    json_option,
    make_console,
    map_errors,
    plain,
    render,
    validation_lines,
)
from bidspack.records import Record


@click.command("validate", short_help="Validate a dataset (bids-validator-deno + own checks).")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--no-recursive", is_flag=True, help="Do not validate derivatives/* datasets.")
@click.option(
    "--show-ok", is_flag=True, help="List passing checks too (errors and warnings always are)."
)
@json_option
@map_errors
def validate_cmd(dataset: Path, no_recursive: bool, show_ok: bool, as_json: bool) -> None:
    """Validate DATASET with bids-validator-deno (-r: derivatives too) and bidspack's
    own checks (PixelSize against the images, samples.tsv, OME-Zarr metadata).

    Errors and warnings are listed, then counted by code. Exit code 1 if there is
    any error.
    """
    from bidspack.ops.validate import validate_dataset

    seen: list[Record] = []

    def keep() -> Iterator[Record]:
        for rec in validate_dataset(dataset, recursive=not no_recursive):
            seen.append(rec)
            yield rec

    counts = render(keep(), as_json=as_json, title="bidspack validate", quiet_ok=not show_ok)
    if not as_json:
        console = make_console()
        for line in validation_lines(seen, subcodes=True):
            console.print(plain(line))
    if counts["error"]:
        sys.exit(1)
