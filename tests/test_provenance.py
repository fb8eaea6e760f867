"""Manifest, provenance records, verify and log on real packaged datasets."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import tifffile

from bidspack.io.ometiff import write_ome_tiff
from bidspack.io.sources import SliceFolder
from bidspack.ops.rename import rename_subjects
from bidspack.ops.verify import verify
from bidspack.provenance.manifest import MANIFEST_PARQUET, MANIFEST_TSV, read_manifest
from bidspack.provenance.record import read_records
from bidspack.spec import load_schema
from conftest import run_bidspack

IMG = "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM.ome.tif"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bidspack(*args)


def test_manifest_rows(packaged_run) -> None:
    ds, recs = packaged_run
    rows = read_manifest(ds)
    schema = load_schema("manifest")
    for row in rows.values():
        jsonschema.validate(row, schema)
    files = sorted(p.relative_to(ds).as_posix() for p in ds.rglob("*") if p.is_file())
    listed = [
        f
        for f in files
        if not f.startswith((".bidspack/", "code/bidspack/provenance/"))
        and f not in (MANIFEST_TSV, MANIFEST_PARQUET)
    ]
    assert sorted(rows) == listed
    row = rows[IMG]
    assert row["sha256"] == hashlib.sha256((ds / IMG).read_bytes()).hexdigest()
    convert = next(r for r in recs if r.action == "convert" and r.path == IMG)
    assert row["pixel_hash"] == convert.details["pixel_hash"]
    assert row["step"] == "package:sub-45670ko/640_N4"
    assert rows["participants.tsv"]["step"] == "package:dataset"
    pq = pd.read_parquet(ds / MANIFEST_PARQUET)
    assert list(pq["path"]) == sorted(rows) and list(pq["sha256"]) == [
        rows[p]["sha256"] for p in sorted(rows)
    ]


def test_provenance_records(packaged: Path) -> None:
    ds = packaged
    records = read_records(ds)
    assert len(records) == 16  # 15 subject x channel steps + the dataset step
    schema = load_schema("provenance")
    for rec in records:
        jsonschema.validate(rec, schema)
    text = "".join(p.read_text() for p in (ds / "code/bidspack/provenance").iterdir())
    assert str(ds) not in text and "/tmp/" not in text  # no machine-specific paths
    step = next(r for r in records if r["Records"]["Activities"][0]["Step"] == "sub-45670ko/640_N4")
    act = step["Records"]["Activities"][0]
    assert len(act["Used"]) == 24  # the 24 slices
    sw = {s["Label"]: s["Version"] for s in step["Records"]["Software"]}
    assert {"bidspack", "tifffile", "zarr", "numpy", "python"} <= set(sw)
    out = next(e for e in step["Records"]["Entities"] if e["AtLocation"] == IMG)
    assert out["GeneratedBy"] == act["Id"]
    assert out["Digest"]["sha256"] == read_manifest(ds)[IMG]["sha256"]
    assert "bidspack-pixelhash/1" in out["Digest"]
    desc = json.loads((ds / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "bidspack" and desc["GeneratedBy"][0]["Version"]


def test_verify_clean_and_one_pixel(dataset: Path, tmp_path: Path) -> None:
    assert [r for r in verify(dataset) if r.status == "error"] == []
    # change one pixel of one image, re-written the way bidspack writes it
    with tifffile.TiffFile(dataset / IMG) as tif:
        data = tif.series[0].asarray()
    data[3, 10, 10] += 1
    sl = tmp_path / "sl"
    sl.mkdir()
    for z, plane in enumerate(data):
        tifffile.imwrite(sl / f"Z{z:04d}.tif", plane)
    (dataset / IMG).unlink()
    write_ome_tiff(
        dataset / IMG,
        SliceFolder(sl),
        physical_size_zyx_um=(4.0, 1.8, 1.8),
        name="sub-45670ko_sample-brainLH_stain-N4_SPIM",
        workdir=tmp_path / "w",
    )
    errors = [r for r in verify(dataset) if r.status == "error" and r.path != "."]
    assert [(r.path, r.message) for r in errors] == [
        (IMG, "modified: sha256/xxh3-128 differ from the manifest; pixels differ")
    ]
    proc = cli("verify", str(dataset), "--json")
    assert proc.returncode == 1
    bad = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [r["path"] for r in bad if r["status"] == "error" and r["path"] != "."] == [IMG]


def test_verify_missing_and_unlisted(dataset: Path) -> None:
    (dataset / "samples.json").unlink()
    (dataset / "sub-45670ko/micr/extra.txt").write_text("x")
    problems = {
        (r.path, r.details.get("problem"))
        for r in verify(dataset, pixels=False)
        if r.status == "error" and r.path != "."
    }
    assert problems == {("samples.json", "missing"), ("sub-45670ko/micr/extra.txt", "unlisted")}


def test_log_newest_first(dataset: Path) -> None:
    proc = cli("log", str(dataset), "--json")
    assert proc.returncode == 0
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(lines) == 16 and lines[-1]["step"] == "dataset"  # the first step
    assert [x["ended"] for x in lines] == sorted((x["ended"] for x in lines), reverse=True)


def test_rename_keeps_manifest_true(dataset: Path) -> None:
    before = read_manifest(dataset)
    list(rename_subjects(dataset, {"45670ko": "m1"}, validate=False))
    after = read_manifest(dataset)
    new_img = IMG.replace("45670ko", "m1")
    assert IMG not in after and after[new_img]["pixel_hash"] == before[IMG]["pixel_hash"]
    assert after[new_img]["step"] == "rename-subject:rename"
    renamed_csv = "sourcedata/sub-m1/640_FRST_seg/cells.csv"
    assert after[renamed_csv]["sha256"] == before[renamed_csv.replace("m1", "45670ko")]["sha256"]
    assert [r for r in verify(dataset) if r.status == "error"] == []
    assert read_records(dataset)[0]["Records"]["Activities"][0]["Label"] == "rename-subject"
    # one more row: the rename record the dataset keeps (code/bidspack/renames.json)
    np.testing.assert_equal(len(after), len(before) + 1)
    assert "code/bidspack/renames.json" in after
