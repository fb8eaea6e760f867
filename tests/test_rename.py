"""`bidspack rename-subject`: everything the label touches, validated before and after."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import tifffile

from bidspack.errors import PlanError
from bidspack.io.ometiff import pixel_hash_of_file
from bidspack.ops.package import package
from bidspack.ops.rename import rename_subjects
from bidspack.ops.validate import validate_dataset
from bidspack.spec import load_spec
from conftest import run_bidspack, snapshot
from test_package import STP_SPEC, validator_errors


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bidspack(*args)


def own_errors(ds: Path) -> list[str]:
    return [f"{r.path}: {r.message}" for r in validate_dataset(ds) if r.status == "error"]


def mentions(ds: Path, label: str) -> list[str]:
    """Every path, text line or OME-XML that still carries sub-<label> as an entity."""
    pat = re.compile(rf"(?<![0-9A-Za-z+])sub-{re.escape(label)}(?=[_/.\s]|$)")
    found = []
    for p in sorted(ds.rglob("*")):
        rel = p.relative_to(ds).as_posix()
        if rel.startswith(".bidspack/txn") or rel == ".bidspack/lock":
            continue
        if rel.startswith("code/bidspack/provenance/"):
            # history: the rename's own record names the old label (checked below)
            continue
        if pat.search(rel):
            found.append(rel)
        is_table = p.is_file() and p.suffix in (".tsv", ".json")
        if is_table and pat.search(p.read_text(encoding="utf-8")):
            found.append(f"{rel} (content)")
        if p.name.endswith(".ome.tif") and pat.search(str(tifffile.tiffcomment(p))):
            found.append(f"{rel} (OME-XML)")
    return found


def test_rename_example_everywhere(dataset: Path) -> None:
    assert validator_errors(dataset) == [] and own_errors(dataset) == []
    old_img = dataset / "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM.ome.tif"
    pixel_hash = pixel_hash_of_file(old_img)
    assert mentions(dataset, "45670ko")
    proc = cli("rename-subject", str(dataset), "45670ko", "m45670")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert mentions(dataset, "45670ko") == []
    # history stays true: the records of the steps that ran with the old label keep it,
    # the rename's own record says old -> new, and the dataset remembers the rename
    records = [json.loads(p.read_text()) for p in (dataset / "code/bidspack/provenance").iterdir()]
    acts = [r["Records"]["Activities"][0] for r in records]
    rename_acts = [a for a in acts if a["Label"] == "rename-subject"]
    assert len(rename_acts) == 1
    assert rename_acts[0]["Parameters"]["mapping"] == {"sub-45670ko": "sub-m45670"}
    old_steps = sorted(a["Step"] for a in acts if a["Step"].startswith("sub-45670ko/"))
    assert len(old_steps) == 5 and not [a for a in acts if "m45670" in str(a.get("Step"))]
    renames = json.loads((dataset / "code/bidspack/renames.json").read_text())["renames"]
    assert [(r["from"], r["to"]) for r in renames] == [("45670ko", "m45670")]
    log = cli("log", str(dataset)).stdout
    assert "sub-45670ko -> sub-m45670" in log and "sub-45670ko/640_N4" in log
    new_img = dataset / "sub-m45670/micr/sub-m45670_sample-brainLH_stain-N4_SPIM.ome.tif"
    assert pixel_hash_of_file(new_img) == pixel_hash
    assert 'Name="sub-m45670_sample-brainLH_stain-N4_SPIM"' in str(tifffile.tiffcomment(new_img))
    assert (dataset / "derivatives/frst/sub-m45670/micr").is_dir()
    assert (dataset / "sourcedata/sub-m45670/640_FRST_seg/cells.csv").is_file()
    assert "sub-m45670\tMus musculus" in (dataset / "participants.tsv").read_text()
    assert "sample-brainLH\tsub-m45670" in (dataset / "samples.tsv").read_text()
    steps = {p.name for p in (dataset / ".bidspack/steps").iterdir()}
    assert "sub-m45670__640_N4.json" in steps
    assert validator_errors(dataset) == [] and own_errors(dataset) == []
    assert not list((dataset / ".bidspack/txn").iterdir())


def test_sidecar_paths_and_scans_tables(dataset: Path) -> None:
    micr = dataset / "sub-45670ko/micr"
    side = micr / "sub-45670ko_sample-brainLH_stain-N4_SPIM.json"
    meta = json.loads(side.read_text())
    meta["Description"] = "sub-45670ko stays in free text"
    side.write_text(json.dumps(meta))
    deriv = (
        dataset
        / "derivatives/atlasreg/sub-45670ko/micr/sub-45670ko_sample-brainLH_desc-atlas_SPIM.json"
    )
    dmeta = json.loads(deriv.read_text())
    dmeta["Sources"] = [
        "bids:raw:sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM.ome.tif"
    ]
    deriv.write_text(json.dumps(dmeta))
    (dataset / "sub-45670ko/sub-45670ko_scans.tsv").write_text(
        "filename\tacq_time\nmicr/sub-45670ko_sample-brainLH_stain-N4_SPIM.ome.tif\tn/a\n"
    )
    records = list(rename_subjects(dataset, {"sub-45670ko": "sub-m1"}))
    assert not [r for r in records if r.status == "error"], [
        r for r in records if r.status == "error"
    ]
    new_deriv = (
        dataset / "derivatives/atlasreg/sub-m1/micr/sub-m1_sample-brainLH_desc-atlas_SPIM.json"
    )
    assert json.loads(new_deriv.read_text())["Sources"] == [
        "bids:raw:sub-m1/micr/sub-m1_sample-brainLH_stain-N4_SPIM.ome.tif"
    ]
    assert (
        (dataset / "sub-m1/sub-m1_scans.tsv")
        .read_text()
        .splitlines()[1]
        .startswith("micr/sub-m1_sample-brainLH_stain-N4_SPIM.ome.tif\t")
    )
    new_side = json.loads(
        (dataset / "sub-m1/micr/sub-m1_sample-brainLH_stain-N4_SPIM.json").read_text()
    )
    assert new_side["Description"] == "sub-45670ko stays in free text"  # not a path value


def test_collision_fails_cleanly(dataset: Path) -> None:
    before = snapshot(dataset)
    proc = cli("rename-subject", str(dataset), "45670ko", "45671floxed")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "sub-45671floxed exists already" in proc.stderr
    assert snapshot(dataset) == before
    for bad in (("45670ko", "bad-label"), ("nosuch", "x1")):
        proc = cli("rename-subject", str(dataset), *bad)
        assert proc.returncode == 1 and proc.stderr.startswith("Error:")
    with pytest.raises(PlanError, match="would both become"):
        list(rename_subjects(dataset, {"45670ko": "z9", "45672ko": "z9"}))
    assert snapshot(dataset) == before


def test_dry_run_lists_changes_and_writes_nothing(dataset: Path) -> None:
    before = snapshot(dataset)
    proc = cli("rename-subject", str(dataset), "45670ko", "m2", "--dry-run", "--json")
    assert proc.returncode == 0
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {"sub-45670ko"} <= {r["path"] for r in recs if r["action"] == "rename"}
    assert any(r["path"] == "participants.tsv" for r in recs if r["action"] == "rewrite")
    assert snapshot(dataset) == before


def test_map_file_and_sanitize_round_trip(dataset: Path, tmp_path: Path) -> None:
    skip = (".bidspack", "code/bidspack/")  # manifest rows and provenance change with renames
    original = {k: v for k, v in snapshot(dataset).items() if not k.startswith(skip)}
    mapping = tmp_path / "map.tsv"
    mapping.write_text("old\tnew\nsub-45670ko\tsub-a1\n45672ko\ta2\n")
    assert cli("rename-subject", str(dataset), "--map", str(mapping)).returncode == 0
    assert {p.name for p in dataset.glob("sub-*")} == {"sub-a1", "sub-a2", "sub-45671floxed"}
    # a lab's invalid label: make sub-a1 into sub-45670-ko by hand (names, TSV and JSON text)
    for p in sorted(dataset.rglob("*sub-a1*"), key=lambda p: -len(p.parts)):
        if ".bidspack" not in p.parts:
            p.rename(p.with_name(p.name.replace("sub-a1", "sub-45670-ko")))
    for p in [*dataset.rglob("*.tsv"), *dataset.rglob("*.json")]:
        if ".bidspack" not in p.parts:
            p.write_text(p.read_text().replace("sub-a1", "sub-45670-ko"))
    proc = cli("rename-subject", str(dataset), "--sanitize", "--no-validate")
    assert proc.returncode == 0, proc.stderr
    assert (dataset / "sub-45670ko").is_dir() and not (dataset / "sub-45670-ko").exists()
    assert cli("rename-subject", str(dataset), "a1", "45670ko").returncode == 1  # a1 is gone
    # undo the map rename of a2, OME-XML names included: back to the packaged bytes
    cli("rename-subject", str(dataset), "a2", "45672ko")
    now = {k: v for k, v in snapshot(dataset).items() if not k.startswith(skip)}
    differing = {k for k in set(now) | set(original) if now.get(k) != original.get(k)}
    # only OME-TIFFs of sub-45670ko differ: their OME-XML still says sub-a1 (hand rename)
    assert differing and all("45670ko" in k and k.endswith(".ome.tif") for k in differing)


def test_rename_real_stack_dataset(realdata: Path, tmp_path: Path) -> None:
    spec = tmp_path / "stp.toml"
    spec.write_text(STP_SPEC, encoding="utf-8")
    ds = tmp_path / "ds"
    assert not [r for r in package(realdata, ds, load_spec(spec)) if r.status == "error"]
    assert validator_errors(ds) == [] and own_errors(ds) == []
    proc = cli("rename-subject", str(ds), "stpmousebrain", "stp01")
    assert proc.returncode == 0, proc.stderr
    assert (ds / "sub-stp01/micr/sub-stp01_sample-brain_2PE.ome.tif").is_file()
    assert mentions(ds, "stpmousebrain") == []
    assert validator_errors(ds) == [] and own_errors(ds) == []
    assert os.listdir(ds / ".bidspack/txn") == []
