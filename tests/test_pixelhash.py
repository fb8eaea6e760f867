"""Pixel hash: depends on pixels, axes, shape and dtype only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from bidspack.errors import IntegrityError
from bidspack.io.ometiff import pixel_hash_of_file
from bidspack.io.pixelhash import PixelHasher, canonical_axes, pixel_hash_array


def test_same_pixels_different_encoding_same_hash(tmp_path: Path) -> None:
    data = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="minisblack")
    tifffile.imwrite(
        tmp_path / "b.tif",
        data,
        photometric="minisblack",
        compression="zlib",
        tile=(16, 16),
        byteorder=">",
    )
    assert (tmp_path / "a.tif").read_bytes() != (tmp_path / "b.tif").read_bytes()
    h = pixel_hash_array(data, "ZYX")
    assert pixel_hash_of_file(tmp_path / "a.tif") == h
    assert pixel_hash_of_file(tmp_path / "b.tif") == h


def test_hash_changes_with_one_pixel_shape_or_dtype() -> None:
    data = np.zeros((2, 8, 8), dtype=np.uint16)
    base = pixel_hash_array(data, "ZYX")
    changed = data.copy()
    changed[1, 7, 7] = 1
    assert pixel_hash_array(changed, "ZYX") != base
    assert pixel_hash_array(data.reshape(2, 4, 16), "ZYX") != base
    assert pixel_hash_array(data.astype(np.int16), "ZYX") != base
    assert len(base) == 32 and int(base, 16) >= 0


def test_incremental_equals_whole_and_big_endian_input() -> None:
    data = np.random.default_rng(1).integers(0, 60000, (4, 9, 7)).astype(np.uint16)
    h = PixelHasher("ZYX", data.shape, data.dtype)
    for plane in data.astype(">u2"):
        h.update(plane)
    assert h.hexdigest() == pixel_hash_array(data, "ZYX")


def test_incomplete_feed_is_an_error() -> None:
    h = PixelHasher("ZYX", (2, 3, 3), np.uint8)
    h.update(np.zeros((3, 3), np.uint8))
    with pytest.raises(IntegrityError):
        h.hexdigest()


def test_canonical_axes_drop_singletons_but_keep_yx() -> None:
    assert canonical_axes("TCZYX", (1, 1, 5, 1, 3)) == ("ZYX", (5, 1, 3))
    assert canonical_axes("CZYX", (2, 1, 4, 4)) == ("CYX", (2, 4, 4))
