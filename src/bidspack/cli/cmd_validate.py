"""``bidspack validate DATASET``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bidspack.cli.base import json_option, map_errors, render


@click.command("validate")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--no-recursive", is_flag=True, help="Do not validate derivatives/* datasets.")
@click.option("--show-ok", is_flag=True, help="List passing checks and warnings too.")
@json_option
@map_errors
def validate_cmd(dataset: Path, no_recursive: bool, show_ok: bool, as_json: bool) -> None:
    """Validate DATASET with bids-validator-deno and bidspack's own checks.

    Exit code 1 if there is any error.
    """
    from bidspack.ops.validate import validate_dataset

    counts = render(
        validate_dataset(dataset, recursive=not no_recursive),
        as_json=as_json,
        title="bidspack validate",
        quiet_ok=not show_ok,
    )
    if counts["error"]:
        sys.exit(1)
