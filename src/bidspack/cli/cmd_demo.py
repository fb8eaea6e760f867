"""``bidspack demo OUTDIR``: write the example submission, package it, validate it."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from bidspack.cli.base import map_errors
from bidspack.errors import OutputError
from bidspack.records import count_statuses


@click.command("demo")
@click.argument("outdir", type=click.Path(path_type=Path))
@map_errors
def demo_cmd(outdir: Path) -> None:
    """Write the example submission to OUTDIR/submission, package it into
    OUTDIR/dataset (validated) and print a summary."""
    from bidspack.examples import write_submission
    from bidspack.ops.package import package
    from bidspack.spec import load_spec

    if outdir.exists() and any(outdir.iterdir()):
        raise OutputError(outdir, "exists and is not empty", hint="choose a new folder")
    console = Console()
    spec_path = write_submission(outdir / "submission")
    console.print(f"example submission: {outdir / 'submission'}")
    records = list(package(outdir / "submission", outdir / "dataset", load_spec(spec_path)))
    counts = count_statuses(records)
    converted = [r for r in records if r.action == "convert"]
    errors = [r for r in records if r.status == "error"]
    warnings = sum(1 for r in records if r.details.get("severity") == "warning")
    console.print(f"dataset: {outdir / 'dataset'}")
    for r in converted:
        console.print(f"  {r.path}  pixel hash {r.details['pixel_hash']}")
    console.print(
        f"converted {len(converted)} stacks, copied "
        f"{sum(r.action == 'copy' for r in records)} files, excluded "
        f"{sum(r.details.get('files', 0) for r in records if r.action == 'exclude')} files"
    )
    console.print(
        f"validation: {len(errors)} errors, {warnings} warning codes "
        f"(bids-validator-deno -r and bidspack checks); records {counts}"
    )
    if errors:
        sys.exit(1)
