"""File digests for the manifest: sha256, xxh3-128, and OME-Zarr array digests.

- ``sha256``: the published digest (equal to the hex part of a git-annex SHA256E key).
- ``xxh3_128``: fast change detection (xxHash XXH3, 128 bit).
- An ``.ome.zarr`` tree is not listed chunk by chunk. Each *array* (a folder holding
  ``.zarray`` (Zarr v2) or a ``zarr.json`` whose ``node_type`` is ``array`` (Zarr v3))
  gets one row, whose digests are computed over the lines
  ``<path relative to the array folder>\\0<sha256 of the file>\\n`` (resp. xxh3-128) for
  every file below it, in sorted path order; its size is the sum of the file sizes.
  Group-level metadata files (``zarr.json``, ``.zattrs``, ``.zgroup``) get rows of
  their own.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import xxhash

CHUNK = 8 << 20


@dataclass(frozen=True)
class Digest:
    """Size in bytes and digests of one manifest entry."""

    size: int
    sha256: str
    xxh3_128: str


def file_digest(path: Path) -> Digest:
    """sha256 and xxh3-128 of a file, read once in 8 MiB chunks."""
    sha, xx = hashlib.sha256(), xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            xx.update(chunk)
            size += len(chunk)
    return Digest(size, sha.hexdigest(), xx.hexdigest())


def _is_array_dir(path: Path) -> bool:
    if (path / ".zarray").is_file():
        return True
    meta = path / "zarr.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text(encoding="utf-8")).get("node_type") == "array"
        except (OSError, json.JSONDecodeError):
            return False
    return False


def array_digest(path: Path) -> Digest:
    """Digest of one Zarr array folder (see module docstring)."""
    sha, xx = hashlib.sha256(), xxhash.xxh3_128()
    total = 0
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        d = file_digest(f)
        rel = f.relative_to(path).as_posix()
        sha.update(f"{rel}\0{d.sha256}\n".encode())
        xx.update(f"{rel}\0{d.xxh3_128}\n".encode())
        total += d.size
    return Digest(total, sha.hexdigest(), xx.hexdigest())


def entries(root: Path, rel: str) -> dict[str, Digest]:
    """Manifest entries of the file or folder *rel* under *root*: one per file, and one
    per Zarr array inside ``.ome.zarr`` trees (dataset-relative POSIX paths)."""
    base = root / rel
    if base.is_file():
        return {rel: file_digest(base)}
    out: dict[str, Digest] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        in_zarr = ".ome.zarr" in here.relative_to(root).as_posix()
        if in_zarr and _is_array_dir(here):
            out[here.relative_to(root).as_posix()] = array_digest(here)
            dirnames[:] = []
            continue
        dirnames.sort()
        for f in sorted(filenames):
            p = here / f
            out[p.relative_to(root).as_posix()] = file_digest(p)
    return out
