"""``bidspack verify DATASET``: check every file against the manifest.

Recomputes sha256 and xxh3-128 of every listed file (and of every OME-Zarr array, see
:mod:`bidspack.provenance.digests`) and the pixel hash of every image that has one;
reports files that are ``modified`` (digest or pixel hash differs), ``missing`` (listed,
absent) and ``unlisted`` (present, not in the manifest). Each problem is an ``error``
record naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bidspack.errors import ValidationFailed
from bidspack.io.ometiff import pixel_hash_of_file
from bidspack.io.omezarr import pixel_hash_of_zarr
from bidspack.provenance.digests import entries
from bidspack.provenance.manifest import MANIFEST_TSV, listed, read_manifest
from bidspack.records import Record


def _present(dataset: Path) -> set[str]:
    found: set[str] = set()
    for top in sorted(dataset.iterdir()):
        rel = top.name
        if not listed(rel) or (top.is_dir() and not listed(rel + "/")):
            continue
        found.update(k for k in entries(dataset, rel) if listed(k))
    return found


def _pixel_hash(dataset: Path, rel: str) -> str:
    """Pixel hash of an OME-TIFF, or of one level (``<root>.ome.zarr/<level>``) of an OME-Zarr."""
    if ".ome.zarr/" in rel:
        root, _, level = rel.rpartition("/")
        return pixel_hash_of_zarr(dataset / root, level=int(level))
    return pixel_hash_of_file(dataset / rel)


def verify(dataset: Path, *, pixels: bool = True) -> Iterator[Record]:
    """Yield one record per problem, then a summary record.

    Raises:
        ValidationFailed: the dataset has no manifest.
    """
    dataset = Path(dataset)
    rows = read_manifest(dataset)
    if not rows:
        raise ValidationFailed(dataset, f"no manifest ({MANIFEST_TSV}); nothing to verify")
    present = _present(dataset)
    problems = 0
    for rel in sorted(rows):
        row = rows[rel]
        if rel not in present:
            problems += 1
            yield Record(
                "verify",
                rel,
                "error",
                "missing: listed in the manifest, not found",
                {"problem": "missing"},
            )
            continue
        d = entries(dataset, rel)[rel]
        if (d.size, d.sha256, d.xxh3_128) != (row["size"], row["sha256"], row["xxh3_128"]):
            problems += 1
            detail = "modified: sha256/xxh3-128 differ from the manifest"
            if pixels and row.get("pixel_hash"):
                ph = _pixel_hash(dataset, rel)
                detail += "; pixels differ" if ph != row["pixel_hash"] else "; pixels unchanged"
            yield Record(
                "verify",
                rel,
                "error",
                detail,
                {"problem": "modified", "sha256": d.sha256, "expected": row["sha256"]},
            )
            continue
        if pixels and row.get("pixel_hash"):
            ph = _pixel_hash(dataset, rel)
            if ph != row["pixel_hash"]:
                problems += 1
                yield Record(
                    "verify", rel, "error", "modified: pixel hash differs", {"problem": "modified"}
                )
    for rel in sorted(present - set(rows)):
        problems += 1
        yield Record(
            "verify",
            rel,
            "error",
            "unlisted: present, not in the manifest",
            {"problem": "unlisted"},
        )
    yield Record(
        "verify",
        ".",
        "error" if problems else "ok",
        f"{len(rows)} files checked, {problems} problem(s)",
        {"files": len(rows), "problems": problems},
    )
