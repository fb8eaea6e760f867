"""Packaging to OME-Zarr (NGFF 0.4 and 0.5) inside the BIDS dataset, validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bidspack.io.ometiff import pixel_hash_of_file
from bidspack.io.omezarr import ome_zarr_scale_um, pixel_hash_of_zarr
from bidspack.ops.package import package
from bidspack.ops.validate import validate_dataset
from bidspack.ops.verify import verify
from bidspack.spec import load_spec
from test_package import validator_errors

STEM = "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM"
LABEL = "derivatives/atlasreg/sub-45670ko/micr/sub-45670ko_sample-brainLH_desc-atlas_SPIM"


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_package_both_formats(example, tmp_path: Path, version: str) -> None:
    sub, spec = example
    spec.write_text(
        spec.read_text().replace(
            "tile = 256",
            f'tile = 256\nformats = ["ome-tiff", "ome-zarr"]\nngff_version = "{version}"',
        )
    )
    ds = tmp_path / "ds"
    recs = list(package(sub, ds, load_spec(spec)))
    assert not [r for r in recs if r.status == "error"], [r for r in recs if r.status == "error"]
    assert validator_errors(ds) == []
    zarr = ds / f"{STEM}.ome.zarr"
    meta = "zarr.json" if version == "0.5" else ".zattrs"
    assert (zarr / meta).is_file()
    assert pixel_hash_of_zarr(zarr) == pixel_hash_of_file(ds / f"{STEM}.ome.tif")
    assert ome_zarr_scale_um(zarr) == pytest.approx((4.0, 1.8, 1.8))
    checked = [r for r in recs if r.action == "validate" and r.details.get("check") == "ome-zarr"]
    assert len(checked) == 12  # every stack, raw and derivative
    assert [r for r in verify(ds) if r.status == "error"] == []
    # a sidecar that contradicts the Zarr scale: the BIDS validator cannot see it
    side = ds / f"{STEM}.json"
    (ds / f"{STEM}.ome.tif").unlink()  # keep only the Zarr for this check
    meta_json = json.loads(side.read_text())
    meta_json["PixelSize"] = [1.8, 1.8, 5.0]
    side.write_text(json.dumps(meta_json))
    assert "PIXEL_SIZE_INCONSISTENT" not in [e["code"] for e in validator_errors(ds)]
    errs = [r for r in validate_dataset(ds) if r.status == "error" and r.path.endswith(".ome.zarr")]
    assert len(errs) == 1 and "OME-Zarr scale" in errs[0].message


def test_label_zarr_keeps_label_values(example, tmp_path: Path) -> None:
    import zarr

    sub, spec = example
    spec.write_text(spec.read_text().replace("tile = 256", 'tile = 256\nformats = ["ome-zarr"]'))
    ds = tmp_path / "ds"
    assert not [r for r in package(sub, ds, load_spec(spec), validate=False) if r.status == "error"]
    group = zarr.open_group(ds / f"{LABEL}.ome.zarr", mode="r")
    levels = sorted(k for k in group.array_keys())
    base = set(group[levels[0]][:].ravel().tolist())
    assert len(levels) >= 1
    for key in levels:
        assert set(group[key][:].ravel().tolist()) <= base


def _with_labels(spec: Path, version: str, formats: str = '"ome-tiff", "ome-zarr"') -> None:
    """The example spec with OME-Zarr output and the atlas as an NGFF label of 640_N4."""
    text = spec.read_text().replace(
        "tile = 256", f'tile = 256\nformats = [{formats}]\nngff_version = "{version}"'
    )
    text = text.replace('desc = "atlas"\n', 'desc = "atlas"\nlabels_of = "640_N4"\n')
    spec.write_text(text)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_package_writes_ngff_labels(example, tmp_path: Path, version: str) -> None:
    """labels_of: the atlas label image is an NGFF label of the raw N4 image's OME-Zarr
    (and still a BIDS derivative); both validators pass, verify checks its pixels, a
    changed label slice re-runs the raw image's step."""
    import numpy as np
    import tifffile

    sub, spec = example
    _with_labels(spec, version)
    ds = tmp_path / "ds"
    recs = list(package(sub, ds, load_spec(spec)))
    assert not [r for r in recs if r.status == "error"], [r for r in recs if r.status == "error"]
    assert validator_errors(ds) == []
    image = ds / f"{STEM}.ome.zarr"
    label = image / "labels" / "atlas"
    # the NGFF label has the derivative's pixels
    assert pixel_hash_of_zarr(label) == pixel_hash_of_file(ds / f"{LABEL}.ome.tif")
    assert pixel_hash_of_zarr(label) == pixel_hash_of_zarr(ds / f"{LABEL}.ome.zarr")
    converted = next(r for r in recs if r.action == "convert" and r.path == f"{STEM}.ome.zarr")
    assert "with labels atlas" in converted.message
    # the manifest lists the label arrays with their pixel hash; verify re-checks them
    manifest = (ds / "code/bidspack/manifest.tsv").read_text().splitlines()
    row = next(line for line in manifest if line.startswith(f"{STEM}.ome.zarr/labels/atlas/0\t"))
    assert pixel_hash_of_zarr(label) in row
    assert [r for r in verify(ds) if r.status == "error"] == []
    # the plan records where the label came from
    plan = json.loads((ds / "code/bidspack/plan.json").read_text())
    act = next(a for a in plan["actions"] if a["target"] == f"{STEM}.ome.zarr")
    assert act["params"]["labels"][0]["name"] == "atlas"
    assert act["params"]["labels"][0]["folder"].endswith("/atlaslabel_def_origspace")

    # unchanged -> notneeded; one changed label slice re-runs the raw image's step too
    again = list(package(sub, ds, load_spec(spec), validate=False))
    assert not [r for r in again if r.action == "step" and r.status == "ok"]
    first = sub / act["params"]["labels"][0]["sources"][0]
    plane = tifffile.imread(first)
    plane[0, 0] = 4242
    tifffile.imwrite(first, plane)
    rerun = [
        r.path for r in package(sub, ds, load_spec(spec)) if r.action == "step" and r.status == "ok"
    ]
    assert "sub-45670ko/640_N4" in rerun and "sub-45670ko/atlaslabel_def_origspace" in rerun
    assert 4242 in np.unique(zarr_level(label, 0))
    assert [r for r in verify(ds) if r.status == "error"] == []


def zarr_level(path: Path, level: int):
    import zarr

    return zarr.open_array(str(path / str(level)), mode="r")[:]


def test_ngff_label_spec_and_plan_errors(example, tmp_path: Path) -> None:
    from bidspack.errors import PlanError, SpecError

    sub, spec = example
    original = spec.read_text()
    _with_labels(spec, "0.5", formats='"ome-tiff"')
    with pytest.raises(SpecError, match="ome-zarr"):
        load_spec(spec)
    spec.write_text(original)
    _with_labels(spec, "0.5")
    text = spec.read_text()
    spec.write_text(text.replace('labels_of = "640_N4"', 'labels_of = "640_FRST_seg"'))
    with pytest.raises(SpecError, match="not the folder of an intensity channel"):
        load_spec(spec)
    # heat maps (half the size) declared as a label of the raw image: a plan error
    spec.write_text(
        text.replace(
            'desc = "density"\n', 'desc = "density"\nimage = "label"\nlabels_of = "640_N4"\n'
        )
    )
    ds = tmp_path / "ds"
    with pytest.raises(PlanError, match=r"cannot be an NGFF label of .*640_N4"):
        list(package(sub, ds, load_spec(spec)))
    assert not ds.exists()


def test_rename_subject_reaches_ome_zarr_metadata(example, tmp_path: Path) -> None:
    """rename-subject rewrites the multiscale name and omero label inside OME-Zarr
    images (and their NGFF labels); pixels, validation and verification stay good."""
    from bidspack.ops.rename import rename_subjects

    sub, spec = example
    _with_labels(spec, "0.5", formats='"ome-zarr"')
    ds = tmp_path / "ds"
    assert not [r for r in package(sub, ds, load_spec(spec)) if r.status == "error"]
    before = pixel_hash_of_zarr(ds / f"{STEM}.ome.zarr")
    recs = list(rename_subjects(ds, {"45670ko": "45670"}))
    assert not [r for r in recs if r.status == "error"], [r for r in recs if r.status == "error"]
    new = ds / f"{STEM}.ome.zarr".replace("45670ko", "45670")
    meta = json.loads((new / "zarr.json").read_text())["attributes"]["ome"]
    assert meta["multiscales"][0]["name"] == new.name.removesuffix(".ome.zarr")
    assert meta["omero"]["channels"][0]["label"] == new.name.removesuffix(".ome.zarr")
    left = [p for p in ds.rglob("*") if p.is_file() and "45670ko" in p.name]
    assert left == []
    stale = [p for p in (ds / "sub-45670").rglob("zarr.json") if "sub-45670ko" in p.read_text()]
    assert stale == []
    assert pixel_hash_of_zarr(new) == before
    assert [r for r in verify(ds) if r.status == "error"] == []
    assert validator_errors(ds) == []


def test_package_on_a_dask_cluster_by_address(example, tmp_path: Path) -> None:
    """`bidspack package --scheduler tcp://...`: OME-Zarr encoded on a running
    dask.distributed cluster, the same bytes as a local run."""
    import subprocess
    import sys

    import distributed

    from conftest import snapshot

    sub, spec = example
    _with_labels(spec, "0.5", formats='"ome-zarr"')
    local = tmp_path / "local"
    assert not [
        r for r in package(sub, local, load_spec(spec), validate=False) if r.status == "error"
    ]
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", dashboard_address=None
    ) as cluster:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bidspack",
                "package",
                str(sub),
                str(tmp_path / "remote"),
                "--spec",
                str(spec),
                "--no-validate",
                "--scheduler",
                cluster.scheduler_address,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        worked = cluster.scheduler.transition_counter  # tasks ran on this cluster
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert worked > 100
    zarrs = sorted(p.relative_to(local) for p in local.rglob("*.ome.zarr"))
    assert len(zarrs) == 12
    for rel in zarrs:
        assert snapshot(tmp_path / "remote" / rel) == snapshot(local / rel), rel
