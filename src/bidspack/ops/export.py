"""``bidspack export DATASET --format prov-json|ro-crate|bagit OUT``: publishable views of
a bidspack dataset, each checked with its own library's validator before it is kept.

- ``prov-json``: the step history of ``code/bidspack/provenance/*.json`` as one W3C
  PROV document (PROV-DM, https://www.w3.org/TR/prov-dm/), serialized as PROV-JSON
  (https://www.w3.org/submissions/prov-json/) by the ``prov`` package. One
  ``activity`` per step (start/end time, ``prov:label`` = operation, ``bidspack:step``,
  ``bidspack:parameters`` as JSON text), one ``entity`` per input (``bidspack:input:<xxh3>``,
  as in the records; every location it was read from) and per output version, with
  ``prov:location`` (dataset-relative) and ``bidspack:sha256``/``xxh3_128``/``pixel_hash``;
  ``used``, ``wasGeneratedBy``; one ``prov:SoftwareAgent`` per software and version,
  ``wasAssociatedWith`` (role ``bidspack:program`` for bidspack, ``bidspack:dependency``
  for its libraries). The version of a file that is in the dataset now is ``bids:<path>``
  (= ``bids::<path>``, the BIDS-Prov id of the records); a version replaced later is
  ``bidspack:generated:<transaction>/<path>`` and ``wasInvalidatedBy`` the step that
  replaced, renamed or deleted it; a renamed file ``wasDerivedFrom`` its old version.
  Check: read back with ``prov.read(format="json")`` with :class:`prov.model.ProvWarning`
  as an error, the same number of records of each kind, ``unified()`` (PROV-CONSTRAINTS
  key and impossibility constraints, no two records share an identifier) and every
  relation naming a declared element.
- ``ro-crate``: an attached RO-Crate 1.3 (https://w3id.org/ro/crate/1.3) made with
  ``rocrate``: a copy of the dataset plus ``ro-crate-metadata.json``. The root dataset
  has ``name``, ``description`` (README's first paragraph), ``license`` (SPDX entity),
  ``author`` (``Person``), ``keywords``, ``identifier`` (``DatasetDOI``) from
  ``dataset_description.json``, and follows the Process Run Crate profile 0.5
  (https://w3id.org/ro/wfrun/process/0.5, in ``conformsTo``): every file is a ``File``
  with ``contentSize``, ``encodingFormat``, ``sha256`` and ``description``; bidspack and
  its libraries are ``SoftwareApplication`` entities (``@id`` their release page,
  ``version``, ``url``; the libraries are bidspack's ``softwareRequirements``); every
  step is a ``CreateAction`` (``mentions`` of the root) with ``instrument`` bidspack,
  ``object`` its inputs (contextual ``File`` entities ``#input-<xxh3>``, not in the
  crate, ``alternateName`` = their submission paths) and its parameters
  (``PropertyValue``), ``result`` its outputs still in the dataset unchanged,
  ``startTime``/``endTime`` and ``actionStatus``. An ``.ome.zarr`` tree is one
  ``Dataset`` entity, not one entity per chunk. Check: re-loaded with ``ROCrate(OUT)``
  (warnings as errors), root metadata, one ``File`` per copied file, present, with its
  ``sha256``. (roc-validator 0.13 finds no REQUIRED issue for the RO-Crate 1.2/1.3
  profiles, nor for process-run-crate-0.5 apart from its RO-Crate 1.1 descriptor check.)
- ``bagit``: a BagIt bag (RFC 8493, https://www.rfc-editor.org/rfc/rfc8493) of a copy of
  the dataset made by ``bagit.make_bag(..., checksums=["sha256"])``. Check:
  ``bagit.Bag(OUT).validate()`` (every checksum recomputed) and the bag's
  ``manifest-sha256.txt`` equal to bidspack's manifest for every listed file.

Both copies leave out ``.bidspack/`` and version control (``.git``, ``.datalad``,
``.gitattributes``, ``.gitignore``, ``.gitmodules``), follow symbolic links (git-annex
files are copied with their content) and check every file's sha256 against the manifest
while copying: a file that is modified, missing or not listed stops the export (the
same findings as ``bidspack verify``). An ``.ome.zarr`` array's manifest row is checked
through its array digest (:mod:`bidspack.provenance.digests`).

The dataset is only read: it is never recovered, saved or changed. Its lock is held
while it is read (when it has a ``.bidspack/`` folder that can be written), and a
dataset with an unfinished transaction is refused. OUT must not exist or be an empty
folder (``prov-json``: must not exist) and must not lie inside DATASET. The export is
built next to OUT (``.<OUT name>.<random>.partial``), validated there and then renamed
to OUT, so OUT never holds a partial or unvalidated export; on any error the partial
one is removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mimetypes
import os
import re
import secrets
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from bidspack import __version__
from bidspack.errors import IntegrityError, OutputError, ValidationFailed
from bidspack.provenance.digests import CHUNK
from bidspack.provenance.manifest import (
    MANIFEST_TSV,
    PROVENANCE_DIR,
    Row,
    listed,
    read_manifest,
)
from bidspack.provenance.record import now, read_records
from bidspack.records import Record
from bidspack.txn import dataset_lock, pending
from bidspack.txn.transaction import STATE_DIR

FORMATS = ("prov-json", "ro-crate", "bagit")
#: Folder and file names never exported (bidspack's state, version control).
EXCLUDED_NAMES = frozenset(
    {STATE_DIR, ".git", ".datalad", ".gitattributes", ".gitignore", ".gitmodules"}
)
#: PROV namespaces: ``bids:<path>`` expands to the records' ``bids::<path>`` ids and
#: ``bidspack:<x>`` to their ``urn:bidspack:<x>`` ids.
PROV_NAMESPACES = {"bids": "bids::", "bidspack": "urn:bidspack:"}
RO_CRATE_VERSION = "1.3"
PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
VERIFY_HINT = "run 'bidspack verify DATASET'; the export needs a dataset equal to its manifest"
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


@dataclass(frozen=True)
class Copied:
    """Size and sha256 of one file copied into an export."""

    size: int
    sha256: str


# ---------------------------------------------------------------------------
# the operation


def export(dataset: Path, out: Path, fmt: str) -> Iterator[Record]:
    """Export *dataset* to *out* in format *fmt* (see the module docstring); yield one
    record per stage (copy, write, validate).

    Raises:
        OutputError: *fmt* is unknown; *out* exists (and is not an empty folder) or lies
            inside *dataset*; *dataset* is locked by another process or has unfinished
            transactions.
        ValidationFailed: *dataset* is not a bidspack dataset (no
            ``dataset_description.json``, no manifest; for ``prov-json``: no records).
        IntegrityError: a file differs from the manifest, is missing or is not listed;
            or the written export does not pass its library's validator.
    """
    dataset, out = Path(dataset), Path(out)
    if fmt not in FORMATS:
        raise OutputError(out, f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    folder = fmt != "prov-json"
    check_output(out, dataset, folder=folder)
    with _reading(dataset):
        rows = check_dataset(dataset)
        with staged_output(out, folder=folder) as tmp:
            if fmt == "prov-json":
                yield from _export_prov(dataset, tmp, out)
            elif fmt == "ro-crate":
                yield from _export_ro_crate(dataset, tmp, out, rows)
            else:
                yield from _export_bag(dataset, tmp, out, rows)
    yield Record("export", str(out), "ok", f"{fmt} export written", {"format": fmt})


def _export_prov(dataset: Path, tmp: Path, out: Path) -> Iterator[Record]:
    if not read_records(dataset):
        raise ValidationFailed(dataset, f"no provenance records ({PROVENANCE_DIR}/*.json)")
    doc = build_prov(dataset)
    tmp.write_text(str(doc.serialize(format="json", indent=2)) + "\n", encoding="utf-8")
    counts = check_prov_json(tmp, expected=prov_counts(doc))
    yield Record(
        "validate",
        str(out),
        "ok",
        "PROV-JSON read back with prov, unified (PROV-CONSTRAINTS), references resolved: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
        {"counts": dict(counts)},
    )


def _export_ro_crate(dataset: Path, tmp: Path, out: Path, rows: dict[str, Row]) -> Iterator[Record]:
    copied = copy_dataset(dataset, tmp)
    yield _copy_record(copied, crosscheck(rows, {k: c.sha256 for k, c in copied.items()}))
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


def _export_bag(dataset: Path, tmp: Path, out: Path, rows: dict[str, Row]) -> Iterator[Record]:
    import bagit

    copied = copy_dataset(dataset, tmp)
    yield _copy_record(copied, crosscheck(rows, {k: c.sha256 for k, c in copied.items()}))
    desc = dataset_description(dataset)
    info = {
        "External-Description": str(desc.get("Name") or dataset.name),
        "BIDS-Version": str(desc.get("BIDSVersion", "")),
        "License": str(desc.get("License", "")),
        "Exported-By": f"bidspack {__version__} (bidspack export --format bagit)",
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


def _copy_record(copied: Mapping[str, Copied], checked: int) -> Record:
    size = sum(c.size for c in copied.values())
    return Record(
        "copy",
        ".",
        "ok",
        f"{len(copied)} files copied ({size} bytes); {checked} manifest rows equal to their sha256",
        {"files": len(copied), "bytes": size, "checked": checked},
    )


# ---------------------------------------------------------------------------
# preconditions, staging


def check_output(out: Path, dataset: Path, *, folder: bool) -> None:
    """Refuse an *out* that exists (unless *folder* and an empty folder) or that lies
    inside *dataset* (an export must not change the dataset).

    Raises:
        OutputError: naming *out*.
    """
    if out.is_symlink() or out.exists():
        if not folder:
            raise OutputError(out, "exists", hint="give a new file name")
        if out.is_symlink() or not out.is_dir():
            raise OutputError(out, "exists and is not a folder", hint="give a new folder")
        if any(out.iterdir()):
            raise OutputError(out, "exists and is not empty", hint="give a new or empty folder")
    ds, target = dataset.resolve(), out.resolve()
    if target == ds or ds in target.parents:
        raise OutputError(out, "lies inside the dataset", hint="export to a place outside DATASET")


def check_dataset(dataset: Path) -> dict[str, Row]:
    """The manifest rows of *dataset*, after checking that it is a bidspack dataset
    without unfinished transactions.

    Raises:
        ValidationFailed: no ``dataset_description.json`` or no manifest.
        OutputError: unfinished transactions.
    """
    if not (dataset / "dataset_description.json").is_file():
        raise ValidationFailed(dataset, "not a BIDS dataset (no dataset_description.json)")
    waiting = pending(dataset)
    if waiting:
        raise OutputError(
            dataset,
            f"{len(waiting)} unfinished transaction(s) from an interrupted run",
            hint="run 'bidspack recover DATASET' first",
        )
    rows = read_manifest(dataset)
    if not rows:
        raise ValidationFailed(dataset, f"no manifest ({MANIFEST_TSV}); not a bidspack dataset")
    return rows


@contextlib.contextmanager
def _reading(dataset: Path) -> Iterator[None]:
    """Hold the dataset lock while reading, so no bidspack step changes the dataset
    under the export. A dataset without ``.bidspack/`` (a clone) is not given one, and
    a read-only dataset is read without the lock (nothing can change it either)."""
    if not dataset.is_dir():
        raise ValidationFailed(dataset, "is not a folder" if dataset.exists() else "not found")
    with contextlib.ExitStack() as stack:
        if (dataset / STATE_DIR).is_dir():
            try:
                stack.enter_context(dataset_lock(dataset))
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
        yield


@contextlib.contextmanager
def staged_output(out: Path, *, folder: bool) -> Iterator[Path]:
    """Yield a new temporary file or folder next to *out*; rename it to *out* when the
    block succeeds, remove it when it fails (any exception, interrupts included)."""
    out = out.absolute()  # a sane name and parent also for "." or "x/.."
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:  # created exclusively, with the permissions the umask gives
        tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.partial"
        try:
            if folder:
                tmp.mkdir()
            else:
                tmp.touch(exist_ok=False)
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        os.replace(tmp, out)  # rename(2): atomic; replaces an empty folder, not a full one
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# copies and the manifest


def dataset_files(dataset: Path) -> list[str]:
    """Dataset-relative POSIX paths of every file to export, sorted (see
    :data:`EXCLUDED_NAMES`; symbolic links to files count as files)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(dataset):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_NAMES)
        here = Path(dirpath)
        for name in filenames:
            if name not in EXCLUDED_NAMES:
                found.append((here / name).relative_to(dataset).as_posix())
    return sorted(found)


def copy_dataset(dataset: Path, dest: Path) -> dict[str, Copied]:
    """Copy the files of *dataset* (:func:`dataset_files`) to *dest* (an existing
    folder), hashing each while it is copied; modification times are kept.

    Raises:
        IntegrityError: a file's content is not present (a broken symbolic link, such as
            a git-annex file that was not fetched).
    """
    out: dict[str, Copied] = {}
    for rel in dataset_files(dataset):
        src, dst = dataset / rel, dest / rel
        if src.is_symlink() and not src.exists():
            raise IntegrityError(
                rel, "content not present (broken link)", hint="'datalad get' it first"
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        sha, size = hashlib.sha256(), 0
        with open(src, "rb") as fi, open(dst, "xb") as fo:
            while chunk := fi.read(CHUNK):
                sha.update(chunk)
                fo.write(chunk)
                size += len(chunk)
        st = src.stat()
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        out[rel] = Copied(size, sha.hexdigest())
    return out


def _array_sha256(files: Mapping[str, str]) -> str:
    """sha256 of a Zarr array from its files' sha256 (``array-relative path -> sha256``),
    as :func:`bidspack.provenance.digests.array_digest` computes it."""
    sha = hashlib.sha256()
    for rel in sorted(files, key=lambda r: PurePosixPath(r).parts):
        sha.update(f"{rel}\0{files[rel]}\n".encode())
    return sha.hexdigest()


def crosscheck(rows: Mapping[str, Row], sha256: Mapping[str, str]) -> int:
    """Compare exported files (``dataset-relative path -> sha256``) with the manifest
    *rows*: every row must be exported with its sha256 (a Zarr array row through its
    array digest) and every exported file that belongs in the manifest must be listed.
    Return the number of rows checked.

    Raises:
        IntegrityError: naming the first file that is modified, missing or unlisted.
    """
    arrays: dict[str, dict[str, str]] = {}
    unlisted: list[str] = []
    for rel, digest in sha256.items():
        if rel in rows:
            if digest != rows[rel]["sha256"]:
                raise IntegrityError(rel, "sha256 differs from the manifest", hint=VERIFY_HINT)
            continue
        owner = next(
            (p.as_posix() for p in PurePosixPath(rel).parents if p.as_posix() in rows), None
        )
        if owner is not None:
            arrays.setdefault(owner, {})[rel[len(owner) + 1 :]] = digest
        elif listed(rel):
            unlisted.append(rel)
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        raise IntegrityError(
            unlisted[0], f"present but not in the manifest{more}", hint=VERIFY_HINT
        )
    for rel, row in sorted(rows.items()):
        if rel in sha256:
            continue
        if rel not in arrays:
            raise IntegrityError(rel, "listed in the manifest but not exported", hint=VERIFY_HINT)
        if _array_sha256(arrays[rel]) != row["sha256"]:
            raise IntegrityError(rel, "array digest differs from the manifest", hint=VERIFY_HINT)
    return len(rows)


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


# ---------------------------------------------------------------------------
# PROV


@dataclass
class _Version:
    """One version of a dataset file: generated by an activity, maybe replaced later."""

    path: str
    activity: str
    time: datetime
    label: str
    digest: dict[str, str]
    derived_from: int | None = None
    invalidated: tuple[str, datetime] | None = None


def _qname(uri: str) -> str:
    for prefix, ns in PROV_NAMESPACES.items():
        if uri.startswith(ns):
            return f"{prefix}:{uri[len(ns) :]}"
    raise IntegrityError(PROVENANCE_DIR, f"identifier {uri!r} is neither bids:: nor urn:bidspack:")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def build_prov(dataset: Path) -> Any:
    """The provenance records of *dataset* as a :class:`prov.model.ProvDocument` (see
    the module docstring)."""
    from prov.constants import PROV, PROV_LABEL, PROV_LOCATION, PROV_ROLE, PROV_TYPE, XSD_LONG
    from prov.model import Literal, ProvDocument

    records = list(reversed(read_records(Path(dataset))))  # oldest first
    rows = read_manifest(Path(dataset))
    doc = ProvDocument()
    for prefix, ns in PROV_NAMESPACES.items():
        doc.add_namespace(prefix, ns)

    inputs: dict[str, dict[str, Any]] = {}
    for rec in records:
        for ent in rec["Records"].get("Entities", []):
            if ent.get("GeneratedBy"):
                continue
            info = inputs.setdefault(ent["Id"], {"labels": [], "locations": [], "digest": {}})
            for key, value in (("labels", ent.get("Label")), ("locations", ent.get("AtLocation"))):
                if value and value not in info[key]:
                    info[key].append(value)
            info["digest"].update(ent.get("Digest", {}))
        for act in rec["Records"]["Activities"]:
            for used in act.get("Used", []):
                inputs.setdefault(used, {"labels": [], "locations": [], "digest": {}})
    for iid, info in sorted(inputs.items()):
        attrs: list[tuple[Any, Any]] = [(PROV_LABEL, v) for v in info["labels"]]
        attrs += [(PROV_LOCATION, v) for v in info["locations"]]
        if "xxh3-128" in info["digest"]:
            attrs.append(("bidspack:xxh3_128", info["digest"]["xxh3-128"]))
        doc.entity(_qname(iid), attrs)

    agents: set[str] = set()
    versions: list[_Version] = []
    current: dict[str, int] = {}
    used_versions: list[tuple[str, int]] = []
    for rec in records:
        software = rec["Records"].get("Software", [])
        env = (rec["Records"].get("Environments") or [{}])[0]
        for act in rec["Records"]["Activities"]:
            aid = _qname(act["Id"])
            started, ended = _time(act["StartedAtTime"]), _time(act["EndedAtTime"])
            attrs = [
                (PROV_LABEL, act["Label"]),
                ("bidspack:step", act.get("Step", "")),
                ("bidspack:parameters", _json(act.get("Parameters", {}))),
            ]
            for key in ("Renamed", "Deleted"):
                if act.get(key):
                    attrs.append((f"bidspack:{key.lower()}", _json(act[key])))
            for key, name in (("OperatingSystem", "operatingSystem"), ("Python", "python")):
                if env.get(key):
                    attrs.append((f"bidspack:{name}", env[key]))
            doc.activity(aid, started, ended, attrs)
            for used in dict.fromkeys(act.get("Used", [])):  # identical inputs: one usage
                doc.used(aid, _qname(used))
            program = set(act.get("AssociatedWith", []))
            for sw in software:
                agent = f"{_qname(sw['Id'])}/{sw.get('Version', 'unknown')}"
                if agent not in agents:
                    agents.add(agent)
                    doc.agent(
                        agent,
                        [
                            (PROV_TYPE, PROV["SoftwareAgent"]),
                            (PROV_LABEL, sw.get("Label", sw["Id"])),
                            ("bidspack:version", sw.get("Version", "unknown")),
                        ],
                    )
                role = "bidspack:program" if sw["Id"] in program else "bidspack:dependency"
                doc.wasAssociatedWith(
                    aid, agent, other_attributes=[(PROV_ROLE, doc.valid_qualified_name(role))]
                )

            outputs = {
                e["AtLocation"]: e
                for e in rec["Records"].get("Entities", [])
                if e.get("GeneratedBy") == act["Id"]
            }
            renamed_into: dict[str, int] = {}
            # the journal renames and deletes before it writes the staged files
            for old, new in act.get("Renamed", []):
                if not any(_under(p, old) for p in current):
                    # rename-subject rewrites the earlier records to the new names: the
                    # versions are at *new* already; a rewritten one derives from them
                    for path in sorted(p for p in current if _under(p, new) and p in outputs):
                        renamed_into[path] = current[path]
                        used_versions.append((aid, current[path]))
                    continue
                for path in sorted(p for p in current if _under(p, old)):
                    idx = current.pop(path)
                    versions[idx].invalidated = (aid, ended)
                    used_versions.append((aid, idx))
                    moved = new + path[len(old) :]
                    if moved in outputs:
                        renamed_into[moved] = idx
                    else:
                        v = versions[idx]
                        versions.append(
                            _Version(moved, aid, ended, PurePosixPath(moved).name, v.digest, idx)
                        )
                        current[moved] = len(versions) - 1
            for gone in act.get("Deleted", []):
                for path in sorted(p for p in current if _under(p, gone)):
                    versions[current.pop(path)].invalidated = (aid, ended)
            for path, ent in sorted(outputs.items()):
                prev = current.get(path)
                if prev is not None:
                    versions[prev].invalidated = (aid, ended)
                label = ent.get("Label") or PurePosixPath(path).name
                versions.append(
                    _Version(
                        path, aid, ended, label, dict(ent.get("Digest", {})), renamed_into.get(path)
                    )
                )
                current[path] = len(versions) - 1

    ids = []
    for idx, v in enumerate(versions):
        if current.get(v.path) == idx:
            ids.append(f"bids:{v.path}")
        else:
            ids.append(f"bidspack:generated:{v.activity.rsplit(':', 1)[-1]}/{v.path}")
    for idx, v in enumerate(versions):
        attrs = [(PROV_LABEL, v.label), (PROV_LOCATION, v.path)]
        for key, name in (
            ("sha256", "sha256"),
            ("xxh3-128", "xxh3_128"),
            ("bidspack-pixelhash/1", "pixel_hash"),
        ):
            if key in v.digest:
                attrs.append((f"bidspack:{name}", v.digest[key]))
        row = rows.get(v.path)
        if current.get(v.path) == idx and row and row["sha256"] == v.digest.get("sha256"):
            attrs.append(("bidspack:size", Literal(str(row["size"]), XSD_LONG)))
        doc.entity(ids[idx], attrs)
        doc.wasGeneratedBy(ids[idx], v.activity, v.time)
        if v.derived_from is not None:
            doc.wasDerivedFrom(ids[idx], ids[v.derived_from], v.activity)
        if v.invalidated is not None:
            doc.wasInvalidatedBy(ids[idx], v.invalidated[0], v.invalidated[1])
    for aid, idx in used_versions:
        doc.used(aid, ids[idx])
    return doc


def _kind(record: Any) -> str:
    """The PROV-N name of a record's kind (``entity``, ``wasGeneratedBy``, ...)."""
    from prov.constants import PROV_N_MAP

    return str(PROV_N_MAP[record.get_type()])


def prov_counts(doc: Any) -> Counter[str]:
    """Number of records of each PROV kind (``entity``, ``used``, ...) in *doc*."""
    return Counter(_kind(r) for r in doc.get_records())


def check_prov_json(path: Path, *, expected: Mapping[str, int] | None = None) -> Counter[str]:
    """Validate a PROV-JSON file with ``prov``'s own means; return its record counts.

    Read back with :func:`prov.read` (``format="json"``) with every
    :class:`prov.model.ProvWarning` as an error; ``unified()`` must succeed and merge
    nothing (no two records share an identifier); every relation must name declared
    elements; the counts must equal *expected* when given.

    Raises:
        IntegrityError: naming *path*.
    """
    import prov
    from prov.model import ProvElement, ProvException, ProvRelation, ProvWarning, QualifiedName

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ProvWarning)
            doc = prov.read(str(path), format="json")
            if doc is None:
                raise IntegrityError(path, "prov read no document")
            unified = doc.unified()
    except (ProvException, ProvWarning, ValueError, TypeError) as exc:
        raise IntegrityError(path, f"not valid PROV-JSON for prov: {exc}") from exc
    counts = prov_counts(doc)
    if expected is not None and counts != Counter(expected):
        raise IntegrityError(path, f"read back {dict(counts)}, wrote {dict(expected)}")
    if sum(prov_counts(unified).values()) != sum(counts.values()):
        raise IntegrityError(path, "records share an identifier (unified() merged them)")
    declared = {r.identifier for r in doc.get_records(ProvElement)}
    for rel in doc.get_records(ProvRelation):
        for attr, value in rel.formal_attributes:
            if isinstance(value, QualifiedName) and value not in declared:
                raise IntegrityError(path, f"{_kind(rel)} names undeclared {attr} {value}")
    return counts


# ---------------------------------------------------------------------------
# RO-Crate


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
    return _time(text).isoformat()


def build_ro_crate(dataset: Path, root: Path, copied: Mapping[str, Copied]) -> Any:
    """A :class:`rocrate.rocrate.ROCrate` describing the copy of *dataset* in *root*
    (files as :func:`copy_dataset` returned them; see the module docstring)."""
    from rocrate.model.contextentity import ContextEntity
    from rocrate.rocrate import ROCrate

    desc = dataset_description(dataset)
    rows = read_manifest(dataset)
    crate = ROCrate(version=RO_CRATE_VERSION)
    crate.name = str(desc.get("Name") or dataset.name)
    crate.description = readme_summary(dataset) or crate.name
    crate.datePublished = _iso(now())
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
                                "value": value if simple else _json(value),
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


# ---------------------------------------------------------------------------
# BagIt


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
