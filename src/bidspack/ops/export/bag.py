"""The ``bagit`` export: a BagIt bag of a copy of the dataset made by ``bagit`` (sha256
manifests), validated with ``bagit`` and compared with bidspack's manifest (see
:mod:`bidspack.ops.export`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from bidspack import __version__
from bidspack.errors import IntegrityError
from bidspack.ops.export.common import dataset_description, last_step_time
from bidspack.ops.export.copying import copy_dataset, copy_record, crosscheck
from bidspack.provenance.manifest import Row
from bidspack.records import Record


def export_bag(dataset: Path, tmp: Path, out: Path, rows: dict[str, Row]) -> Iterator[Record]:
    """Copy *dataset* to *tmp* (the staged *out*) and check the copy against the manifest
    *rows*, make it a bag and validate it; yield the copy and validation records.

    Raises:
        IntegrityError: a copied file differs from the manifest, is missing or is not
            listed; or the bag does not pass :func:`check_bag`.
    """
    import bagit

    copied = copy_dataset(dataset, tmp)
    yield copy_record(copied, crosscheck(rows, {k: c.sha256 for k, c in copied.items()}))
    desc = dataset_description(dataset)
    info = {
        "External-Description": str(desc.get("Name") or dataset.name),
        "BIDS-Version": str(desc.get("BIDSVersion", "")),
        "License": str(desc.get("License", "")),
        "Exported-By": f"bidspack {__version__} (bidspack export --format bagit)",
        "Bagging-Date": last_step_time(dataset)[:10],
    }
    if desc.get("DatasetDOI"):
        info["External-Identifier"] = str(desc["DatasetDOI"])
    bagit.make_bag(str(tmp), {k: v for k, v in info.items() if v}, checksums=["sha256"])
    checked = check_bag(tmp, rows, files=len(copied))
    yield Record(
        "validate",
        str(out),
        "ok",
        f"bag valid (bagit: {len(copied)} payload files, sha256 recomputed); "
        f"{checked} manifest rows equal to the bag's manifest-sha256.txt",
        {"files": len(copied), "checked": checked},
    )


def check_bag(root: Path, rows: Mapping[str, Row], *, files: int | None = None) -> int:
    """Validate the bag in *root* with ``bagit`` (structure, Payload-Oxum, every sha256
    recomputed) and compare its ``manifest-sha256.txt`` with the manifest *rows*
    (:func:`crosscheck`); with *files*, the payload must hold that many files. Return
    the number of rows checked.

    Raises:
        IntegrityError: naming *root* or the file concerned.
    """
    import bagit

    try:
        bag = bagit.Bag(str(root))
        bag.validate()
    except bagit.BagError as exc:
        details = "; ".join(str(d) for d in getattr(exc, "details", [])[:5])
        raise IntegrityError(root, f"bagit: {exc} {details}".strip()) from exc
    sha = {}
    for path, digests in bag.entries.items():
        if path.startswith("data/"):
            sha[path[len("data/") :]] = digests["sha256"]
    if files is not None and len(sha) != files:
        raise IntegrityError(root, f"the bag holds {len(sha)} payload files, {files} were copied")
    return crosscheck(rows, sha)
