"""``bidspack report DATASET`` (self-contained HTML QC report) and ``bidspack view
DATASET`` (Neuroglancer on the local dataset)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from bidspack.cli.base import make_console, map_errors, plain


@click.command("report", short_help="Write a self-contained HTML QC report of a dataset.")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The HTML file to write (default: report.html in the current folder).",
)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option(
    "--no-validate",
    is_flag=True,
    help="Do not run the validator and 'bidspack verify' (the report says they were skipped).",
)
@click.option(
    "--qc",
    "qc",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="QC rating table (default: qc.tsv beside the report); written if absent, read if present.",
)
@map_errors
def report_cmd(
    dataset: Path, output: Path | None, force: bool, no_validate: bool, qc: Path | None
) -> None:
    """Write one HTML file that opens offline: per image its mid-slices and maximum
    projections (labels as outlines), histogram, metadata and sidecar; participants and
    samples; validation and verify results; the provenance timeline; derived-dataset
    summaries. Pixels come from a small pyramid level, never level 0 of a large image.

    Without -o the report is report.html in the current folder, refused if that lies
    inside DATASET (pass -o to write there on purpose).
    """
    from bidspack.errors import OutputError
    from bidspack.report.dataset_report import write_report

    if output is None:
        output = Path("report.html")
        if output.resolve().is_relative_to(dataset.resolve()):
            raise OutputError(
                output, "the default output lies inside the dataset", hint="pass -o PATH"
            )
    result = write_report(dataset, output, validate=not no_validate, force=force, qc=qc)
    console = make_console()
    console.print(
        plain(
            f"report: {result.output} ({result.size / 2**20:.1f} MiB, {result.images} image(s), "
            f"{result.seconds:.1f} s); validation {result.validation}"
        )
    )
    console.print(
        plain(f"qc table: {result.qc} ({'written' if result.qc_written else 'read back'})")
    )


@click.command("view", short_help="Serve a dataset to Neuroglancer on 127.0.0.1 (read-only).")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--port", type=int, default=0, show_default=True, help="Port (0: a free one).")
@click.option("--no-browser", is_flag=True, help="Print the link only; do not open a browser.")
@map_errors
def view_cmd(dataset: Path, port: int, no_browser: bool) -> None:
    """Serve DATASET read-only on http://127.0.0.1:PORT/data/ (CORS, range requests,
    nothing outside the dataset) with the neuroglancer package's bundled client, and
    print (and open) a Neuroglancer link showing every OME-Zarr image with its labels.
    Ctrl-C stops the server.
    """
    from bidspack.ops.view import ViewServer, open_in_browser

    server = ViewServer(dataset, port=port)
    console = make_console()
    console.print(plain(f"serving {dataset} read-only at {server.base}/data/ (Ctrl-C stops)"))
    console.print(plain(server.url))
    sys.stdout.flush()
    if not no_browser:
        open_in_browser(server.url)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM stop cleanly, also where SIGINT was ignored (a background job)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    console.print(plain(f"stopped ({len(server.log)} request(s) served)"))
