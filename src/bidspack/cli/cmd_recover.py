"""``bidspack recover DATASET``: finish or undo interrupted transactions."""

from __future__ import annotations

from pathlib import Path

import click

from bidspack.cli.base import json_option, map_errors, render
from bidspack.errors import OutputError
from bidspack.records import Record


@click.command("recover", short_help="Finish or undo steps of an interrupted run.")
@click.argument("dataset", type=click.Path(path_type=Path))
@json_option
@map_errors
def recover_cmd(dataset: Path, as_json: bool) -> None:
    """Roll back interrupted steps that had not reached their commit point and roll
    forward those that had; report what was done. Safe to run at any time."""
    from bidspack.ops.session import recover_records
    from bidspack.txn import dataset_lock

    if not dataset.is_dir():
        raise OutputError(dataset, "is not a folder")

    def records() -> list[Record]:
        with dataset_lock(dataset):
            recs = list(recover_records(dataset))
        return recs or [Record("recover", ".", "notneeded", "no unfinished transaction")]

    render(records(), as_json=as_json, title="bidspack recover")
