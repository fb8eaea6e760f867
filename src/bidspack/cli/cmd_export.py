"""``bidspack export DATASET --format prov-json|ro-crate|bagit OUT``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bidspack.cli.base import json_option, map_errors, render
from bidspack.ops.export import FORMATS


@click.command("export", short_help="Export a dataset: PROV-JSON, RO-Crate or BagIt.")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    required=True,
    help="prov-json: W3C PROV-JSON file of the step history; ro-crate: RO-Crate folder "
    "(copy of the dataset + ro-crate-metadata.json); bagit: BagIt bag of a copy (sha256).",
)
@json_option
@map_errors
def export_cmd(dataset: Path, out: Path, fmt: str, as_json: bool) -> None:
    """Export DATASET to OUT (a new file for prov-json; a new or empty folder otherwise).

    DATASET is only read: copies leave out .bidspack/ and version control, and every
    file's sha256 must equal the manifest's. The export is checked with its library's
    validator (prov, rocrate, bagit) before it is renamed to OUT; on any error nothing
    is left at OUT. Exit code 1 on error.
    """
    from bidspack.ops.export import export

    counts = render(export(dataset, out, fmt), as_json=as_json, title="bidspack export")
    if counts["error"]:
        sys.exit(1)
