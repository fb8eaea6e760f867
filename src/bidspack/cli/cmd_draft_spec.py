"""``bidspack draft-spec SUBMISSION [-o spec.toml]``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bidspack.cli.base import json_option, map_errors, render


@click.command("draft-spec")
@click.argument("submission", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Write the draft to this file (default: print it to stdout).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --output file.")
@json_option
@map_errors
def draft_spec_cmd(submission: Path, output: Path | None, force: bool, as_json: bool) -> None:
    """Draft a commented packaging spec (TOML) from a SUBMISSION folder.

    Reads only metadata (TIFF headers, vendor file metadata; a few sampled planes to
    tell label images from intensity images). Values the files cannot answer are TODO
    placeholders that bidspack refuses until you fill them; guesses are marked CHECK.
    Exits 1 if a channel folder or file cannot be read (the draft is still written).
    """
    from bidspack.errors import OutputError
    from bidspack.ops.draft_spec import draft_spec
    from bidspack.records import Record

    if output is not None and output.exists() and not force:
        raise OutputError(output, "exists already", hint="pass --force to overwrite it")
    text, records = draft_spec(submission)
    todos = sum(r.action == "todo" for r in records)
    failed = any(r.status == "error" for r in records)
    if output is None:
        if as_json:
            records.append(Record("draft", "-", "ok", f"{todos} TODO(s) left", {"text": text}))
            render(records, as_json=True, title="draft-spec")
        else:
            click.echo(text, nl=False)
            for rec in records:
                if rec.status != "ok" or rec.action == "near-copy":
                    line = f" (line {rec.details['line']})" if "line" in rec.details else ""
                    click.echo(f"{rec.action}: {rec.path}{line}: {rec.message}", err=True)
            click.echo(f"{todos} TODO(s) left in the draft", err=True)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        records.append(Record("write", str(output), "ok", f"{todos} TODO(s) left to fill"))
        render(records, as_json=as_json, title="bidspack draft-spec")
    if failed:
        sys.exit(1)
