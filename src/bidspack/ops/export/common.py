"""Small readers and formatters shared by the export formats: the dataset's
``dataset_description.json`` and README summary, record times and compact JSON text."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from bidspack.errors import ValidationFailed
from bidspack.provenance.record import now, read_records


def dataset_description(dataset: Path) -> dict[str, Any]:
    """``dataset_description.json`` of *dataset* as a dict.

    Raises:
        ValidationFailed: it is not a JSON object.
    """
    path = dataset / "dataset_description.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValidationFailed(path, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValidationFailed(path, "not a JSON object")
    return data


def readme_summary(dataset: Path) -> str | None:
    """The first paragraph of the dataset's README that is not a heading, or None."""
    for name in ("README.md", "README", "README.rst", "README.txt"):
        path = dataset / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            for para in re.split(r"\n\s*\n", text):
                lines = [ln.strip() for ln in para.strip().splitlines()]
                lines = [ln for ln in lines if ln and not ln.startswith("#")]
                if lines and not set(lines[0]) <= set("=-~*"):
                    return " ".join(lines)
    return None


def parse_time(text: str) -> datetime:
    """A record time (ISO 8601) as a :class:`~datetime.datetime`."""
    return datetime.fromisoformat(text)


def compact_json(value: Any) -> str:
    """*value* as compact JSON text with sorted keys (parameters, renames, deletions)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def last_step_time(dataset: Path) -> str:
    """When the dataset was last changed: the newest ``EndedAtTime`` of its provenance
    records (UTC, ``...Z``), or the current time if it has none. Exports date
    themselves with it (RO-Crate ``datePublished``, BagIt ``Bagging-Date``), so that
    exporting one dataset state twice gives the same metadata."""
    records = read_records(dataset)
    if records:
        ended = records[0]["Records"]["Activities"][0].get("EndedAtTime")
        if ended:
            return str(ended)
    return now()
