"""The ``ro-crate`` export: an attached RO-Crate made with ``rocrate`` (a copy of the
dataset plus ``ro-crate-metadata.json``, Process Run Crate profile), re-loaded and
checked (see :mod:`bidspack.ops.export`)."""

from __future__ import annotations

import mimetypes
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from bidspack import __version__
from bidspack.errors import IntegrityError
from bidspack.ops.export.common import (
    compact_json,
    dataset_description,
    last_step_time,
    parse_time,
    readme_summary,
)
from bidspack.ops.export.copying import Copied, copy_dataset, copy_record, crosscheck
from bidspack.provenance.manifest import PROVENANCE_DIR, Row, read_manifest
from bidspack.provenance.record import read_records
from bidspack.records import Record

RO_CRATE_VERSION = "1.3"
PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
_MEDIA_TYPES = {
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".btf": "image/tiff",
    ".tsv": "text/tab-separated-values",
    ".json": "application/json",
    ".md": "text/markdown",
    ".toml": "application/toml",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".parquet": "application/vnd.apache.parquet",
    ".csv": "text/csv",
    ".html": "text/html",
}
_SPDX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")


def export_ro_crate(dataset: Path, tmp: Path, out: Path, rows: dict[str, Row]) -> Iterator[Record]:
    """Copy *dataset* to *tmp* (the staged *out*) and check the copy against the manifest
    *rows*, write the crate's metadata there and validate it; yield the copy and
    validation records.

    Raises:
        IntegrityError: a copied file differs from the manifest, is missing or is not
            listed; or the crate does not pass :func:`check_ro_crate`.
    """
    copied = copy_dataset(dataset, tmp)
    yield copy_record(copied, crosscheck(rows, {k: c.sha256 for k, c in copied.items()}))
    crate = build_ro_crate(dataset, tmp, copied)
    crate.write(tmp)
    counts = check_ro_crate(tmp, copied)
    yield Record(
        "validate",
        str(out),
        "ok",
        f"RO-Crate re-loaded with rocrate: {counts['data_files']} files, "
        f"{counts.get('CreateAction', 0)} CreateActions",
        {"counts": counts},
    )


def _software(crate: Any, name: str, version: str) -> Any:
    """The ``SoftwareApplication`` entity of *name* *version* (added on first use), with
    an absolute ``@id`` (its release page) as Process Run Crate recommends."""
    from rocrate.model.contextentity import ContextEntity

    if name == "python":
        url = "https://www.python.org/"
        ident = f"https://www.python.org/downloads/release/python-{version.replace('.', '')}/"
    else:
        url = f"https://pypi.org/project/{name}/"
        ident = f"{url}{version}/"
    found = crate.get(ident)
    if found is not None:
        return found
    props = {"@type": "SoftwareApplication", "name": name, "version": version, "url": url}
    return crate.add(ContextEntity(crate, ident, properties=props))


def _media_type(rel: str) -> str:
    suffix = PurePosixPath(rel).suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(rel)[0] or "application/octet-stream"


def _zarr_root(rel: str) -> str | None:
    """The ``.zarr`` folder *rel* lies in (outermost), or None."""
    parts = PurePosixPath(rel).parts
    for i, part in enumerate(parts[:-1]):
        if part.endswith(".zarr"):
            return "/".join(parts[: i + 1])
    return None


def _file_description(rel: str, rows: Mapping[str, Row]) -> str:
    if rel in rows and rows[rel].get("step"):
        return f"written by bidspack step {rows[rel]['step']}"
    if rel.startswith(PROVENANCE_DIR + "/"):
        return "bidspack provenance record of one step (BIDS-Prov draft field names)"
    if rel.startswith("code/bidspack/manifest."):
        return "bidspack manifest: size, sha256, xxh3-128 and pixel hash of every file"
    return "dataset file"


def _iso(text: str) -> str:
    """A record time (``...Z``) as ISO 8601 with a numeric offset (``...+00:00``), the
    form Process Run Crate's shapes accept."""
    return parse_time(text).isoformat()


def build_ro_crate(dataset: Path, root: Path, copied: Mapping[str, Copied]) -> Any:
    """A :class:`rocrate.rocrate.ROCrate` describing the copy of *dataset* in *root*
    (files as :func:`copy_dataset` returned them; see :mod:`bidspack.ops.export`)."""
    from rocrate.model.contextentity import ContextEntity
    from rocrate.rocrate import ROCrate

    desc = dataset_description(dataset)
    rows = read_manifest(dataset)
    crate = ROCrate(version=RO_CRATE_VERSION)
    crate.name = str(desc.get("Name") or dataset.name)
    crate.description = readme_summary(dataset) or crate.name
    crate.datePublished = _iso(last_step_time(dataset))
    lic = str(desc.get("License") or "").strip()
    if lic and _SPDX_ID.match(lic):
        crate.license = crate.add(
            ContextEntity(
                crate,
                f"https://spdx.org/licenses/{lic}",
                properties={
                    "@type": "CreativeWork",
                    "name": lic,
                    "identifier": lic,
                    "description": f"SPDX license {lic} (dataset_description.json License)",
                },
            )
        )
    elif lic:
        crate.license = crate.add(
            ContextEntity(
                crate,
                "#license",
                properties={"@type": "CreativeWork", "name": "License", "description": lic},
            )
        )
    authors = [a for a in desc.get("Authors", []) if isinstance(a, str) and a.strip()]
    if authors:
        crate.root_dataset["author"] = [
            crate.add(
                ContextEntity(crate, f"#author-{i}", properties={"@type": "Person", "name": a})
            )
            for i, a in enumerate(authors, 1)
        ]
    if desc.get("Keywords"):
        crate.keywords = [str(k) for k in desc["Keywords"]]
    if desc.get("DatasetDOI"):
        crate.root_dataset["identifier"] = str(desc["DatasetDOI"])
    crate.root_dataset["conformsTo"] = crate.add(
        ContextEntity(
            crate,
            PROCESS_RUN_CRATE,
            properties={
                "@type": ["CreativeWork", "Profile"],
                "name": "Process Run Crate",
                "version": "0.5",
            },
        )
    )

    files: dict[str, Any] = {}
    zarrs: set[str] = set()
    for rel, c in sorted(copied.items()):
        zroot = _zarr_root(rel)
        if zroot is not None:
            zarrs.add(zroot)
            continue
        files[rel] = crate.add_file(
            root / rel,
            dest_path=rel,
            properties={
                "name": PurePosixPath(rel).name,
                "description": _file_description(rel, rows),
                "contentSize": str(c.size),
                "encodingFormat": _media_type(rel),
                "sha256": c.sha256,
            },
        )
    for zroot in sorted(zarrs):
        crate.add_dataset(
            root / zroot,
            dest_path=zroot,
            properties={
                "name": PurePosixPath(zroot).name,
                "description": "OME-Zarr image (one entity for the whole tree)",
            },
        )

    for rec in reversed(read_records(dataset)):  # oldest first
        versions = {s["Label"]: s.get("Version", "unknown") for s in rec["Records"]["Software"]}
        app = _software(crate, "bidspack", versions.pop("bidspack", __version__))
        for name, ver in sorted(versions.items()):
            dep = _software(crate, name, ver)
            if dep not in app.get("softwareRequirements", []):
                app.append_to("softwareRequirements", dep)
        entities = {e["Id"]: e for e in rec["Records"].get("Entities", [])}
        for act in rec["Records"]["Activities"]:
            txn = act["Id"].rsplit(":", 1)[-1]
            objects = []
            for used in dict.fromkeys(act.get("Used", [])):
                ent = entities.get(used, {})
                xxh3 = used.rsplit(":", 1)[-1]
                label = ent.get("Label", xxh3)
                inp = crate.get(f"#input-{xxh3}") or crate.add(
                    ContextEntity(
                        crate,
                        f"#input-{xxh3}",
                        properties={
                            "@type": "File",
                            "name": label,
                            "description": "input file, not in the crate (xxh3-128 in identifier)",
                            "identifier": used,
                            "encodingFormat": _media_type(label),
                        },
                    )
                )
                if ent.get("AtLocation") and ent["AtLocation"] not in inp.get("alternateName", []):
                    inp.append_to("alternateName", ent["AtLocation"])
                objects.append(inp)
            for key, value in sorted(act.get("Parameters", {}).items()):
                simple = isinstance(value, str | int | float | bool)
                objects.append(
                    crate.add(
                        ContextEntity(
                            crate,
                            f"#step-{txn}-{key}",
                            properties={
                                "@type": "PropertyValue",
                                "name": key,
                                "value": value if simple else compact_json(value),
                            },
                        )
                    )
                )
            outputs = [e for e in entities.values() if e.get("GeneratedBy") == act["Id"]]
            results = [
                files[e["AtLocation"]]
                for e in sorted(outputs, key=lambda e: e["AtLocation"])
                if e["AtLocation"] in files
                and copied[e["AtLocation"]].sha256 == e.get("Digest", {}).get("sha256")
            ]
            name = f"{act['Label']} {act.get('Step', '')}".strip()
            action = crate.add_action(
                app,
                identifier=f"#step-{txn}",
                object=objects,
                result=results,
                properties={
                    "@type": "CreateAction",
                    "name": name,
                    "description": f"bidspack step {name}: {len(set(act.get('Used', [])))} "
                    "distinct input(s), "
                    f"{len(outputs)} output(s) ({len(results)} of them unchanged in the dataset)",
                    "identifier": act["Id"],
                    "startTime": _iso(act["StartedAtTime"]),
                    "endTime": _iso(act["EndedAtTime"]),
                    "actionStatus": "http://schema.org/CompletedActionStatus",
                },
            )
            crate.root_dataset.append_to("mentions", action)
    for ent in crate.get_entities():  # RO-Crate 1.3: a single value, not a 1-item array
        for key, value in list(ent.properties().items()):
            if isinstance(value, list) and len(value) == 1 and not key.startswith("@"):
                ent[key] = value[0]
    return crate


def _types(entity: Any) -> list[str]:
    return entity.type if isinstance(entity.type, list) else [entity.type]


def check_ro_crate(root: Path, copied: Mapping[str, Copied] | None = None) -> dict[str, int]:
    """Re-load the RO-Crate in *root* with ``rocrate`` (its warnings as errors) and check
    it: a root dataset with name, description and datePublished; every data entity
    present in *root* (``File``: a file, ``Dataset``: a folder); with *copied*: one
    ``File`` per copied file outside ``.zarr`` trees, with its sha256. Return entity
    counts by ``@type`` (contextual ``File`` entities included) and ``data_files``, the
    number of ``File`` data entities.

    Raises:
        IntegrityError: naming *root*.
    """
    from urllib.parse import unquote

    from rocrate.rocrate import ROCrate

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # e.g. an unlinked data entity
            crate = ROCrate(root)
    except (ValueError, KeyError, UserWarning) as exc:
        raise IntegrityError(root, f"rocrate cannot load the crate: {exc}") from exc
    for key in ("name", "description", "datePublished"):  # license: when the dataset has one
        if not crate.root_dataset.get(key):
            raise IntegrityError(root, f"the root dataset has no {key}")
    counts: Counter[str] = Counter(t for ent in crate.get_entities() for t in _types(ent))
    data_files = [e for e in crate.data_entities if "File" in _types(e)]
    for ent in crate.data_entities:
        path = root / unquote(ent.id)
        if not (path.is_file() if "File" in _types(ent) else path.is_dir()):
            raise IntegrityError(root, f"data entity {ent.id} is not in the crate")
    if copied is not None:
        expected = {rel: c.sha256 for rel, c in copied.items() if _zarr_root(rel) is None}
        got = {unquote(e.id): e.get("sha256") for e in data_files}
        if got != expected:
            bad = sorted(set(got.items()) ^ set(expected.items()))[0]
            raise IntegrityError(root, f"File entities differ from the copied files at {bad[0]}")
    return {**counts, "data_files": len(data_files)}
