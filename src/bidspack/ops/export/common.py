"""Small readers and formatters shared by the export formats: the dataset's
``dataset_description.json`` and README summary, record times and compact JSON text.

The dataset is untrusted input: JSON files are read as strict UTF-8 with their errors
reported as :class:`~bidspack.errors.ValidationFailed` naming the file, and the
provenance records are checked against ``specs/provenance.schema.json`` before any
export reads them (:func:`check_records`)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from bidspack.errors import UnsafeInputError, ValidationFailed
from bidspack.provenance.manifest import PROVENANCE_DIR
from bidspack.provenance.record import now, read_records
from bidspack.safety import entry_kind, is_within

#: Largest JSON file (dataset_description.json, a provenance record) an export parses.
MAX_JSON_BYTES = 64 << 20


def read_json_file(path: Path, dataset: Path) -> Any:
    """The JSON value of the dataset file *path*: a regular file (or a symbolic link
    that stays inside *dataset*), at most :data:`MAX_JSON_BYTES`, UTF-8, valid JSON.

    Raises:
        UnsafeInputError: a symbolic link leading outside *dataset*, or not a regular
            file (a FIFO, a folder ...).
        ValidationFailed: too large, not UTF-8 or not valid JSON (line and column named).
    """
    kind = entry_kind(path)
    if kind == "symlink" and not is_within(path, dataset):
        raise UnsafeInputError(path, "is a symbolic link leading outside the dataset; not read")
    if kind not in ("file", "symlink") or not path.is_file():
        raise UnsafeInputError(path, f"is not a regular file ({entry_kind(path.resolve())})")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValidationFailed(path, f"is larger than {MAX_JSON_BYTES} bytes")
    data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            path, f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ValidationFailed(
            path, f"is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from exc
    except RecursionError as exc:
        raise ValidationFailed(path, "is not valid JSON (nested too deeply)") from exc


def check_records(dataset: Path) -> int:
    """Check every provenance record of *dataset* (``code/bidspack/provenance/*.json``)
    before an export reads them: :func:`read_json_file`, then
    ``specs/provenance.schema.json``. Return the number of records.

    Raises:
        UnsafeInputError: a record is a symbolic link leading outside the dataset or not
            a regular file.
        ValidationFailed: a record is not UTF-8 JSON or not valid against the schema
            (the key named).
    """
    import jsonschema

    from bidspack.spec import load_schema

    folder = dataset / PROVENANCE_DIR
    if entry_kind(folder) == "symlink" and not is_within(folder, dataset):
        raise UnsafeInputError(folder, "is a symbolic link leading outside the dataset")
    if not folder.is_dir():
        return 0
    validator = jsonschema.Draft202012Validator(load_schema("provenance"))
    paths = sorted(folder.glob("*.json"))
    for path in paths:
        doc = read_json_file(path, dataset)
        error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
        if error is not None:
            where = "".join(
                f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
            ).lstrip(".")
            reason = error.message if len(error.message) <= 300 else error.message[:300] + " ..."
            raise ValidationFailed(
                path,
                f"{where or 'the record'}: {reason} (specs/provenance.schema.json)",
            )
    return len(paths)


def dataset_description(dataset: Path) -> dict[str, Any]:
    """``dataset_description.json`` of *dataset* as a dict.

    Raises:
        ValidationFailed: it is not UTF-8, not valid JSON or not a JSON object.
        UnsafeInputError: it is a symbolic link leading outside *dataset*.
    """
    path = dataset / "dataset_description.json"
    data = read_json_file(path, dataset)
    if not isinstance(data, dict):
        raise ValidationFailed(path, "not a JSON object")
    return data


def readme_summary(dataset: Path) -> str | None:
    """The first paragraph of the dataset's README that is not a heading, or None."""
    for name in ("README.md", "README", "README.rst", "README.txt"):
        path = dataset / name
        if path.is_file() and is_within(path, dataset):
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
