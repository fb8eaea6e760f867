"""bidspack export: PROV-JSON, RO-Crate and BagIt of a packaged example, each checked
with its own library's validator; the dataset is never changed; a bad OUT is refused.

The RO-Crate is also checked with the RO-Crate validator (PyPI ``roc-validator``,
module ``rocrate_validator``) when a Python that has it is found: the current one, or
``BIDSPACK_ROC_VALIDATOR_PYTHON``. roc-validator 0.13 pins ``rich<14``, so it lives in
its own environment (``python -m venv V && V/bin/pip install roc-validator``). It runs
offline: its own HTTP cache is seeded with the RO-Crate 1.3 JSON-LD context that
``rocrate`` ships, and it runs with ``offline=True``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import bagit
import prov
import pytest
import rocrate
from click.testing import CliRunner
from prov.model import ProvDocument, ProvWarning
from rocrate.rocrate import ROCrate

from bidspack import __version__
from bidspack.cli.cmd_export import export_cmd
from bidspack.errors import IntegrityError, OutputError
from bidspack.ops.export import (
    EXCLUDED_NAMES,
    build_prov,
    check_bag,
    check_prov_json,
    check_ro_crate,
    crosscheck,
    export,
)
from bidspack.ops.rename import rename_subjects
from bidspack.provenance.digests import entries
from bidspack.provenance.manifest import (
    MANIFEST_PARQUET,
    MANIFEST_TSV,
    PROVENANCE_DIR,
    read_manifest,
    write_manifest,
)
from bidspack.provenance.record import read_records
from conftest import snapshot

IMG = "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM.ome.tif"
STEP = "sub-45670ko/640_N4"


def exported(dataset: Path, out: Path, fmt: str) -> list:
    """Run the export; check it left the dataset as it was and said ok."""
    before = snapshot(dataset)
    recs = list(export(dataset, out, fmt))
    assert snapshot(dataset) == before
    assert [r.status for r in recs] == ["ok"] * len(recs) and recs[-1].action == "export"
    assert not list(out.parent.glob(f".{out.name}.partial-*"))
    return recs


def payload_files(dataset: Path) -> dict[str, str]:
    """sha256 of every file an export copies (all but .bidspack/ and version control)."""
    return {
        rel: digest
        for rel, digest in snapshot(dataset).items()
        if not rel.endswith("/") and not EXCLUDED_NAMES & set(rel.split("/"))
    }


# --------------------------------------------------------------------------- PROV-JSON


def read_prov(path: Path) -> ProvDocument:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProvWarning)
        doc = prov.read(path, format="json")
    assert isinstance(doc, ProvDocument)
    return doc


def kinds(doc: ProvDocument) -> Counter[str]:
    from prov.constants import PROV_N_MAP

    return Counter(PROV_N_MAP[r.get_type()] for r in doc.get_records())


def test_prov_json(packaged: Path, tmp_path: Path) -> None:
    out = tmp_path / "prov" / "history.json"
    exported(packaged, out, "prov-json")
    doc = read_prov(out)
    records = read_records(packaged)
    acts = [r["Records"]["Activities"][0] for r in records]
    ents = [e for r in records for e in r["Records"]["Entities"]]
    outputs = [e for e in ents if e.get("GeneratedBy")]
    inputs = {u for a in acts for u in a["Used"]}
    software = {(s["Label"], s["Version"]) for r in records for s in r["Records"]["Software"]}
    assert kinds(doc) == {
        "activity": len(records),
        "entity": len(inputs) + len(outputs),
        "agent": len(software),
        "wasGeneratedBy": len(outputs),
        "used": sum(len(set(a["Used"])) for a in acts),
        "wasAssociatedWith": sum(len(r["Records"]["Software"]) for r in records),
    }
    # 44 files, plus a README.md per derivative dataset
    assert len(outputs) == len({e["AtLocation"] for e in outputs}) == 47
    # prov's own checks: PROV-CONSTRAINTS unification merges nothing; the PROV-N
    # serializer and parser (a strict grammar) round-trip the document unchanged
    assert len(list(doc.unified().get_records())) == len(list(doc.get_records()))
    assert prov.read(io.StringIO(doc.get_provn()), format="provn") == doc
    assert ProvDocument.deserialize(out, format="json") == doc
    assert check_prov_json(out) == kinds(doc)

    act = next(a for a in acts if a["Step"] == STEP)
    [activity] = doc.get_record(f"bidspack:activity:{act['Id'].rsplit(':', 1)[-1]}")
    attrs = {str(k): v for k, v in activity.attributes}
    assert attrs["prov:label"] == "package" and attrs["bidspack:step"] == STEP
    assert json.loads(attrs["bidspack:parameters"]) == act["Parameters"]
    assert activity.get_startTime().isoformat() == act["StartedAtTime"].replace("Z", "+00:00")
    assert activity.get_endTime().isoformat() == act["EndedAtTime"].replace("Z", "+00:00")
    row = read_manifest(packaged)[IMG]
    [image] = doc.get_record(f"bids:{IMG}")
    attrs = {str(k): v for k, v in image.attributes}
    assert attrs["bidspack:sha256"] == row["sha256"]
    assert attrs["bidspack:xxh3_128"] == row["xxh3_128"]
    assert attrs["bidspack:pixel_hash"] == row["pixel_hash"]
    assert attrs["prov:location"] == IMG and int(attrs["bidspack:size"].value) == row["size"]
    gens = [
        g
        for g in doc.get_records(prov.model.ProvGeneration)
        if str(g.formal_attributes[0][1]) == f"bids:{IMG}"
    ]
    assert [str(g.formal_attributes[1][1]) for g in gens] == [str(activity.identifier)]
    used = {
        str(u.formal_attributes[1][1])
        for u in doc.get_records(prov.model.ProvUsage)
        if u.formal_attributes[0][1] == activity.identifier
    }
    assert used == {f"bidspack:input:{u.rsplit(':', 1)[-1]}" for u in act["Used"]}
    assert len(used) == 24  # the 24 slices
    [agent] = doc.get_record(f"bidspack:software:bidspack/{__version__}")
    assert {str(k): str(v) for k, v in agent.attributes}["prov:type"] == "prov:SoftwareAgent"
    programs = [
        a
        for a in doc.get_records(prov.model.ProvAssociation)
        if a.formal_attributes[0][1] == activity.identifier
        and {str(k): str(v) for k, v in a.attributes}.get("prov:role") == "bidspack:program"
    ]
    assert [str(a.formal_attributes[1][1]) for a in programs] == [str(agent.identifier)]


def test_prov_json_after_rename(dataset: Path, tmp_path: Path) -> None:
    """rename-subject keeps the earlier records as they are (history) and rewrites the
    OME-XML of the images: each renamed file's earlier version is invalidated by the
    rename step and the current one (``bids:<path>``) derives from it."""
    recs = list(rename_subjects(dataset, {"45670ko": "m45670"}, validate=False))
    assert not [r for r in recs if r.status == "error"]
    out = tmp_path / "history.json"
    exported(dataset, out, "prov-json")
    doc = read_prov(out)
    counts = kinds(doc)
    assert counts["activity"] == 17
    # every file of the subject: its current version derives from the one under the
    # old name (records are history: never rewritten by the rename)
    # (through the intermediate name of a file whose folder was renamed first)
    moved = [p for p in read_manifest(dataset) if "sub-m45670" in p]
    derived = {str(d.formal_attributes[0][1]) for d in doc.get_records(prov.model.ProvDerivation)}
    assert len(moved) == 11 and {f"bids:{p}" for p in moved} <= derived
    assert counts["wasDerivedFrom"] == 19  # 11 files, 8 of them in two renames
    new = IMG.replace("45670ko", "m45670")
    ids = {str(r.identifier) for r in doc.get_records(prov.model.ProvEntity)}
    assert f"bids:{new}" in ids and f"bids:{IMG}" not in ids
    source_of = {
        str(d.formal_attributes[0][1]): str(d.formal_attributes[1][1])
        for d in doc.get_records(prov.model.ProvDerivation)
    }
    invalidated = {
        str(i.formal_attributes[0][1]) for i in doc.get_records(prov.model.ProvInvalidation)
    }
    chain = [f"bids:{new}"]  # back to the version packaging generated under the old name
    while chain[-1] in source_of:
        chain.append(source_of[chain[-1]])
    assert len(chain) == 3 and all(c.startswith("bidspack:generated:") for c in chain[1:])
    assert chain[-1].endswith(IMG) and set(chain[1:]) <= invalidated
    current = {i[len("bids:") :] for i in ids if i.startswith("bids:")}
    assert current == set(read_manifest(dataset))
    assert len(list(doc.unified().get_records())) == len(list(doc.get_records()))


def test_prov_moves_and_deletes(tmp_path: Path) -> None:
    """Records that were not rewritten: a renamed folder's files get new versions derived
    from the old ones; a deleted file's version is invalidated."""
    ds = tmp_path / "ds"
    (ds / PROVENANCE_DIR).mkdir(parents=True)

    def record(txn: str, time: str, **activity: object) -> dict:
        outputs = activity.pop("outputs", {})
        act = {"Id": f"urn:bidspack:activity:{txn}", "Label": "test", "Step": txn}
        act |= {"Used": [], "StartedAtTime": time, "EndedAtTime": time, **activity}
        return {
            "Records": {
                "Software": [
                    {"Id": "urn:bidspack:software:bidspack", "Label": "bidspack", "Version": "1"}
                ],
                "Activities": [act],
                "Entities": [
                    {
                        "Id": f"bids::{p}",
                        "Label": Path(p).name,
                        "AtLocation": p,
                        "GeneratedBy": act["Id"],
                        "Digest": {"sha256": d},
                    }
                    for p, d in outputs.items()
                ],
            }
        }

    recs = [
        record("t1", "2026-01-01T00:00:00Z", outputs={"a/x.txt": "1" * 64, "a/y.txt": "2" * 64}),
        record("t2", "2026-01-02T00:00:00Z", Renamed=[["a", "b"]], Deleted=["b/y.txt"]),
    ]
    for i, rec in enumerate(recs):
        (ds / PROVENANCE_DIR / f"{i}.json").write_text(json.dumps(rec))
    doc = build_prov(ds)
    counts = kinds(doc)
    assert counts == {
        "activity": 2,
        "agent": 1,
        "wasAssociatedWith": 2,
        "entity": 4,
        "wasGeneratedBy": 4,
        "wasDerivedFrom": 2,
        "wasInvalidatedBy": 3,
        "used": 2,
    }
    ids = {str(r.identifier) for r in doc.get_records(prov.model.ProvEntity)}
    assert ids == {
        "bids:b/x.txt",
        "bidspack:generated:t1/a/x.txt",
        "bidspack:generated:t1/a/y.txt",
        "bidspack:generated:t2/b/y.txt",
    }
    out = tmp_path / "h.json"
    out.write_text(doc.serialize(format="json"))
    assert check_prov_json(out, expected=counts) == counts


# --------------------------------------------------------------------------- RO-Crate


def test_ro_crate(packaged: Path, tmp_path: Path) -> None:
    out = tmp_path / "crate"
    exported(packaged, out, "ro-crate")
    crate = ROCrate(out)  # rocrate's own reader
    desc = json.loads((packaged / "dataset_description.json").read_text())
    root = crate.root_dataset
    assert crate.name == desc["Name"] and crate.description.startswith("Microscopy dataset")
    assert crate.license.id == f"https://spdx.org/licenses/{desc['License']}"
    assert [a["name"] for a in root["author"]] == desc["Authors"]
    rows = read_manifest(packaged)
    files = {e.id: e for e in crate.data_entities if e.type == "File"}
    assert {k: e["sha256"] for k, e in files.items()} == payload_files(packaged)
    for rel, row in rows.items():
        assert files[rel]["sha256"] == row["sha256"] and files[rel]["contentSize"] == str(
            row["size"]
        )
    assert snapshot(out).keys() - {"ro-crate-metadata.json"} == files.keys()

    records = read_records(packaged)
    actions = crate.get_by_type("CreateAction")
    assert len(actions) == len(records) and set(root["mentions"]) == set(actions)
    act = next(a for a in records if a["Records"]["Activities"][0]["Step"] == STEP)
    act = act["Records"]["Activities"][0]
    [action] = [a for a in actions if a["identifier"] == act["Id"]]
    app = action["instrument"]
    assert (app.type, app["name"], app["version"]) == (
        "SoftwareApplication",
        "bidspack",
        __version__,
    )
    assert {d["name"] for d in app["softwareRequirements"]} >= {"tifffile", "numpy", "python"}
    assert [r.id for r in action["result"]] == sorted([IMG, IMG.replace(".ome.tif", ".json")])
    objects = action["object"]
    inputs = [o for o in objects if o.type == "File"]
    assert len(inputs) == 24 and all(not (out / o.id).exists() for o in inputs)
    params = {o["name"]: o["value"] for o in objects if o.type == "PropertyValue"}
    assert json.loads(params["actions"]) == act["Parameters"]["actions"]
    assert action["startTime"] == act["StartedAtTime"].replace("Z", "+00:00")
    assert check_ro_crate(out)["data_files"] == len(files)


#: Where .ci/run installs roc-validator (it pins rich<14, so it gets its own venv).
ROC_VALIDATOR_VENV = Path.home() / ".cache" / "bidspack" / "roc-validator"


def _roc_validator_python() -> str | None:
    env = os.environ.get("BIDSPACK_ROC_VALIDATOR_PYTHON")
    if env:
        return env
    if importlib.util.find_spec("rocrate_validator") is not None:
        return sys.executable
    venv = ROC_VALIDATOR_VENV / "bin" / "python"
    return str(venv) if venv.exists() else None


# Runs in the validator's Python: seed its HTTP cache with the RO-Crate 1.3 context file
# (argv[2]) through a local transport adapter, then validate offline; print JSON results.
ROC_VALIDATE = r"""
import io, json, sys
from pathlib import Path
import requests
from urllib3.response import HTTPResponse
from rocrate_validator import services
from rocrate_validator.models import ValidationSettings
from rocrate_validator.utils.http import HttpRequester

crate, context, cache = sys.argv[1], Path(sys.argv[2]).read_bytes(), Path(sys.argv[3])
URL = "https://w3id.org/ro/crate/1.3/context"

class Local(requests.adapters.BaseAdapter):
    def send(self, request, **kwargs):
        raw = HTTPResponse(body=io.BytesIO(context), status=200, preload_content=False,
                           headers={"Content-Type": "application/ld+json"})
        return requests.adapters.HTTPAdapter().build_response(request, raw)
    def close(self):
        pass

out = {}
for name, extra in (("auto", {}), ("process-run-crate-0.5", {
        "profile_identifier": "process-run-crate-0.5",
        # the profile builds on RO-Crate 1.1, whose descriptor must say 1.1; ours is 1.3
        "skip_checks": ["ro-crate-1.1_5.3"]})):
    settings = ValidationSettings(rocrate_uri=crate, offline=True, cache_path=cache,
                                  requirement_severity="REQUIRED", **extra)
    session = HttpRequester().session
    session.settings.only_if_cached = False
    session.mount(URL, Local())
    for accept in ("application/ld+json, application/json",
                   "application/ld+json, application/json, */*;q=0.1"):
        assert session.get(URL, headers={"Accept": accept}).status_code == 200
    session.adapters.pop(URL)
    session.settings.only_if_cached = True
    result = services.validate(settings)
    out[name] = {
        "passed": result.passed(),
        "profiles": [p.identifier for p in result.context.profiles],
        "issues": [f"{i.check.identifier}: {i.message}" for i in result.get_issues()],
    }
print(json.dumps(out))
"""


def test_ro_crate_roc_validator(packaged: Path, tmp_path: Path) -> None:
    python = _roc_validator_python()
    if python is None:
        pytest.fail(
            "roc-validator not installed (it pins rich<14, so it needs its own venv): "
            f"python3 -m venv {ROC_VALIDATOR_VENV} && {ROC_VALIDATOR_VENV}/bin/pip install "
            "roc-validator  (.ci/run does this), or set BIDSPACK_ROC_VALIDATOR_PYTHON"
        )
    out = tmp_path / "crate"
    exported(packaged, out, "ro-crate")
    context = Path(rocrate.__file__).parent / "data" / "ro-crate.jsonld"
    assert json.loads(context.read_text())["@id"] == "https://w3id.org/ro/crate/1.3/context"
    proc = subprocess.run(
        [python, "-c", ROC_VALIDATE, str(out), str(context), str(tmp_path / "http_cache")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    auto, prc = results["auto"], results["process-run-crate-0.5"]
    assert auto["issues"] == [] and auto["passed"], auto
    assert "ro-crate-1.3" in auto["profiles"]
    assert prc["issues"] == [] and prc["passed"], prc
    assert "process-run-crate-0.5" in prc["profiles"]


# --------------------------------------------------------------------------- BagIt


def test_bagit(packaged: Path, tmp_path: Path) -> None:
    out = tmp_path / "bag"
    out.mkdir()  # an empty folder is accepted
    exported(packaged, out, "bagit")
    bag = bagit.Bag(str(out))
    bag.validate()  # structure, Payload-Oxum and every sha256 recomputed
    assert bag.is_valid() and bag.algorithms == ["sha256"]
    payload = payload_files(packaged)
    sha = {p[len("data/") :]: d["sha256"] for p, d in bag.entries.items() if p.startswith("data/")}
    assert sha == payload
    for rel, row in read_manifest(packaged).items():
        assert sha[rel] == row["sha256"]
    assert {
        rel[len("data/") :]: d for rel, d in snapshot(out).items() if rel.startswith("data/")
    } == payload
    assert (
        bag.info["External-Description"]
        == json.loads((packaged / "dataset_description.json").read_text())["Name"]
    )
    assert check_bag(out, read_manifest(packaged), files=len(payload)) == len(
        read_manifest(packaged)
    )
    # a payload file changed after bagging: bagit and the cross-check both notice
    (out / "data" / IMG).write_bytes(b"changed")
    with pytest.raises(IntegrityError, match="bagit"):
        check_bag(out, read_manifest(packaged))


def test_exports_are_reproducible(packaged: Path, tmp_path: Path) -> None:
    """One dataset state exported twice: the same bytes, dates included (they come from
    the dataset's last provenance record, not the clock)."""
    last = read_records(packaged)[0]["Records"]["Activities"][0]["EndedAtTime"]
    for fmt, files in (
        ("ro-crate", ("ro-crate-metadata.json",)),
        ("bagit", ("bag-info.txt", "tagmanifest-sha256.txt", "manifest-sha256.txt")),
    ):
        first, second = tmp_path / f"{fmt}-1", tmp_path / f"{fmt}-2"
        exported(packaged, first, fmt)
        exported(packaged, second, fmt)
        for name in files:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    crate = json.loads((tmp_path / "ro-crate-1" / "ro-crate-metadata.json").read_text())
    root = next(e for e in crate["@graph"] if e["@id"] == "./")
    assert root["datePublished"].startswith(last[:19])
    assert bagit.Bag(str(tmp_path / "bagit-1")).info["Bagging-Date"] == last[:10]


# --------------------------------------------------------------------------- refusals


def test_leftovers_of_a_killed_export_are_removed(packaged: Path, tmp_path: Path) -> None:
    """A staged folder of a process that no longer runs is removed; one of a running
    process (this one: another export of the same OUT) is left alone."""
    import os

    dead = subprocess.Popen(["true"])  # a process id that has ended
    dead.wait()
    out = tmp_path / "prov.json"
    stale = tmp_path / f".prov.json.partial-{dead.pid}-abcdef"
    stale.mkdir()
    (stale / "half.json").write_text("{")
    live = tmp_path / f".prov.json.work-{os.getppid()}-012345"
    live.write_text("{")
    exported(packaged, out, "prov-json")
    assert not stale.exists() and live.exists() and out.is_file()


def test_cli_refuses_existing_out(packaged: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    afile = tmp_path / "history.json"
    afile.write_text("{}")
    before = snapshot(tmp_path)
    for fmt, out in (("bagit", full), ("ro-crate", full), ("prov-json", afile), ("bagit", afile)):
        res = runner.invoke(export_cmd, [str(packaged), "--format", fmt, str(out)])
        assert res.exit_code == 1, res.output
        assert f"Error: {out}: exists" in res.output
        assert "Traceback" not in res.output
    assert snapshot(tmp_path) == before
    res = runner.invoke(export_cmd, [str(packaged), "--format", "bagit", str(packaged / "bag")])
    assert res.exit_code == 1 and "lies inside the dataset" in res.output
    assert not (packaged / "bag").exists()


def test_cli_json(packaged: Path, tmp_path: Path) -> None:
    out = tmp_path / "x" / "prov.json"
    res = CliRunner().invoke(
        export_cmd, [str(packaged), str(out), "--format", "prov-json", "--json"]
    )
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["action"] for r in recs] == ["validate", "export"]
    assert recs[0]["details"]["counts"]["activity"] == 16 and out.is_file()


def test_modified_file_stops_export_and_leaves_nothing(dataset: Path, tmp_path: Path) -> None:
    (dataset / "participants.json").write_text("{}\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    for fmt, out in (("bagit", tmp_path / "bag"), ("ro-crate", empty)):
        with pytest.raises(IntegrityError, match="sha256 differs from the manifest") as exc:
            list(export(dataset, out, fmt))
        assert exc.value.path == "participants.json"
    assert not (tmp_path / "bag").exists()
    assert empty.is_dir() and not any(empty.iterdir())  # not ours: left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "empty"]  # no partial ones


def test_unlisted_and_missing_files(dataset: Path, tmp_path: Path) -> None:
    (dataset / "sub-45670ko/micr/extra.txt").write_text("x")
    with pytest.raises(IntegrityError, match="not in the manifest") as exc:
        list(export(dataset, tmp_path / "bag", "bagit"))
    assert exc.value.path == "sub-45670ko/micr/extra.txt"
    (dataset / "sub-45670ko/micr/extra.txt").unlink()
    (dataset / "samples.json").unlink()
    with pytest.raises(IntegrityError, match="not exported") as exc:
        list(export(dataset, tmp_path / "crate", "ro-crate"))
    assert exc.value.path == "samples.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_unfinished_transaction_refused(dataset: Path, tmp_path: Path) -> None:
    (dataset / ".bidspack/txn/20260101T000000-1-1").mkdir(parents=True)
    before = snapshot(dataset)
    with pytest.raises(OutputError, match="unfinished transaction"):
        list(export(dataset, tmp_path / "out.json", "prov-json"))
    assert snapshot(dataset) == before and not (tmp_path / "out.json").exists()


def test_version_control_left_out(dataset: Path, tmp_path: Path) -> None:
    """A DataLad-like dataset: .git, .datalad and .gitattributes are not exported, and
    a symbolic link (as git-annex makes them) is copied with its content."""
    (dataset / ".git").mkdir()
    (dataset / ".git" / "config").write_text("[core]\n")
    (dataset / ".datalad").mkdir()
    (dataset / ".datalad" / "config").write_text("[datalad]\n")
    (dataset / ".gitattributes").write_text("* annex.largefiles=nothing\n")
    # the content lives in the annex object store inside .git, as git-annex keeps it
    store = dataset / ".git" / "annex" / "objects" / "Xk" / "pQ" / "KEY" / "KEY"
    store.parent.mkdir(parents=True)
    shutil.move(dataset / IMG, store)
    os.symlink(os.path.relpath(store, (dataset / IMG).parent), dataset / IMG)
    out = tmp_path / "bag"
    exported(dataset, out, "bagit")
    names = set(snapshot(out))
    assert not {n for n in names if {".git", ".datalad", ".gitattributes"} & set(n.split("/"))}
    copy = out / "data" / IMG
    assert not copy.is_symlink()
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == read_manifest(dataset)[IMG]["sha256"]


def test_crosscheck_zarr_array(tmp_path: Path) -> None:
    """A Zarr array's manifest row is checked through its array digest."""
    arr = tmp_path / "img.ome.zarr" / "0"
    (arr / "c" / "0").mkdir(parents=True)
    (tmp_path / "img.ome.zarr" / "zarr.json").write_text('{"node_type": "group"}')
    (arr / "zarr.json").write_text('{"node_type": "array"}')
    (arr / "c" / "0" / "0").write_bytes(b"\x00\x01")
    (arr / "c" / "0" / "1").write_bytes(b"\x02\x03")
    rows = {
        rel: {"path": rel, "size": d.size, "sha256": d.sha256}
        for rel, d in entries(tmp_path, "img.ome.zarr").items()
    }
    assert sorted(rows) == ["img.ome.zarr/0", "img.ome.zarr/zarr.json"]
    sha = {
        p.relative_to(tmp_path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in tmp_path.rglob("*")
        if p.is_file()
    }
    assert crosscheck(rows, sha) == 2
    sha["img.ome.zarr/0/c/0/1"] = "0" * 64
    with pytest.raises(IntegrityError, match="array digest") as exc:
        crosscheck(rows, sha)
    assert exc.value.path == "img.ome.zarr/0"


def test_ome_zarr_tree(dataset: Path, tmp_path: Path) -> None:
    """An .ome.zarr tree: its arrays' manifest rows are checked through their array
    digests; the RO-Crate describes the tree as one Dataset entity."""
    zroot = "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM.ome.zarr"
    arr = dataset / zroot / "0"
    (arr / "c" / "0").mkdir(parents=True)
    (dataset / zroot / "zarr.json").write_text('{"node_type": "group"}')
    (arr / "zarr.json").write_text('{"node_type": "array"}')
    for i in range(3):
        (arr / "c" / "0" / str(i)).write_bytes(bytes([i]) * 16)
    rows = read_manifest(dataset)
    for rel, d in entries(dataset, zroot).items():
        rows[rel] = {
            "path": rel,
            "size": d.size,
            "sha256": d.sha256,
            "xxh3_128": d.xxh3_128,
            "pixel_hash": None,
            "step": "test:zarr",
        }
    write_manifest(dataset / MANIFEST_TSV, dataset / MANIFEST_PARQUET, rows)
    assert f"{zroot}/0" in rows and f"{zroot}/0/c/0/0" not in rows
    exported(dataset, tmp_path / "bag", "bagit")
    exported(dataset, tmp_path / "crate", "ro-crate")
    crate = ROCrate(tmp_path / "crate")
    [zarr] = [e for e in crate.data_entities if e.type == "Dataset"]
    assert zarr.id == f"{zroot}/"
    assert not [e for e in crate.data_entities if e.id.startswith(zroot) and e.type == "File"]
    assert (tmp_path / "crate" / zroot / "0" / "c" / "0" / "2").read_bytes() == bytes([2]) * 16
    # a changed chunk is caught through the array digest
    (arr / "c" / "0" / "1").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match="array digest differs") as exc:
        list(export(dataset, tmp_path / "bag2", "bagit"))
    assert exc.value.path == f"{zroot}/0"
