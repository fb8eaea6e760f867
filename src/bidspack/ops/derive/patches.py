"""``bidspack derive patches``: 2D training patches of a source dataset's volumes.

The practice follows the CEM500K curation (Conrad & Narayan, "CEM500K, a large-scale
heterogeneous unlabeled cellular electron microscopy image dataset for deep learning",
eLife 2021; scripts ``volume-em/cem-dataset``, ``dataset/cross_section.py`` and
``dataset/crop_patches.py``): cross sections of each volume on one or more planes,
square patches, exact and near-duplicate removal by difference hash. Unlike those
scripts, every patch keeps the source voxels it came from, every decision is recorded,
the order is seeded, every slice is used, and the same inputs give the same bytes.
The full description is ``docs/derived-datasets.md``.

Geometry (all ``(z, y, x)``, voxel ranges half-open):

- A *plane* is cut normal to one axis: ``xy`` (slices along z; patch rows y, columns
  x), ``xz`` (slices along y; rows z, columns x), ``yz`` (slices along x; rows z,
  columns y). ``xz``/``yz`` need a near-isotropic voxel: ``|x - z| / x <=
  isotropy_tolerance``, default 0.2: the rule and threshold of CEM's
  ``cross_section.py`` ("if the z-pixel size is more than 20% different from the
  x-pixel size, don't slice over orthogonal directions"); otherwise the plane is
  refused for that image (an ``impossible`` record, not an error).
- Every slice ``0, slice_step, 2 * slice_step, ... < n`` is used (CEM's
  ``np.arange(0, n - 1, spacing)`` drops the last one).
- Tiles along each in-plane axis start at ``0, stride, 2 * stride, ...``; a full tile
  is always kept; once the tiles cover the axis no further tile is made; the first
  tile that would cross the end is handled by the *edge* rule (:func:`tile_spans`).
- Intensity to uint8 (:func:`intensity_range`, :func:`to_uint8`): ``percentile``
  (per-volume 0.5 / 99.5 percentiles of a strided sample, linear rescale, rounded
  half up, clipped), ``dtype-max`` (CEM: ``value / dtype max * 255`` in float32,
  truncated), or ``none`` (uint8 sources only).
- Hashes per patch: the bidspack pixel hash (:func:`bidspack.io.pixelhash.pixel_hash_array`
  over the ``(size, size)`` uint8 patch, axes ``YX``: xxh3-128 of a header and the
  bytes) for exact duplicates, and the 64-bit dHash
  (:func:`bidspack.ops.derive.dedup.dhash64`) for near duplicates.

Output, per source image and plane: ``patches/[<pipeline>/]<stem>/plane-<p>.zarr``, a
Zarr v3 array ``(n, size, size)`` uint8, one patch per chunk, shards of
:data:`SHARD_PATCHES` patches, zstd; and ``.../plane-<p>.parquet``, its part of the
index (geometry and hashes). One step per source image. A last step (``index``) reads
the parts, decides duplicates (seeded greedy, :func:`decide`) and writes
``index.parquet`` (and ``index.tsv``) with one row per patch, plus
``dataset_description.json``, ``README.md`` and ``.bidsignore``. Removed patches stay
in the arrays and in the index (``kept`` false, with the reason).

Execution (:class:`SlabRunner`): the pixel work runs as Dask tasks, on local threads
(default) or on a ``dask.distributed`` cluster (a ``tcp://`` scheduler address or a
``Client``). The percentile sample of an image is one task (:func:`intensity_range`);
then each plane is cut as :class:`SlabTask` s, one per group of consecutive used slices
(:func:`slab_groups`, at most :data:`TASK_BYTES` of source pixels): the task reads its
slab from the source file itself, converts it to uint8, tiles it and hashes every patch
(:func:`cut_slab`, returning a :class:`SlabResult`). At most :data:`WINDOW_PER_WORKER`
tasks per worker are in flight at once, and their results are consumed in task order by
the one writer in the calling process (shards, index rows and decisions are the same
bytes wherever and on how many workers the tasks run). Where the tasks run is not a
parameter of the data: it is recorded in the provenance of each source step only
(``execution``, :meth:`SlabRunner.describe`), in no fingerprint, recorded command, data
file or manifest row (a re-run elsewhere is ``notneeded``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shlex
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from bidspack.bids.tables import tsv_text, write_text
from bidspack.errors import BidspackError, PlanError, SourceError
from bidspack.io.pixelhash import pixel_hash_array
from bidspack.ops.derive.dataset import (
    DerivedDataset,
    DerivedStep,
    bidsignore_text,
    check_roots,
    derived_description,
)
from bidspack.ops.derive.source import ImageHandle, SourceDataset
from bidspack.ops.derive.yoda import adopt_source, record_steps, source_url
from bidspack.records import Record
from bidspack.txn import Transaction
from bidspack.txn.steps import file_xxh3, fingerprint, record_path, text_xxh3

OPERATION = "derive-patches"
PLANES = ("xy", "xz", "yz")
#: Axes ``(slice, row, column)`` of each plane, as indices into ``(z, y, x)``.
PLANE_AXES = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}
EDGES = ("keep-if-half", "pad", "drop")
INTENSITIES = ("percentile", "dtype-max", "none")
SCOPES = ("volume", "dataset")
#: Patches per shard file of a patch array.
SHARD_PATCHES = 256
#: Bytes of source pixels read at once by the percentile sample (at least one row band).
SLAB_BYTES = 64 << 20
#: Bytes of source pixels one slab task reads at most (but at least one plane of the cut).
TASK_BYTES = 16 << 20
#: A plane is split into at least this many slab tasks per worker (when it has enough
#: slices), so that small images keep every worker busy ...
TASKS_PER_WORKER = 4
#: ... but no task is split below this many bytes of source pixels (a task opens the
#: source file itself: a few milliseconds for an OME-TIFF of a few hundred pages).
MIN_TASK_BYTES = 4 << 20
#: Slab tasks in flight (submitted, running, or done and not yet written) per worker.
WINDOW_PER_WORKER = 2
#: Percentile sample: at most this many planes, about this many pixels per plane.
SAMPLE_PLANES = 16
SAMPLE_PIXELS = 65536
INDEX_PARQUET = "index.parquet"
INDEX_TSV = "index.tsv"
AXIS_NAMES = "zyx"

#: Columns of a part (``patches/<stem>/plane-<p>.parquet``): geometry and hashes.
PART_COLUMNS: tuple[tuple[str, str], ...] = (
    ("patch_id", "string"),
    ("array", "string"),
    ("row", "int64"),
    ("source", "string"),
    ("source_pixel_hash", "string"),
    ("plane", "string"),
    ("slice_index", "int64"),
    ("z0", "int64"),
    ("z1", "int64"),
    ("y0", "int64"),
    ("y1", "int64"),
    ("x0", "int64"),
    ("x1", "int64"),
    ("z0_um", "float64"),
    ("z1_um", "float64"),
    ("y0_um", "float64"),
    ("y1_um", "float64"),
    ("x0_um", "float64"),
    ("x1_um", "float64"),
    ("height", "int32"),
    ("width", "int32"),
    ("intensity", "string"),
    ("intensity_low", "float64"),
    ("intensity_high", "float64"),
    ("pixel_hash", "string"),
    ("dhash", "string"),
)
#: Columns the index adds: the duplicate decisions.
DECISION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("dedup_group", "string"),
    ("dedup_order", "int64"),
    ("exact_group", "string"),
    ("exemplar_id", "string"),
    ("hamming", "int32"),
    ("kept", "bool"),
    ("reason", "string"),
)
INDEX_COLUMNS = PART_COLUMNS + DECISION_COLUMNS


@dataclass(frozen=True)
class PatchParams:
    """Parameters of ``derive patches`` (all recorded in the derived dataset).

    Attributes:
        planes: subset of ``("xy", "xz", "yz")``.
        size: patch side in voxels.
        stride: tile step in voxels (default: *size*, no overlap).
        edge: ``keep-if-half``, ``pad`` or ``drop`` (see :func:`tile_spans`).
        intensity: ``percentile``, ``dtype-max`` or ``none`` (see :func:`to_uint8`).
        percentiles: low and high percentile of ``percentile``.
        slice_step: use every n-th slice.
        isotropy_tolerance: ``|x - z| / x`` up to which ``xz``/``yz`` are cut.
        dedup_scope: ``volume`` (duplicates within one source image) or ``dataset``.
        hamming: near-duplicate threshold: dHash Hamming distance ``<= hamming``.
        seed: seed of the greedy order (``numpy.random.default_rng(seed)``).
        tsv: also write ``index.tsv``.
    """

    planes: tuple[str, ...] = ("xy",)
    size: int = 224
    stride: int | None = None
    edge: str = "keep-if-half"
    intensity: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    slice_step: int = 1
    isotropy_tolerance: float = 0.2
    dedup_scope: str = "volume"
    hamming: int = 12
    seed: int = 0
    tsv: bool = True

    @property
    def step_size(self) -> int:
        """The stride in voxels."""
        return self.stride or self.size

    def check(self) -> None:
        """Raises:
        PlanError: an unknown plane, edge, intensity or scope, or a value out of range.
        """

        def bad(what: str) -> PlanError:
            return PlanError(None, f"derive patches: {what}")

        if not self.planes or any(p not in PLANES for p in self.planes):
            raise bad(f"planes {list(self.planes)}: each must be one of {', '.join(PLANES)}")
        if len(set(self.planes)) != len(self.planes):
            raise bad(f"planes {list(self.planes)} name a plane twice")
        if self.size < 2:
            raise bad(f"size {self.size}: at least 2 voxels")
        if self.stride is not None and self.stride < 1:
            raise bad(f"stride {self.stride}: at least 1 voxel")
        if self.edge not in EDGES:
            raise bad(f"edge {self.edge!r}: one of {', '.join(EDGES)}")
        if self.intensity not in INTENSITIES:
            raise bad(f"intensity {self.intensity!r}: one of {', '.join(INTENSITIES)}")
        lo, hi = self.percentiles
        if not (0 <= lo < hi <= 100):
            raise bad(f"percentiles {lo}, {hi}: need 0 <= low < high <= 100")
        if self.slice_step < 1:
            raise bad(f"slice step {self.slice_step}: at least 1")
        if not (math.isfinite(self.isotropy_tolerance) and self.isotropy_tolerance >= 0):
            raise bad(f"isotropy tolerance {self.isotropy_tolerance}: a number >= 0")
        if self.dedup_scope not in SCOPES:
            raise bad(f"dedup scope {self.dedup_scope!r}: one of {', '.join(SCOPES)}")
        if not (0 <= self.hamming <= 64):
            raise bad(f"hamming {self.hamming}: between 0 and 64")
        if self.seed < 0:
            raise bad(f"seed {self.seed}: at least 0")

    def extraction(self) -> dict[str, Any]:
        """The parameters that change patch pixels (fingerprint of a source step)."""
        return {
            "size": self.size,
            "stride": self.step_size,
            "edge": self.edge,
            "intensity": self.intensity,
            "percentiles": list(self.percentiles),
            "slice_step": self.slice_step,
            "isotropy_tolerance": self.isotropy_tolerance,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every parameter as JSON (recorded in ``dataset_description.json``)."""
        out = asdict(self)
        out["planes"] = list(self.planes)
        out["percentiles"] = list(self.percentiles)
        out["stride"] = self.step_size
        return out


def tile_spans(length: int, size: int, stride: int, edge: str) -> list[tuple[int, int]]:
    """Source ranges ``[start, stop)`` of the tiles along one axis of *length* voxels.

    Tiles start at ``0, stride, 2 * stride, ...``. Every tile that fits is kept. Once a
    tile reaches the end of the axis no further tile is made. The first tile that would
    cross the end, with ``valid = length - start`` voxels inside, is:

    - ``drop``: dropped;
    - ``pad``: kept as ``[start, length)``; the patch holds those voxels at its top/left
      and zeros after them;
    - ``keep-if-half``: kept if ``2 * valid >= size`` (at least half inside), then
      shifted back inside as ``[length - size, length)`` (a full tile overlapping the
      previous one); an axis shorter than the tile gives ``[0, length)``, padded.
      CEM's ``crop_patches.py`` keeps ``max(1, round(length / size))`` tiles and leaves
      the last one short (round half to even, so exactly half is dropped there, and an
      axis shorter than half a tile still gives one tile); this rule is the same for
      more than half, keeps exactly half, and never gives a short patch.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    while start < length:
        if spans and spans[-1][1] >= length:
            break
        if start + size <= length:
            spans.append((start, start + size))
        else:
            valid = length - start
            if edge == "pad":
                spans.append((start, length))
            elif edge == "keep-if-half" and 2 * valid >= size:
                shifted = (max(0, length - size), length)
                if not spans or spans[-1] != shifted:
                    spans.append(shifted)
            break
        start += stride
    return spans


def isotropy(voxel_um: tuple[float, float, float]) -> float:
    """CEM's anisotropy measure ``|x - z| / x`` of a ``(z, y, x)`` voxel size."""
    z, _, x = voxel_um
    return abs(x - z) / x


@dataclass(frozen=True)
class PlaneJob:
    """The patches of one plane of one image: slice indices and tile spans (rows,
    columns) in source voxels."""

    plane: str
    slices: tuple[int, ...]
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        """Number of patches."""
        return len(self.slices) * len(self.rows) * len(self.cols)


@dataclass
class SourcePlan:
    """What ``derive patches`` does with one source image."""

    image: ImageHandle
    prefix: str  # "patches/[<pipeline>/]<stem>"
    jobs: list[PlaneJob]
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def step(self) -> str:
        """Step name (``patches/[<pipeline>/]<stem>``)."""
        return self.prefix

    def array(self, plane: str) -> str:
        """Dataset-relative path of the patch array of *plane*."""
        return f"{self.prefix}/plane-{plane}.zarr"

    def part(self, plane: str) -> str:
        """Dataset-relative path of the index part of *plane*."""
        return f"{self.prefix}/plane-{plane}.parquet"

    def outputs(self) -> list[str]:
        """Every output of the step."""
        return [p for j in self.jobs for p in (self.array(j.plane), self.part(j.plane))]


def plan_image(image: ImageHandle, params: PatchParams) -> SourcePlan:
    """Plan the patches of one image from its metadata (no pixel is read).

    Raises:
        PlanError: ``intensity none`` on an image that is not uint8.
    """
    if params.intensity == "none" and image.dtype != np.uint8:
        raise PlanError(
            image.path,
            f"intensity 'none' needs uint8 pixels, the image has {image.dtype}",
            hint="use --intensity percentile or dtype-max",
        )
    pipeline = f"{image.pipeline}/" if image.pipeline else ""
    plan = SourcePlan(image, f"patches/{pipeline}{image.name.stem}", [])
    aniso = isotropy(image.voxel_um)
    for plane in params.planes:
        s_ax, r_ax, c_ax = PLANE_AXES[plane]
        if plane != "xy" and aniso > params.isotropy_tolerance:
            z, _, x = image.voxel_um
            plan.refused.append(
                (
                    plane,
                    f"voxel z {z:g} um, x {x:g} um: |x - z| / x = {aniso:.3g} > isotropy "
                    f"tolerance {params.isotropy_tolerance:g}; only xy patches are cut",
                )
            )
            continue
        shape = image.shape
        job = PlaneJob(
            plane,
            tuple(range(0, shape[s_ax], params.slice_step)),
            tuple(tile_spans(shape[r_ax], params.size, params.step_size, params.edge)),
            tuple(tile_spans(shape[c_ax], params.size, params.step_size, params.edge)),
        )
        plan.jobs.append(job)
    return plan


# -- intensity ---------------------------------------------------------------------------


def dtype_max(dtype: np.dtype) -> float:
    """The value CEM maps to 255: the integer type's maximum, 1.0 for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def intensity_range(image: ImageHandle, params: PatchParams) -> tuple[float, float]:
    """``(low, high)`` source values mapped to 0 and 255.

    - ``percentile``: the *params.percentiles* (default 0.5 and 99.5) of a sample of
      the volume, ``numpy.percentile`` with linear interpolation, in float64. Sample:
      the planes ``z = round(linspace(0, nz - 1, min(nz, 16)))``, and in each every
      *k*-th row and column from 0, ``k = ceil(sqrt(ny * nx / 65536))`` (about 65 536
      pixels per plane), read in row bands. If high <= low, high = low + 1.
    - ``dtype-max``: ``(0, dtype max)``; ``none``: ``(0, 255)``.
    """
    if params.intensity == "dtype-max":
        return 0.0, dtype_max(image.dtype)
    if params.intensity == "none":
        return 0.0, 255.0
    nz, ny, nx = image.shape
    zs = np.unique(np.round(np.linspace(0, nz - 1, min(nz, SAMPLE_PLANES))).astype(int))
    k = max(1, math.ceil(math.sqrt(ny * nx / SAMPLE_PIXELS)))
    band = max(k, (SLAB_BYTES // max(1, nx * image.dtype.itemsize)) // k * k)
    samples = []
    for z in zs:
        for y0 in range(0, ny, band):
            block = image.read(int(z), int(z) + 1, y0, min(ny, y0 + band), 0, nx)[0]
            samples.append(block[::k, ::k].ravel())
    values = np.concatenate(samples).astype(np.float64)
    lo, hi = (float(v) for v in np.percentile(values, list(params.percentiles)))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def to_uint8(values: np.ndarray, method: str, low: float, high: float) -> np.ndarray:
    """Convert source values to uint8.

    - ``percentile``: ``clip(floor((v - low) * 255 / (high - low) + 0.5), 0, 255)`` in
      float64;
    - ``dtype-max`` (CEM): ``uint8(float32(max(v, 0)) / float32(high) * float32(255))``,
      truncated, values above the type's maximum (floats above 1) clipped to 255;
    - ``none``: the uint8 values unchanged.
    """
    if method == "none":
        return values.astype(np.uint8, copy=False)
    if method == "dtype-max":
        v = np.maximum(values.astype(np.float32), np.float32(0))
        scaled = v / np.float32(high) * np.float32(255)
        return np.minimum(scaled, np.float32(255)).astype(np.uint8)
    scaled = np.floor((values.astype(np.float64) - low) * (255.0 / (high - low)) + 0.5)
    return np.clip(scaled, 0, 255).astype(np.uint8)


# -- extraction --------------------------------------------------------------------------


def _contiguous(job: PlaneJob, chunk: int) -> bool:
    """Whether the used slices of *job* are read as one range per task (every slice
    used, or slices chunked together along the slice axis) or one by one (a slice step
    over OME-TIFF pages or chunks of one slice: only the used slices are read)."""
    step = job.slices[1] - job.slices[0] if len(job.slices) > 1 else 1
    return step == 1 or chunk > 1


def slab_groups(
    job: PlaneJob,
    shape: tuple[int, int, int],
    chunk: int,
    itemsize: int,
    workers: int = 1,
) -> list[tuple[int, ...]]:
    """The used slices of *job* split into the groups of one slab task each, in order.

    *shape* is the image's ``(z, y, x)``, *chunk* its chunk (OME-Zarr) or tile
    (OME-TIFF, 1 along z) size along the plane's slice axis, *itemsize* the bytes of one
    source pixel. A group reads at most :data:`TASK_BYTES` of source pixels (but at
    least one plane ``(rows, columns)`` of the cut); there are at least
    :data:`TASKS_PER_WORKER` groups per worker where the slices, the chunks and
    :data:`MIN_TASK_BYTES` allow. With chunked slices (*chunk* > 1) whose chunk fits in a
    task, a group is whole chunks and ends on a chunk boundary, so each chunk is decoded
    by one task (a chunk larger than a task is read in parts of :data:`TASK_BYTES`).
    The grouping changes only how the work is split, never a patch, hash or row.
    """
    s_ax, r_ax, c_ax = PLANE_AXES[job.plane]
    slices = list(job.slices)
    contiguous = _contiguous(job, chunk)
    plane_bytes = shape[r_ax] * shape[c_ax] * itemsize
    most = max(1, TASK_BYTES // max(1, plane_bytes))
    span = shape[s_ax] if contiguous else len(slices)
    split = math.ceil(span / (TASKS_PER_WORKER * max(1, workers)))
    band = min(most, max(1, split, MIN_TASK_BYTES // max(1, plane_bytes)))
    whole = 1 < chunk <= most  # whole chunks per task (each chunk decoded once)
    if whole:
        band = max(chunk, band // chunk * chunk)
    elif chunk > 1:
        band = most  # a chunk holds more than a task: parts of a chunk per task
    groups: list[tuple[int, ...]] = []
    i = 0
    while i < len(slices):
        if contiguous:
            end = slices[i] + band
            if whole:
                end = max(slices[i] + 1, end // chunk * chunk)
            group = tuple(s for s in slices[i : i + band] if s < end)
        else:
            group = tuple(slices[i : i + band])
        groups.append(group)
        i += len(group)
    return groups


def detached(image: ImageHandle) -> ImageHandle:
    """A closed copy of *image* to send to a task: metadata only (absolute path of the
    file, format, shape, dtype, ...), no open file; the task opens, reads and closes it
    (:meth:`ImageHandle.read`, :meth:`ImageHandle.close`). Workers of a cluster must see
    the source at the same path."""
    return dataclasses.replace(image, dataset=image.dataset.absolute(), _array=None, _tiff=None)


@dataclass(frozen=True)
class SlabTask:
    """One Dask task: cut, convert and hash the patches of consecutive used slices of
    one plane of one image (:func:`cut_slab`). Plain data (picklable).

    Attributes:
        image: the source image, :func:`detached` (no open handle).
        plane: ``xy``, ``xz`` or ``yz`` (:data:`PLANE_AXES`).
        slices: the used slice indices of this task, increasing (along the plane's slice
            axis: z for ``xy``, y for ``xz``, x for ``yz``).
        contiguous: read ``[slices[0], slices[-1] + 1)`` at once (else each slice alone).
        rows, cols: tile spans ``[start, stop)`` along the plane's row and column axes.
        size: patch side.
        intensity, low, high: the uint8 conversion (:func:`to_uint8`).
    """

    image: ImageHandle
    plane: str
    slices: tuple[int, ...]
    contiguous: bool
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]
    size: int
    intensity: str
    low: float
    high: float

    @property
    def count(self) -> int:
        """Number of patches."""
        return len(self.slices) * len(self.rows) * len(self.cols)


@dataclass(frozen=True)
class SlabResult:
    """What a :class:`SlabTask` returns.

    Attributes:
        patches: ``(n, size, size)`` uint8, axes ``(patch, y, x)`` of the patch (the
            plane's row and column axes), in the order slice, tile row, tile column;
            the source voxels at the top left, zeros after them (``pad`` edges).
        pixel_hashes: the bidspack pixel hash of each patch (axes ``YX``), ``(n,)``.
        dhashes: ``(n,)`` uint64 dHash of each patch (:func:`dedup.dhash64`).
        error: ``(path, reason, hint)`` of a :class:`SourceError` raised in the task
            (bidspack's errors are not picklable; :meth:`unwrap` raises it again).
    """

    patches: np.ndarray
    pixel_hashes: tuple[str, ...]
    dhashes: np.ndarray
    error: tuple[str | None, str, str | None] | None = None

    def unwrap(self) -> SlabResult:
        """*self*, or raise the task's error.

        Raises:
            SourceError: the task could not read or decode its slab.
        """
        if self.error is not None:
            path, reason, hint = self.error
            raise SourceError(path, reason, hint=hint)
        return self


def cut_slab(task: SlabTask) -> SlabResult:
    """Run one :class:`SlabTask` (module level: a ``dask.distributed`` worker imports it).

    Reads the slab (the source region of the task's slices, transposed to ``(slice,
    row, column)`` of the plane), converts each slice to uint8 (:func:`to_uint8`), cuts
    its tiles (slice by slice, then tile rows, then tile columns) and hashes every patch
    (:func:`bidspack.io.pixelhash.pixel_hash_array`, axes ``YX``;
    :func:`bidspack.ops.derive.dedup.dhash64`). Memory: the slab (at most
    :data:`TASK_BYTES`, or one plane), one slice in float64, and the ``(n, size, size)``
    uint8 patches.
    """
    from bidspack.ops.derive.dedup import dhash64

    image = task.image
    s_ax, r_ax, c_ax = PLANE_AXES[task.plane]
    patches = np.zeros((task.count, task.size, task.size), np.uint8)
    if task.contiguous:
        reads = [(task.slices[0], task.slices[-1] + 1, task.slices)]
    else:
        reads = [(s, s + 1, (s,)) for s in task.slices]
    k = 0
    try:
        for first, last, used in reads:
            bounds = [(0, image.shape[0]), (0, image.shape[1]), (0, image.shape[2])]
            bounds[s_ax] = (first, last)
            (z0, z1), (y0, y1), (x0, x1) = bounds
            slab = np.transpose(image.read(z0, z1, y0, y1, x0, x1), (s_ax, r_ax, c_ax))
            for s in used:
                plane8 = to_uint8(slab[s - first], task.intensity, task.low, task.high)
                for r0, r1 in task.rows:
                    for c0, c1 in task.cols:
                        patches[k, : r1 - r0, : c1 - c0] = plane8[r0:r1, c0:c1]
                        k += 1
            del slab
    except BidspackError as exc:
        empty = np.zeros((0, task.size, task.size), np.uint8)
        return SlabResult(empty, (), np.zeros(0, np.uint64), (exc.path, exc.reason, exc.hint))
    finally:
        image.close()
    hashes = tuple(pixel_hash_array(p, "YX") for p in patches)
    dh = dhash64(patches) if len(patches) else np.zeros(0, np.uint64)
    return SlabResult(patches, hashes, np.asarray(dh, np.uint64))


def sample_range(
    image: ImageHandle, params: PatchParams
) -> tuple[tuple[float, float] | None, tuple[str | None, str, str | None] | None]:
    """The task that reads the percentile sample: ``(intensity_range(image, params),
    None)`` of a :func:`detached` image (closed after), or ``(None, (path, reason,
    hint))`` of the :class:`SourceError` it raised (see :attr:`SlabResult.error`)."""
    try:
        return intensity_range(image, params), None
    except BidspackError as exc:
        return None, (exc.path, exc.reason, exc.hint)
    finally:
        image.close()


#: Names of Dask's local schedulers that *scheduler* may give (and what they mean).
LOCAL_SCHEDULERS = {
    "threads": "threads",
    "threading": "threads",
    "synchronous": "synchronous",
    "sync": "synchronous",
    "single-threaded": "synchronous",
}


def check_execution(workers: int | None, scheduler: object) -> None:
    """Check *workers* and *scheduler* without connecting (see :class:`SlabRunner`).

    Raises:
        PlanError: *workers* below 1; *scheduler* none of ``None``, a local scheduler
            name (:data:`LOCAL_SCHEDULERS`), an address with ``://``, or a ``Client``.
    """
    if workers is not None and (
        not isinstance(workers, int) or isinstance(workers, bool) or workers < 1
    ):
        raise PlanError(None, f"derive patches: workers {workers}: at least 1")
    if scheduler is None or (isinstance(scheduler, str) and "://" in scheduler):
        return
    if isinstance(scheduler, str):
        if scheduler not in LOCAL_SCHEDULERS:
            raise PlanError(
                None,
                f"derive patches: scheduler {scheduler!r}: a Dask scheduler address "
                f"(tcp://host:8786) or one of {', '.join(LOCAL_SCHEDULERS)}",
            )
        return
    if not hasattr(scheduler, "submit"):
        raise PlanError(
            None, f"derive patches: scheduler {scheduler!r}: an address, a name or a Client"
        )


_END = object()


class SlabRunner:
    """Runs tasks on Dask and hands their results back one by one, in task order, with
    at most :attr:`window` results alive at once.

    *scheduler* ``None`` (default): Dask's local threaded scheduler on *workers* threads
    (default: the CPU count); a name of :data:`LOCAL_SCHEDULERS`: that local scheduler;
    a string with ``://`` (``tcp://host:8786``): a ``distributed.Client`` connected to
    that scheduler here (closed by :meth:`close`); any other object: a
    ``distributed.Client`` (left open). With a client, *workers* defaults to the
    cluster's worker threads; it sizes the window and the task split, not the cluster.

    Window: ``WINDOW_PER_WORKER * workers`` tasks at most are in flight (submitted,
    running, finished and waiting, or being consumed). On a client, a new task is
    submitted each time the consumer takes the oldest result. Locally, tasks run in
    batches of half the window (one ``dask.compute`` each, on a thread pool owned by the
    runner) while the consumer takes the previous batch's results. Tasks are drawn from
    the input iterable only as the window allows.

    Raises:
        PlanError: bad *workers* or *scheduler* (:func:`check_execution`).
        ToolError: no scheduler answers at the address within :attr:`connect_timeout`
            seconds.
    """

    #: Seconds to wait for a ``dask.distributed`` scheduler given by address.
    connect_timeout: float = 10

    def __init__(self, scheduler: object = None, workers: int | None = None):
        check_execution(workers, scheduler)
        self.client: Any = None
        self.scheduler = "threads"  # the local scheduler's name (no client)
        self._own_client = False
        self._driver: ThreadPoolExecutor | None = None
        self._pool: ThreadPoolExecutor | None = None
        if isinstance(scheduler, str) and "://" in scheduler:
            from bidspack.io.omezarr.runner import connect

            self.client = connect(scheduler, self.connect_timeout)
            self._own_client = True
        elif isinstance(scheduler, str):
            self.scheduler = LOCAL_SCHEDULERS[scheduler]
        elif scheduler is not None:
            self.client = scheduler
        if workers is None:
            if self.client is not None:
                workers = sum(self.client.nthreads().values())
            workers = workers or os.cpu_count() or 1
        self.workers: int = workers
        self.window: int = WINDOW_PER_WORKER * workers

    def describe(self) -> dict[str, Any]:
        """Where the tasks run (recorded as ``execution`` in the provenance of each
        source step): ``mode`` (``dask-distributed``, ``dask-threads``, or
        ``dask-<name>`` of another local scheduler), ``workers``, ``scheduler`` (the
        address, ``None`` locally), ``window``."""
        if self.client is None:
            mode, address = f"dask-{self.scheduler}", None
        else:
            mode = "dask-distributed"
            address = str(getattr(getattr(self.client, "scheduler", None), "address", None))
        return {"mode": mode, "workers": self.workers, "scheduler": address, "window": self.window}

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` as one task (on the cluster with a client, else here)."""
        if self.client is None:
            return fn(*args)
        future = self.client.submit(fn, *args, pure=False)
        try:
            return future.result()
        finally:
            future.release()

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """``fn(task)`` for each of *tasks*, yielded in task order (see the window)."""
        if self.client is not None:
            yield from self._imap_client(fn, iter(tasks))
        else:
            yield from self._imap_local(fn, iter(tasks))

    def _imap_client(self, fn: Callable[[Any], Any], tasks: Iterator[Any]) -> Iterator[Any]:
        pending: deque[Any] = deque()
        try:
            while True:
                while len(pending) < self.window:
                    task = next(tasks, _END)
                    if task is _END:
                        break
                    pending.append(self.client.submit(fn, task, pure=False))
                if not pending:
                    return
                future = pending.popleft()
                result = future.result()
                future.release()
                del future
                yield result
                del result
        finally:
            if pending:
                self.client.cancel(list(pending))

    def _compute(self, fn: Callable[[Any], Any], batch: list[Any]) -> deque[Any]:
        import dask

        delayed = [dask.delayed(fn, pure=False, traverse=False)(task) for task in batch]
        kwargs: dict[str, Any] = {"scheduler": self.scheduler, "num_workers": self.workers}
        if self.scheduler == "threads":
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, "bidspack-slab")
            kwargs["pool"] = self._pool
        return deque(dask.compute(*delayed, **kwargs))

    def _imap_local(self, fn: Callable[[Any], Any], tasks: Iterator[Any]) -> Iterator[Any]:
        size = max(1, self.window // 2)
        if self._driver is None:
            self._driver = ThreadPoolExecutor(1, "bidspack-slab-driver")
        first = list(islice(tasks, size))
        if not first:
            return
        running: Future[deque[Any]] | None = self._driver.submit(self._compute, fn, first)
        try:
            while running is not None:
                done = running.result()
                running = None
                batch = list(islice(tasks, size))
                if batch:
                    running = self._driver.submit(self._compute, fn, batch)
                while done:
                    yield done.popleft()
        finally:
            if running is not None:  # the consumer stopped early: let the batch finish
                with contextlib.suppress(Exception):
                    running.result()

    def close(self) -> None:
        """Shut the local threads down; close the client this runner connected."""
        for pool in (self._driver, self._pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._driver = self._pool = None
        if self._own_client and self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> SlabRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _blas_single_thread() -> Iterator[None]:
    """One BLAS thread while slab tasks run in this process (:func:`dedup.dhash64`
    slows down 5-40x when a BLAS pool spins next to busy worker threads)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(1, "blas"):
        yield


def _write_parquet(path: Path, columns: Sequence[tuple[str, str]], data: dict[str, Any]) -> None:
    """A Parquet file with exactly *columns* (pyarrow, zstd; no pandas metadata, no
    timestamp: the same data gives the same bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32()}
    types.update({"float64": pa.float64(), "bool": pa.bool_()})
    schema = pa.schema([(name, types[kind]) for name, kind in columns])
    table = pa.table({name: data[name] for name, _ in columns}, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=1 << 20)


def _create_array(path: Path, n: int, size: int, attributes: dict[str, Any]) -> Any:
    import zarr
    from zarr.codecs import ZstdCodec

    return zarr.create_array(
        store=zarr.storage.LocalStore(str(path)),
        shape=(n, size, size),
        chunks=(1, size, size),
        shards=(max(1, min(SHARD_PATCHES, n)), size, size),
        dtype="uint8",
        fill_value=0,
        compressors=ZstdCodec(level=3),
        dimension_names=("patch", "y", "x"),
        attributes=attributes,
        zarr_format=3,
    )


class _ShardWriter:
    """Takes blocks of patches in array order into a buffer of one shard and writes
    each full shard once (whole shards: each shard file is encoded and written one
    time)."""

    def __init__(self, array: Any, count: int, size: int):
        self.array = array
        self.buf = np.zeros((min(SHARD_PATCHES, max(1, count)), size, size), np.uint8)
        self.filled = 0
        self.written = 0

    @property
    def rows(self) -> int:
        """Patches taken so far (the array row of the next one)."""
        return self.written + self.filled

    def add(self, block: np.ndarray) -> None:
        """Take the ``(n, size, size)`` uint8 *block* as the next *n* rows."""
        i = 0
        while i < len(block):
            take = min(len(self.buf) - self.filled, len(block) - i)
            self.buf[self.filled : self.filled + take] = block[i : i + take]
            self.filled += take
            i += take
            if self.filled == len(self.buf):
                self.flush()

    def flush(self) -> None:
        """Write the buffered patches."""
        if not self.filled:
            return
        self.array[self.written : self.written + self.filled] = self.buf[: self.filled]
        self.written += self.filled
        self.filled = 0


def _slab_tasks(
    image: ImageHandle, job: PlaneJob, params: PatchParams, low: float, high: float, workers: int
) -> tuple[list[tuple[int, ...]], Iterator[SlabTask]]:
    """The slice groups of *job* (:func:`slab_groups`) and, lazily, their tasks."""
    if job.count == 0:
        return [], iter(())
    s_ax = PLANE_AXES[job.plane][0]
    chunk = image.chunks[s_ax]
    groups = slab_groups(job, image.shape, chunk, image.dtype.itemsize, workers)
    contiguous = _contiguous(job, chunk)

    def tasks() -> Iterator[SlabTask]:
        for group in groups:
            yield SlabTask(
                detached(image),
                job.plane,
                group,
                contiguous,
                job.rows,
                job.cols,
                params.size,
                params.intensity,
                low,
                high,
            )

    return groups, tasks()


def extract(
    txn: Transaction,
    plan: SourcePlan,
    params: PatchParams,
    pixel_hash: str,
    progress: Callable[[int], None] | None = None,
    runner: SlabRunner | None = None,
) -> Iterator[Record]:
    """Stage the patch arrays and index parts of one source image in *txn*.

    The percentile sample and the slab tasks run on *runner* (default: a
    :class:`SlabRunner` on local threads, closed after); the results are written here,
    in task order. *progress*, if given, is called with the number of patches cut after
    each slab.

    Raises:
        SourceError: the image cannot be decoded.
    """
    own = runner is None
    run = SlabRunner() if runner is None else runner
    try:
        with _blas_single_thread():
            yield from _extract(txn, plan, params, pixel_hash, progress, run)
    finally:
        if own:
            run.close()


def _extract(
    txn: Transaction,
    plan: SourcePlan,
    params: PatchParams,
    pixel_hash: str,
    progress: Callable[[int], None] | None,
    runner: SlabRunner,
) -> Iterator[Record]:
    image = plan.image
    got, error = runner.call(sample_range, detached(image), params)
    if error is not None:
        path, reason, hint = error
        raise SourceError(path, reason, hint=hint)
    assert got is not None  # no error: a range
    low, high = got
    origin = image.origin_um or (0.0, 0.0, 0.0)
    size = params.size
    for job in plan.jobs:
        s_ax, r_ax, c_ax = PLANE_AXES[job.plane]
        arr_rel = plan.array(job.plane)
        attrs = {
            "bidspack": {
                "operation": OPERATION,
                "source": image.rel,
                "source_pixel_hash": pixel_hash,
                "plane": job.plane,
                "axes": ["patch", "y", "x"],
                "index": INDEX_PARQUET,
                "part": plan.part(job.plane).rsplit("/", 1)[-1],
            }
        }
        writer = _ShardWriter(
            _create_array(txn.stage_path(arr_rel), job.count, size, attrs), job.count, size
        )
        cols: dict[str, list[Any]] = {name: [] for name, _ in PART_COLUMNS}
        stem = plan.prefix.removeprefix("patches/")
        groups, tasks = _slab_tasks(image, job, params, low, high, runner.workers)
        for group, result in zip(groups, runner.imap(cut_slab, tasks), strict=True):
            result = result.unwrap()
            for s in group:
                for r0, r1 in job.rows:
                    for c0, c1 in job.cols:
                        bounds = [(0, 0)] * 3
                        bounds[s_ax], bounds[r_ax], bounds[c_ax] = (s, s + 1), (r0, r1), (c0, c1)
                        cols["patch_id"].append(
                            f"{stem}_plane-{job.plane}"
                            f"_z{bounds[0][0]}_y{bounds[1][0]}_x{bounds[2][0]}"
                        )
                        cols["row"].append(len(cols["row"]))
                        cols["slice_index"].append(s)
                        for a, name in enumerate(AXIS_NAMES):
                            lo_v, hi_v = bounds[a]
                            cols[f"{name}0"].append(lo_v)
                            cols[f"{name}1"].append(hi_v)
                            vox = image.voxel_um[a]
                            cols[f"{name}0_um"].append(origin[a] + (lo_v - 0.5) * vox)
                            cols[f"{name}1_um"].append(origin[a] + (hi_v - 0.5) * vox)
                        cols["height"].append(r1 - r0)
                        cols["width"].append(c1 - c0)
            cols["pixel_hash"].extend(result.pixel_hashes)
            cols["dhash"].extend(f"{int(h):016x}" for h in result.dhashes)
            writer.add(result.patches)
            if len(cols["row"]) != writer.rows or len(result.pixel_hashes) != len(result.patches):
                raise AssertionError(  # pragma: no cover - the task and the plan agree
                    f"{arr_rel}: slices {group[0]}-{group[-1]}: a slab task returned "
                    f"{len(result.patches)} patches"
                )
            del result
            if progress is not None:
                progress(len(group) * len(job.rows) * len(job.cols))
        writer.flush()
        n = writer.rows
        if n != job.count:  # pragma: no cover - the plan and the loop agree
            raise AssertionError(f"{arr_rel}: {n} patches written, {job.count} planned")
        for name, value in (
            ("array", arr_rel),
            ("source", image.rel),
            ("source_pixel_hash", pixel_hash),
            ("plane", job.plane),
            ("intensity", params.intensity),
            ("intensity_low", low),
            ("intensity_high", high),
        ):
            cols[name] = [value] * n
        _write_parquet(txn.stage_path(plan.part(job.plane)), PART_COLUMNS, cols)
        yield Record(
            "patches",
            arr_rel,
            "ok",
            f"{n} patches {size}x{size} ({job.plane}, {len(job.slices)} slices) from {image.rel}",
            {
                "source": image.rel,
                "plane": job.plane,
                "patches": n,
                "slices": len(job.slices),
                "intensity_range": [low, high],
                "step": plan.step,
                "execution": runner.describe(),
            },
        )


# -- duplicate decisions -----------------------------------------------------------------


def decide(
    ids: Sequence[str],
    pixel_hashes: Sequence[str],
    dhashes: np.ndarray,
    *,
    hamming: int,
    seed: int,
) -> dict[str, Any]:
    """Duplicate decisions for one dedup group (one volume, or the whole dataset).

    The patches are visited in the seeded order ``seeded_order(n, seed)``
    (``numpy.random.default_rng(seed).permutation(n)``). Exact duplicates (equal
    pixel hash) belong to the group of the first of them in that order. The first
    members of the exact groups are then selected greedily in the same order
    (:func:`bidspack.ops.derive.dedup.greedy_dedup`, dHash Hamming distance
    ``<= hamming``): a patch is kept when it is not within *hamming* of an exemplar
    kept before it, else it is a near duplicate of the first such exemplar (in kept
    order). Returns columns ``dedup_order`` (position in the order),
    ``exact_group``, ``exemplar_id``, ``hamming`` (distance of the patch's dHash to its
    exemplar's), ``kept`` and ``reason`` (``exemplar``, ``exact duplicate of <id>``,
    ``near duplicate of <id> (hamming <d>)``).
    """
    from bidspack.ops.derive.dedup import exact_duplicates, greedy_dedup, seeded_order

    n = len(ids)
    out: dict[str, list[Any]] = {
        k: [] for k in ("dedup_order", "exact_group", "exemplar_id", "hamming", "kept", "reason")
    }
    if n == 0:
        return out
    order = np.asarray(seeded_order(n, seed), dtype=np.int64)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    exact = np.asarray(exact_duplicates(list(pixel_hashes), order=order), np.int64)
    reps = order[exact[order] == order]  # first members of exact groups, in order
    res = greedy_dedup(dhashes[reps], threshold=hamming)
    near = np.arange(n, dtype=np.int64)
    near[reps] = reps[np.asarray(res.exemplar, np.int64)]
    dh = np.asarray(dhashes, np.uint64)
    for i in range(n):
        rep = int(exact[i])
        ex = int(near[rep])
        dist = int(bin(int(dh[i]) ^ int(dh[ex])).count("1"))
        out["dedup_order"].append(int(rank[i]))
        out["exact_group"].append(ids[rep])
        out["exemplar_id"].append(ids[ex])
        out["hamming"].append(dist)
        out["kept"].append(i == ex)
        if rep != i:
            out["reason"].append(f"exact duplicate of {ids[rep]}")
        elif ex != i:
            out["reason"].append(f"near duplicate of {ids[ex]} (hamming {dist})")
        else:
            out["reason"].append("exemplar")
    return out


def _index_stage(
    txn: Transaction,
    parts: list[str],
    out: Path,
    params: PatchParams,
    texts: dict[str, str],
) -> Iterator[Record]:
    """Stage ``index.parquet`` (+ ``index.tsv``) and the dataset-level text files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(out / p) for p in parts]
    names = [n for n, _ in PART_COLUMNS]
    cols = pa.concat_tables(tables).select(names).to_pydict() if tables else {n: [] for n in names}
    n = len(cols["patch_id"])
    dh = np.array([int(h, 16) for h in cols["dhash"]], dtype=np.uint64)
    groups: dict[str, list[int]] = {}
    for i in range(n):
        key = cols["source"][i] if params.dedup_scope == "volume" else "dataset"
        groups.setdefault(key, []).append(i)
    decided: dict[str, list[Any]] = {k: [None] * n for k, _ in DECISION_COLUMNS}
    for key, members in groups.items():
        got = decide(
            [cols["patch_id"][i] for i in members],
            [cols["pixel_hash"][i] for i in members],
            dh[members],
            hamming=params.hamming,
            seed=params.seed,
        )
        for j, i in enumerate(members):
            decided["dedup_group"][i] = key
            for k in got:
                decided[k][i] = got[k][j]
    data = {**cols, **decided}
    _write_parquet(txn.stage_path(INDEX_PARQUET), INDEX_COLUMNS, data)
    kept = sum(bool(k) for k in decided["kept"])
    if params.tsv:
        names_all = [c for c, _ in INDEX_COLUMNS]
        rows = [{c: _tsv_cell(data[c][i]) for c in names_all} for i in range(n)]
        write_text(txn.stage_path(INDEX_TSV), tsv_text(names_all, rows))
    for rel, text in texts.items():
        write_text(txn.stage_path(rel), text)
    exact = sum(str(r).startswith("exact") for r in decided["reason"])
    yield Record(
        "index",
        INDEX_PARQUET,
        "ok",
        f"{n} patches: {kept} kept, {exact} exact and {n - kept - exact} near duplicates "
        f"(scope {params.dedup_scope}, hamming <= {params.hamming}, seed {params.seed})",
        {"patches": n, "kept": kept, "exact_duplicates": exact, "step": "index"},
    )


def _tsv_cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return value


# -- the verb --------------------------------------------------------------------------------


def readme_text(
    source: SourceDataset, params: PatchParams, plans: list[SourcePlan], out: Path | None = None
) -> str:
    """``README.md`` of a patch dataset: what it is, where it comes from, its layout."""
    version = source.version or "not under version control"
    lines = [
        "# Training patches (bidspack derive patches)",
        "",
        "A BIDS derivative dataset of 2D patches cut from the images of a bidspack",
        "dataset, with exact and near-duplicate decisions recorded for every patch.",
        "",
        f"- Source dataset: `{source_url(source.path, out)}`, version {version}",
        f"- Source manifest (code/bidspack/manifest.tsv) sha256: {source.manifest_sha256}",
        f"- Source images: {len(plans)}",
        f"- Parameters: `{json.dumps(params.to_dict(), sort_keys=True)}`",
        "",
        "## Layout",
        "",
        "- `patches/<image>/plane-<xy|xz|yz>.zarr`: Zarr v3 array (n, size, size) uint8,",
        "  one patch per chunk, sharded; `plane-<p>.parquet` beside it: its part of the index.",
        "- `index.parquet` (and `index.tsv`): one row per patch, removed duplicates",
        "  included (`kept` false, `reason`): source image, plane, slice, voxel bounds",
        "  (half-open, z0:z1, y0:y1, x0:x1), bounds in micrometres, pixel hash, dHash.",
        "- `code/bidspack/`: manifest and provenance records (`bidspack verify`,",
        "  `bidspack log`).",
        "",
        "Patch `row` of `array` holds source voxels `[z0:z1, y0:y1, x0:x1]` converted to",
        "uint8 with `intensity` (`intensity_low`, `intensity_high`), at its top left; the",
        "rest of the patch (edge rule `pad`) is 0. See bidspack's docs/derived-datasets.md.",
        "",
    ]
    return "\n".join(lines)


def command_line(
    source: Path, params: PatchParams, selection: dict[str, Any], out: Path | None = None
) -> str:
    """The command as recorded (``GeneratedBy.Description``): the source as a
    ``file://`` URL (or ``sourcedata/<name>``, *out*'s installed input), the output as
    ``.``, every parameter spelled out."""
    args = ["bidspack", "derive", "patches", source_url(source, out), "."]
    for key, value in sorted(selection.items()):
        if value is not None:
            args += [f"--{key}", str(value)]
    args += ["--planes", ",".join(params.planes), "--size", str(params.size)]
    args += ["--stride", str(params.step_size), "--edge", params.edge]
    args += ["--intensity", params.intensity, "--slice-step", str(params.slice_step)]
    args += ["--isotropy-tolerance", f"{params.isotropy_tolerance:g}"]
    args += ["--dedup-scope", params.dedup_scope, "--hamming", str(params.hamming)]
    args += ["--seed", str(params.seed)]
    if not params.tsv:
        args.append("--no-tsv")
    return shlex.join(args)


def plan_patches(
    source: SourceDataset,
    params: PatchParams,
    *,
    suffix: str | None = None,
    pipeline: str | None = None,
    fmt: str = "auto",
    entities: dict[str, str | None] | None = None,
) -> list[SourcePlan]:
    """Select the source images and plan their patches (metadata only).

    Raises:
        PlanError: bad parameters, no matching image, two images with one patch prefix,
            ``intensity none`` on non-uint8 images.
        SourceError: an image cannot be opened.
    """
    params.check()
    images = source.select_images(suffix=suffix, pipeline=pipeline, fmt=fmt, **(entities or {}))
    if not images:
        wanted = {"suffix": suffix, "pipeline": pipeline, **(entities or {})}
        shown = ", ".join(f"{k} {v}" for k, v in wanted.items() if v is not None) or "any"
        raise PlanError(
            source.path,
            f"no image matches the selection ({shown})",
            hint="list the images with 'bidspack derive patches SOURCE OUT --dry-run' "
            "and no selection",
        )
    plans = [plan_image(img, params) for img in images]
    seen: dict[str, str] = {}
    for p in plans:
        if p.prefix in seen:
            raise PlanError(
                source.path,
                f"{seen[p.prefix]} and {p.image.rel} would both be written to {p.prefix}/",
                hint="select one of them (--format, --pipeline or entities)",
            )
        seen[p.prefix] = p.image.rel
    return plans


def _plan_records(plans: list[SourcePlan], params: PatchParams) -> Iterator[Record]:
    for p in plans:
        img = p.image
        for plane, why in p.refused:
            yield Record(
                "plane",
                img.rel,
                "impossible",
                f"plane {plane} refused: {why}",
                {"plane": plane, "step": p.step, "source": img.rel},
            )
        for job in p.jobs:
            yield Record(
                "patches",
                p.array(job.plane),
                "planned",
                f"{job.count} patches {params.size}x{params.size} from {img.rel} "
                f"{img.shape} {img.dtype} ({job.plane}: {len(job.slices)} slices x "
                f"{len(job.rows)} x {len(job.cols)} tiles)",
                {
                    "source": img.rel,
                    "plane": job.plane,
                    "patches": job.count,
                    "slices": len(job.slices),
                    "tiles": [len(job.rows), len(job.cols)],
                    "shape_zyx": list(img.shape),
                    "voxel_size_zyx_um": list(img.voxel_um),
                    "step": p.step,
                },
            )


def derive_patches(
    source_path: Path,
    out: Path,
    params: PatchParams,
    *,
    suffix: str | None = None,
    pipeline: str | None = None,
    fmt: str = "auto",
    entities: dict[str, str | None] | None = None,
    dry_run: bool = False,
    validate: bool = True,
    recover_first: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    datalad: bool = False,
    workers: int | None = None,
    scheduler: object = None,
) -> Iterator[Record]:
    """Plan and (unless *dry_run*) write a patch dataset at *out* from the images of
    the bidspack dataset *source_path* (see the module docstring).

    *workers* and *scheduler* say where the pixel work runs (:class:`SlabRunner`):
    *scheduler* ``None``, local Dask threads (*workers*, default the CPU count); a
    ``tcp://host:port`` address of a ``dask.distributed`` scheduler, connected before
    anything is written (its workers must see the source at the same absolute path);
    or a ``distributed.Client`` (left open). They change no data byte: they are in no
    fingerprint, recorded command or manifest row, only in the provenance of the source
    steps and in the ``patches`` records (``execution``). A dry run checks them but
    does not connect.

    With *datalad*, *out* is a DataLad dataset in the YODA layout: the source (a clean
    DataLad/git dataset) is installed at ``sourcedata/<name>``, pinned at its commit,
    the images are read from there and every step is saved with a run record
    (:mod:`bidspack.ops.derive.yoda`).

    *progress*, if given, is called as ``progress(source image, patches done, patches
    planned)`` while patches are cut (the CLI draws its bar with it); a source step that
    is ``notneeded`` counts as done at once.

    Yields ``plane`` ``impossible`` records for refused planes, ``patches`` records
    (``planned`` in a dry run), ``step`` records (``ok`` / ``notneeded``), the
    ``index`` record, then the validation records (``bids-validator-deno`` on *out*
    alone, and bidspack's checks).

    Raises:
        PlanError: bad parameters or selection (nothing is written).
        OutputError: *out* is not new, empty or a bidspack dataset; it is inside the
            source (or the source inside it); another process holds its lock.
        SourceError: a source image cannot be read (the step in progress is not
            committed).
        ToolError: the Dask scheduler at the address *scheduler* does not answer
            (within :attr:`SlabRunner.connect_timeout` seconds; nothing is written).
    """
    source_path, out = Path(source_path), Path(out)
    check_execution(workers, scheduler)
    source = SourceDataset(source_path)
    check_roots(source_path, out)
    plans = plan_patches(
        source, params, suffix=suffix, pipeline=pipeline, fmt=fmt, entities=entities
    )
    selection: dict[str, Any] = {
        "suffix": suffix,
        "pipeline": pipeline,
        "format": None if fmt == "auto" else fmt,
    }
    selection.update(entities or {})
    derived = DerivedDataset(out)
    if dry_run:
        yield from _plan_records(plans, params)
        return
    runner = SlabRunner(scheduler, workers)  # connects: fails before anything is written
    try:
        yield from _write(
            source_path,
            out,
            source,
            plans,
            params,
            selection,
            derived,
            runner,
            suffix=suffix,
            pipeline=pipeline,
            fmt=fmt,
            entities=entities,
            recover_first=recover_first,
            progress=progress,
            datalad=datalad,
        )
    finally:
        runner.close()
    if validate:
        from bidspack.ops.validate import validate_dataset

        yield from validate_dataset(out, recursive=False)


def _write(
    source_path: Path,
    out: Path,
    source: SourceDataset,
    plans: list[SourcePlan],
    params: PatchParams,
    selection: dict[str, Any],
    derived: DerivedDataset,
    runner: SlabRunner,
    *,
    suffix: str | None,
    pipeline: str | None,
    fmt: str,
    entities: dict[str, str | None] | None,
    recover_first: bool,
    progress: Callable[[str, int, int], None] | None,
    datalad: bool,
) -> Iterator[Record]:
    """The writing part of :func:`derive_patches` (the slab tasks run on *runner*)."""
    if datalad:
        adopted = adopt_source(source_path, out, [p.image.rel for p in plans])
        yield from adopted.records
        for p in plans:
            p.image.close()
        source_path = adopted.path
        source = SourceDataset(source_path)
        plans = plan_patches(
            source, params, suffix=suffix, pipeline=pipeline, fmt=fmt, entities=entities
        )
    for p in plans:
        for plane, why in p.refused:
            yield Record(
                "plane",
                p.image.rel,
                "impossible",
                f"plane {plane} refused: {why}",
                {"plane": plane, "step": p.step, "source": p.image.rel},
            )
    command = command_line(source_path, params, selection, out)
    description = derived_description(
        name="Training patches from " + source_path.absolute().name,
        operation=OPERATION,
        command=command,
        parameters={**params.to_dict(), "selection": selection},
        source=source,
        out=out,
    )
    if datalad:
        record_steps(
            derived,
            summary="bidspack derive patches",
            command=command,
            inputs=[f"{source_url(source_path, out)}/{p.image.rel}" for p in plans],
        )
    texts = {
        "dataset_description.json": description,
        "README.md": readme_text(source, params, plans, out),
        ".bidsignore": bidsignore_text(
            "patches", INDEX_PARQUET, *([INDEX_TSV] if params.tsv else [])
        ),
    }
    with derived.session(recover_first=recover_first) as recovered:
        yield from recovered
        total = sum(j.count for p in plans for j in p.jobs)
        done = [0]

        def advance(rel: str, n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(rel, done[0], total)

        advance(plans[0].image.rel, 0)  # the total is known before the first pixel
        for p in plans:
            before = done[0]
            yield from _source_step(
                derived, p, params, functools.partial(advance, p.image.rel), runner
            )
            left = sum(j.count for j in p.jobs) - (done[0] - before)
            if left > 0:  # notneeded (or fewer reported): count the step as done
                advance(p.image.rel, left)
        yield from _final_step(derived, plans, params, texts)


#: Step parameters that say how a step ran, not what it computes: in its provenance,
#: not in its fingerprint (they change no output byte).
EXECUTION_KEYS = ("execution",)


@dataclass
class ExtractStep(DerivedStep):
    """A source step: its ``execution`` parameter (:meth:`SlabRunner.describe`) is
    recorded in the provenance but left out of the fingerprint, so a re-run on other
    workers or another scheduler is ``notneeded``."""

    def fingerprint(self) -> str:
        """xxh3-128 of the parameters (without :data:`EXECUTION_KEYS`), outputs and
        input digests: the :class:`DerivedStep` fingerprint of a run without them."""
        params = {k: v for k, v in self.parameters.items() if k not in EXECUTION_KEYS}
        described = [{"operation": self.operation, "outputs": self.outputs, **params}]
        return fingerprint(described, {k: {"xxh3": v} for k, v in self.inputs.items()})


def _source_step(
    derived: DerivedDataset,
    plan: SourcePlan,
    params: PatchParams,
    progress: Callable[[int], None] | None,
    runner: SlabRunner,
) -> Iterator[Record]:
    """The step of one source image (its slab tasks run on *runner*)."""
    image = plan.image
    pixel_hash = image.ensure_pixel_hash()
    parameters = {
        "source": image.rel,
        "planes": [
            {"plane": j.plane, "slices": len(j.slices), "rows": list(j.rows), "cols": list(j.cols)}
            for j in plan.jobs
        ],
        **params.extraction(),
        "execution": runner.describe(),
    }
    digest = image.file_digest or pixel_hash
    step = ExtractStep(
        name=plan.step,
        operation=OPERATION,
        outputs=plan.outputs(),
        parameters=parameters,
        inputs={f"source:{image.rel}": pixel_hash, f"source-file:{image.rel}": digest},
        used=[{"path": f"source:{image.rel}", "xxh3_128": digest}],
        stage=lambda txn: extract(txn, plan, params, pixel_hash, progress, runner),
    )
    try:
        yield from derived.run_step(step)
    finally:
        image.close()


def _final_step(
    derived: DerivedDataset, plans: list[SourcePlan], params: PatchParams, texts: dict[str, str]
) -> Iterator[Record]:
    """The ``index`` step: index files and dataset-level text files; removes the
    outputs and step records of sources no longer selected."""
    parts = [p.part(j.plane) for p in plans for j in p.jobs]
    current = {p.step for p in plans} | {"index"}
    retired: list[str] = []
    for name, rec in derived.step_records(OPERATION).items():
        if name not in current:
            retired += [*rec.get("outputs", []), record_path(name)]
    outputs = [INDEX_PARQUET, *([INDEX_TSV] if params.tsv else []), *texts]
    step = DerivedStep(
        name="index",
        operation=OPERATION,
        outputs=outputs,
        parameters={
            "dedup_scope": params.dedup_scope,
            "hamming": params.hamming,
            "seed": params.seed,
            "tsv": params.tsv,
            "parts": parts,
            "texts": {k: text_xxh3(v) for k, v in sorted(texts.items())},
        },
        inputs={p: file_xxh3(derived.path / p) for p in parts},
        used=[],
        stage=lambda txn: _index_stage(txn, parts, derived.path, params, texts),
        delete=sorted(set(retired)),
    )
    yield from derived.run_step(step)


__all__ = [
    "INDEX_COLUMNS",
    "PART_COLUMNS",
    "PatchParams",
    "SlabResult",
    "SlabRunner",
    "SlabTask",
    "cut_slab",
    "decide",
    "derive_patches",
    "intensity_range",
    "plan_patches",
    "slab_groups",
    "tile_spans",
    "to_uint8",
]
