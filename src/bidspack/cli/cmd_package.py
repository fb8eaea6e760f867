"""``bidspack package SUBMISSION DATASET --spec FILE``."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bidspack.cli.base import json_option, map_errors, render
from bidspack.ops.package import package
from bidspack.spec import load_spec


@click.command("package")
@click.argument("submission", type=click.Path(path_type=Path))
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "--spec",
    "spec_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Packaging spec (TOML or YAML), see specs/packaging.schema.json.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan (every input file and its fate); write nothing."
)
@click.option("--no-validate", is_flag=True, help="Skip the final validation (not recommended).")
@json_option
@map_errors
def package_cmd(
    submission: Path,
    dataset: Path,
    spec_path: Path,
    dry_run: bool,
    no_validate: bool,
    as_json: bool,
) -> None:
    """Package a microscopy SUBMISSION folder into a BIDS DATASET.

    The submission is only read. Outputs are staged under DATASET/.bidspack/ and
    committed only when every step and the final validation succeeded.
    """
    spec = load_spec(spec_path)
    show = not as_json and not dry_run and sys.stderr.isatty()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        transient=True,
        disable=not show,
    ) as bar:
        task = bar.add_task("converting", total=None)

        def progress(target: str, done: int, total: int) -> None:
            bar.update(
                task, total=total, completed=done, description=f"converting {Path(target).name}"
            )

        records = package(
            submission, dataset, spec, dry_run=dry_run, validate=not no_validate, progress=progress
        )
        counts = render(
            records,
            as_json=as_json,
            title="plan" if dry_run else "bidspack package",
            quiet_ok=not dry_run,
        )
    if counts["error"]:
        sys.exit(1)
