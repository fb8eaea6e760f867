"""Container and instrument formats (bidspack.io.containers) on real files: MRC maps and
an Imaris file from PyPI sdists (tests/realfiles.py), and round trips of the real STP
stack written with each format's own library, read back through ``open_source``."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from bidspack.errors import SourceError
from bidspack.io.pixelhash import pixel_hash_array, pixel_hash_planes
from bidspack.io.sources import open_source
from realfiles import real_file

STP = "stp_mouse_brain/downsampled.tiff"


@pytest.fixture(scope="module")
def stp(realdata: Path) -> np.ndarray:
    """The real STP stack, (135, 77, 108) uint16."""
    data = tifffile.imread(realdata / STP)
    assert data.shape == (135, 77, 108) and data.dtype == np.uint16
    return data


def source_hash(src) -> str:  # type: ignore[no-untyped-def]
    return pixel_hash_planes(src.iter_planes(), "ZYX", src.shape, src.dtype)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bidspack", *args], capture_output=True, text=True, check=False
    )


# ------------------------------------------------------------------ real files


def test_emd_3001_anisotropic_angstrom_voxel_is_exact() -> None:
    """EMD-3001: CELLA (17.93, 4.71, 33.03) Å over MX/MY/MZ (40, 12, 72), axes mapped
    C=Z, R=X, S=Y: (z, y, x) = sections (Y), rows (X), columns (Z) in µm, exactly."""
    import mrcfile

    path = real_file("EMD-3001.map")
    src = open_source(path)
    assert src.shape == (25, 43, 73) and src.dtype == np.float32
    assert src.info.physical_size == (0.00003925, 0.000044825, 0.000045875)
    assert src.info.origin == (-0.000471, -0.000941325, 0.0)
    meta = src.metadata()
    assert meta["MAPC, MAPR, MAPS"] == {"value": [3, 1, 2], "origin": "file"}
    with mrcfile.open(path) as mrc:
        assert source_hash(src) == pixel_hash_array(np.asarray(mrc.data), "ZYX")
    gz = open_source(real_file("emd_3001.map.gz"))
    assert gz.info == src.info and source_hash(gz) == source_hash(src)


def test_emd_3197_11_4_angstrom_and_bz2() -> None:
    src = open_source(real_file("EMD-3197.map"))
    assert src.info.physical_size == (0.00114, 0.00114, 0.00114)  # 11.4 Å, not ...0002
    assert repr(src.info.physical_size[0]) == "0.00114"
    bz = open_source(real_file("EMD-3197.map.bz2"))
    assert bz.info == src.info and source_hash(bz) == source_hash(src)


def test_imaris_real_file_channels_crop_and_extents() -> None:
    path = real_file("brain_crop3.ims")
    with pytest.raises(SourceError, match="2 channels"):
        open_source(path)
    src = open_source(path, channel=1)
    # stored Data is (56, 768, 768): padding beyond X=673, Y=635, Z=51 cropped
    assert src.shape == (51, 635, 673) and src.dtype == np.uint16
    # (ExtMax - ExtMin) / size in um: Z (3794.96-3523.13)/51, Y (6397.18-6081.06)/635 ...
    assert src.info.physical_size == (5.33, 0.497826771654, 0.497835066865)
    assert src.info.origin == (3525.795, 6081.30891339, 571.764917533)
    assert src.levels == 4 and len(src.channel_names) == 2
    assert src.metadata()["DataSetInfo/Image@Unit"] == {"value": "um", "origin": "file"}
    with h5py.File(path, "r") as f:
        ref = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 1/Data"][:51, :635, :673]
    planes = [src.read_plane(z) for z in (0, 7, 8, 50)]
    assert all(np.array_equal(p, ref[z]) for p, z in zip(planes, (0, 7, 8, 50), strict=True))


# ------------------------------------------------------------------ round trips


def test_mrc_round_trip_uint16_and_gzip(stp: np.ndarray, tmp_path: Path) -> None:
    import mrcfile

    expected = pixel_hash_array(stp, "ZYX")
    for name, comp in (("stp.mrc", None), ("stp.mrc.gz", "gzip"), ("stp.mrc.bz2", "bzip2")):
        with mrcfile.new(tmp_path / name, compression=comp) as mrc:
            mrc.set_data(stp)  # mode 6
            mrc.voxel_size = (4.0, 4.0, 11.4)  # x, y, z in Å
            mrc.header.origin = (10.0, 20.0, 30.0)
        src = open_source(tmp_path / name)
        assert src.shape == stp.shape and src.dtype == np.uint16
        assert src.info.physical_size == (0.00114, 0.0004, 0.0004)
        assert src.info.origin == (0.003, 0.002, 0.001)
        assert source_hash(src) == expected
    # mode 0: int8 per MRC2014, uint8 with the IMOD flag
    with mrcfile.new(tmp_path / "s8.mrc") as mrc:
        mrc.set_data((stp >> 9).astype(np.int8))
    assert open_source(tmp_path / "s8.mrc").dtype == np.int8


def test_nrrd_round_trips_raw_gzip_detached(stp: np.ndarray, tmp_path: Path) -> None:
    import nrrd

    expected = pixel_hash_array(stp, "ZYX")
    header = {
        "space dimension": 3,
        "space directions": np.diag([40.0, 40.0, 50.0]),  # x, y, z
        "space units": ["microns", "microns", "microns"],
        "space origin": np.array([1.5, 2.5, 3.5]),
    }
    for name, enc, detached in (
        ("raw.nrrd", "raw", False),
        ("gz.nrrd", "gzip", False),
        ("det.nhdr", "raw", True),
    ):
        nrrd.write(
            str(tmp_path / name),
            stp,
            {**header, "encoding": enc},
            index_order="C",
            detached_header=detached,
        )
        src = open_source(tmp_path / name)
        assert src.shape == stp.shape and src.dtype == np.uint16
        assert src.info.physical_size == (50.0, 40.0, 40.0)
        assert src.info.origin == (3.5, 2.5, 1.5)
        assert source_hash(src) == expected
    nrrd.write(
        str(tmp_path / "nm.nrrd"),
        stp,
        {"spacings": [11.4, 11.4, 30.0], "units": ["nm", "nm", "nm"]},
        index_order="C",
    )
    assert open_source(tmp_path / "nm.nrrd").info.physical_size == (0.03, 0.0114, 0.0114)
    oblique = {**header, "space directions": np.array([[40.0, 1, 0], [0, 40, 0], [0, 0, 50]])}
    nrrd.write(str(tmp_path / "obl.nrrd"), stp[:2], oblique, index_order="C")
    with pytest.raises(SourceError, match=r"obl\.nrrd: .*oblique"):
        open_source(tmp_path / "obl.nrrd")
    bad_unit = {**header, "space units": ["furlong"] * 3}
    nrrd.write(str(tmp_path / "unit.nrrd"), stp[:2], bad_unit, index_order="C")
    with pytest.raises(SourceError, match=r"unit\.nrrd: .*'furlong'"):
        open_source(tmp_path / "unit.nrrd")


def test_hdf5_round_trip_attributes(stp: np.ndarray, tmp_path: Path) -> None:
    expected = pixel_hash_array(stp, "ZYX")
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("volumes/raw", data=stp, chunks=(8, 77, 108), compression="gzip")
        d.attrs["resolution"] = [50.0, 11.4, 11.4]
        d.attrs["unit"] = "nm"
        d.attrs["offset"] = [100.0, 200.0, 300.0]
        f.create_dataset("volumes/labels/mito_gt", data=(stp > 3000).astype(np.uint8))
    with pytest.raises(SourceError, match="2 2D/3D datasets"):
        open_source(path)
    src = open_source(Path(f"{path}:/volumes/raw"))
    assert src.shape == stp.shape and src.info.physical_size == (0.05, 0.0114, 0.0114)
    assert src.info.origin == (0.1, 0.2, 0.3)
    assert src.metadata()["/volumes/raw@resolution"]["origin"] == "file"
    assert source_hash(src) == expected
    via_scene = open_source(path, scene="/volumes/raw")
    assert via_scene.info == src.info
    # ilastik / Fiji element_size_um; a custom attribute name overridable
    with h5py.File(tmp_path / "ilastik.h5", "w") as f:
        f.create_dataset("data", data=stp).attrs["element_size_um"] = [5.0, 1.5, 1.5]
        f["data"].attrs["pixel_size"] = [5.0, 1.5, 1.5]
    assert open_source(tmp_path / "ilastik.h5").info.physical_size == (5.0, 1.5, 1.5)
    from bidspack.io.containers import HDF5Source

    custom = HDF5Source(tmp_path / "ilastik.h5", voxel_attrs=("pixel_size",), unit_attrs=("u",))
    assert custom.info.physical_size is None  # no unit: recorded, no size
    with h5py.File(tmp_path / "clash.h5", "w") as f:
        d = f.create_dataset("data", data=stp[:2])
        d.attrs["element_size_um"] = [5.0, 1.5, 1.5]
        d.attrs["resolution"] = [5.0, 1.0, 1.0]
        d.attrs["unit"] = "um"
    with pytest.raises(SourceError, match=r"clash\.h5: voxel sizes contradict"):
        open_source(tmp_path / "clash.h5")


def _write_ome_zarr(root: Path, stp: np.ndarray, version: str) -> None:
    import zarr

    fmt = 3 if version == "0.5" else 2
    g = zarr.open_group(str(root), mode="w", zarr_format=fmt)
    g.create_array("0", data=stp, chunks=(16, 77, 108))
    g.create_array("1", data=stp[::2, ::2, ::2], chunks=(16, 39, 54))
    ms = {
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [50.0 * 2**i, 11.4 * 2**i, 11.4 * 2**i]},
                    {"type": "translation", "translation": [1.0, 2.0, 3.0]},
                ],
            }
            for i in range(2)
        ],
    }
    if version == "0.5":
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    else:
        g.attrs["multiscales"] = [{"version": "0.4", **ms}]


def test_ome_zarr_04_and_05_round_trip(stp: np.ndarray, tmp_path: Path) -> None:
    expected = pixel_hash_array(stp, "ZYX")
    for version in ("0.4", "0.5"):
        root = tmp_path / f"img{version}.zarr"
        _write_ome_zarr(root, stp, version)
        src = open_source(root)
        assert src.format == "ome-zarr" and src.levels == 2
        assert src.info.physical_size == (50.0, 11.4, 11.4)
        assert src.info.origin == (1.0, 2.0, 3.0)
        assert source_hash(src) == expected
        lvl = open_source(root, scene="1")
        assert lvl.shape == (68, 39, 54) and lvl.info.physical_size == (100.0, 22.8, 22.8)


def test_n5_cellmap_round_trip_written_by_tensorstore(stp: np.ndarray, tmp_path: Path) -> None:
    """An N5 multiscale written by tensorstore (an N5 implementation of its own) with
    CellMap ``pixelResolution`` and ``transform``; gzip and raw blocks."""
    import tensorstore as ts

    root = tmp_path / "crop.n5"
    for level, comp in (("s0", {"type": "gzip"}), ("s1", {"type": "raw"})):
        data = stp if level == "s0" else stp[::2, ::2, ::2]
        f = 1 if level == "s0" else 2
        store = ts.open(
            {
                "driver": "n5",
                "kvstore": {"driver": "file", "path": str(root / "em" / level)},
                "metadata": {
                    "dimensions": list(data.shape[::-1]),
                    "blockSize": [32, 32, 16],
                    "dataType": "uint16",
                    "compression": comp,
                },
                "create": True,
            }
        ).result()
        # tensorstore's N5 driver indexes (x, y, z): fastest axis first
        store.write(np.ascontiguousarray(data.transpose(2, 1, 0))).result()
        attrs_file = root / "em" / level / "attributes.json"
        attrs = json.loads(attrs_file.read_text())
        attrs["pixelResolution"] = {"dimensions": [4.0 * f, 4.0 * f, 11.4 * f], "unit": "nm"}
        attrs["transform"] = {
            "axes": ["z", "y", "x"],
            "scale": [11.4 * f, 4.0 * f, 4.0 * f],
            "translate": [114.0, 40.0, 8.0],
            "units": ["nm", "nm", "nm"],
        }
        attrs_file.write_text(json.dumps(attrs))
    (root / "attributes.json").write_text(json.dumps({"n5": "2.5.0"}))
    src = open_source(root / "em")
    assert src.format == "n5" and src.levels == 2
    assert src.info.physical_size == (0.0114, 0.004, 0.004)
    assert src.info.origin == (0.114, 0.04, 0.008)
    assert source_hash(src) == pixel_hash_array(stp, "ZYX")
    s1 = open_source(root / "em", scene="s1")
    assert source_hash(s1) == pixel_hash_array(stp[::2, ::2, ::2], "ZYX")
    # contradictory sizes are an error naming both
    attrs = json.loads((root / "em" / "s1" / "attributes.json").read_text())
    attrs["pixelResolution"]["dimensions"] = [5.0, 5.0, 5.0]
    (root / "em" / "s1" / "attributes.json").write_text(json.dumps(attrs))
    with pytest.raises(SourceError, match="contradict"):
        open_source(root / "em" / "s1")


def test_video_round_trips(stp: np.ndarray, tmp_path: Path) -> None:
    """Lossless grey video (FFV1 in AVI, 8 bit; in MKV, 16 bit) and H.264 lossless in MP4
    (YUV: luma read with channel Y; colour refused without a channel)."""
    import av

    d8 = (stp >> 4).clip(0, 255).astype(np.uint8)
    for name, pix, data in (("v.avi", "gray", d8), ("v.mkv", "gray16le", stp)):
        with av.open(str(tmp_path / name), "w") as c:
            s = c.add_stream("ffv1", rate=10)
            s.width, s.height, s.pix_fmt = 108, 77, pix
            for pl in data:
                for p in s.encode(av.VideoFrame.from_ndarray(pl, format=pix)):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        src = open_source(tmp_path / name)
        assert src.shape == data.shape and src.dtype == data.dtype
        assert src.info.physical_size is None
        assert source_hash(src) == pixel_hash_array(data, "ZYX")
        assert np.array_equal(src.read_plane(3), data[3])  # backwards: restarts
    with av.open(str(tmp_path / "v.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt, s.options = 108, 78, "yuv420p", {"qp": "0"}
        for pl in d8:
            y = np.zeros((78, 108), np.uint8)
            y[:77] = pl
            buf = np.concatenate([y.ravel(), np.full(78 * 54, 128, np.uint8)]).reshape(-1, 108)
            for p in s.encode(av.VideoFrame.from_ndarray(buf, format="yuv420p")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(SourceError, match=r"v\.mp4: colour video"):
        open_source(tmp_path / "v.mp4")
    luma = open_source(tmp_path / "v.mp4", channel="Y")
    got = np.stack(list(luma.iter_planes()))[:, :77]
    assert np.array_equal(got, d8)


def test_aggregate_mrc_and_hdf5(stp: np.ndarray, tmp_path: Path) -> None:
    import mrcfile

    from bidspack.io.omezarr import ome_zarr_scale_um, pixel_hash_of_zarr

    with mrcfile.new(tmp_path / "em.mrc") as mrc:
        mrc.set_data(stp)
        mrc.voxel_size = (40.0, 40.0, 114.0)
    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f.create_dataset("raw", data=stp).attrs["element_size_um"] = [5.0, 1.5, 1.5]
    expected = pixel_hash_array(stp, "ZYX")
    for name, voxel in (("em.mrc", (0.0114, 0.004, 0.004)), ("vol.h5", (5.0, 1.5, 1.5))):
        out = tmp_path / f"{name}.ome.zarr"
        proc = cli("aggregate", str(tmp_path / name), str(out), "--json")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert pixel_hash_of_zarr(out) == expected
        assert ome_zarr_scale_um(out) == pytest.approx(voxel)


# ------------------------------------------------------------------ broken files


def _broken_files(stp: np.ndarray, tmp: Path) -> dict[str, Path]:
    import mrcfile
    import nrrd

    out: dict[str, Path] = {}
    with mrcfile.new(tmp / "ok.mrc") as mrc:
        mrc.set_data(stp[:4])
    raw = (tmp / "ok.mrc").read_bytes()
    (tmp / "trunc.mrc").write_bytes(raw[: len(raw) - 5000])
    out["mrc"] = tmp / "trunc.mrc"
    (tmp / "trunc.mrc.gz").write_bytes(gzip.compress(raw)[:-3000])
    out["mrc.gz"] = tmp / "trunc.mrc.gz"
    nrrd.write(str(tmp / "ok.nrrd"), stp[:4], index_order="C")
    (tmp / "trunc.nrrd").write_bytes((tmp / "ok.nrrd").read_bytes()[:-100])
    out["nrrd"] = tmp / "trunc.nrrd"
    with h5py.File(tmp / "ok.h5", "w") as f:
        f.create_dataset("d", data=stp[:4])
    (tmp / "trunc.h5").write_bytes((tmp / "ok.h5").read_bytes()[:1500])
    out["h5"] = tmp / "trunc.h5"
    (tmp / "noise.ims").write_bytes(b"\x89HDF\r\n" + bytes(range(256)) * 4)
    out["ims"] = tmp / "noise.ims"
    (tmp / "bad.zarr").mkdir()
    (tmp / "bad.zarr" / "zarr.json").write_text("{not json")
    out["zarr"] = tmp / "bad.zarr"
    (tmp / "bad.n5" / "s0").mkdir(parents=True)
    (tmp / "bad.n5" / "s0" / "attributes.json").write_text('{"dimensions": [4, 4]}')
    out["n5"] = tmp / "bad.n5"
    (tmp / "junk.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI " + b"\x00" * 500)
    out["video"] = tmp / "junk.avi"
    return out


def test_broken_files_are_clean_errors_naming_the_file(stp: np.ndarray, tmp_path: Path) -> None:
    for kind, path in _broken_files(stp, tmp_path).items():
        with pytest.raises(SourceError) as err:
            src = open_source(path)
            list(src.iter_planes())  # truncated compressed data shows when read
        assert str(path) in str(err.value), (kind, err.value)


def test_cli_on_broken_files_no_traceback_nothing_written(stp: np.ndarray, tmp_path: Path) -> None:
    bad = _broken_files(stp, tmp_path / "in") if (tmp_path / "in").mkdir() is None else {}
    proc = cli("inspect", *(str(p) for p in bad.values()))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    for path in bad.values():
        assert str(path) in proc.stdout
    for kind in ("mrc", "h5", "zarr"):
        out = tmp_path / f"{kind}.ome.zarr"
        proc = cli("aggregate", str(bad[kind]), str(out))
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert str(bad[kind]) in proc.stderr
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    shutil.rmtree(tmp_path / "in")
