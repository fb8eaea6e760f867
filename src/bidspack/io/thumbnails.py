"""Small PNG previews of 2D planes for reports: thumbnails and difference maps.

Planes are ``(y, x)`` arrays of any numeric dtype (for more axes, the middle plane is
shown; a difference map projects the changes of every plane). Intensity planes are
scaled to 8 bits between their 0.5th and 99.5th percentiles; label planes get a fixed
colour per label value (the same label always has the same colour).

Size: a plane is reduced to at most :data:`MAX_SIDE` pixels on its long side (every
n-th pixel for thumbnails; for difference maps, each preview pixel covers its whole
n x n block, so a change is never dropped by the reduction), and a small plane is
enlarged by an integer factor (nearest neighbour) to at least :data:`MIN_SIDE`
pixels, so thumbnails and difference maps of one pair have the same size and align.

Difference maps of label planes show labelled pixels lost or changed in B in red,
gained in B in green and unchanged labels in dim grey; of intensity planes,
``|A - B|`` scaled to its maximum (any difference at least dark grey). Each changed
region (8-connected, at preview resolution) gets a yellow box
(:data:`MARK_COLOUR`) drawn around it, so a single changed voxel is visible.

PNG encoding: imagecodecs (zlib level 6, deterministic).
"""

from __future__ import annotations

import imagecodecs
import numpy as np

#: Longest side of a preview, in pixels (larger planes are reduced).
MAX_SIDE = 256
#: Shortest long side of a preview: smaller planes are enlarged by an integer factor.
MIN_SIDE = 128
#: Colour of the boxes drawn around changed regions (contrasts with black, grey,
#: red and green).
MARK_COLOUR = (255, 214, 0)
#: At most this many boxes per difference map (the smallest regions first: large
#: regions are visible without one).
MAX_MARKS = 64
#: Changed preview pixels above which no boxes are drawn (the change is visible).
MARK_MAX_CELLS = 4096

Box = tuple[int, int, int, int]


def _plane2d(arr: np.ndarray) -> np.ndarray:
    """The middle ``(y, x)`` plane of an array with more than two axes."""
    if arr.ndim <= 2:
        return arr
    planes = arr.reshape(-1, *arr.shape[-2:])
    return planes[len(planes) // 2]


def _step(shape: tuple[int, ...], max_side: int) -> int:
    return max(1, -(-max(shape) // max_side)) if shape else 1


def _zoom(small_shape: tuple[int, ...], min_side: int) -> int:
    return max(1, min_side // max(1, max(small_shape))) if small_shape else 1


def _shrink(plane: np.ndarray, max_side: int) -> np.ndarray:
    step = _step(plane.shape, max_side)
    return plane[::step, ::step]


def _enlarge(img: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return img
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def _block(arr: np.ndarray, step: int, reduce: str) -> np.ndarray:
    """*arr* ``(y, x)`` reduced by blocks of ``step x step`` (``"any"`` or ``"max"``);
    the result has the shape of ``arr[::step, ::step]``."""
    if step == 1:
        return arr
    h, w = arr.shape
    hh, ww = -(-h // step), -(-w // step)
    pad = np.zeros((hh * step, ww * step), arr.dtype)
    pad[:h, :w] = arr
    blocks = pad.reshape(hh, step, ww, step)
    out = blocks.any(axis=(1, 3)) if reduce == "any" else blocks.max(axis=(1, 3))
    return np.asarray(out)


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


def thumbnail_png(
    plane: np.ndarray, *, label: bool, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE
) -> bytes:
    """PNG bytes of a preview of *plane*: at most *max_side* pixels on its long side,
    small planes enlarged to at least *min_side* (same geometry as :func:`diffmap_png`)."""
    small = _shrink(_plane2d(plane), max_side)
    img = label_colours(small) if label else _scale(small)
    img = _enlarge(img, _zoom(small.shape, min_side))
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(img), level=6))


def changed_regions(mask: np.ndarray) -> list[Box]:
    """Bounding boxes ``(y0, y1, x0, x1)`` (inclusive) of the 8-connected regions of
    the 2D boolean *mask*, smallest region first (ties in reading order)."""
    todo = {(int(y), int(x)) for y, x in zip(*np.nonzero(mask), strict=True)}
    regions: list[tuple[int, Box]] = []
    while todo:
        start = min(todo)
        todo.discard(start)
        stack = [start]
        y0 = y1 = start[0]
        x0 = x1 = start[1]
        n = 0
        while stack:
            y, x = stack.pop()
            n += 1
            y0, y1, x0, x1 = min(y0, y), max(y1, y), min(x0, x), max(x1, x)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    nb = (y + dy, x + dx)
                    if nb in todo:
                        todo.discard(nb)
                        stack.append(nb)
        regions.append((n, (y0, y1, x0, x1)))
    regions.sort(key=lambda r: (r[0], r[1]))
    return [box for _, box in regions]


def _mark(img: np.ndarray, mask: np.ndarray, k: int) -> None:
    """Draw a :data:`MARK_COLOUR` box around each changed region of *mask* (preview
    cells) on *img* (RGB, the preview enlarged *k* times), never over changed pixels."""
    if not mask.any() or int(mask.sum()) > MARK_MAX_CELLS:
        return
    height, width = img.shape[:2]
    # the margin grows with the preview, so a box reads at a glance on a large one
    margin, thick = max(2 + k, max(height, width) // 25), 2
    layer = np.zeros((height, width), bool)
    for y0, y1, x0, x1 in changed_regions(mask)[:MAX_MARKS]:
        top, left = max(0, y0 * k - margin), max(0, x0 * k - margin)
        bottom = min(height - 1, (y1 + 1) * k - 1 + margin)
        right = min(width - 1, (x1 + 1) * k - 1 + margin)
        layer[top : top + thick, left : right + 1] = True
        layer[max(top, bottom - thick + 1) : bottom + 1, left : right + 1] = True
        layer[top : bottom + 1, left : left + thick] = True
        layer[top : bottom + 1, max(left, right - thick + 1) : right + 1] = True
    layer &= ~_enlarge(mask, k)
    img[layer] = MARK_COLOUR


def diffmap_png(
    a: np.ndarray,
    b: np.ndarray,
    *,
    label: bool,
    max_side: int = MAX_SIDE,
    min_side: int = MIN_SIDE,
) -> bytes:
    """PNG bytes of where and how *a* and *b* (same shape) differ, with a yellow box
    around each changed region (see module docstring)."""
    changed_full = a != b
    if a.ndim > 2:  # every plane's changes, projected
        lead = int(np.prod(a.shape[:-2]))
        a3, b3 = a.reshape(lead, *a.shape[-2:]), b.reshape(lead, *b.shape[-2:])
        changed_full = changed_full.reshape(lead, *a.shape[-2:]).any(axis=0)
    else:
        a3, b3 = a[None], b[None]
    step = _step(changed_full.shape, max_side)
    changed = _block(changed_full, step, "any")
    if label:
        lost = _block(((a3 != 0) & (a3 != b3)).any(axis=0), step, "any")
        gained = _block(((a3 == 0) & (b3 != 0)).any(axis=0), step, "any")
        kept = _block(((a3 == b3) & (a3 != 0)).any(axis=0), step, "any")
        img = np.zeros((*changed.shape, 3), np.uint8)
        img[kept] = (70, 70, 70)  # unchanged labels, dim
        img[gained] = (40, 200, 60)  # gained in B
        img[lost] = (230, 40, 40)  # lost or changed in B
    else:
        d = np.abs(a3.astype(np.float64) - b3.astype(np.float64)).max(axis=0)
        d = _block(d, step, "max")
        m = d.max() if d.size else 0
        grey = np.zeros(d.shape, np.uint8)
        if m > 0:  # any difference at least dark grey, the largest white
            grey = np.where(d > 0, 64 + d / m * 191, 0).astype(np.uint8)
        img = np.repeat(grey[..., None], 3, axis=-1)
    k = _zoom(changed.shape, min_side)
    img = _enlarge(img, k)
    _mark(img, changed, k)
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(img), level=6))
