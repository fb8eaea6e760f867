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
