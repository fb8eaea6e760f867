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
from bidspack.io.pixelhash import pixel_hash_array, pixel_hash_planes
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
    with pytest.raises(SourceError, match="no reader for this file"):
        VendorImage(realdata / "README.md")
    with pytest.raises(SourceError, match="select inside vendor files"):
        open_source(realdata / "stp_mouse_brain" / "downsampled.tiff", channel=1)
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


# ----------------------------------------------------------------- every real CZI (issue 16)

SEM = "czi/Al2O3_SE_020_sp.czi"  # Zeiss Crossbeam 550 SEM, 2D 2048 x 1536 uint8, 27.91 nm

#: name -> (reader, (z, y, x), dtype, (z, y, x) um or None per axis, instrument)
REAL_CZIS = {
    "Al2O3_SE_020_sp.czi": (
        "pylibCZIrw",
        (1, 1536, 2048),
        "uint8",
        (None, 0.02791, 0.02791),
        {
            "Manufacturer": "Zeiss",
            "ManufacturersModelName": "Crossbeam 550",
            "SoftwareVersions": "ZEN (blue edition) 3.6.095.00000",
            "AcquisitionDateTime": "2021-11-22T11:31:22",
        },
    ),
    "CellDivision_T3_Z5_CH2_X240_Y170.czi": (
        "bioio-czi",
        (5, 170, 240),
        "uint16",
        (0.32, 0.0905766741522, 0.0905766741522),
        {
            "Manufacturer": "Zeiss",
            "ManufacturersModelName": "Castor.Stand",
            "SoftwareVersions": "ZEN 3.2 (blue edition) 3.2.0.00001",
            "NumericalAperture": 1.2,
            "Magnification": 50.0,
            "Immersion": "Water",
            "ChannelNames": ["LED555", "LED470"],
            "ExcitationWavelengths": [553.0, 493.0],
            "EmissionWavelengths": [568.0, 517.0],
            "ChannelColors": ["#FF7E00", "#00FF33"],
            "AcquisitionDateTime": "2016-02-12T09:41:02.4915604Z",
        },
    ),
    "LLS7_small.czi": (
        "bioio-czi",
        (3, 64, 64),
        "uint16",
        (0.144992, 0.144992, 0.144992),
        {
            "Manufacturer": "Zeiss",
            "ManufacturersModelName": "Lattice Lightsheet",
            "SoftwareVersions": "ZEN (blue edition) 3.7.97.00000",
            "NumericalAperture": 1.0,
            "Magnification": 44.83,
            "Immersion": "Water",
            "ChannelNames": ["LatticeLightsheet 1-T1", "LatticeLightsheet 2-T2"],
            "ExcitationWavelengths": [561.0, 488.0],
            "EmissionWavelengths": [642.0, 561.0],
            "ChannelColors": ["#FF00FF", "#00FFFF"],
            "AcquisitionDateTime": "2019-11-23T13:27:18.761492Z",
        },
    ),
    "LSM880_AiryScan.czi": (
        "bioio-czi",
        (1, 36, 38),
        "uint16",
        (0.159451765202, 0.035297956069, 0.035297956069),
        {
            "Manufacturer": "Zeiss",
            "ManufacturersModelName": "LSM 880, AxioObserver",
            "SoftwareVersions": "ZEN (blue edition) 3.5.093.00000",
            "NumericalAperture": 1.4,
            "Magnification": 63.0,
            "Immersion": "Oil",
            "ChannelNames": ["ChA-T1", "ChA-T2", "ChA-T3", "ChA-T4", None, None, None, None],
            "ExcitationWavelengths": [633.0, 561.0, 488.0, 405.0, None, None, None, None],
            "EmissionWavelengths": [
                *(653.596769, 578.617841, 515.521824, 450.0),
                *(None, None, None, None),
            ],
        },
    ),
}


def zeiss_planes(path: Path, channel: int = 0, time: int = 0) -> np.ndarray:
    """The (z, y, x) planes as Zeiss's pylibCZIrw returns them (independent of bidspack)."""
    from pylibCZIrw import czi as pyczi

    with pyczi.open_czi(str(path)) as f:
        nz = f.total_bounding_box["Z"][1]
        return np.stack(
            [f.read(plane={"C": channel, "Z": z, "T": time})[..., 0] for z in range(nz)]
        )


def test_every_real_czi_is_read(realdata: Path) -> None:
    """All four real CZIs open through bidspack: shape, dtype, voxel size from the XML
    scaling (exact to the printed precision), the instrument the XML describes, and
    pixels equal to pylibCZIrw's own."""
    files = sorted((realdata / "czi").glob("*.czi"))
    assert sorted(p.name for p in files) == sorted(REAL_CZIS)
    for path in files:
        reader, shape, dtype, axes, instrument = REAL_CZIS[path.name]
        src = open_source(path)
        assert isinstance(src, VendorImage)
        print(
            f"{path.name}: {src.reader} {src.shape} {src.dtype} voxel (z, y, x) "
            f"{src.info.found_sizes()} um, channels {list(src.channel_names)}, "
            f"left out {list(src.left_out)}"
        )
        assert src.reader.startswith(reader), path.name
        assert src.shape == shape and src.dtype == np.dtype(dtype), path.name
        assert src.info.found_sizes() == axes, path.name  # exact, not approximately
        assert src.info.physical_size == (None if None in axes else axes)
        singles = {"ChannelName", "ExcitationWavelength", "EmissionWavelength", "ChannelColor"}
        assert {k: v for k, v in src.instrument.items() if k not in singles} == instrument
        for key in singles:  # channel 0's values, as the output OME-XML takes them
            values = instrument.get(key + "s")
            assert src.instrument.get(key) == (values[0] if values else None), path.name
        assert src.unit == "m" and src.format == "czi"
        assert np.array_equal(np.stack(list(src.iter_planes())), zeiss_planes(path)), path.name
        meta = src.metadata()
        assert meta["physical_size_zyx_um"] == {"value": list(axes), "origin": "file"}
        assert all(meta[f"instrument.{k}"]["origin"] == "file" for k in instrument)


def test_sem_czi_bioio_fails_on_reads_through_pylibczirw(realdata: Path) -> None:
    """The 2D SEM CZI bioio-czi fails on: read plane by plane through pylibCZIrw, 2048 x
    1536 uint8 at 0.02791 um (2.791E-08 m in the file's scaling, recorded as from the
    file), pixels identical to pylibCZIrw's; why bioio did not read it is recorded."""
    from pylibCZIrw import czi as pyczi

    path = realdata / SEM
    src = VendorImage(path)
    assert src.reader.startswith("pylibCZIrw ")
    assert src.fallback_reason is not None and "bioio-czi" in src.fallback_reason
    assert "CoordinateValidationError" in src.fallback_reason
    assert src.shape == (1, 1536, 2048) and src.dtype == np.uint8
    assert src.info.found_sizes() == (None, 0.02791, 0.02791)
    assert repr(src.info.found_sizes()[2]) == "0.02791"
    assert src.channel_name == "Channel:0" and src.left_out == ()
    meta = src.metadata()
    for axis in "XY":
        assert meta[f"Metadata/Scaling/Items/Distance[@Id='{axis}']/Value (m)"] == {
            "value": "2.791E-08",
            "origin": "file",
        }
    assert meta["fallback_reason"]["origin"] == "derived"
    with pyczi.open_czi(str(path)) as f:
        zeiss = f.read()
    assert zeiss.shape == (1536, 2048, 1)
    expected = pixel_hash_planes(zeiss[..., 0][np.newaxis], "ZYX", (1, 1536, 2048), zeiss.dtype)
    assert pixel_hash_planes(src.iter_planes(), "ZYX", src.shape, src.dtype) == expected
    assert np.array_equal(src.read_plane(0), zeiss[..., 0])
    with pytest.raises(SourceError, match="plane 1 does not exist"):
        src.read_plane(1)
    for sel, match in (
        ({"channel": 1}, "channel 1 does not exist"),
        ({"time": 1}, "time point 1 does not exist"),
        ({"channel": "C1"}, "no channel named 'C1'"),
        ({"scene": 1}, "scene 1 does not exist"),
    ):
        with pytest.raises(SourceError, match=match):
            VendorImage(path, **sel)


def test_pylibczirw_reads_what_bioio_reads(realdata: Path, monkeypatch) -> None:
    """With bioio made to fail, the pylibCZIrw path gives the multi-channel, multi-time
    CZI's selection as bioio does (shape, names, voxel size, pixels, what is left out),
    and names the Airyscan phases it reads the first of."""
    from bidspack.io import vendor

    def failing(path: Path) -> None:
        raise vendor._ReaderFailed([("bioio-czi", "made to fail")])

    path = realdata / CELL
    by_bioio = VendorImage(path, channel="LED470", time=2)
    monkeypatch.setattr(vendor, "_bioimage", failing)
    src = VendorImage(path, channel="LED470", time=2)
    assert src.reader.startswith("pylibCZIrw") and src.fallback_reason == "bioio-czi: made to fail"
    assert (src.shape, src.dtype, src.channel, src.channel_names) == (
        by_bioio.shape,
        by_bioio.dtype,
        1,
        by_bioio.channel_names,
    )
    assert src.info == by_bioio.info and src.instrument == by_bioio.instrument
    assert src.instrument["ChannelName"] == "LED470"
    assert (src.instrument["ExcitationWavelength"], src.instrument["EmissionWavelength"]) == (
        493.0,
        517.0,
    )
    assert src.left_out == by_bioio.left_out == ("channel(s) LED555", "time point(s) 0, 1")
    planes = np.stack(list(src.iter_planes()))
    assert np.array_equal(planes, reference(path, 1, 2))
    assert np.array_equal(src.read_plane(4), planes[4])
    airy = VendorImage(realdata / "czi" / "LSM880_AiryScan.czi", channel=2)
    assert airy.left_out[-1].startswith("32 detector phases (Airyscan) (CZI dimension H;")
    assert np.array_equal(airy.read_plane(0), zeiss_planes(airy.path, channel=2)[0])


def test_inspect_shows_the_sem_czi(realdata: Path) -> None:
    """`bidspack inspect` lists the SEM CZI with its size, dtype and channel."""
    import json

    from click.testing import CliRunner

    from bidspack.cli.main import cli

    path = realdata / SEM
    res = CliRunner().invoke(cli, ["inspect", "--json", str(path)])
    assert res.exit_code == 0, res.output
    [entry] = json.loads(res.output)["sources"]
    assert entry["path"] == str(path) and entry["format"] == "czi"
    assert entry["shape_zyx"] == [1, 1536, 2048] and entry["dtype"] == "uint8"
    assert entry["channels"] == ["Channel:0"] and entry["unit"] == "m"
    # x/y only (a 2D image): ops/inspect.py lists info.physical_size, None here, until
    # it lists info.found_sizes() (see the issue 16 notes)
    assert entry["physical_size_zyx_um"] in (None, [None, 0.02791, 0.02791])
    res = CliRunner().invoke(cli, ["inspect", str(path)], terminal_width=250)
    assert res.exit_code == 0 and "1x1536x2048 (ZYX)" in res.output and "uint8" in res.output


SEM_SPEC = """
spec_version = 1

[dataset]
Name = "Alumina SEM (bidspack CZI test)"
Authors = ["A. Curator"]
License = "CC-BY-4.0"

[subjects]
pattern = 'sample(?P<subject>\\d+)'
label = "{subject}"
sample = "alumina"
sample_type = "technical sample"

[[channels]]
folder = "sem.czi"
suffix = "SEM"
"""


def test_package_the_sem_czi(realdata: Path, tmp_path: Path) -> None:
    """The 2D SEM CZI packaged straight from the file as OME-Zarr (a 2D image, no Z
    size: an OME-TIFF of it is refused, the BIDS validator needing PhysicalSizeZ): the
    file's pixels, PixelSize x, y 0.02791 um and the instrument in the sidecar; the
    official validator accepts the dataset."""
    import json

    from bidspack.errors import SpecError
    from bidspack.ops.package import package
    from bidspack.spec import load_spec
    from test_package import validator_errors

    sub = tmp_path / "submission"
    (sub / "sample1").mkdir(parents=True)
    (sub / "sample1" / "sem.czi").write_bytes((realdata / SEM).read_bytes())
    spec = tmp_path / "spec.toml"
    spec.write_text(SEM_SPEC)
    with pytest.raises(SpecError, match="2D image with no Z size cannot be an OME-TIFF"):
        list(package(sub, tmp_path / "ds-tiff", load_spec(spec)))
    spec.write_text(SEM_SPEC + '\n[output]\nformats = ["ome-zarr"]\n')
    ds = tmp_path / "ds"
    recs = list(package(sub, ds, load_spec(spec)))
    assert not [r for r in recs if r.status == "error"], [r for r in recs if r.status == "error"]
    img = ds / "sub-1/micr/sub-1_sample-alumina_SEM.ome.zarr"
    zeiss = zeiss_planes(realdata / SEM)
    assert pixel_hash_of_zarr(img) == pixel_hash_planes(zeiss, "ZYX", zeiss.shape, zeiss.dtype)
    assert ome_zarr_scale_um(img)[1:] == (0.02791, 0.02791)
    side = json.loads(img.with_name("sub-1_sample-alumina_SEM.json").read_text())
    assert side["PixelSize"] == [0.02791, 0.02791] and side["PixelSizeUnits"] == "um"
    assert side["Manufacturer"] == "Zeiss" and side["ManufacturersModelName"] == "Crossbeam 550"
    assert validator_errors(ds) == []


# ----------------------------------------------------------------- no reader (issue 16)


def test_no_reader_names_the_readers_plugins_and_failures(realdata: Path, tmp_path: Path) -> None:
    """A truncated CZI and a .lif of garbage: the error names the file, every reader
    tried with its own failure, and the bioio plugins installed; `inspect` lists them
    as unreadable without a traceback and `package` exits non-zero."""
    import json

    from bidspack.io.vendor import installed_plugins

    plugins = installed_plugins()
    assert any(p.startswith("bioio-czi ") for p in plugins)
    whole = (realdata / "czi" / "LLS7_small.czi").read_bytes()
    truncated = tmp_path / "truncated.czi"
    truncated.write_bytes(whole[: len(whole) // 3])
    garbage = tmp_path / "garbage.lif"
    garbage.write_bytes(bytes(range(256)) * 20)

    with pytest.raises(SourceError) as info:
        VendorImage(truncated)
    text = info.value.message
    assert text.startswith(f"{truncated}: no reader for this file: bioio-czi failed (")
    assert "pylibCZIrw" in text and "Not enough data read" in text and "Traceback" not in text
    assert f"installed bioio plugins: {', '.join(plugins)}" in text
    with pytest.raises(SourceError) as info:
        VendorImage(garbage)
    text = info.value.message
    assert text.startswith(f"{garbage}: no reader for this file: bioio-czi failed (")
    assert "Invalid FileHdr-magic" in text
    assert "pylibCZIrw not tried (not a CZI file" in text
    assert "a .lif file needs bioio-lif, not installed" in text
    assert info.value.hint == "pip install bioio-lif"

    proc = bidspack("inspect", "--json", str(truncated), str(garbage))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Attempted file" not in proc.stderr  # bioio's own log lines are not shown
    rows = {r["path"]: r["reason"] for r in json.loads(proc.stdout)["unreadable"]}
    assert set(rows) == {str(truncated), str(garbage)}
    assert "Not enough data read" in rows[str(truncated)] and "bioio-czi 3" in rows[str(garbage)]

    sub = tmp_path / "submission"
    (sub / "mouse1").mkdir(parents=True)
    (sub / "mouse1" / "cells.czi").write_bytes(truncated.read_bytes())
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    proc = bidspack("package", str(sub), str(tmp_path / "ds"), "--spec", str(spec))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cells.czi" in proc.stderr and "no reader for this file" in proc.stderr
    assert "pylibCZIrw" in proc.stderr
