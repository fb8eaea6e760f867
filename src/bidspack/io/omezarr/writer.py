"""The streaming writer: one pass over the source through every pyramid level, chunks
encoded as Dask tasks, files written by the driver in (z, y, x) order, level 0 read back
and hashed (see :mod:`bidspack.io.omezarr` for the layout)."""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs.blosc
import numpy as np

from bidspack.errors import IntegrityError, OutputError
from bidspack.io.omezarr.pyramid import ImageKind, plan_pyramid, process_band, task_shape
from bidspack.io.omezarr.runner import TaskRunner
from bidspack.io.omezarr.store import ChunkStore
from bidspack.io.omezarr.versions import DEFAULT_VERSION, Level, NgffVersion, ngff_version
from bidspack.io.pixelhash import PixelHasher, canonical_dtype
from bidspack.io.sources import ImageSource

#: Tasks per worker in one step (one window of the stack, one ``dask.compute``).
STEP_TASKS = 4


@dataclass(frozen=True)
class OmeZarrResult:
    """What :func:`write_ome_zarr` wrote.

    Attributes:
        pixel_hash: pixel hash (``ZYX``) of level 0, equal to the source's.
        version: OME-NGFF version (``"0.4"`` or ``"0.5"``).
        levels: ``(z, y, x)`` shape of every level, level 0 first.
        scales_um: ``(z, y, x)`` voxel size in micrometres of every level.
        files: number of files written (metadata included).
        nbytes: bytes written (all files).
    """

    pixel_hash: str
    version: str
    levels: tuple[tuple[int, int, int], ...]
    scales_um: tuple[tuple[float, float, float], ...]
    files: int
    nbytes: int


@dataclass
class _Pending:
    """Planes of one level waiting to be encoded and downsampled."""

    level: Level
    align: int  # planes are taken in multiples of this until the level is complete
    planes: list[np.ndarray]
    z: int = 0  # index of planes[0] in the level
    complete: bool = False  # no more planes will arrive


def _multiscale(levels: list[Level], name: str, kind: ImageKind) -> dict[str, Any]:
    """The ``multiscales[0]`` object (#multiscale-md), without the 0.4 ``version``."""
    from bidspack import __version__

    s0 = levels[0].scale_um
    datasets = []
    for lv in levels:
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(lv.scale_um)}]
        if kind == "intensity" and lv.factor != (1, 1, 1):
            shift = [(f - 1) / 2 * s for f, s in zip(lv.factor, s0, strict=True)]
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": lv.path, "coordinateTransformations": transforms})
    method = "mean" if kind == "intensity" else "nearest"
    return {
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": datasets,
        "metadata": {
            "description": (
                "2x2 (2x2x2 where z is halved) block mean, integers rounded half up"
                if kind == "intensity"
                else "first (top-left) voxel of each 2x2 (2x2x2 where z is halved) block"
            )
            + "; odd sides repeat their last row, column or plane",
            "method": "bidspack.io.omezarr.downsample_block",
            "version": __version__,
        },
        "name": name,
        "type": method,
    }


def _omero(name: str, dtype: np.dtype, shape_z: int, lo: float, hi: float) -> dict[str, Any]:
    """``omero`` rendering metadata (#omero-md, transitional): one grey channel,
    window min/max the dtype's range, start/end the range of the smallest level."""
    info = np.iinfo(dtype) if dtype.kind in "ui" else np.finfo(dtype)
    if not lo <= hi:  # no finite value seen
        lo, hi = 0.0, 1.0
    window = {"min": float(info.min), "max": float(info.max), "start": lo, "end": hi}
    channel = {
        "active": True,
        "coefficient": 1.0,
        "color": "FFFFFF",
        "family": "linear",
        "inverted": False,
        "label": name,
        "window": window,
    }
    return {
        "channels": [channel],
        "rdefs": {"defaultT": 0, "defaultZ": shape_z // 2, "model": "greyscale"},
    }


def write_ome_zarr(
    path: Path,
    source: ImageSource,
    *,
    physical_size_zyx_um: tuple[float, float, float],
    name: str,
    kind: ImageKind = "intensity",
    version: str = DEFAULT_VERSION,
    chunk: tuple[int, int, int] | None = None,
    workers: int | None = None,
    scheduler: object = None,
    verify: bool = True,
) -> OmeZarrResult:
    """Write *source* (``(z, y, x)``) as an OME-Zarr multiscale image at *path*, streaming.

    Args:
        path: the output folder (conventionally ``*.ome.zarr``); it must not exist.
            Missing parent folders are created.
        source: the image, read once in Z order.
        physical_size_zyx_um: level-0 voxel size in micrometres, ``(z, y, x)``.
        name: the multiscale ``name`` and the omero channel label.
        kind: ``"intensity"`` (block mean, omero metadata) or ``"label"`` (first voxel of
            each block; no omero metadata).
        version: ``"0.5"`` (Zarr v3, sharded) or ``"0.4"`` (Zarr v2); see
            :data:`NGFF_VERSIONS`.
        chunk: ``(z, y, x)`` chunk shape; default the version's
            :attr:`NgffVersion.default_chunk`. The pyramid stops when y and x fit in one
            chunk.
        workers: threads of the local Dask scheduler (default: CPU count). Memory grows
            with it: a step holds about :data:`STEP_TASKS` x workers x :data:`TASK_BYTES`
            of level-0 pixels, and at least one chunk-deep slab of planes.
        scheduler: ``None`` (local threads), a Dask scheduler name, the address of a
            ``dask.distributed`` scheduler (``"tcp://..."``) or a ``distributed.Client``.
        verify: read level 0 back from disk (every chunk, decoded in parallel with the
            Blosc of numcodecs, shard indexes CRC-checked) and compare its pixel hash
            to the source's. :func:`pixel_hash_of_zarr` (zarr-python) is the slower
            independent check that validation runs.

    Returns:
        :class:`OmeZarrResult`.

    Raises:
        ValueError: bad *kind*, *version*, *chunk*, *workers* or physical size.
        OutputError: *path* exists.
        SourceError: a source plane cannot be decoded.
        IntegrityError: the written level 0 does not hash like the source.

    On any error the partly written folder is removed.
    """
    fmt = ngff_version(version)
    if kind not in ("intensity", "label"):
        raise ValueError(f"kind must be 'intensity' or 'label', not {kind!r}")
    ch = tuple(int(c) for c in (chunk or fmt.default_chunk))
    if len(ch) != 3 or min(ch) < 1:
        raise ValueError(f"chunk must be three positive sizes (z, y, x), not {chunk}")
    sizes = tuple(float(s) for s in physical_size_zyx_um)
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"physical sizes must be three positive numbers: {physical_size_zyx_um}")
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise OutputError(path, "already exists", hint="OME-Zarr output must be a new folder")
    dtype = canonical_dtype(source.dtype)
    if dtype.kind not in ("ui" if kind == "label" else "uif") or dtype.itemsize > 8:
        raise ValueError(f"pixel type {dtype} is not supported for {kind} images")
    levels = plan_pyramid(
        fmt, source.shape, dtype, (sizes[0], sizes[1], sizes[2]), (ch[0], ch[1], ch[2])
    )

    runner = TaskRunner(scheduler, workers)
    try:
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(path, f"cannot create the folder ({exc.strerror})") from exc
        try:
            digest = _write(path, fmt, source, levels, dtype, kind, name, runner)
            if verify:
                written = _hash_level(path, fmt, levels[0], dtype, runner)
                if written != digest:
                    raise IntegrityError(
                        path, f"written level 0 hashes to {written}, the source to {digest}"
                    )
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
    finally:
        runner.close()
    files = [p for p in path.rglob("*") if p.is_file()]
    return OmeZarrResult(
        pixel_hash=digest,
        version=fmt.version,
        levels=tuple(lv.shape for lv in levels),
        scales_um=tuple(lv.scale_um for lv in levels),
        files=len(files),
        nbytes=sum(p.stat().st_size for p in files),
    )


def _write(
    root: Path,
    fmt: NgffVersion,
    source: ImageSource,
    levels: list[Level],
    dtype: np.dtype,
    kind: ImageKind,
    name: str,
    runner: TaskRunner,
) -> str:
    """Write the chunks, then the array and group metadata; the source's pixel hash."""
    digest, lo, hi = _write_levels(root, fmt, source, levels, dtype, kind, runner)
    for lv in levels:
        (root / lv.path).mkdir(exist_ok=True)
        for fname, content in fmt.array_files(lv, dtype).items():
            (root / lv.path / fname).write_bytes(content)
    omero = _omero(name, dtype, source.shape[0], lo, hi) if kind == "intensity" else None
    attributes = fmt.ome_attributes(_multiscale(levels, name, kind), omero)
    for fname, content in fmt.group_files(attributes).items():
        (root / fname).write_bytes(content)
    return digest


def _write_levels(
    root: Path,
    fmt: NgffVersion,
    source: ImageSource,
    levels: list[Level],
    dtype: np.dtype,
    kind: ImageKind,
    runner: TaskRunner,
) -> tuple[str, float, float]:
    """Stream the source through the pyramid; (pixel hash, min and max of the last level)."""
    hasher = PixelHasher("ZYX", source.shape, source.dtype)
    pending = [_Pending(lv, math.lcm(lv.chunk[0], 2 if lv.halve_z else 1), []) for lv in levels]
    depth, bands = task_shape(pending[0].align, levels[0], dtype.itemsize)
    window = depth * max(1, -(-STEP_TASKS * runner.workers // len(bands)))
    writers = [fmt.chunk_store(root / lv.path, lv) for lv in levels]
    # one thread decodes the next planes while a step runs; more threads (each with its
    # own malloc arena) raised peak RSS by ~25 MB for no measurable speed on 2 cores
    planes = source.iter_planes(prefetch=2, workers=1)
    value_range = [math.inf, -math.inf]
    try:
        while not all(p.complete and not p.planes for p in pending):
            if not pending[0].complete:
                _read_window(planes, pending[0], window, hasher, dtype)
            owners, args = _take(pending, kind)
            _store(owners, runner.map(process_band, args), pending, writers, value_range)
            for above, below in itertools.pairwise(pending):
                if above.complete and not above.planes:
                    below.complete = True
        for w in writers:
            w.close()
    finally:
        close = getattr(planes, "close", None)
        if close is not None:
            close()  # stops the source's prefetch
    return hasher.hexdigest(), value_range[0], value_range[1]


def _take(
    pending: list[_Pending], kind: ImageKind
) -> tuple[list[tuple[int, int]], list[tuple[Any, ...]]]:
    """Take every level's ready planes off its queue as tasks: the (level, first plane)
    of each task's plane range, and each task's :func:`_process` arguments, in level,
    plane range, then band order."""
    owners: list[tuple[int, int]] = []
    args: list[tuple[Any, ...]] = []
    for k, pend in enumerate(pending):
        last = k == len(pending) - 1
        tasks = _tasks(pend)
        for start, stop, bands in tasks:
            for y0, y1 in bands:
                owners.append((k, pend.z + start))
                band = [p[y0:y1] for p in pend.planes[start:stop]]
                args.append((band, pend.z + start, y0, pend.level, kind, last))
        if tasks:
            taken = tasks[-1][1]
            del pend.planes[:taken]
            pend.z += taken
    return owners, args


def _store(
    owners: list[tuple[int, int]],
    results: list[Any],
    pending: list[_Pending],
    stores: list[ChunkStore],
    value_range: list[float],
) -> None:
    """Apply a step's task results, plane range by plane range: store the chunks in
    (z, y, x) order (so shard contents do not depend on how the work was split), join
    the bands of the next level's planes and queue them, widen the value range."""
    for (k, _), group in itertools.groupby(zip(owners, results, strict=True), key=_first):
        parts = [res for _, res in group]
        for key, data in sorted(chunk for chunks, _, _ in parts for chunk in chunks):
            stores[k].put(key, data)
        if k + 1 < len(pending):
            for pieces in zip(*(lower for _, lower, _ in parts), strict=True):
                pending[k + 1].planes.append(
                    pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
                )
        for _, _, rng in parts:
            if rng is not None:
                value_range[:] = min(value_range[0], rng[0]), max(value_range[1], rng[1])


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


def _read_window(
    planes: Iterator[np.ndarray], pend: _Pending, window: int, hasher: PixelHasher, dtype: np.dtype
) -> None:
    """Move up to *window* source planes (hashed, little-endian) into level 0's queue."""
    for _ in range(window):
        plane = next(planes, None)
        if plane is None:
            pend.complete = True
            return
        hasher.update(plane)
        pend.planes.append(plane.astype(dtype, copy=False))


def _tasks(pend: _Pending) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """The tasks for a level's queue this step: ``(start, stop, bands)``, plane ranges in
    whole multiples of ``align`` (everything once the level is complete), each split in
    row bands ``(y0, y1)`` (see :func:`task_shape`)."""
    n = len(pend.planes)
    take = n if pend.complete else n - n % pend.align
    if take == 0:
        return []
    depth, bands = task_shape(pend.align, pend.level, pend.planes[0].itemsize)
    return [(s, min(s + depth, take), bands) for s in range(0, take, depth)]


def _read_block(
    fmt: NgffVersion, folder: Path, level: Level, dtype: np.dtype, zs: range, ys: range
) -> np.ndarray:
    """Planes *zs*, rows *ys* (whole chunks, or up to the array's end) of *level*, decoded
    from the chunk files on disk.

    Raises:
        IntegrityError: a chunk is missing, damaged or decodes to the wrong size.
    """
    cz, cy, cx = level.chunk
    nx = level.shape[2]
    store = fmt.chunk_store(folder, level)
    block = np.empty((len(zs), len(ys), nx), dtype=dtype)
    for iz in range(zs.start // cz, -(-zs.stop // cz)):
        for iy in range(ys.start // cy, -(-ys.stop // cy)):
            for ix in range(-(-nx // cx)):
                data = store.get((iz, iy, ix))
                try:
                    chunk = np.frombuffer(numcodecs.blosc.decompress(data), dtype=dtype)
                    chunk = chunk.reshape(cz, cy, cx)
                except (RuntimeError, ValueError) as exc:
                    raise IntegrityError(
                        folder, f"chunk {(iz, iy, ix)} is damaged ({exc})"
                    ) from exc
                dst = block[
                    iz * cz - zs.start : (iz + 1) * cz - zs.start,
                    iy * cy - ys.start : (iy + 1) * cy - ys.start,
                    ix * cx : (ix + 1) * cx,
                ]
                dst[...] = chunk[: dst.shape[0], : dst.shape[1], : dst.shape[2]]
    return block


def _hash_level(
    root: Path, fmt: NgffVersion, level: Level, dtype: np.dtype, runner: TaskRunner
) -> str:
    """Pixel hash of *level* as written: every chunk read back from disk and decoded in
    parallel blocks (plane range x row band), hashed plane by plane in Z order."""
    nz = level.shape[0]
    depth, bands = task_shape(level.chunk[0], level, dtype.itemsize)
    ranges = [range(z, min(z + depth, nz)) for z in range(0, nz, depth)]
    per_step = max(1, STEP_TASKS * runner.workers // len(bands))
    hasher = PixelHasher("ZYX", level.shape, dtype)
    folder = root / level.path
    for i in range(0, len(ranges), per_step):
        step = ranges[i : i + per_step]
        jobs = [(fmt, folder, level, dtype, zs, range(*b)) for zs in step for b in bands]
        blocks = iter(runner.map(_read_block, jobs))
        for zs in step:
            parts = [next(blocks) for _ in bands]
            for z in range(len(zs)):
                for part in parts:
                    hasher.update(part[z])
    return hasher.hexdigest()
