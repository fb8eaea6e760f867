"""``bidspack demo OUTDIR``: write the example submission, package it, validate it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bidspack.cli.base import make_console, map_errors, plain
from bidspack.errors import OutputError


@click.command("demo", short_help="Write the example submission, package and validate it.")
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="More detail (see 'package --verbose').")
@map_errors
def demo_cmd(outdir: Path, verbose: bool) -> None:
    """Write the example submission to OUTDIR/submission (three mouse brains as 2D
    TIFF slice folders, label masks, CSVs; see examples/README.md) with its packaging
    spec OUTDIR/lightsheet-spec.toml, package it into OUTDIR/dataset, validate it,
    and print what was done. Then try the same with 'bidspack package --dry-run'."""
    from bidspack.cli.cmd_package import report_records
    from bidspack.examples import write_submission
    from bidspack.ops.package import package
    from bidspack.spec import load_spec

    if outdir.exists() and any(outdir.iterdir()):
        raise OutputError(outdir, "exists and is not empty", hint="choose a new folder")
    console = make_console()
    spec_path = write_submission(outdir / "submission")
    console.print(plain(f"example submission: {outdir / 'submission'}"))
    console.print(plain(f"packaging spec:     {spec_path}"))
    console.print(plain(f"dataset:            {outdir / 'dataset'}"))
    console.print()
    records = package(outdir / "submission", outdir / "dataset", load_spec(spec_path))
    counts = report_records(
        records, outdir / "dataset", dry_run=False, verbose=verbose, console=console
    )
    console.print(
        plain(
            f"next: bidspack package {outdir / 'submission'} NEW_DATASET --spec {spec_path} "
            "--dry-run"
        )
    )
    if counts["error"]:
        sys.exit(1)
