"""Vendor files through bioio (real Zeiss CZI files): one scene / channel / time point
as a (z, y, x) source, aggregated to OME-Zarr and OME-TIFF with the file's voxel size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from bidspack.errors import SourceError
from bidspack.io.ometiff import pixel_hash_of_file
from bidspack.io.omezarr import ome_zarr_scale_um, pixel_hash_of_zarr, validate_ome_zarr
from bidspack.io.pixelhash import pixel_hash_array
from bidspack.io.sources import open_source
from bidspack.io.vendor import VendorImage
from test_aggregate import bidspack, record

CELL = "czi/CellDivision_T3_Z5_CH2_X240_Y170.czi"  # T3 C2 Z5 (170, 240), 0.0906/0.32 um


def reference(path: Path, channel: int, time: int) -> np.ndarray:
    """The (z, y, x) array as bioio gives it in one call (independent of VendorImage)."""
    from bioio import BioImage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(BioImage(path).get_image_data("ZYX", C=channel, T=time))


def test_czi_channel_and_time_point(realdata: Path) -> None:
    path = realdata / CELL
    src = open_source(path, channel=1, time=2)
    assert isinstance(src, VendorImage)
    assert src.shape == (5, 170, 240) and src.dtype == np.uint16
    assert src.channel_name == "LED470"
    assert src.info.physical_size == pytest.approx((0.32, 0.0905767, 0.0905767), rel=1e-5)
    planes = np.stack(list(src.iter_planes()))
    assert np.array_equal(planes, reference(path, 1, 2))
    assert not np.array_equal(planes, reference(path, 0, 2))  # the selection matters
    by_name = VendorImage(path, channel="LED470", time=2)
    assert np.array_equal(by_name.read_plane(3), planes[3])


def test_aggregate_czi_to_zarr_and_tiff(realdata: Path, tmp_path: Path) -> None:
    path = realdata / CELL
    expected = pixel_hash_array(reference(path, 1, 2), "ZYX")
    out = tmp_path / "cells.ome.zarr"
    rec = record(
        bidspack("aggregate", str(path), str(out), "--channel", "1", "--time", "2", "--json")
    )
    assert rec["details"]["pixel_hash"] == expected == pixel_hash_of_zarr(out)
    assert rec["details"]["channel_name"] == "LED470" and rec["details"]["time"] == 2
    assert ome_zarr_scale_um(out) == pytest.approx((0.32, 0.0905767, 0.0905767), rel=1e-5)
    assert validate_ome_zarr(out, full=True) == []
    tif = tmp_path / "cells.ome.tif"
    rec = record(
        bidspack("aggregate", str(path), str(tif), "--channel", "LED470", "--time", "2", "--json")
    )
    assert pixel_hash_of_file(tif) == expected


def test_vendor_errors_are_clean(realdata: Path, tmp_path: Path) -> None:
    path = realdata / CELL
    with pytest.raises(SourceError, match="channel 2 does not exist"):
        VendorImage(path, channel=2)
    with pytest.raises(SourceError, match="time point 3 does not exist"):
        VendorImage(path, time=3)
    with pytest.raises(SourceError, match="no channel named 'GFP'"):
        VendorImage(path, channel="GFP")
    with pytest.raises(SourceError, match="no installed bioio reader plugin"):
        VendorImage(realdata / "README.md")
    with pytest.raises(SourceError, match="select inside vendor files"):
        open_source(realdata / "stp_mouse_brain" / "downsampled.tiff", channel=1)
    # a real file bioio-czi fails on (a 2D SEM image): a clean error naming it
    sem = realdata / "czi" / "Al2O3_SE_020_sp.czi"
    proc = bidspack("aggregate", str(sem), str(tmp_path / "sem.ome.zarr"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Al2O3_SE_020_sp.czi" in proc.stderr and "bioio cannot read" in proc.stderr
    proc = bidspack("aggregate", str(path), str(tmp_path / "x.ome.zarr"), "--channel", "5")
    assert proc.returncode == 1 and "channel 5 does not exist" in proc.stderr
    assert not list(tmp_path.iterdir())


SPEC = """
spec_version = 1

[dataset]
Name = "Dividing cells (bidspack CZI test)"
Authors = ["A. Curator"]
License = "CC-BY-4.0"

[subjects]
pattern = 'mouse(?P<subject>\\d+)'
label = "{subject}"
sample = "cells"
sample_type = "in vitro differentiated cells"

[[channels]]
folder = "cells.czi"
suffix = "CONF"
entities = { stain = "LED555" }
select = { channel = 0, time = 1 }

[[channels]]
folder = "cells.czi"
suffix = "CONF"
entities = { stain = "LED470" }
select = { channel = "LED470", time = 1 }
"""


def test_package_a_czi_submission(realdata: Path, tmp_path: Path) -> None:
    """Two channels of one real CZI per subject, packaged straight from the vendor file:
    the official validator accepts the dataset, pixels and voxel sizes are the file's."""
    import json

    from bidspack.ops.package import package
    from bidspack.spec import load_spec
    from test_package import validator_errors

    sub = tmp_path / "submission"
    for name in ("mouse1", "mouse2"):
        (sub / name).mkdir(parents=True)
        (sub / name / "cells.czi").write_bytes((realdata / CELL).read_bytes())
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    ds = tmp_path / "ds"
    recs = list(package(sub, ds, load_spec(spec)))
    assert not [r for r in recs if r.status == "error"], [r for r in recs if r.status == "error"]
    assert validator_errors(ds) == []
    for channel, stain in ((0, "LED555"), (1, "LED470")):
        img = ds / f"sub-2/micr/sub-2_sample-cells_stain-{stain}_CONF.ome.tif"
        assert pixel_hash_of_file(img) == pixel_hash_array(
            reference(path=realdata / CELL, channel=channel, time=1), "ZYX"
        )
        side = json.loads(img.with_name(img.name.replace(".ome.tif", ".json")).read_text())
        assert side["PixelSize"] == pytest.approx([0.0905767, 0.0905767, 0.32], rel=1e-5)
    # a selection that is not in the file: a clean plan error, nothing written
    spec.write_text(SPEC.replace('channel = "LED470"', 'channel = "GFP"'))
    with pytest.raises(SourceError, match="no channel named 'GFP'"):
        list(package(sub, tmp_path / "ds2", load_spec(spec)))
    assert not (tmp_path / "ds2").exists()


def test_plane_chunks_and_zeiss_reader_agree(tmp_path: Path, monkeypatch) -> None:
    """A CZI written by Zeiss's pylibCZIrw: bioio's lazy stack is chunked per plane
    (its default chunk, a whole Z stack, made plane reads quadratic) and the planes,
    read in blocks of 3, equal pylibCZIrw's own."""
    from pylibCZIrw import czi as pyczi

    from bidspack.io import vendor

    rng = np.random.default_rng(5)
    planes = rng.integers(0, 4000, (10, 64, 80)).astype(np.uint16)
    path = tmp_path / "stack.czi"
    with pyczi.create_czi(str(path)) as f:
        for z, plane in enumerate(planes):
            f.write(data=plane, plane={"Z": z, "C": 0, "T": 0})
    src = VendorImage(path)
    assert src.shape == (10, 64, 80)
    assert set(src._stack.chunks[0]) == {1}
    monkeypatch.setattr(vendor, "BLOCK_BYTES", 3 * 64 * 80 * 2)  # blocks of 3 planes
    got = np.stack(list(src.iter_planes()))
    with pyczi.open_czi(str(path)) as f:
        zeiss = np.stack([f.read(plane={"Z": z, "C": 0, "T": 0})[..., 0] for z in range(10)])
    assert np.array_equal(got, zeiss) and np.array_equal(got, planes)
    assert np.array_equal(src.read_plane(7), planes[7])


def test_what_a_selection_leaves_out_is_said(realdata: Path, tmp_path: Path) -> None:
    """aggregate of the T3 C2 CZI writes one channel and time point and names the rest;
    the Airyscan file's 32 detector phases (hidden by bioio) are named too."""
    import json

    from conftest import run_bidspack

    czi = realdata / "czi" / "CellDivision_T3_Z5_CH2_X240_Y170.czi"
    proc = run_bidspack("aggregate", str(czi), str(tmp_path / "o.ome.zarr"), "--json")
    assert proc.returncode == 0, proc.stderr
    [rec] = [json.loads(x) for x in proc.stdout.splitlines() if '"aggregate"' in x]
    assert rec["details"]["left_out"] == ["channel(s) LED470", "time point(s) 1, 2"]
    assert rec["message"].endswith("; left out: channel(s) LED470; time point(s) 1, 2")
    airy = realdata / "czi" / "LSM880_AiryScan.czi"
    src = open_source(airy, channel=0)
    assert src.left_out[-1].startswith("32 detector phases (Airyscan) (CZI dimension H")
    assert src.left_out[0].startswith("channel(s) ChA-T2, ChA-T3")
