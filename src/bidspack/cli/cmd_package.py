"""``bidspack package SUBMISSION DATASET --spec FILE``.

The text output (:class:`PackageReport`) is written for a curator: per step, each
output with the inputs it consumes (dry run) or what was written and its size (run),
every excluded input with its reason, then a summary in plain words (files, bytes,
time, validation outcome by code). ``--json`` prints the records instead.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from bidspack.cli.base import (
    STATUS_STYLE,
    human_bytes,
    is_warning,
    json_option,
    make_console,
    map_errors,
    plain,
    render,
    tree_bytes,
    validation_lines,
)
from bidspack.records import Record, count_statuses

#: Indent of the second line of an entry (below the path).
_MORE = " " * 21
#: Excluded files listed one by one up to this many per folder (all with --verbose).
_LIST_FILES = 8


class PackageReport:
    """Prints the records of a packaging run (or dry run) as they come, grouped by
    step, and a final summary. Every user value is printed as plain text.

    Args:
        console: where to print.
        dataset: the output folder (sizes of what was written are read from it).
        dry_run: the records are a plan.
        verbose: list every source and excluded file, pixel hashes, passing checks.
        validated: whether the run validates the dataset at the end.
    """

    def __init__(
        self,
        console: Console,
        dataset: Path,
        *,
        dry_run: bool,
        verbose: bool = False,
        validated: bool = True,
    ) -> None:
        self.console = console
        self.dataset = Path(dataset)
        self.dry_run = dry_run
        self.verbose = verbose
        self.validated = validated
        self.records: list[Record] = []
        self.step: str | None = None
        self.started = time.monotonic()
        self.bytes_written = 0

    # -- lines ---------------------------------------------------------------------
    def _print(self, *objects: object) -> None:
        # soft wrap: a long path is never broken by an inserted newline, on a terminal
        # too (the terminal folds it visually; copy and paste keep it whole)
        self.console.print(*objects, soft_wrap=True)

    def _entry(self, rec: Record, *, extra: str = "", shown: str | None = None) -> None:
        status = shown or rec.status
        self._print(
            Text.assemble(
                "  ",
                (f"{status:<9}", STATUS_STYLE.get(status, "")),
                " ",
                f"{rec.action:<8}",
                " ",
                rec.path,
                extra,
            )
        )

    def _more(self, text: str, style: str = "") -> None:
        self._print(Text.assemble(_MORE, (text, style)))

    def _header(self, step: str | None) -> None:
        if step and step != self.step:
            self.step = step
            self._print(Text(step, style="bold"))

    def _excluded_files(self, rec: Record) -> None:
        sources = list(rec.details.get("sources", []))
        if not sources:
            return
        by_folder: dict[str, list[str]] = {}
        for s in sources:
            parent = PurePosixPath(s).parent
            by_folder.setdefault(str(parent), []).append(PurePosixPath(s).name)
        for folder, names in by_folder.items():
            if len(by_folder) > 1 or folder != rec.path:
                self._more(f"in {folder}/:", "dim")
            if self.verbose or len(names) <= _LIST_FILES:
                for name in names:
                    self._more(f"  {name}", "dim")
            else:
                self._more(f"  {names[0]} ... {names[-1]}", "dim")

    # -- records -------------------------------------------------------------------
    def add(self, rec: Record) -> None:
        """Print one record (as part of its step)."""
        self.records.append(rec)
        if rec.action == "validate":
            self._validation(rec)
            return
        step = rec.details.get("step")
        if rec.action in ("step", "skip"):
            step = rec.path
        self._header(step if isinstance(step, str) else None)
        if rec.action == "step":
            if rec.status == "notneeded":
                kept = rec.details.get("outputs")
                self._entry(
                    rec, extra=f": {rec.message}" + (f", {kept} output(s) kept" if kept else "")
                )
            elif self.verbose or rec.status != "ok":
                self._entry(rec, extra=f": {rec.message}")
            return
        if rec.action == "exclude":
            files = rec.details.get("files", 1)
            folder = files > 1 or rec.path.endswith("/")
            self._entry(rec, extra=f"/ ({files} files)" if folder else "")
            self._more(f"reason: {rec.message}")
            self._excluded_files(rec)
            return
        if rec.status == "ok" and rec.action in ("convert", "copy", "write"):
            size = tree_bytes(self.dataset / rec.path)
            self.bytes_written += size
            self._entry(rec, extra=f"  ({human_bytes(size)})")
            if rec.action == "convert":
                self._more(rec.message)
                if self.verbose and rec.details.get("pixel_hash"):
                    self._more(f"pixel hash {rec.details['pixel_hash']}", "dim")
            elif rec.action == "copy":
                self._more(rec.message)
            return
        if rec.status == "planned":
            self._entry(rec)
            if rec.action != "write" or rec.message != "metadata":
                self._more(("<- " if rec.action == "convert" else "") + rec.message)
            if self.verbose and rec.action == "convert":
                for src in rec.details.get("sources", []):
                    self._more(f"  {src}", "dim")
            return
        self._entry(rec, extra=f": {rec.message}" if rec.message else "")

    def _validation(self, rec: Record) -> None:
        """Errors always; warnings and passing checks with --verbose (the summary counts
        warnings by code)."""
        if rec.status == "ok" and not self.verbose:
            return
        if self.step != "validation":
            self.step = "validation"
            self._print(Text("validation", style="bold"))
        self._entry(rec, extra=f": {rec.message}", shown="warning" if is_warning(rec) else None)

    # -- summary -------------------------------------------------------------------
    def finish(self) -> dict[str, int]:
        """Print the summary in plain words; return the status counts."""
        recs = self.records
        counts = count_statuses(recs)
        excluded = sum(int(r.details.get("files", 1)) for r in recs if r.action == "exclude")
        self._print()
        if self.dry_run:
            planned = [r for r in recs if r.status == "planned"]
            converts = [r for r in planned if r.action == "convert"]
            inputs = {
                s
                for r in recs
                if r.action in ("convert", "copy", "exclude", "refuse", "skip")
                for s in [
                    *r.details.get("sources", []),
                    *(
                        s2
                        for lb in r.details.get("params", {}).get("labels", [])
                        for s2 in lb["sources"]
                    ),
                ]
            }
            n_conv_src = len({s for r in converts for s in r.details.get("sources", [])})
            text = (
                f"plan: {len(planned)} outputs: {len(converts)} images converted from "
                f"{n_conv_src} input files, "
                f"{sum(r.action == 'copy' for r in planned)} files copied, "
                f"{sum(r.action == 'write' for r in planned)} metadata files; "
                f"{excluded} input files excluded; {len(inputs)} input files accounted for."
            )
            self._print(plain(text))
            if counts["impossible"] or counts["error"]:
                self._print(
                    plain(
                        f"{counts['impossible'] + counts['error']} action(s) cannot be carried out."
                    )
                )
            self._print(plain("Nothing was written (dry run)."))
            return counts
        written = [r for r in recs if r.status == "ok" and r.action in ("convert", "copy", "write")]
        steps = [r for r in recs if r.action == "step"]
        done = sum(r.status == "ok" for r in steps)
        kept = sum(r.status == "notneeded" for r in steps)
        took = time.monotonic() - self.started
        text = (
            f"done: wrote {len(written)} files ({human_bytes(self.bytes_written)}) in "
            f"{done} committed step{'s' if done != 1 else ''}"
            + (f", {kept} step{'s' if kept != 1 else ''} unchanged" if kept else "")
            + f"; {excluded} input files excluded; took {took:.1f} s."
        )
        self._print(plain(text))
        if self.validated:
            for line in validation_lines(recs, subcodes=self.verbose):
                self._print(plain(line))
        else:
            self._print(
                plain("validation: skipped (--no-validate); run 'bidspack validate DATASET'")
            )
        other_errors = [r for r in recs if r.status == "error" and r.action != "validate"]
        if other_errors:
            self._print(plain(f"{len(other_errors)} error(s), listed above.", "bold red"))
        return counts


def report_records(
    records: Iterable[Record],
    dataset: Path,
    *,
    dry_run: bool,
    verbose: bool = False,
    validated: bool = True,
    console: Console | None = None,
) -> dict[str, int]:
    """Print *records* as a :class:`PackageReport`; return the status counts."""
    report = PackageReport(
        console or make_console(),
        dataset,
        dry_run=dry_run,
        verbose=verbose,
        validated=validated,
    )
    for rec in records:
        report.add(rec)
    return report.finish()


@click.command("package", short_help="Package a submission into a BIDS dataset (--dry-run).")
@click.argument("submission", type=click.Path(path_type=Path))
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "--spec",
    "spec_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Packaging spec (TOML or YAML): start from 'bidspack draft-spec SUBMISSION' or "
    "the example examples/lightsheet-spec.toml ('bidspack demo OUT' writes it).",
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
@click.option(
    "--follow-symlinks",
    is_flag=True,
    help="Follow symbolic links that stay inside the submission (recorded in the plan); "
    "by default links are listed as refused and never read.",
)
@click.option(
    "--override-voxel-size",
    is_flag=True,
    help="Let the spec's voxel_size replace physical sizes the files carry when they "
    "differ (recorded in the plan and provenance); without it a difference is an error.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="More detail: every source and excluded file, pixel hashes, passing checks "
    "and validator warnings.",
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
    follow_symlinks: bool,
    override_voxel_size: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """Package a microscopy SUBMISSION folder into a BIDS DATASET.

    Try it first on the example: 'bidspack demo OUT' writes a submission and its spec
    (the same as examples/lightsheet-spec.toml, explained in examples/README.md) and
    packages them. Then 'bidspack draft-spec SUBMISSION -o spec.toml' for your own.

    --dry-run prints the plan: per output, the inputs it consumes (folder, file count,
    Z index range), and every excluded file with its reason; nothing is written.
    A run prints what it wrote, then files, bytes, time and the validation outcome.

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
            *(["--override-voxel-size"] if override_voxel_size else []),
        ]
    )
    show = not as_json and not dry_run and sys.stderr.isatty()
    # the bar is drawn on stderr; printed lines go above it when stdout is the same
    # terminal, and straight to stdout when it is redirected
    on_terminal = show and sys.stdout.isatty()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not show,
        redirect_stdout=on_terminal,
        redirect_stderr=on_terminal,
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
            follow_symlinks=follow_symlinks,
            override_voxel_size=override_voxel_size,
        )
        if as_json:
            counts = render(records, as_json=True, title="bidspack package")
        else:
            counts = report_records(
                records, dataset, dry_run=dry_run, verbose=verbose, validated=not no_validate
            )
    if counts["error"]:
        sys.exit(1)
