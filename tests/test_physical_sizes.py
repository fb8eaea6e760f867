"""Physical sizes axis by axis (issue 16): values from the file or the spec with their
origin, contradictions as errors naming both values (or an explicit, recorded
override), 2D images that stay 2D, exact unit conversions, and acquisition metadata
from the source file into sidecars and the output OME-XML.

The real OME-TIFF of ``../shared/realdata/ometiff`` is a 2D (325, 475) uint16 image
whose OME-XML says PhysicalSizeX/Y = 1.0833 µm and has no PhysicalSizeZ (its README).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bidspack.errors import SpecError
from bidspack.io.ometiff import pixel_hash_of_file
from bidspack.io.omexml import instrument_of, parse_omexml, physical_sizes_um
from bidspack.io.sources import open_source
from bidspack.io.voxels import VoxelSizeError, resolve_voxel_size, to_um
from bidspack.ops.package import package
from bidspack.spec import load_spec
from conftest import run_bidspack, snapshot

SIZE = 1.0833333333333333  # the real OME-TIFF's PhysicalSizeX/Y (µm)

SPEC = """
spec_version = 1
[dataset]
Name = "two-d"
Authors = ["A"]
License = "CC0-1.0"
[subjects]
pattern = 'cell(?P<id>\\d+)'
label = "{id}"
[[channels]]
folder = "bright.ome.tiff"
suffix = "BF"
{extra}
"""


@pytest.fixture
def ometiff(realdata: Path) -> Path:
    return realdata / "ometiff" / "s_1_t_1_c_1_z_1.ome.tiff"


def _submission(tmp_path: Path, ometiff: Path, extra: str = "") -> tuple[Path, Path]:
    sub = tmp_path / "sub"
    (sub / "cell1").mkdir(parents=True)
    shutil.copyfile(ometiff, sub / "cell1" / "bright.ome.tiff")
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("{extra}", extra), encoding="utf-8")
    return sub, spec


# --- units and the decision rules ---------------------------------------------------


def test_unit_conversions_are_exact_to_the_printed_precision() -> None:
    assert to_um(11.4, "Å") == 0.00114  # not 0.0011400000000000002
    assert 11.4 * 1e-4 != 0.00114  # the naive product is off
    assert to_um(2.791e-8, "m") == 0.02791
    assert to_um(SIZE, "µm") == SIZE  # micrometres unchanged
    assert to_um(1.5, "mm") == 1500.0
    with pytest.raises(VoxelSizeError, match="furlong"):
        to_um(1, "furlong")


def test_resolve_axis_by_axis_with_origins() -> None:
    v = resolve_voxel_size((None, SIZE, SIZE), (2.0, None, None), (5, 10, 10))
    assert v.zyx_um == (2.0, SIZE, SIZE)
    assert v.origin == {"z": "spec", "y": "file", "x": "file"}
    # 2D: nothing for z anywhere, one plane -> z stays unset
    v2 = resolve_voxel_size((None, SIZE, SIZE), None, (1, 10, 10))
    assert v2.zyx_um == (None, SIZE, SIZE) and v2.is_2d
    assert v2.origin["z"] == "none (2D image)"
    assert v2.for_zarr == (1.0, SIZE, SIZE)
    # a stack with no z size anywhere: the error names z and what the file does carry
    with pytest.raises(VoxelSizeError, match=r"carries y=1\.08333.* but no z size; give z"):
        resolve_voxel_size((None, SIZE, SIZE), None, (5, 10, 10))
    with pytest.raises(VoxelSizeError, match="carries no physical voxel size; give z/y/x"):
        resolve_voxel_size(None, None, (5, 10, 10))
    # a contradiction names both values; the override is explicit and recorded
    with pytest.raises(VoxelSizeError, match=r"y: .* says 1\.05 um, the file 1\.08333"):
        resolve_voxel_size((None, SIZE, SIZE), (1.0, 1.05, 1.05), (1, 10, 10))
    v3 = resolve_voxel_size((None, SIZE, SIZE), (1.0, 1.05, 1.05), (1, 10, 10), override=True)
    assert v3.zyx_um == (1.0, 1.05, 1.05)
    assert v3.overridden == {"y": [SIZE, 1.05], "x": [SIZE, 1.05]}
    assert v3.origin["x"].startswith("spec (overrides file")
    # agreeing values are the file's
    v4 = resolve_voxel_size((2.0, 0.5, 0.5), (2.0000000001, 0.5, 0.5), (3, 4, 4))
    assert v4.origin == {"z": "file", "y": "file", "x": "file"}


def test_ome_tiff_reads_per_axis_sizes_and_instrument(ometiff: Path) -> None:
    src = open_source(ometiff)
    assert src.shape == (1, 325, 475)
    assert src.info.found_sizes() == (None, SIZE, SIZE)
    assert src.info.physical_size is None  # not all three axes
    assert src.instrument["NumericalAperture"] == 0.8
    assert src.instrument["Magnification"] == 20
    assert src.instrument["Immersion"] == "Air"
    assert src.instrument["ChannelNames"] == ["Bright"]


def test_instrument_of_real_omexml(realdata: Path) -> None:
    tub = instrument_of((realdata / "omexml" / "tubhiswt.ome.xml").read_text(encoding="utf-8"))
    assert tub["Manufacturer"] == "Nikon"
    assert tub["ManufacturersModelName"] == "Eclipse TE300"
    assert (tub["NumericalAperture"], tub["Magnification"], tub["Immersion"]) == (1.4, 100, "Oil")
    cells = instrument_of(
        (realdata / "omexml" / "s_3_t_1_c_3_z_5.ome.xml").read_text(encoding="utf-8")
    )
    assert cells["ChannelNames"] == ["EGFP", "TaRFP", "Bright"]
    assert cells["ExcitationWavelengths"] == [488.0, 558.0, None]
    assert cells["EmissionWavelengths"] == [509.0, 583.0, None]


# --- aggregate (the case the issue reports) ----------------------------------------


def test_aggregate_spec_value_contradicting_the_file_is_an_error(
    tmp_path: Path, ometiff: Path
) -> None:
    out = tmp_path / "a.ome.tif"
    res = run_bidspack("aggregate", str(ometiff), str(out), "--voxel-size", "1,1.05,1.05")
    assert res.returncode != 0
    assert "1.05 um" in res.stderr and "1.08333" in res.stderr
    assert "--override-voxel-size" in res.stderr
    assert "carries no" not in res.stderr  # the file does carry X/Y
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_aggregate_override_is_explicit_and_recorded(tmp_path: Path, ometiff: Path) -> None:
    out = tmp_path / "b.ome.tif"
    res = run_bidspack(
        "aggregate",
        str(ometiff),
        str(out),
        "--voxel-size",
        "1,1.05,1.05",
        "--override-voxel-size",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout)
    rec = rec[0] if isinstance(rec, list) else rec
    details = rec["details"]
    assert details["voxel_size_overridden"] == {"y": [SIZE, 1.05], "x": [SIZE, 1.05]}
    assert details["voxel_size_origin"]["z"] == "spec"
    px = parse_omexml(tifffile.TiffFile(out).ome_metadata).images[0].pixels
    assert (px.physical_size_x, px.physical_size_z) == (1.05, 1.0)


def test_aggregate_2d_stays_2d_and_carries_the_instrument(tmp_path: Path, ometiff: Path) -> None:
    out = tmp_path / "c.ome.tif"
    res = run_bidspack("aggregate", str(ometiff), str(out), "--json")
    assert res.returncode == 0, res.stderr
    xml = tifffile.TiffFile(out).ome_metadata
    assert "PhysicalSizeZ" not in xml
    assert physical_sizes_um(xml) == (None, SIZE, SIZE)
    info = instrument_of(xml)
    assert (info["NumericalAperture"], info["Magnification"], info["Immersion"]) == (
        0.8,
        20,
        "Air",
    )
    assert info["ChannelNames"] == ["Bright"]
    assert pixel_hash_of_file(out) == pixel_hash_of_file(ometiff)


# --- package ------------------------------------------------------------------------


def test_package_2d_image_gets_two_value_pixelsize_and_file_metadata(
    tmp_path: Path, ometiff: Path
) -> None:
    """OME-Zarr output: the validator does not read OME-Zarr metadata, so a 2D image
    keeps a two-value PixelSize (NGFF z scale is a placeholder 1.0, as bioformats2raw)."""
    extra = '[channels.sidecar]\nMagnification = 20\n[output]\nformats = ["ome-zarr"]'
    sub, spec = _submission(tmp_path, ometiff, extra)
    before = snapshot(sub)
    ds = tmp_path / "ds"
    recs = list(package(sub, ds, load_spec(spec)))
    assert not [r for r in recs if r.status == "error"], [r.message for r in recs]
    assert snapshot(sub) == before
    stem = ds / "sub-1" / "micr" / "sub-1_sample-brain_BF"
    side = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    assert side["PixelSize"] == [SIZE, SIZE]  # [x, y]: no invented Z
    assert (side["NumericalAperture"], side["Magnification"], side["Immersion"]) == (
        0.8,
        20,
        "Air",
    )
    zarr = json.loads((Path(str(stem) + ".ome.zarr") / "zarr.json").read_text(encoding="utf-8"))
    ms = zarr["attributes"]["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, SIZE, SIZE]
    plan = json.loads((ds / "code" / "bidspack" / "plan.json").read_text(encoding="utf-8"))
    conv = [a for a in plan["actions"] if a["kind"] == "convert"]
    assert conv and all(
        a["params"]["voxel_size_origin"] == {"z": "none (2D image)", "y": "file", "x": "file"}
        for a in conv
    )
    planned = [r for r in recs if r.action == "convert"]
    assert planned and all("2D image" in r.message for r in planned)


def test_package_2d_image_as_ome_tiff_needs_a_z_size(tmp_path: Path, ometiff: Path) -> None:
    """The BIDS validator's PIXEL_SIZE_INCONSISTENT rule compares PixelSize[2] with
    PhysicalSizeZ: a 2D OME-TIFF without Z is refused at planning, with the way out."""
    sub, spec = _submission(tmp_path, ometiff)
    ds = tmp_path / "ds"
    res = run_bidspack("package", str(sub), str(ds), "--spec", str(spec))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "2D image" in res.stderr and "PIXEL_SIZE_INCONSISTENT" in res.stderr
    assert "voxel_size.z" in res.stderr
    assert not ds.exists()
    # a Z size from the spec (e.g. the section thickness): recorded as the spec's
    sub2, spec2 = _submission(tmp_path / "b", ometiff, "voxel_size = { z = 5 }")
    ds2 = tmp_path / "ds2"
    recs = list(package(sub2, ds2, load_spec(spec2)))
    assert not [r for r in recs if r.status == "error"], [r.message for r in recs]
    stem = ds2 / "sub-1" / "micr" / "sub-1_sample-brain_BF"
    side = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    assert side["PixelSize"] == [SIZE, SIZE, 5]
    xml = tifffile.TiffFile(Path(str(stem) + ".ome.tif")).ome_metadata
    assert physical_sizes_um(xml) == (5.0, SIZE, SIZE)
    assert instrument_of(xml)["ChannelNames"] == ["Bright"]
    assert instrument_of(xml)["NumericalAperture"] == 0.8
    plan = json.loads((ds2 / "code" / "bidspack" / "plan.json").read_text(encoding="utf-8"))
    conv = next(a for a in plan["actions"] if a["kind"] == "convert")
    assert conv["params"]["voxel_size_origin"] == {"z": "spec", "y": "file", "x": "file"}


def test_package_spec_conflicts(tmp_path: Path, ometiff: Path) -> None:
    extra = 'voxel_size = { z = 5, y = 1.05, x = 1.05 }\n[channels.sidecar]\nImmersion = "Oil"'
    sub, spec = _submission(tmp_path, ometiff, extra)
    ds = tmp_path / "ds"
    with pytest.raises(SpecError) as err:
        list(package(sub, ds, load_spec(spec)))
    msg = str(err.value)
    assert "1.05 um" in msg and "1.08333" in msg and "channels[0].voxel_size" in msg
    assert not ds.exists()
    # with the explicit flag: the spec's sizes, recorded; the sidecar conflict is a warning
    res = run_bidspack(
        "package", str(sub), str(ds), "--spec", str(spec), "--override-voxel-size", "--dry-run"
    )
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "overrides the file's" in out
    assert "Immersion" in out and "'Oil'" in out and "'Air'" in out
    recs = list(package(sub, ds, load_spec(spec), override_voxel_size=True))
    assert not [r for r in recs if r.status == "error"], [r.message for r in recs]
    side = json.loads(
        (ds / "sub-1" / "micr" / "sub-1_sample-brain_BF.json").read_text(encoding="utf-8")
    )
    assert side["PixelSize"] == [1.05, 1.05, 5]
    assert side["Immersion"] == "Oil"  # the spec wins, with a warning
    plan = json.loads((ds / "code" / "bidspack" / "plan.json").read_text(encoding="utf-8"))
    assert plan["parameters"]["override_voxel_size"] is True
    conv = next(a for a in plan["actions"] if a["kind"] == "convert")
    assert conv["params"]["voxel_size_overridden"] == {"y": [SIZE, 1.05], "x": [SIZE, 1.05]}
    origin = conv["params"]["sidecar_origin"]
    assert origin["Immersion"] == "spec"  # the spec's value won over the file's "Air"
    assert origin["NumericalAperture"] == "file" and origin["Magnification"] == "file"


# --- channels and time points: split, or left out with a word ------------------------

CZI_SPEC = """
spec_version = 1
[dataset]
Name = "timelapse"
Authors = ["A"]
License = "CC0-1.0"
[subjects]
pattern = 'embryo(?P<id>\\d+)'
label = "{id}"
[[channels]]
folder = "cells.czi"
suffix = "SPIM"
{extra}
"""


def _czi_submission(tmp_path: Path, realdata: Path, extra: str) -> tuple[Path, Path]:
    sub = tmp_path / "sub"
    (sub / "embryo1").mkdir(parents=True)
    shutil.copyfile(
        realdata / "czi" / "CellDivision_T3_Z5_CH2_X240_Y170.czi", sub / "embryo1" / "cells.czi"
    )
    spec = tmp_path / "spec.toml"
    spec.write_text(CZI_SPEC.replace("{extra}", extra), encoding="utf-8")
    return sub, spec


def test_split_writes_every_channel_and_time_point(tmp_path: Path, realdata: Path) -> None:
    """The T3 C2 CZI: six images (stain = channel name, run = time + 1), each equal to
    the file's (z, y, x) stack of that channel and time point; nothing left out."""
    from bidspack.io.vendor import VendorImage

    sub, spec = _czi_submission(tmp_path, realdata, 'split = ["channel", "time"]')
    ds = tmp_path / "ds"
    recs = list(package(sub, ds, load_spec(spec)))
    assert not [r for r in recs if r.status == "error"], [r.message for r in recs]
    converts = [r for r in recs if r.action == "convert"]
    assert len(converts) == 6
    assert not any("left out" in r.message for r in converts)
    czi = sub / "embryo1" / "cells.czi"
    for c, stain in enumerate(["LED555", "LED470"]):
        for t in range(3):
            stem = ds / "sub-1" / "micr" / f"sub-1_sample-brain_stain-{stain}_run-{t + 1}_SPIM"
            out = Path(str(stem) + ".ome.tif")
            src = VendorImage(czi, channel=c, time=t)
            from bidspack.io.pixelhash import PixelHasher

            hasher = PixelHasher("ZYX", src.shape, src.dtype)
            for plane in src.iter_planes():
                hasher.update(plane)
            assert pixel_hash_of_file(out) == hasher.hexdigest()
            xml = tifffile.TiffFile(out).ome_metadata
            info = instrument_of(xml)
            assert info["ChannelNames"] == [stain]
            assert info["ExcitationWavelengths"] == [[553.0, 493.0][c]]
            side = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
            assert side["Manufacturer"] == "Zeiss" and side["Immersion"] == "Water"
    plan = json.loads((ds / "code" / "bidspack" / "plan.json").read_text(encoding="utf-8"))
    splits = sorted(
        (a["params"]["split"]["channel"], a["params"]["split"]["time"])
        for a in plan["actions"]
        if a["kind"] == "convert"
    )
    assert splits == [(c, t) for c in range(2) for t in range(3)]


def test_without_split_the_plan_names_what_is_left_out(tmp_path: Path, realdata: Path) -> None:
    sub, spec = _czi_submission(tmp_path, realdata, "select = { channel = 1, time = 2 }")
    res = run_bidspack(
        "package", str(sub), str(tmp_path / "ds"), "--spec", str(spec), "--dry-run", "--json"
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    convert = next(r for r in lines if r["action"] == "convert")
    assert "left out: channel(s) LED555; time point(s) 0, 1" in convert["message"]
    # a split on a TIFF is refused with the file named
    sub2, spec2 = _submission(
        tmp_path / "b",
        realdata / "ometiff" / "s_1_t_1_c_1_z_1.ome.tiff",
        'split = ["channel"]\nvoxel_size = { z = 5 }',
    )
    res2 = run_bidspack("package", str(sub2), str(tmp_path / "ds2"), "--spec", str(spec2))
    assert res2.returncode != 0 and "Traceback" not in res2.stderr
    assert "bright.ome.tiff" in res2.stderr and "split is for vendor and container" in res2.stderr
    # split together with a select of the same dimension is a spec error
    sub3, spec3 = _czi_submission(
        tmp_path / "c", realdata, 'split = ["time"]\nselect = { time = 1 }'
    )
    res3 = run_bidspack("package", str(sub3), str(tmp_path / "ds3"), "--spec", str(spec3))
    assert res3.returncode != 0 and "channels[0].split" in res3.stderr


def test_whole_writes_one_ome_tiff_with_c_and_t_axes(tmp_path: Path, realdata: Path) -> None:
    """The T3 C2 CZI written whole: one OME-TIFF (T 3, C 2, Z 5) in XYZCT order whose
    TCZYX pixel hash equals the file's own channels and time points read one by one,
    with both channels' names and wavelengths in its OME-XML; verify and the validator
    accept it; nothing is reported left out."""
    from bidspack.io.pixelhash import PixelHasher
    from bidspack.io.vendor import VendorImage
    from bidspack.ops.verify import verify

    sub, spec = _czi_submission(tmp_path, realdata, "whole = true")
    ds = tmp_path / "ds"
    recs = list(package(sub, ds, load_spec(spec)))
    assert not [r for r in recs if r.status == "error"], [r.message for r in recs]
    conv = next(r for r in recs if r.action == "convert")
    assert "3 time point(s) x 2 channel(s) (LED555, LED470) x 5 plane(s)" in conv.message
    assert "left out" not in conv.message
    out = ds / "sub-1" / "micr" / "sub-1_sample-brain_SPIM.ome.tif"
    with tifffile.TiffFile(out) as tif:
        assert (tif.series[0].axes, tif.series[0].shape) == ("TCZYX", (3, 2, 5, 170, 240))
        xml = tif.ome_metadata
    px = parse_omexml(xml).images[0].pixels
    assert (px.size_t, px.size_c, px.size_z) == (3, 2, 5)
    assert [c.name for c in px.channels] == ["LED555", "LED470"]
    assert [c.excitation_wavelength for c in px.channels] == [553.0, 493.0]
    # display colours from the CZI (#AARRGGBB there), as OME RGBA colours
    assert [c.color.as_rgb_tuple() for c in px.channels] == [(255, 126, 0), (0, 255, 51)]
    czi = sub / "embryo1" / "cells.czi"
    hasher = PixelHasher("TCZYX", (3, 2, 5, 170, 240), np.dtype("uint16"))
    for t in range(3):
        for c in range(2):
            for plane in VendorImage(czi, channel=c, time=t).iter_planes():
                hasher.update(plane)
    assert pixel_hash_of_file(out) == hasher.hexdigest()
    assert not [r for r in verify(ds) if r.status == "error"]
    # OME-Zarr output and whole together, and whole with split: clear errors
    res = run_bidspack(
        "package",
        str(sub),
        str(tmp_path / "z"),
        "--spec",
        str(
            _czi_submission(
                tmp_path / "z0", realdata, 'whole = true\n[output]\nformats = ["ome-zarr"]'
            )[1]
        ),
    )
    assert res.returncode != 0 and "OME-TIFF only" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_bidspack(
        "package",
        str(sub),
        str(tmp_path / "y"),
        "--spec",
        str(_czi_submission(tmp_path / "y0", realdata, 'whole = true\nsplit = ["time"]')[1]),
    )
    assert res.returncode != 0 and "channels[0].whole" in res.stderr
