"""The multiscale pyramid: level shapes, downsampling, chunk encoding, and the pure
functions that run as parallel tasks (see :mod:`bidspack.io.omezarr`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import imagecodecs
import numpy as np

from bidspack.io.omezarr.versions import BLOSC, Level, NgffVersion

ImageKind = Literal["intensity", "label"]

#: Halve z once the z voxel size is at most this many times the y/x voxel size.
Z_ISOTROPY = 1.5
#: Bytes of pixels one parallel task aims at (a band of planes, of any level).
TASK_BYTES = 2 * 2**20

_INT_ACC = {1: np.int16, 2: np.int32, 4: np.int64}
_UINT_ACC = {1: np.uint16, 2: np.uint32, 4: np.uint64}


def pyramid_shapes(
    shape_zyx: tuple[int, int, int],
    physical_size_zyx_um: tuple[float, float, float],
    chunk_yx: tuple[int, int],
) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """``(shape, factor)`` of every level, level 0 first (see the module docstring).

    Levels halve y and x (rounding up) until both fit in one chunk (``y <= chunk_yx[0]``
    and ``x <= chunk_yx[1]``); z is halved too while its voxel is at most
    :data:`Z_ISOTROPY` times the larger of the y/x voxel sizes and z > 1.

    >>> [s for s, _ in pyramid_shapes((270, 193, 271), (50.0, 40.0, 40.0), (256, 256))]
    [(270, 193, 271), (135, 97, 136)]
    """
    (z, y, x), (fz, fy, fx) = shape_zyx, (1, 1, 1)
    sz, sy, sx = physical_size_zyx_um
    out = [((z, y, x), (fz, fy, fx))]
    while y > chunk_yx[0] or x > chunk_yx[1]:
        if z > 1 and sz * fz <= Z_ISOTROPY * max(sy * fy, sx * fx):
            z, fz = -(-z // 2), fz * 2
        y, x, fy, fx = -(-y // 2), -(-x // 2), fy * 2, fx * 2
        out.append(((z, y, x), (fz, fy, fx)))
    return out


def plan_pyramid(
    version: NgffVersion,
    shape_zyx: tuple[int, int, int],
    dtype: np.dtype,
    physical_size_zyx_um: tuple[float, float, float],
    chunk: tuple[int, int, int],
) -> list[Level]:
    """Every :class:`Level` of the pyramid (shapes from :func:`pyramid_shapes`)."""
    shapes = pyramid_shapes(shape_zyx, physical_size_zyx_um, (chunk[1], chunk[2]))
    levels = []
    for i, (shape, factor) in enumerate(shapes):
        ch = (min(chunk[0], shape[0]), min(chunk[1], shape[1]), min(chunk[2], shape[2]))
        nxt = shapes[i + 1][0] if i + 1 < len(shapes) else None
        levels.append(
            Level(
                path=str(i),
                shape=shape,
                scale_um=(
                    physical_size_zyx_um[0] * factor[0],
                    physical_size_zyx_um[1] * factor[1],
                    physical_size_zyx_um[2] * factor[2],
                ),
                factor=factor,
                chunk=ch,
                shard=version.shard(shape, ch, dtype.itemsize),
                halve_z=nxt is not None and nxt[0] != shape[0],
            )
        )
    return levels


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulator type for sums of 8 values of *dtype* (float64 for 64-bit ints/floats)."""
    if dtype.kind == "u" and dtype.itemsize in _UINT_ACC:
        return np.dtype(_UINT_ACC[dtype.itemsize])
    if dtype.kind == "i" and dtype.itemsize in _INT_ACC:
        return np.dtype(_INT_ACC[dtype.itemsize])
    return np.dtype(np.float64)


def downsample_block(planes: Sequence[np.ndarray], kind: ImageKind) -> np.ndarray:
    """One plane of the next level from 1 or 2 consecutive ``(y, x)`` planes.

    Halves y and x (rounding up; an odd last row/column is repeated). Intensity: mean of
    each 2x2 (one plane) or 2x2x2 (two planes) block, rounded half up for integers
    (``(sum + n/2) // n``), dtype kept. Label: the block's first voxel (top-left of the
    first plane), so no new values appear.
    """
    first = planes[0]
    if kind == "label":
        return np.ascontiguousarray(first[::2, ::2])
    y, x = first.shape
    if y % 2 or x % 2:
        planes = [np.pad(p, ((0, y % 2), (0, x % 2)), mode="edge") for p in planes]
    acc = _acc_dtype(first.dtype)
    rows = planes[0][0::2].astype(acc)
    rows += planes[0][1::2]
    for p in planes[1:]:
        rows += p[0::2]
        rows += p[1::2]
    s = rows[:, 0::2] + rows[:, 1::2]
    n = 4 * len(planes)
    if acc.kind in "ui":
        s += n // 2
        s //= n
    elif first.dtype.kind in "ui":  # 64-bit integers summed as float64
        s = np.floor(s / n + 0.5)
    else:
        s /= n
    return s.astype(first.dtype)


def encode_chunks(
    planes: Sequence[np.ndarray], z0: int, y0: int, level: Level
) -> list[tuple[tuple[int, int, int], bytes]]:
    """Encode the chunks of a band of planes: level planes ``z0 ..``, rows ``y0 ..``
    (``z0`` and ``y0`` on chunk boundaries), padding edge chunks with 0."""
    cname, clevel, _ = BLOSC
    cz, cy, cx = level.chunk
    rows, nx = planes[0].shape
    dtype = planes[0].dtype
    out = []
    for iz in range(0, len(planes), cz):
        group = planes[iz : iz + cz]
        for y in range(0, rows, cy):
            for x in range(0, nx, cx):
                parts = [p[y : y + cy, x : x + cx] for p in group]
                if len(parts) == cz and parts[0].shape == (cy, cx):
                    block = np.stack(parts) if cz > 1 else np.ascontiguousarray(parts[0])
                else:
                    block = np.zeros((cz, cy, cx), dtype=dtype)
                    for i, part in enumerate(parts):
                        block[i, : part.shape[0], : part.shape[1]] = part
                data = imagecodecs.blosc_encode(
                    block,  # type: ignore[arg-type]  # the stub omits arrays
                    level=clevel,
                    compressor=cname,
                    shuffle=1,  # byte shuffle
                    typesize=dtype.itemsize,
                    blocksize=0,
                    numthreads=1,
                )
                out.append((((z0 + iz) // cz, (y0 + y) // cy, x // cx), bytes(data)))
    return out


#: A task's result: encoded chunks (chunk-grid key, bytes), the next level's planes of its
#: band, the (min, max) of its finite values (intensity, last level only) and its sorted
#: distinct values (label images, level 0 only).
BandResult = tuple[
    list[tuple[tuple[int, int, int], bytes]],
    list[np.ndarray],
    tuple[float, float] | None,
    np.ndarray | None,
]


def process_band(
    planes: list[np.ndarray],
    z0: int,
    y0: int,
    level: Level,
    kind: ImageKind,
    last: bool,
    values: bool = False,
) -> BandResult:
    """One task on a band of planes (level planes ``z0 ..``, rows ``y0 ..``): encode its
    chunks and compute the same band of the next level's planes. The band starts on
    chunk boundaries, has an even height unless it ends the plane, and holds whole z
    pairs if the next level halves z unless it ends the level. The last level computes
    no planes; it returns the range of its finite values instead (intensity images, for
    the omero window). With *values*, also the band's distinct values
    (:func:`distinct_values`, for the colors of NGFF labels)."""
    chunks = encode_chunks(planes, z0, y0, level)
    found = distinct_values(planes) if values else None
    if last:
        return chunks, [], finite_range(planes) if kind == "intensity" else None, found
    step = 2 if level.halve_z else 1
    lower = [downsample_block(planes[i : i + step], kind) for i in range(0, len(planes), step)]
    return chunks, lower, None, found


def distinct_values(planes: Sequence[np.ndarray]) -> np.ndarray:
    """Sorted distinct values of integer *planes* (a histogram for 8- and 16-bit unsigned
    pixels, :func:`numpy.unique` otherwise)."""
    dtype = planes[0].dtype
    if dtype.kind == "u" and dtype.itemsize <= 2:
        counts = np.zeros(2 ** (8 * dtype.itemsize), dtype=np.int64)
        for plane in planes:
            counts += np.bincount(plane.ravel(), minlength=counts.size)
        return np.flatnonzero(counts).astype(dtype)
    return np.unique(np.concatenate([p.ravel() for p in planes]))


def finite_range(planes: list[np.ndarray]) -> tuple[float, float]:
    """(min, max) of the finite values of *planes* (``(inf, -inf)`` if there are none)."""
    lo, hi = math.inf, -math.inf
    for plane in planes:
        if plane.dtype.kind == "f":
            plane = plane[np.isfinite(plane)]
        if plane.size:
            lo, hi = min(lo, float(plane.min())), max(hi, float(plane.max()))
    return lo, hi


def task_shape(align: int, level: Level, itemsize: int) -> tuple[int, list[tuple[int, int]]]:
    """(planes, row bands) of a task on *level*: about :data:`TASK_BYTES` of pixels.
    Planes come in multiples of *align*; a plane range is split in bands only when
    *align* planes alone exceed :data:`TASK_BYTES`, with heights a multiple of the chunk
    height and even (so 2x2 blocks stay inside a band)."""
    _, ny, nx = level.shape
    row_bytes = nx * itemsize
    depth = align * max(1, TASK_BYTES // (align * ny * row_bytes))
    height = ny
    if depth == align:
        unit = math.lcm(level.chunk[1], 2)
        height = min(ny, unit * max(1, TASK_BYTES // (depth * unit * row_bytes)))
    return depth, [(y, min(y + height, ny)) for y in range(0, ny, height)]
