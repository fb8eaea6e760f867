"""``bidspack verify DATASET`` and ``bidspack log DATASET``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.text import Text

from bidspack.cli.base import json_option, make_console, map_errors, render


@click.command("verify", short_help="Check files against the manifest (checksums, pixels).")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--no-pixels", is_flag=True, help="Skip pixel hashes (checksums only).")
@json_option
@map_errors
def verify_cmd(dataset: Path, no_pixels: bool, as_json: bool) -> None:
    """Recompute checksums and pixel hashes of DATASET and compare them with its
    manifest; report modified, missing and unlisted files. Exit code 1 on any."""
    from bidspack.ops.verify import verify

    counts = render(verify(dataset, pixels=not no_pixels), as_json=as_json, title="bidspack verify")
    if counts["error"]:
        sys.exit(1)


@click.command("log", short_help="Step history of a dataset, newest first.")
@click.argument("dataset", type=click.Path(path_type=Path))
@json_option
@map_errors
def log_cmd(dataset: Path, as_json: bool) -> None:
    """The step history of DATASET from its provenance records, newest first."""
    from bidspack.provenance.record import read_records

    console = make_console()
    for rec in read_records(dataset):
        act = rec["Records"]["Activities"][0]
        outputs = [e for e in rec["Records"]["Entities"] if e.get("GeneratedBy") == act["Id"]]
        # records are history: a step shows the labels it ran with; a rename, old -> new
        mapping = (act.get("Parameters") or {}).get("mapping") or {}
        what = (
            ", ".join(f"{old} -> {new}" for old, new in mapping.items())
            if act["Label"] == "rename-subject" and mapping
            else str(act.get("Step", ""))
        )
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "activity": act["Id"],
                        "operation": act["Label"],
                        "step": act.get("Step"),
                        "started": act["StartedAtTime"],
                        "ended": act["EndedAtTime"],
                        "outputs": len(outputs),
                        **({"renamed": mapping} if act["Label"] == "rename-subject" else {}),
                    }
                )
            )
        else:
            console.print(
                Text.assemble(
                    f"{act['EndedAtTime']}  ",
                    (str(act["Label"]), "bold"),
                    f" {what}  {len(outputs)} output(s)  {act['Id']}",
                )
            )
