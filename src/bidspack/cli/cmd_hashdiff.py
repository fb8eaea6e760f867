"""``bidspack hashdiff A B`` and ``bidspack duplicates ROOT``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bidspack.cli.base import json_option, map_errors
from bidspack.errors import OutputError
from bidspack.safety import escape


@click.command("hashdiff")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    help="Folder for the reports (default: ./hashdiff_<A>_vs_<B>).",
)
@click.option("--overwrite", is_flag=True, help="Replace the reports in an existing --out folder.")
@click.option(
    "--dataset",
    type=click.Path(path_type=Path),
    help="Keep the reports inside this bidspack dataset, under "
    "code/bidspack/hashdiff/<A>_vs_<B>/ (one transaction).",
)
@click.option("--workers", type=int, default=None, help="Parallel workers (default: CPU count).")
@json_option
@map_errors(exit_code=2)
def hashdiff_cmd(
    a: Path,
    b: Path,
    out: Path | None,
    overwrite: bool,
    dataset: Path | None,
    workers: int | None,
    as_json: bool,
) -> None:
    """Compare image folders, trees or stacks A and B by pixel hash.

    Slices are paired by Z index whatever the zero padding (Z0990.tif ~ Z00990.tif),
    trees by sub-folder, stacks page by page. Symbolic links, FIFOs, sockets and
    devices inside A and B are listed as skipped, never opened. Writes
    comparison_results.csv/.parquet, different.csv/.parquet, summary.json and a
    self-contained report.html.
    Exit code: 0 identical, 1 different (or incomplete: entries skipped), 2 error.
    """
    from bidspack.ops.hashdiff import hashdiff, side_name
    from bidspack.report.hashdiff_report import keep_in_dataset, summary, write_outputs

    if dataset is not None and out is not None:
        raise OutputError(out, "give either --out or --dataset")
    out = out or Path(f"hashdiff_{side_name(a)}_vs_{side_name(b)}")
    if dataset is None and out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(out, "exists and is not empty", hint="use --overwrite or another --out")
    show = not as_json and sys.stderr.isatty()
    with Progress(transient=True, disable=not show) as bar:
        task = bar.add_task("comparing", total=None)
        diff = hashdiff(
            a, b, workers=workers, progress=lambda d, t: bar.update(task, completed=d, total=t)
        )
    if dataset is not None:
        out = keep_in_dataset(diff, dataset)
        paths = {"report": out / "report.html"}
    else:
        paths = write_outputs(diff, out)
    summ = summary(diff)
    if as_json:
        click.echo(json.dumps({**summ, "out": str(out)}, ensure_ascii=False))
    else:
        console = Console(highlight=False)
        table = Table(title=f"hashdiff A={escape(diff.a_name)}  B={escape(diff.b_name)}")
        for col in ("pair", "status", "verdict"):
            table.add_column(col, overflow="fold")
        different = diff.different()
        for r in different[:50]:
            table.add_row(escape(r.key), r.status, escape(r.verdict))
        if different:
            console.print(table)
        if len(different) > 50:
            console.print(f"... and {len(different) - 50} more (see {escape(paths['report'])})")
        console.print(" ".join(f"{k}: {v}" for k, v in summ["counts"].items()))
        console.print(
            f"verdict: [bold]{summ['verdict']}[/]; reports in {escape(out)} "
            f"({escape(paths['report'].name)})"
        )
    sys.exit(0 if diff.identical else 1)


@click.command("duplicates")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--workers", type=int, default=None, help="Parallel workers (default: CPU count).")
@json_option
@map_errors(exit_code=2)
def duplicates_cmd(root: Path, workers: int | None, as_json: bool) -> None:
    """Group pixel-identical images (TIFF, OME-TIFF, PNG) anywhere under ROOT,
    whatever their names, formats or compression. Symbolic links, FIFOs, sockets and
    devices are listed as skipped, never opened. Exit code 1 if duplicates exist."""
    from bidspack.ops.duplicates import find_duplicates

    groups, hashes = find_duplicates(root, workers=workers)
    if as_json:
        for i, g in enumerate(groups):
            click.echo(
                json.dumps(
                    {
                        "group": i,
                        "pixel_hash": g[0].pixel_hash,
                        "shape": g[0].shape,
                        "dtype": g[0].dtype,
                        "paths": [f.path for f in g],
                    }
                )
            )
        for f in hashes:
            if f.error:
                click.echo(json.dumps({"path": f.path, "error": f.error}))
            elif f.skipped:
                click.echo(json.dumps({"path": f.path, "skipped": f.skipped}))
    else:
        console = Console(highlight=False)
        for i, g in enumerate(groups):
            console.print(
                f"[bold]group {i}[/] {g[0].shape} {g[0].dtype} pixel hash {g[0].pixel_hash}"
            )
            for f in g:
                console.print(f"  {escape(f.path)}", soft_wrap=True)
        for f in hashes:
            if f.error:
                console.print(
                    f"[yellow]unreadable[/] {escape(f.path)}: {escape(f.error)}", soft_wrap=True
                )
            elif f.skipped:
                console.print(
                    f"[yellow]skipped[/] {escape(f.path)}: {escape(f.skipped)}", soft_wrap=True
                )
        n_images = sum(1 for f in hashes if not f.skipped)
        n_skipped = len(hashes) - n_images
        console.print(
            f"{n_images} images, {len(groups)} group(s) of pixel-identical images"
            + (f", {n_skipped} skipped (not regular files)" if n_skipped else "")
        )
    sys.exit(1 if groups else 0)
