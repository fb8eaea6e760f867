"""Slice-folder discovery and stack files: ordering, and one clear error per bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from bidspack.errors import SourceError
from bidspack.io.sources import SliceFolder, TiffStack, open_source, slice_index


def _write(folder: Path, names: list[str], shape=(8, 10), dtype=np.uint16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        tifffile.imwrite(folder / name, np.full(shape, i, dtype=dtype))


def test_index_parsing_ignores_padding() -> None:
    assert slice_index("Z990.tif") == slice_index("Z0990.tif") == slice_index("Z00990.tif") == 990
    assert slice_index("image_0012.ome.tif") == 12
    assert slice_index("640_N4_Z0003.tiff") == 3
    assert slice_index("nodigits.tif") is None


def test_mixed_padding_orders_numerically(tmp_path: Path) -> None:
    # written value i in file i; lexical order would put Z10 before Z9
    _write(tmp_path / "s", ["Z8.tif", "Z9.tif", "Z0010.tif", "Z00011.tif"])
    src = SliceFolder(tmp_path / "s")
    assert [f.name for f in src.files] == ["Z8.tif", "Z9.tif", "Z0010.tif", "Z00011.tif"]
    assert [int(p[0, 0]) for p in src.iter_planes()] == [0, 1, 2, 3]
    assert src.shape == (4, 8, 10)


def test_duplicate_index_names_both_files(tmp_path: Path) -> None:
    _write(tmp_path / "s", ["Z0989.tif", "Z0990.tif", "Z00990.tif"])
    with pytest.raises(SourceError) as exc:
        SliceFolder(tmp_path / "s")
    assert "Z0990.tif" in exc.value.message and "Z00990.tif" in exc.value.message
    assert "990" in exc.value.message


def test_gap_is_reported_with_missing_indices(tmp_path: Path) -> None:
    _write(tmp_path / "s", ["Z0000.tif", "Z0001.tif", "Z0004.tif"])
    with pytest.raises(SourceError, match=r"gap.*missing: 2, 3"):
        SliceFolder(tmp_path / "s")


def test_mixed_shape_and_dtype_name_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "a", ["Z0.tif", "Z1.tif"])
    tifffile.imwrite(tmp_path / "a" / "Z2.tif", np.zeros((9, 10), np.uint16))
    with pytest.raises(SourceError) as exc:
        SliceFolder(tmp_path / "a")
    assert exc.value.path is not None and exc.value.path.endswith("Z2.tif")
    _write(tmp_path / "b", ["Z0.tif", "Z1.tif"])
    tifffile.imwrite(tmp_path / "b" / "Z2.tif", np.zeros((8, 10), np.float32))
    with pytest.raises(SourceError, match="float32"):
        SliceFolder(tmp_path / "b")


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "s", ["Z0.tif", "Z1.tif"])
    (tmp_path / "s" / "Z2.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(SourceError) as exc:
        SliceFolder(tmp_path / "s")
    assert exc.value.path is not None and exc.value.path.endswith("Z2.tif")
    assert "not a readable TIFF" in exc.value.reason


def test_truncated_slice_fails_at_decode_with_its_name(tmp_path: Path) -> None:
    _write(tmp_path / "s", ["Z0.tif", "Z1.tif"], shape=(64, 64))
    p = tmp_path / "s" / "Z1.tif"
    p.write_bytes(p.read_bytes()[:-2000])
    src = SliceFolder(tmp_path / "s")
    with pytest.raises(SourceError) as exc:
        list(src.iter_planes())
    assert exc.value.path is not None and exc.value.path.endswith("Z1.tif")


def test_multipage_stack_and_folder_with_one_stack(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, (5, 6, 7)).astype(np.uint8)
    (tmp_path / "d").mkdir()
    tifffile.imwrite(tmp_path / "d" / "stack.tif", data, photometric="minisblack")
    src = open_source(tmp_path / "d")
    assert isinstance(src, TiffStack) and src.shape == (5, 6, 7)
    assert np.array_equal(np.stack(list(src.iter_planes())), data)


def test_real_ome_tiff_without_z_size_needs_spec(realdata: Path) -> None:
    # Bio-Formats OME-TIFF of one plane: PhysicalSizeX/Y only, so no (z, y, x) size
    src = TiffStack(realdata / "ometiff" / "s_1_t_1_c_1_z_1.ome.tiff")
    assert src.shape == (1, 325, 475)
    assert src.info.physical_size is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("3d-cell-viewer.ome.xml", (0.29, 0.065, 0.065)),
        ("s_3_t_1_c_3_z_5.ome.xml", (1.0, 1.0833333, 1.0833333)),
        ("tubhiswt.ome.xml", None),  # no PhysicalSize at all
    ],
)
def test_real_omexml_physical_sizes(realdata: Path, name: str, expected) -> None:
    from bidspack.io.omexml import physical_size_um

    got = physical_size_um((realdata / "omexml" / name).read_text(encoding="utf-8"))
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, rel=1e-6)


def test_ome_tiff_stack_carries_physical_size(tmp_path: Path) -> None:
    from bidspack.io.ometiff import write_ome_tiff

    _write(tmp_path / "s", ["Z0.tif", "Z1.tif", "Z2.tif"])
    write_ome_tiff(
        tmp_path / "x.ome.tif",
        SliceFolder(tmp_path / "s"),
        physical_size_zyx_um=(5.0, 0.5, 0.25),
        name="x",
        workdir=tmp_path / "w",
    )
    assert TiffStack(tmp_path / "x.ome.tif").info.physical_size == (5.0, 0.5, 0.25)


def test_real_slice_folder(realdata: Path) -> None:
    src = SliceFolder(realdata / "stp_mouse_brain" / "slices")
    assert src.shape == (270, 193, 271) and src.dtype == np.uint16
    assert src.info.physical_size is None
