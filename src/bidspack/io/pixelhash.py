"""The pixel hash: xxh3-128 over decoded pixels in a fixed, documented order.

Two images have the same pixel hash exactly when they have the same axes, shape,
dtype and pixel values, whatever their file format, compression, tiling, byte order
or metadata. Algorithm (version 1):

1. A header, UTF-8: ``"bidspack-pixelhash/1\\n<axes>\\n<shape>\\n<dtype>\\n"``, where
   ``<axes>`` are the axis letters in canonical TCZYX order with every axis of size 1
   dropped except Y and X (e.g. ``ZYX`` for a single-channel stack, ``YX`` for a slice),
   ``<shape>`` the sizes joined by ``,`` and ``<dtype>`` the little-endian NumPy type
   string (``<u2``, ``|u1``, ``<f4``).
2. The pixels in C order of those axes (X fastest), each value little-endian.
3. The 128-bit XXH3 digest of it all (xxHash, https://xxhash.com), as 32 lowercase
   hex digits.

Hashing is incremental: feed planes in order with :meth:`PixelHasher.update`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xxhash

from bidspack.errors import IntegrityError

VERSION = 1


def canonical_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian form of *dtype* (what the hash is computed over)."""
    return np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)


class PixelHasher:
    """Incremental pixel hash of an array with axes *axes* and shape *shape*.

    Args:
        axes: canonical axis letters, a subsequence of ``TCZYX`` ending in ``YX``.
        shape: sizes of those axes.
        dtype: pixel type.

    Planes (arrays whose shape is a suffix of *shape*) are fed in C order with
    :meth:`update`; :meth:`hexdigest` raises :class:`IntegrityError` if the number of
    pixels fed differs from ``prod(shape)``.
    """

    def __init__(self, axes: str, shape: tuple[int, ...], dtype: np.dtype | str):
        if len(axes) != len(shape) or not axes.endswith("YX"):
            raise ValueError(f"axes {axes!r} do not fit shape {shape}")
        self.axes = axes
        self.shape = tuple(int(s) for s in shape)
        self.dtype = canonical_dtype(np.dtype(dtype))
        self._h = xxhash.xxh3_128()
        header = f"bidspack-pixelhash/{VERSION}\n{axes}\n{','.join(map(str, self.shape))}\n"
        header += f"{self.dtype.str}\n"
        self._h.update(header.encode("utf-8"))
        self._count = 0
        self._total = int(np.prod(self.shape, dtype=np.int64))

    def update(self, plane: np.ndarray) -> None:
        """Add the next plane (or block of planes) in C order."""
        if plane.dtype != self.dtype:
            if canonical_dtype(plane.dtype) != self.dtype:
                raise IntegrityError(None, f"plane dtype {plane.dtype} != {self.dtype}")
            plane = plane.astype(self.dtype)  # big-endian input: hash little-endian values
        self._h.update(np.ascontiguousarray(plane).data)
        self._count += plane.size

    def hexdigest(self) -> str:
        """The 32-hex-digit digest; every pixel must have been fed."""
        if self._count != self._total:
            raise IntegrityError(
                None, f"pixel hash fed {self._count} pixels, expected {self._total}"
            )
        return self._h.hexdigest()


def canonical_axes(axes: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """Drop size-1 axes other than Y and X from (axes, shape) in TCZYX order.

    >>> canonical_axes("TCZYX", (1, 1, 5, 4, 3))
    ('ZYX', (5, 4, 3))
    """
    kept = [(a, s) for a, s in zip(axes, shape, strict=True) if s != 1 or a in "YX"]
    return "".join(a for a, _ in kept), tuple(s for _, s in kept)


def pixel_hash_array(array: np.ndarray, axes: str) -> str:
    """Pixel hash of an in-memory array with the given axes (small arrays only)."""
    cax, cshape = canonical_axes(axes, array.shape)
    hasher = PixelHasher(cax, cshape, array.dtype)
    hasher.update(array.reshape(cshape))
    return hasher.hexdigest()


def pixel_hash_planes(
    planes: Iterable[np.ndarray], axes: str, shape: tuple[int, ...], dtype: np.dtype
) -> str:
    """Pixel hash of a stack given as an iterable of planes in C order."""
    hasher = PixelHasher(axes, shape, dtype)
    for plane in planes:
        hasher.update(plane)
    return hasher.hexdigest()
