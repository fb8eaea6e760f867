"""Step records: what a committed step produced, from which inputs, with which parameters.

A step (e.g. ``sub-45670ko/640_N4``) is committed in one transaction together with its
record ``.bidspack/steps/<key>.json``. Re-running a step whose *fingerprint* is unchanged
and whose outputs are all present is ``notneeded``.

The fingerprint is the xxh3-128 of a canonical JSON document holding the step's
actions (targets, parameters, xxh3-128 of written text) and the xxh3-128 of every
input file's bytes. Input hashes are cached in the record with each file's size and
modification time (nanoseconds); a file whose size and mtime are unchanged is not
re-read (as git's index does), any other file is hashed again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import xxhash

from bidspack.txn.transaction import STATE_DIR

CHUNK = 8 << 20


def file_xxh3(path: Path) -> str:
    """xxh3-128 of a file's bytes (32 hex digits), read in 8 MiB chunks."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def text_xxh3(text: str) -> str:
    """xxh3-128 of UTF-8 text."""
    return xxhash.xxh3_128(text.encode("utf-8")).hexdigest()


def step_key(step: str) -> str:
    """File-name-safe key of a step id (``sub-1/640_N4`` -> ``sub-1__640_N4``)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", step.replace("/", "__"))


def record_path(step: str) -> str:
    """Dataset-relative path of a step's record."""
    return f"{STATE_DIR}/steps/{step_key(step)}.json"


def load_record(dataset: Path, step: str) -> dict[str, Any] | None:
    """The committed record of *step*, or ``None``."""
    p = Path(dataset) / record_path(step)
    if not p.is_file():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def hash_inputs(
    root: Path, rels: list[str], previous: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """``{rel: {size, mtime_ns, xxh3}}`` for input files, reusing *previous* hashes of
    files whose size and mtime are unchanged."""
    old = (previous or {}).get("inputs", {})
    out: dict[str, dict[str, Any]] = {}
    for rel in rels:
        st = (root / rel).stat()
        prev = old.get(rel)
        if prev and prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns:
            digest = prev["xxh3"]
        else:
            digest = file_xxh3(root / rel)
        out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "xxh3": digest}
    return out


def fingerprint(actions: list[dict[str, Any]], inputs: dict[str, dict[str, Any]]) -> str:
    """xxh3-128 over the canonical JSON of the step's actions and input digests."""
    doc = {"actions": actions, "inputs": {k: v["xxh3"] for k, v in sorted(inputs.items())}}
    return xxhash.xxh3_128(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()
