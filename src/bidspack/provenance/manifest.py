"""The dataset manifest: every file with its size, sha256, xxh3-128, pixel hash (images)
and the step that produced it. ``code/bidspack/manifest.tsv`` (human-readable) and
``code/bidspack/manifest.parquet`` hold the same rows, sorted by path; the row format is
``specs/manifest.schema.json``. The manifest does not list itself, the provenance
records (``code/bidspack/provenance/``), bidspack's state (``.bidspack/``) or
version-control files (``.git``, ``.datalad``, ``.gitattributes``, ``.gitignore``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bidspack.bids.tables import read_tsv, tsv_text

MANIFEST_TSV = "code/bidspack/manifest.tsv"
MANIFEST_PARQUET = "code/bidspack/manifest.parquet"
PROVENANCE_DIR = "code/bidspack/provenance"
COLUMNS = ("path", "size", "sha256", "xxh3_128", "pixel_hash", "step")
_SKIP_PREFIXES = (".bidspack/", ".git/", ".datalad/", PROVENANCE_DIR + "/")
_SKIP_FILES = {
    MANIFEST_TSV,
    MANIFEST_PARQUET,
    ".gitattributes",
    ".gitignore",
    ".gitmodules",
    ".git",
}

Row = dict[str, Any]


def listed(rel: str) -> bool:
    """Whether a dataset-relative path belongs in the manifest."""
    return rel not in _SKIP_FILES and not rel.startswith(_SKIP_PREFIXES)


def read_manifest(dataset: Path) -> dict[str, Row]:
    """Rows of the dataset's manifest by path ({} if there is none)."""
    p = Path(dataset) / MANIFEST_TSV
    if not p.is_file():
        return {}
    rows = {}
    for r in read_tsv(p):
        row: Row = {k: (None if r.get(k) in (None, "n/a") else r[k]) for k in COLUMNS}
        row["size"] = int(row["size"])
        rows[row["path"]] = row
    return rows


def manifest_texts(rows: dict[str, Row]) -> tuple[str, pd.DataFrame]:
    """(TSV text, DataFrame for Parquet) of rows, sorted by path."""
    ordered = [rows[k] for k in sorted(rows)]
    df = pd.DataFrame(ordered, columns=list(COLUMNS))
    df["size"] = df["size"].astype("int64")
    return tsv_text(COLUMNS, ordered), df


def write_manifest(tsv: Path, parquet: Path, rows: dict[str, Row]) -> None:
    """Write both manifest files (deterministic bytes for the same rows)."""
    text, df = manifest_texts(rows)
    tsv.parent.mkdir(parents=True, exist_ok=True)
    with open(tsv, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    df.to_parquet(parquet, index=False)


def apply_journal(rows: dict[str, Row], ops: list[dict[str, Any]]) -> dict[str, Row]:
    """Rows after the renames and deletes of a journal (files and folders)."""
    out = dict(rows)
    for op in ops:
        path = op["path"]
        if op["op"] == "delete":
            out = {k: v for k, v in out.items() if not (k == path or k.startswith(path + "/"))}
        elif op["op"] == "rename":
            to = op["to"]
            moved: dict[str, Row] = {}
            for k, v in out.items():
                if k == path or k.startswith(path + "/"):
                    nk = to + k[len(path) :]
                    moved[nk] = {**v, "path": nk}
                else:
                    moved[k] = v
            out = moved
    return out
