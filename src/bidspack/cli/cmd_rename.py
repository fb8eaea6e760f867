"""``bidspack rename-subject DATASET [OLD NEW] [--map FILE.tsv] [--sanitize]``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bidspack.cli.base import json_option, map_errors, render
from bidspack.errors import PlanError


@click.command("rename-subject", short_help="Rename subjects everywhere, in one transaction.")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("old", required=False)
@click.argument("new", required=False)
@click.option(
    "--map",
    "map_file",
    type=click.Path(path_type=Path),
    help="TSV with two columns, old and new label, one rename per line.",
)
@click.option(
    "--sanitize",
    is_flag=True,
    help="Rename every subject whose label is not a valid BIDS label (45670-ko -> 45670ko).",
)
@click.option("--dry-run", is_flag=True, help="List every change; write nothing.")
@click.option("--no-validate", is_flag=True, help="Skip validation after the rename.")
@json_option
@map_errors
def rename_cmd(
    dataset: Path,
    old: str | None,
    new: str | None,
    map_file: Path | None,
    sanitize: bool,
    dry_run: bool,
    no_validate: bool,
    as_json: bool,
) -> None:
    """Rename subject OLD to NEW everywhere in DATASET, in one transaction: sub-
    folders and file names (raw, derivatives, sourcedata), participants.tsv,
    samples.tsv, scans/sessions tables, sidecar paths (IntendedFor, Sources), OME-XML
    image names and bidspack's records."""
    from bidspack.ops.rename import read_map, rename_subjects, sanitize_mapping

    mapping: dict[str, str] = {}
    if old is not None or new is not None:
        if old is None or new is None:
            raise PlanError(None, "give both OLD and NEW labels")
        mapping[old] = new
    if map_file is not None:
        mapping.update(read_map(map_file))
    if sanitize:
        mapping.update(sanitize_mapping(dataset))
    if not mapping:
        raise PlanError(dataset, "nothing to rename: give OLD NEW, --map or --sanitize")
    counts = render(
        rename_subjects(dataset, mapping, dry_run=dry_run, validate=not no_validate),
        as_json=as_json,
        title="plan" if dry_run else "bidspack rename-subject",
        quiet_ok=not dry_run,
    )
    if counts["error"]:
        sys.exit(1)
