"""Per-step provenance records, written inside the step's transaction.

One JSON file per committed step, ``code/bidspack/provenance/<transaction id>.json``,
with the field names of the BIDS-Prov draft (https://github.com/bids-standard/BEP028_BIDSprov):
``Records`` with ``Software``, ``Environments``, ``Activities`` (operation, step,
parameters, ``Used`` inputs, ``StartedAtTime``/``EndedAtTime``) and ``Entities``
(outputs with ``GeneratedBy`` and ``Digest``; inputs with their digests). Paths are
dataset-relative, or relative to the submission for inputs (``submission:<path>``);
never absolute. The same transaction updates the manifest (:mod:`.manifest`), so the
manifest and the provenance always describe the committed files.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bidspack.bids.tables import json_text
from bidspack.provenance.digests import entries
from bidspack.provenance.manifest import (
    MANIFEST_PARQUET,
    MANIFEST_TSV,
    PROVENANCE_DIR,
    apply_journal,
    listed,
    read_manifest,
    write_manifest,
)
from bidspack.txn import Transaction

PROV_VERSION = "0.0.1"
SOFTWARE = ("bidspack", "tifffile", "zarr", "numpy", "imagecodecs", "ome-types")


def software_versions() -> dict[str, str]:
    """Versions of bidspack, its main libraries and Python."""
    out = {}
    for name in SOFTWARE:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def now() -> str:
    """UTC time, ISO 8601, seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class StepProvenance:
    """What a step did, collected while it runs.

    Attributes:
        operation: the verb (``package``, ``rename-subject``, ``hashdiff``).
        step: step id (``sub-45670ko/640_N4``, ``dataset``, ``rename``).
        parameters: JSON-serialisable parameters.
        used: inputs: ``{"path": "submission:<rel>" | "<dataset rel>", "xxh3_128": ...}``.
        pixel_hashes: output path -> pixel hash, for images.
        started: ``StartedAtTime``.
        relabel: applied to the ``step`` of every kept manifest row (a subject rename
            renames the step ids that carry the label too).
    """

    operation: str
    step: str
    parameters: dict[str, Any] = field(default_factory=dict)
    used: list[dict[str, Any]] = field(default_factory=list)
    pixel_hashes: dict[str, str] = field(default_factory=dict)
    started: str = field(default_factory=now)
    relabel: Callable[[str], str] | None = None


def stage(txn: Transaction, prov: StepProvenance) -> dict[str, Any]:
    """Stage the provenance record and the updated manifest in *txn* (call right
    before ``txn.commit()``). Digests of every staged output are computed here.

    Returns the provenance record.
    """
    dataset = txn.dataset
    ops = txn.journal()
    outputs = [op["path"] for op in ops if op["op"] in ("put", "replace") and listed(op["path"])]
    digests = {}
    for rel in outputs:
        digests.update(entries(txn.tree, rel))
    rows = apply_journal(
        read_manifest(dataset), [op for op in ops if op["op"] in ("rename", "delete")]
    )
    if prov.relabel is not None:
        rows = {k: {**v, "step": prov.relabel(v["step"])} for k, v in rows.items()}
    for rel in outputs:  # a replaced folder: drop its old rows first
        rows = {k: v for k, v in rows.items() if not (k == rel or k.startswith(rel + "/"))}
    for rel, d in digests.items():
        rows[rel] = {
            "path": rel,
            "size": d.size,
            "sha256": d.sha256,
            "xxh3_128": d.xxh3_128,
            "pixel_hash": prov.pixel_hashes.get(rel),
            "step": f"{prov.operation}:{prov.step}",
        }
    for rel, ph in prov.pixel_hashes.items():  # pixels kept under a new name (renames)
        if rel in rows and rows[rel].get("pixel_hash") is None:
            rows[rel]["pixel_hash"] = ph
    write_manifest(txn.stage_path(MANIFEST_TSV), txn.stage_path(MANIFEST_PARQUET), rows)
    activity = f"urn:bidspack:activity:{txn.id}"
    versions = software_versions()
    record = {
        "BIDSProvVersion": PROV_VERSION,
        "Records": {
            "Software": [
                {"Id": f"urn:bidspack:software:{n}", "Label": n, "Version": v}
                for n, v in versions.items()
            ],
            "Environments": [
                {
                    "Id": "urn:bidspack:environment",
                    "Label": "Python environment",
                    "OperatingSystem": platform.system(),
                    "Python": versions["python"],
                }
            ],
            "Activities": [
                {
                    "Id": activity,
                    "Label": prov.operation,
                    "Step": prov.step,
                    "AssociatedWith": ["urn:bidspack:software:bidspack"],
                    "Parameters": prov.parameters,
                    "Used": [f"urn:bidspack:input:{u['xxh3_128']}" for u in prov.used],
                    "Renamed": [[o["path"], o["to"]] for o in ops if o["op"] == "rename"],
                    "Deleted": [o["path"] for o in ops if o["op"] == "delete"],
                    "StartedAtTime": prov.started,
                    "EndedAtTime": now(),
                }
            ],
            "Entities": [
                {
                    "Id": f"urn:bidspack:input:{u['xxh3_128']}",
                    "Label": Path(u["path"]).name,
                    "AtLocation": u["path"],
                    "Digest": {"xxh3-128": u["xxh3_128"]},
                }
                for u in prov.used
            ]
            + [
                {
                    "Id": f"bids::{rel}",
                    "Label": Path(rel).name,
                    "AtLocation": rel,
                    "GeneratedBy": activity,
                    "Digest": {
                        "sha256": d.sha256,
                        "xxh3-128": d.xxh3_128,
                        **(
                            {"bidspack-pixelhash/1": prov.pixel_hashes[rel]}
                            if rel in prov.pixel_hashes
                            else {}
                        ),
                    },
                }
                for rel, d in sorted(digests.items())
            ],
        },
    }
    txn.stage_path(f"{PROVENANCE_DIR}/{txn.id}.json").write_text(
        json_text(record), encoding="utf-8"
    )
    return record


def read_records(dataset: Path) -> list[dict[str, Any]]:
    """Every provenance record of *dataset*, newest first."""
    folder = Path(dataset) / PROVENANCE_DIR
    recs = (
        [json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")]
        if folder.is_dir()
        else []
    )

    def key(r: dict[str, Any]) -> tuple[str, str]:
        act = r["Records"]["Activities"][0]
        return act.get("EndedAtTime", ""), act["Id"]

    return sorted(recs, key=key, reverse=True)
