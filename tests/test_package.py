"""`bidspack package` and `bidspack demo` end to end, with the real validator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import tifffile
from ome_types import from_xml

from bidspack.io.ometiff import pixel_hash_of_file
from bidspack.io.pixelhash import PixelHasher
from bidspack.ops.package import build_plan, package
from bidspack.spec import load_schema, load_spec
from conftest import snapshot


def validator_errors(dataset: Path) -> list[dict]:
    """Errors reported by `bids-validator-deno -r` (the official validator, run directly)."""
    proc = subprocess.run(
        ["bids-validator-deno", str(dataset), "-r", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(proc.stdout)
    reports = [report, *report.get("derivativesSummary", {}).values()]
    errs = [i for r in reports for i in r["issues"]["issues"] if i["severity"] == "error"]
    assert (proc.returncode == 0) == (not errs)
    return errs


def test_demo_cli_gives_zero_validator_errors(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "bidspack", "demo", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "validation: 0 errors" in proc.stdout.replace("\n", " ")
    ds = out / "dataset"
    assert validator_errors(ds) == []
    assert len(list(ds.glob("sub-*/micr/*.ome.tif"))) == 3
    assert len(list(ds.glob("derivatives/*/sub-*/micr/*.ome.tif"))) == 9
    desc = json.loads((ds / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.11.1" and desc["DatasetType"] == "raw"
    assert desc["GeneratedBy"][0]["Name"] == "bidspack"
    deriv = json.loads((ds / "derivatives/atlasreg/dataset_description.json").read_text())
    assert deriv["DatasetType"] == "derivative" and deriv["SourceDatasets"]
    assert (ds / "participants.tsv").read_text().splitlines()[1].startswith("sub-45670ko\t")


def test_every_input_file_is_accounted_for(example) -> None:
    sub, spec_path = example
    plan = build_plan(sub, load_spec(spec_path))
    jsonschema.validate(plan.to_dict(), load_schema("plan"))
    accounted = [s for a in plan if a.kind in ("convert", "copy", "exclude") for s in a.sources]
    files = sorted(p.relative_to(sub).as_posix() for p in sub.rglob("*") if p.is_file())
    assert sorted(accounted) == files  # each exactly once
    excluded = [a for a in plan if a.kind == "exclude"]
    assert excluded and all("near-copy" in a.reason for a in excluded)
    assert all(not Path(t).is_absolute() for t in plan.targets())


def test_dry_run_writes_nothing(example, tmp_path: Path) -> None:
    sub, spec_path = example
    before = snapshot(sub)
    records = list(package(sub, tmp_path / "ds", load_spec(spec_path), dry_run=True))
    assert records and {r.status for r in records} == {"planned", "excluded"}
    assert not (tmp_path / "ds").exists()
    assert snapshot(sub) == before


def test_package_is_deterministic_and_leaves_submission_alone(example, tmp_path: Path) -> None:
    sub, spec_path = example
    before = snapshot(sub)
    spec = load_spec(spec_path)
    for name in ("a", "b"):
        recs = list(package(sub, tmp_path / name, spec))
        assert not [r for r in recs if r.status == "error"]
    assert snapshot(sub) == before
    # byte-identical data, metadata and manifest; provenance records are a log (they carry
    # times and transaction ids), so only their number is compared
    skip = (".bidspack", "code/bidspack/provenance/")
    a = {k: v for k, v in snapshot(tmp_path / "a").items() if not k.startswith(skip)}
    b = {k: v for k, v in snapshot(tmp_path / "b").items() if not k.startswith(skip)}
    assert a == b and len(a) > 30 and "code/bidspack/manifest.tsv" in a
    prov = [len(list((tmp_path / n / "code/bidspack/provenance").iterdir())) for n in "ab"]
    assert prov == [16, 16]
    assert not list((tmp_path / "a" / ".bidspack" / "txn").iterdir())  # no staging leftovers


STP_SPEC = """
spec_version = 1
[dataset]
Name = "Serial two-photon mouse brain (brainreg test data)"
Authors = ["BrainGlobe"]
License = "BSD-3-Clause"
[subjects]
pattern = '(?P<name>stp_mouse_brain)'
label = "{name}"
sample = "brain"
[subjects.participants.species]
value = "Mus musculus"
[[channels]]
folder = "slices"
suffix = "2PE"
voxel_size = { z = 50, y = 40, x = 40 }
voxel_unit = "um"
[[exclude]]
path = "stp_mouse_brain/*.tiff"
reason = "registration outputs in downsampled space with unknown voxel size"
[[exclude]]
path = "czi"
reason = "other test data, not part of this dataset"
[[exclude]]
path = "ometiff"
reason = "other test data, not part of this dataset"
[[exclude]]
path = "omexml"
reason = "metadata samples only"
[[exclude]]
path = "swc"
reason = "tracings, not images"
[[exclude]]
path = "README.md"
reason = "the data README, described in the dataset README"
"""


def test_real_stp_stack(realdata: Path, tmp_path: Path) -> None:
    spec_path = tmp_path / "stp.toml"
    spec_path.write_text(STP_SPEC, encoding="utf-8")
    slices = realdata / "stp_mouse_brain" / "slices"
    before = snapshot(slices)
    ds = tmp_path / "ds"
    recs = list(package(realdata, ds, load_spec(spec_path)))
    assert not [r for r in recs if r.status == "error"], [r for r in recs if r.status == "error"]
    assert validator_errors(ds) == []
    out = ds / "sub-stpmousebrain/micr/sub-stpmousebrain_sample-brain_2PE.ome.tif"
    # pixel hash of the slice folder, computed independently from the slice files
    files = sorted(slices.glob("image_*.tif"))
    assert len(files) == 270
    hasher = PixelHasher("ZYX", (270, 193, 271), np.uint16)
    for f in files:
        hasher.update(tifffile.imread(f))
    assert pixel_hash_of_file(out) == hasher.hexdigest()
    with tifffile.TiffFile(out) as tif:
        px = from_xml(tif.ome_metadata).images[0].pixels
    assert (px.physical_size_x, px.physical_size_y, px.physical_size_z) == (40.0, 40.0, 50.0)
    assert px.physical_size_x_unit.value == "µm"
    sidecar = json.loads(out.with_name(out.name.replace(".ome.tif", ".json")).read_text())
    assert sidecar["PixelSize"] == [40, 40, 50] and sidecar["PixelSizeUnits"] == "um"
    assert snapshot(slices) == before


def test_step_option_applies_only_the_named_steps(example, tmp_path: Path) -> None:
    """--step: only matching steps run (changed inputs elsewhere wait for a full run);
    a pattern matching no step is a clean error naming the steps."""
    sub, spec_path = example
    ds = tmp_path / "ds"
    assert not [r for r in package(sub, ds, load_spec(spec_path)) if r.status == "error"]
    for folder in sorted(sub.glob("*/640_N4")):  # change one slice of every subject
        first = sorted(folder.glob("Z*.tif"))[0]
        plane = tifffile.imread(first)
        plane[0, 0] ^= 1
        tifffile.imwrite(first, plane)
    before = snapshot(ds / "sub-45671floxed")
    cli = [sys.executable, "-m", "bidspack", "package", str(sub), str(ds), "--spec"]
    proc = subprocess.run(
        [*cli, str(spec_path), "--step", "sub-45670ko/*", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    ran = [r["path"] for r in records if r["action"] == "step" and r["status"] == "ok"]
    assert ran == ["sub-45670ko/640_N4"]
    assert snapshot(ds / "sub-45671floxed") == before  # selected out: untouched
    rest = [r.path for r in package(sub, ds, load_spec(spec_path)) if r.action == "step"]
    assert "sub-45671floxed/640_N4" in rest
    bad = subprocess.run(
        [*cli, str(spec_path), "--step", "sub-nobody/*"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and "matches no step" in bad.stderr and "Traceback" not in bad.stderr
    assert "sub-45670ko/640_N4" in bad.stderr  # the hint lists steps
