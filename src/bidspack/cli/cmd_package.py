"""``bidspack package SUBMISSION DATASET --spec FILE``."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bidspack.cli.base import json_option, map_errors, render


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
@click.option(
    "--datalad",
    is_flag=True,
    help="Make DATASET a DataLad dataset; save every committed step with a run record.",
)
@click.option(
    "--step",
    "steps",
    multiple=True,
    metavar="STEP",
    help="Apply only this step (a name such as sub-45670ko/640_N4 or dataset, or a glob "
    "such as 'sub-45670ko/*'; repeatable). Other steps are left as they are.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), help="Local threads for OME-Zarr (default: CPUs)."
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Encode OME-Zarr output on an existing dask.distributed cluster "
    "(e.g. tcp://10.0.0.5:8786); same bytes as a local run.",
)
@click.option(
    "--no-recover",
    is_flag=True,
    help="Refuse to run if an interrupted run left unfinished transactions.",
)
@json_option
@map_errors
def package_cmd(
    submission: Path,
    dataset: Path,
    spec_path: Path,
    dry_run: bool,
    no_validate: bool,
    datalad: bool,
    no_recover: bool,
    steps: tuple[str, ...],
    workers: int | None,
    scheduler: str | None,
    as_json: bool,
) -> None:
    """Package a microscopy SUBMISSION folder into a BIDS DATASET.

    The submission is only read. Each step (one subject's channel folder, then the
    dataset metadata) is staged under DATASET/.bidspack/txn/ and committed atomically;
    re-running after a crash keeps finished steps (notneeded) and does the rest.
    With --datalad every step is saved with a run record of this command plus
    --step STEP, so `datalad rerun COMMIT` replays that one step.
    """
    from bidspack.ops.package import Execution, package
    from bidspack.spec import load_spec

    spec = load_spec(spec_path)
    # the command a DataLad run record replays: paths relative to the dataset, so that a
    # clone with the submission at the same relative place can `datalad rerun` it
    ds_abs = dataset.absolute()
    run_cmd = shlex.join(
        [
            "bidspack",
            "package",
            os.path.relpath(submission.absolute(), ds_abs),
            ".",
            "--spec",
            os.path.relpath(spec_path.absolute(), ds_abs),
        ]
    )
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
            submission,
            dataset,
            spec,
            dry_run=dry_run,
            validate=not no_validate,
            progress=progress,
            recover_first=not no_recover,
            datalad=datalad,
            run_cmd=run_cmd,
            only=steps,
            dask=Execution(workers=workers, scheduler=scheduler),
        )
        counts = render(
            records,
            as_json=as_json,
            title="plan" if dry_run else "bidspack package",
            quiet_ok=not dry_run,
        )
    if counts["error"]:
        sys.exit(1)
