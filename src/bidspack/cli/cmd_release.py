"""``bidspack init DATASET --datalad`` and ``bidspack release DATASET VERSION``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bidspack.cli.base import json_option, map_errors, render
from bidspack.errors import OutputError


@click.command("init", short_help="Make a bidspack dataset a DataLad dataset.")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "--datalad",
    is_flag=True,
    required=True,
    help="Make DATASET a DataLad dataset (text in git, images in git-annex, SHA256E).",
)
@json_option
@map_errors
def init_cmd(dataset: Path, datalad: bool, as_json: bool) -> None:
    """Turn an existing bidspack dataset into a DataLad dataset."""
    from bidspack.ops.release import init_datalad

    if not datalad:
        raise OutputError(dataset, "nothing to do without --datalad")
    render(init_datalad(dataset), as_json=as_json, title="bidspack init")


@click.command("release", short_help="Validate, verify, save and tag a release (DataLad).")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("version")
@click.option("--note", help="Text of the CHANGES entry (default: 'Release.').")
@json_option
@map_errors
def release_cmd(dataset: Path, version: str, note: str | None, as_json: bool) -> None:
    """Validate, verify, add a CHANGES entry, save and tag VERSION. Refused on a dirty
    tree, validation errors, verify mismatches or an existing tag."""
    from bidspack.ops.release import release

    counts = render(release(dataset, version, note=note), as_json=as_json, title="bidspack release")
    if counts["error"]:
        sys.exit(1)
