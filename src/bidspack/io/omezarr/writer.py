"""The streaming writer: one pass over the source through every pyramid level, chunks
encoded as Dask tasks, files written by the driver in (z, y, x) order, level 0 read back
and hashed (see :mod:`bidspack.io.omezarr` for the layout)."""

from __future__ import annotations

import colorsys
import itertools
import math
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs.blosc
import numpy as np

from bidspack.errors import IntegrityError, OutputError
from bidspack.io.omezarr.pyramid import (
    BandResult,
    ImageKind,
    plan_pyramid,
    process_band,
    task_shape,
)
from bidspack.io.omezarr.runner import TaskRunner
from bidspack.io.omezarr.store import ChunkStore
from bidspack.io.omezarr.versions import DEFAULT_VERSION, Level, NgffVersion, ngff_version
from bidspack.io.pixelhash import PixelHasher, canonical_dtype
from bidspack.io.sources import ImageSource

#: Tasks per worker in one step (one window of the stack, one ``dask.compute``).
STEP_TASKS = 4


#: Label images with at most this many distinct values get one ``colors`` entry per
#: value; above it only the background (0) is listed (a cell segmentation can have
#: millions of labels, and viewers colour unlisted values themselves).
MAX_COLORS = 4096
#: NGFF label names bidspack writes: a Zarr node name that is also a path segment.
LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class LabelResult:
    """One NGFF label image written by :func:`write_ome_zarr` (``labels/<name>``).

    Attributes:
        name: the label image's name (its path under ``labels/``).
        pixel_hash: pixel hash (``ZYX``) of its level 0, equal to its source's.
        values: number of distinct values, ``None`` when above :data:`MAX_COLORS`.
    """

    name: str
    pixel_hash: str
    values: int | None


@dataclass(frozen=True)
class OmeZarrResult:
    """What :func:`write_ome_zarr` wrote.

    Attributes:
        pixel_hash: pixel hash (``ZYX``) of level 0, equal to the source's.
        version: OME-NGFF version (``"0.4"`` or ``"0.5"``).
        levels: ``(z, y, x)`` shape of every level, level 0 first.
        scales_um: ``(z, y, x)`` voxel size in micrometres of every level.
        files: number of files written (metadata and label images included).
        nbytes: bytes written (all files).
        labels: the NGFF label images, in the order of the ``labels`` group.
    """

    pixel_hash: str
    version: str
    levels: tuple[tuple[int, int, int], ...]
    scales_um: tuple[tuple[float, float, float], ...]
    files: int
    nbytes: int
    labels: tuple[LabelResult, ...] = ()


@dataclass
class _Summary:
    """What one pass over a source found: its pixel hash, the (min, max) of the last
    level's finite values, and its distinct values (label images; ``None`` once there
    are more than :data:`MAX_COLORS`)."""

    pixel_hash: str = ""
    lo: float = math.inf
    hi: float = -math.inf
    values: np.ndarray | None = None
    has_zero: bool = False

    def add_values(self, found: np.ndarray) -> None:
        i = int(np.searchsorted(found, 0))
        if i < found.size and found[i] == 0:
            self.has_zero = True
        if self.values is not None:
            merged = np.union1d(self.values, found)
            self.values = merged if merged.size <= MAX_COLORS else None


@dataclass
class _Pending:
    """Planes of one level waiting to be encoded and downsampled."""

    level: Level
    align: int  # planes are taken in multiples of this until the level is complete
    planes: list[np.ndarray]
    z: int = 0  # index of planes[0] in the level
    complete: bool = False  # no more planes will arrive


def _multiscale(
    levels: list[Level],
    name: str,
    kind: ImageKind,
    origin: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """The ``multiscales[0]`` object (#multiscale-md), without the 0.4 ``version``.

    Each level's ``translation`` (after its ``scale``, #trafo-md) is the source's
    *origin* (``(z, y, x)`` micrometres of the first voxel's centre) plus, for
    mean-downsampled levels, half a block minus half a level-0 voxel; a level whose
    translation would be zero gets none."""
    from bidspack import __version__

    s0 = levels[0].scale_um
    o = origin or (0.0, 0.0, 0.0)
    datasets = []
    for lv in levels:
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(lv.scale_um)}]
        mean = kind == "intensity" and lv.factor != (1, 1, 1)
        if mean or any(o):
            shift = [
                oi + ((f - 1) / 2 * s if mean else 0.0)
                for oi, f, s in zip(o, lv.factor, s0, strict=True)
            ]
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


def label_colors(values: np.ndarray | None, has_zero: bool) -> list[dict[str, Any]]:
    """``image-label.colors`` (#label-md): 0 (background) transparent black, every other
    value an opaque colour from a golden-ratio walk around the hue circle (value *v* has
    hue ``frac(v * 0.618...)``), so neighbouring label values differ and the same value
    always gets the same colour. ``values`` ``None`` (too many values): background only."""
    out = [{"label-value": 0, "rgba": [0, 0, 0, 0]}] if has_zero else []
    for v in [] if values is None else values.tolist():
        if v == 0:
            continue
        r, g, b = colorsys.hsv_to_rgb((v * 0.6180339887498949) % 1.0, 0.65, 0.95)
        out.append(
            {"label-value": int(v), "rgba": [round(r * 255), round(g * 255), round(b * 255), 255]}
        )
    return out


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
    labels: Mapping[str, ImageSource] | None = None,
    origin_zyx_um: tuple[float, float, float] | None = None,
) -> OmeZarrResult:
    """Write *source* (``(z, y, x)``) as an OME-Zarr multiscale image at *path*, streaming,
    with optional NGFF label images.

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
        workers: threads of the local Dask scheduler (default: CPU count; with a
            ``dask.distributed`` client: the cluster's worker threads). Memory grows
            with it: a step holds about :data:`STEP_TASKS` x workers x :data:`TASK_BYTES`
            of level-0 pixels, and at least one chunk-deep slab of planes.
        scheduler: ``None`` (local threads), a Dask scheduler name, the address of a
            ``dask.distributed`` scheduler (``"tcp://..."``) or a ``distributed.Client``.
        verify: read level 0 back from disk (every chunk, decoded in parallel with the
            Blosc of numcodecs, shard indexes CRC-checked) and compare its pixel hash
            to the source's. :func:`pixel_hash_of_zarr` (zarr-python) is the slower
            independent check that validation runs.
        labels: label images of this image (name -> source), written as NGFF labels
            (0.4/0.5 #labels-md, #label-md): ``labels/<name>`` multiscale images with
            the same shape, voxel size, chunks and number of levels as the image,
            downsampled label-preserving, with ``image-label`` metadata (``colors``
            from :func:`label_colors`, ``source.image`` ``"../../"``), listed in that
            order in the ``labels`` group. Each is streamed in its own pass, and its
            level 0 is verified like the image's. Only for intensity images.
        origin_zyx_um: position in micrometres of the first voxel, written as each
            level's ``translation`` (labels share it); default the source's
            (:attr:`~bidspack.io.sources.StackInfo.origin`, from OME-XML ``Plane``
            positions in a length unit), none if it has none.

    Returns:
        :class:`OmeZarrResult`.

    Raises:
        ValueError: bad *kind*, *version*, *chunk*, *workers*, physical size or origin; a label
            name that is not ``[A-Za-z0-9][A-Za-z0-9._-]*`` or a label image whose shape
            differs from the image's or whose pixels are not integers; labels of a
            label image.
        OutputError: *path* exists.
        SourceError: a source plane cannot be decoded.
        IntegrityError: the written level 0 (of the image or a label image) does not
            hash like its source.

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
    if origin_zyx_um is not None and (
        len(origin_zyx_um) != 3 or not all(math.isfinite(v) for v in origin_zyx_um)
    ):
        raise ValueError(f"origin must be three finite numbers (z, y, x): {origin_zyx_um}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise OutputError(path, "already exists", hint="OME-Zarr output must be a new folder")
    dtype = canonical_dtype(source.dtype)
    if dtype.kind not in ("ui" if kind == "label" else "uif") or dtype.itemsize > 8:
        raise ValueError(f"pixel type {dtype} is not supported for {kind} images")
    label_items = list((labels or {}).items())
    label_dtypes = _check_labels(label_items, source, kind)
    zyx_um = (sizes[0], sizes[1], sizes[2])
    levels = plan_pyramid(fmt, source.shape, dtype, zyx_um, (ch[0], ch[1], ch[2]))

    runner = TaskRunner(scheduler, workers)
    written: list[LabelResult] = []
    try:
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(path, f"cannot create the folder ({exc.strerror})") from exc
        try:
            origin = origin_zyx_um or source.info.origin
            digest = _write(
                path, fmt, source, levels, dtype, kind, name, runner, origin=origin
            ).pixel_hash
            if verify:
                _verify(path, fmt, levels[0], dtype, runner, digest)
            for (lname, lsource), ldtype in zip(label_items, label_dtypes, strict=True):
                root = path / "labels" / lname
                llevels = plan_pyramid(fmt, source.shape, ldtype, zyx_um, (ch[0], ch[1], ch[2]))
                root.mkdir(parents=True)
                found = _write(
                    root, fmt, lsource, llevels, ldtype, "label", lname, runner, True, origin
                )
                if verify:
                    _verify(root, fmt, llevels[0], ldtype, runner, found.pixel_hash)
                count = None if found.values is None else int(found.values.size)
                written.append(LabelResult(lname, found.pixel_hash, count))
            if label_items:
                group = fmt.labels_attributes([n for n, _ in label_items])
                for fname, content in fmt.group_files(group).items():
                    (path / "labels" / fname).write_bytes(content)
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
        labels=tuple(written),
    )


def _check_labels(
    items: list[tuple[str, ImageSource]], source: ImageSource, kind: ImageKind
) -> list[np.dtype]:
    """The pixel type of every label image, after checking names, shapes and types.

    Raises:
        ValueError: see :func:`write_ome_zarr`.
    """
    if items and kind != "intensity":
        raise ValueError("NGFF labels belong to an intensity image, not to a label image")
    dtypes = []
    seen: set[str] = set()
    for lname, lsource in items:
        if not LABEL_NAME.fullmatch(lname) or lname in seen:
            raise ValueError(
                f"label name {lname!r} is not a unique name of letters, digits, '.', '_', '-'"
            )
        seen.add(lname)
        if tuple(lsource.shape) != tuple(source.shape):
            raise ValueError(
                f"label image {lname!r} ({lsource.path}) has shape {tuple(lsource.shape)} "
                f"(z, y, x), the image {tuple(source.shape)}: NGFF labels must match "
                "their image"
            )
        ldtype = canonical_dtype(lsource.dtype)
        if ldtype.kind not in "ui" or ldtype.itemsize > 8:
            raise ValueError(
                f"label image {lname!r} ({lsource.path}) has pixel type {ldtype}; NGFF "
                "labels are integers"
            )
        dtypes.append(ldtype)
    return dtypes


def _verify(
    root: Path, fmt: NgffVersion, level0: Level, dtype: np.dtype, runner: TaskRunner, digest: str
) -> None:
    """Read level 0 back and compare its pixel hash with the source's *digest*.

    Raises:
        IntegrityError: they differ.
    """
    written = _hash_level(root, fmt, level0, dtype, runner)
    if written != digest:
        raise IntegrityError(root, f"written level 0 hashes to {written}, the source to {digest}")


def _write(
    root: Path,
    fmt: NgffVersion,
    source: ImageSource,
    levels: list[Level],
    dtype: np.dtype,
    kind: ImageKind,
    name: str,
    runner: TaskRunner,
    ngff_label: bool = False,
    origin: tuple[float, float, float] | None = None,
) -> _Summary:
    """Write the chunks, then the array and group metadata (with ``image-label`` for an
    NGFF label image); what the pass found."""
    found = _write_levels(root, fmt, source, levels, dtype, kind, runner, ngff_label)
    for lv in levels:
        (root / lv.path).mkdir(exist_ok=True)
        for fname, content in fmt.array_files(lv, dtype).items():
            (root / lv.path / fname).write_bytes(content)
    omero = (
        _omero(name, dtype, source.shape[0], found.lo, found.hi) if kind == "intensity" else None
    )
    image_label: dict[str, Any] | None = None
    if ngff_label:
        image_label = {"source": {"image": "../../"}}
        colors = label_colors(found.values, found.has_zero)
        if colors:
            image_label["colors"] = colors
    attributes = fmt.ome_attributes(_multiscale(levels, name, kind, origin), omero, image_label)
    for fname, content in fmt.group_files(attributes).items():
        (root / fname).write_bytes(content)
    return found


def _write_levels(
    root: Path,
    fmt: NgffVersion,
    source: ImageSource,
    levels: list[Level],
    dtype: np.dtype,
    kind: ImageKind,
    runner: TaskRunner,
    values: bool,
) -> _Summary:
    """Stream the source through the pyramid: its pixel hash, the min and max of the
    last level, and (with *values*) its distinct values."""
    hasher = PixelHasher("ZYX", source.shape, source.dtype)
    found = _Summary(values=np.empty(0, dtype) if values else None)
    pending = [_Pending(lv, math.lcm(lv.chunk[0], 2 if lv.halve_z else 1), []) for lv in levels]
    depth, bands = task_shape(pending[0].align, levels[0], dtype.itemsize)
    window = depth * max(1, -(-STEP_TASKS * runner.workers // len(bands)))
    writers = [fmt.chunk_store(root / lv.path, lv) for lv in levels]
    # one thread decodes the next planes while a step runs; more threads (each with its
    # own malloc arena) raised peak RSS by ~25 MB for no measurable speed on 2 cores
    planes = source.iter_planes(prefetch=2, workers=1)
    try:
        while not all(p.complete and not p.planes for p in pending):
            if not pending[0].complete:
                _read_window(planes, pending[0], window, hasher, dtype)
            owners, args = _take(pending, kind, values)
            _store(owners, runner.map(process_band, args), pending, writers, found)
            for above, below in itertools.pairwise(pending):
                if above.complete and not above.planes:
                    below.complete = True
        for w in writers:
            w.close()
    finally:
        close = getattr(planes, "close", None)
        if close is not None:
            close()  # stops the source's prefetch
    found.pixel_hash = hasher.hexdigest()
    return found


def _take(
    pending: list[_Pending], kind: ImageKind, values: bool
) -> tuple[list[tuple[int, int]], list[tuple[Any, ...]]]:
    """Take every level's ready planes off its queue as tasks: the (level, first plane)
    of each task's plane range, and each task's :func:`process_band` arguments, in level,
    plane range, then band order. With *values*, level-0 tasks also return their
    distinct values."""
    owners: list[tuple[int, int]] = []
    args: list[tuple[Any, ...]] = []
    for k, pend in enumerate(pending):
        last = k == len(pending) - 1
        tasks = _tasks(pend)
        for start, stop, bands in tasks:
            for y0, y1 in bands:
                owners.append((k, pend.z + start))
                band = [p[y0:y1] for p in pend.planes[start:stop]]
                args.append((band, pend.z + start, y0, pend.level, kind, last, values and k == 0))
        if tasks:
            taken = tasks[-1][1]
            del pend.planes[:taken]
            pend.z += taken
    return owners, args


def _store(
    owners: list[tuple[int, int]],
    results: list[BandResult],
    pending: list[_Pending],
    stores: list[ChunkStore],
    found: _Summary,
) -> None:
    """Apply a step's task results, plane range by plane range: store the chunks in
    (z, y, x) order (so shard contents do not depend on how the work was split), join
    the bands of the next level's planes and queue them, widen the value range and
    collect distinct values."""
    for (k, _), group in itertools.groupby(zip(owners, results, strict=True), key=_first):
        parts = [res for _, res in group]
        for key, data in sorted(chunk for chunks, _, _, _ in parts for chunk in chunks):
            stores[k].put(key, data)
        if k + 1 < len(pending):
            for pieces in zip(*(lower for _, lower, _, _ in parts), strict=True):
                pending[k + 1].planes.append(
                    pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
                )
        for _, _, rng, distinct in parts:
            if rng is not None:
                found.lo, found.hi = min(found.lo, rng[0]), max(found.hi, rng[1])
            if distinct is not None:
                found.add_values(distinct)


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
