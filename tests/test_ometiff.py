"""OME-TIFF writer: pixels, pyramid, OME-XML placement and units, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from ome_types import from_xml

from bidspack.io.ometiff import (
    downsample2d,
    needs_bigtiff,
    ome_tiff_extension,
    pixel_hash_of_file,
    pyramid_shapes,
    write_ome_tiff,
)
from bidspack.io.pixelhash import pixel_hash_array
from bidspack.io.sources import SliceFolder


def _slices(folder: Path, data: np.ndarray) -> SliceFolder:
    folder.mkdir(parents=True)
    for z, plane in enumerate(data):
        tifffile.imwrite(folder / f"Z{z:04d}.tif", plane)
    return SliceFolder(folder)


@pytest.fixture
def stack(tmp_path: Path) -> tuple[np.ndarray, SliceFolder]:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4000, (3, 1100, 1030)).astype(np.uint16)
    return data, _slices(tmp_path / "slices", data)


def test_pyramid_levels_and_pixels(tmp_path: Path, stack) -> None:
    data, src = stack
    out = tmp_path / "x.ome.tif"
    res = write_ome_tiff(
        out, src, physical_size_zyx_um=(4.0, 1.8, 1.8), name="x", workdir=tmp_path / "w"
    )
    assert res.levels == ((1100, 1030), (550, 515), (275, 258))
    assert res.pixel_hash == pixel_hash_array(data, "ZYX") == pixel_hash_of_file(out)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and not tif.is_bigtiff
        series = tif.series[0]
        assert series.axes == "ZYX" and len(series.levels) == 3
        assert series.levels[1].shape == (3, 550, 515)
        assert np.array_equal(series.levels[0].asarray(), data)
        lvl1 = series.levels[1].asarray()
        assert np.array_equal(lvl1[1], downsample2d(data[1], "intensity"))
        page = series.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.compression == 8  # deflate
    assert not list((tmp_path / "w").iterdir())  # spill files removed


def test_omexml_first_4k_units_and_no_uuid(tmp_path: Path, stack) -> None:
    _, src = stack
    out = tmp_path / "x.ome.tif"
    write_ome_tiff(
        out,
        src,
        physical_size_zyx_um=(50.0, 40.0, 40.0),
        name="sub-1_sample-a_SPIM",
        workdir=tmp_path / "w",
    )
    head = out.read_bytes()[:4096]
    start, end = head.find(b"<?xml"), head.find(b"</OME>")
    assert 0 < start < end < 4096
    xml = head[start : end + 6].decode("utf-8")
    assert "µm" in xml and "UUID" not in xml and "AcquisitionDate" not in xml
    px = from_xml(xml).images[0].pixels
    assert (px.physical_size_x, px.physical_size_y, px.physical_size_z) == (40.0, 40.0, 50.0)
    assert {px.physical_size_x_unit.value, px.physical_size_z_unit.value} == {"µm"}
    assert (px.size_z, px.size_y, px.size_x) == (3, 1100, 1030)


def test_byte_identical_rewrites(tmp_path: Path, stack) -> None:
    _, src = stack
    a, b = tmp_path / "a.ome.tif", tmp_path / "b.ome.tif"
    for p in (a, b):
        write_ome_tiff(
            p, src, physical_size_zyx_um=(4.0, 1.8, 1.8), name="x", workdir=tmp_path / "w"
        )
    assert a.read_bytes() == b.read_bytes()


def test_label_pyramid_never_invents_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    labels = rng.choice(np.array([0, 3, 17, 250], np.uint8), size=(2, 1200, 700))
    src = _slices(tmp_path / "lab", labels)
    out = tmp_path / "l.ome.tif"
    write_ome_tiff(
        out, src, physical_size_zyx_um=(1, 1, 1), name="l", kind="label", workdir=tmp_path / "w"
    )
    with tifffile.TiffFile(out) as tif:
        for level in tif.series[0].levels:
            assert set(np.unique(level.asarray())) <= {0, 3, 17, 250}
    # the mean (intensity) method would have invented values
    assert set(np.unique(downsample2d(labels[0], "intensity"))) - {0, 3, 17, 250}


def test_float_and_odd_shapes(tmp_path: Path) -> None:
    data = np.random.default_rng(9).random((2, 601, 533)).astype(np.float32)
    src = _slices(tmp_path / "f", data)
    res = write_ome_tiff(
        tmp_path / "f.ome.tif",
        src,
        physical_size_zyx_um=(1, 1, 1),
        name="f",
        workdir=tmp_path / "w",
        compression="lzw",
    )
    assert res.levels == ((601, 533), (301, 267))
    assert res.pixel_hash == pixel_hash_array(data, "ZYX")


def test_bigtiff_threshold() -> None:
    assert pyramid_shapes(193, 271) == [(193, 271)]
    assert not needs_bigtiff((270, 193, 271), np.dtype(np.uint16))
    assert needs_bigtiff((600, 2048, 2048), np.dtype(np.uint16))  # 5 GB
    assert ome_tiff_extension((600, 2048, 2048), np.dtype(np.uint16)) == ".ome.btf"
    assert ome_tiff_extension((10, 2048, 2048), np.dtype(np.uint16)) == ".ome.tif"
