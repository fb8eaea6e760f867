"""Small PNG previews of 2D planes for reports: thumbnails and difference maps.

Planes are ``(y, x)`` arrays of any numeric dtype. Intensity planes are scaled to
8 bits between their 0.5th and 99.5th percentiles; label planes get a fixed colour
per label value (the same label always has the same colour). Difference maps of label
planes show labelled pixels lost in B in red and gained in B in green; of intensity
planes, ``|A - B|`` scaled to its maximum. PNG encoding: imagecodecs (zlib level 6,
deterministic).
"""

from __future__ import annotations

import imagecodecs
import numpy as np

MAX_SIDE = 256


def _shrink(plane: np.ndarray, max_side: int) -> np.ndarray:
    step = max(1, -(-max(plane.shape) // max_side))
    return plane[::step, ::step]


def _scale(plane: np.ndarray) -> np.ndarray:
    p = plane.astype(np.float64)
    if p.size == 0:
        return p.astype(np.uint8)
    lo, hi = np.percentile(p, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1
    return (np.clip((p - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def label_colours(plane: np.ndarray) -> np.ndarray:
    """RGB ``(y, x, 3)`` uint8: label 0 black, every other label a fixed bright colour."""
    v = plane.astype(np.uint64)
    h = (v * np.uint64(2654435761)) & np.uint64(0xFFFFFF)
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(0xFF) for s in (16, 8, 0)], axis=-1)
    rgb = (rgb.astype(np.uint16) // 2 + 96).astype(np.uint8)
    rgb[plane == 0] = 0
    return rgb


def thumbnail_png(plane: np.ndarray, *, label: bool, max_side: int = MAX_SIDE) -> bytes:
    """PNG bytes of a preview of *plane* at most *max_side* pixels on its long side."""
    small = _shrink(plane, max_side)
    img = label_colours(small) if label else _scale(small)
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(img), level=6))


def diffmap_png(a: np.ndarray, b: np.ndarray, *, label: bool, max_side: int = MAX_SIDE) -> bytes:
    """PNG bytes of where and how *a* and *b* (same shape) differ."""
    a, b = _shrink(a, max_side), _shrink(b, max_side)
    if label:
        img = np.zeros((*a.shape, 3), np.uint8)
        img[(a != 0) & (a != b)] = (230, 40, 40)  # lost or changed in B
        img[(a == 0) & (b != 0)] = (40, 200, 60)  # gained in B
        img[(a == b) & (a != 0)] = (70, 70, 70)  # unchanged labels, dim
    else:
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        m = d.max() if d.size else 0
        img = (d / m * 255).astype(np.uint8) if m > 0 else np.zeros(d.shape, np.uint8)
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(img), level=6))
