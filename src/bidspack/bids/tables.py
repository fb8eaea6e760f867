"""Write BIDS TSV tables and JSON files deterministically.

TSV: tab-separated, ``n/a`` for missing values, LF line endings, UTF-8, rows in the
order given (callers sort). JSON: 2-space indent, keys in insertion order, UTF-8,
trailing newline. Source: BIDS specification, "Common principles: tabular files".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def tsv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """Render rows as BIDS TSV text; values missing from a row become ``n/a``."""

    def cell(value: Any) -> str:
        if value is None or value == "":
            return "n/a"
        text = str(value)
        if "\t" in text or "\n" in text:
            raise ValueError(f"TSV value contains a tab or newline: {text!r}")
        return text

    lines = ["\t".join(columns)]
    lines += ["\t".join(cell(row.get(c)) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def json_text(data: Any) -> str:
    """Render JSON as bidspack writes it everywhere (stable, human-readable)."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text with LF line endings, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Read a BIDS TSV into a list of row dicts (all values as strings)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line]
