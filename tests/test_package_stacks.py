"""Multi-page TIFF and OME-TIFF inputs: physical sizes from the file or the spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from bidspack.errors import SpecError
from bidspack.io.ometiff import pixel_hash_of_file, write_ome_tiff
from bidspack.io.pixelhash import pixel_hash_array
from bidspack.io.sources import SliceFolder
from bidspack.ops.package import package
from bidspack.spec import load_spec

SPEC = """
spec_version = 1
[dataset]
Name = "stacks"
Authors = ["A"]
License = "CC0-1.0"
[subjects]
pattern = 'mouse(?P<id>\\d+)'
label = "{id}"
[[channels]]
folder = "{folder}"
suffix = "CONF"
{voxel}
"""


def _submission(
    tmp_path: Path,
    data: np.ndarray,
    *,
    ome: bool,
    origin: tuple[float, float, float] | None = None,
) -> Path:
    sub = tmp_path / "sub"
    (sub / "mouse1" / "conf").mkdir(parents=True)
    if ome:
        (tmp_path / "sl").mkdir()
        for z, plane in enumerate(data):
            tifffile.imwrite(tmp_path / "sl" / f"z{z}.tif", plane)
        write_ome_tiff(
            sub / "mouse1" / "stack.ome.tif",
            SliceFolder(tmp_path / "sl"),
            physical_size_zyx_um=(2.0, 0.5, 0.5),
            name="s",
            workdir=tmp_path / "w",
            origin_zyx_um=origin,
        )
    else:
        tifffile.imwrite(sub / "mouse1" / "conf" / "stack.tif", data, photometric="minisblack")
    return sub


@pytest.fixture
def data() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 9000, (6, 40, 30)).astype(np.uint16)


def _spec(tmp_path: Path, folder: str, voxel: str) -> Path:
    p = tmp_path / "spec.toml"
    p.write_text(SPEC.replace("{folder}", folder).replace("{voxel}", voxel), encoding="utf-8")
    return p


def test_multipage_tiff_in_channel_folder(tmp_path: Path, data: np.ndarray) -> None:
    sub = _submission(tmp_path, data, ome=False)
    spec = _spec(tmp_path, "conf", "voxel_size = { z = 1, y = 0.2, x = 0.2 }")
    recs = list(package(sub, tmp_path / "ds", load_spec(spec)))
    assert not [r for r in recs if r.status == "error"]
    out = tmp_path / "ds/sub-1/micr/sub-1_sample-brain_CONF.ome.tif"
    assert pixel_hash_of_file(out) == pixel_hash_array(data, "ZYX")


def test_ome_tiff_file_carries_its_voxel_size(tmp_path: Path, data: np.ndarray) -> None:
    sub = _submission(tmp_path, data, ome=True)
    spec = _spec(tmp_path, "stack.ome.tif", "")
    (sub / "mouse1" / "conf").rmdir()
    recs = list(package(sub, tmp_path / "ds", load_spec(spec)))
    assert not [r for r in recs if r.status == "error"]
    side = (tmp_path / "ds/sub-1/micr/sub-1_sample-brain_CONF.json").read_text()
    assert '"PixelSize": [\n    0.5,\n    0.5,\n    2\n  ]' in side


def test_spec_contradicting_ome_voxel_size(tmp_path: Path, data: np.ndarray) -> None:
    sub = _submission(tmp_path, data, ome=True)
    (sub / "mouse1" / "conf").rmdir()
    spec = _spec(tmp_path, "stack.ome.tif", "voxel_size = { z = 3, y = 0.5, x = 0.5 }")
    with pytest.raises(SpecError, match=r"contradicts the file \(z: .* says 3 um, the file 2 um\)"):
        list(package(sub, tmp_path / "ds", load_spec(spec)))
    assert not (tmp_path / "ds").exists()


def test_source_origin_is_kept_in_both_formats(tmp_path: Path, data: np.ndarray) -> None:
    """An OME-TIFF whose OME-XML puts its first voxel at (10, -20, 30) um: the packaged
    OME-TIFF keeps that Plane position, the OME-Zarr has it as translation, and the
    official validator accepts the dataset."""
    import json

    from bidspack.io.sources import TiffStack
    from test_package import validator_errors

    sub = _submission(tmp_path, data, ome=True, origin=(10.0, -20.0, 30.0))
    (sub / "mouse1" / "conf").rmdir()
    spec = _spec(tmp_path, "stack.ome.tif", "")
    spec.write_text(
        spec.read_text() + '\n[output]\nformats = ["ome-tiff", "ome-zarr"]\n', encoding="utf-8"
    )
    ds = tmp_path / "ds"
    recs = list(package(sub, ds, load_spec(spec)))
    assert not [r for r in recs if r.status == "error"], [r for r in recs if r.status == "error"]
    assert validator_errors(ds) == []
    stem = ds / "sub-1/micr/sub-1_sample-brain_CONF"
    assert TiffStack(stem.with_name(stem.name + ".ome.tif")).info.origin == (10.0, -20.0, 30.0)
    zattrs = json.loads((stem.with_name(stem.name + ".ome.zarr") / "zarr.json").read_text())
    level0 = zattrs["attributes"]["ome"]["multiscales"][0]["datasets"][0]
    assert level0["coordinateTransformations"][1]["translation"] == [10.0, -20.0, 30.0]
