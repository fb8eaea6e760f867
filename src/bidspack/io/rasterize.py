"""Rasterise SWC tracings into an image's voxel grid, sparsely.

The grid is the image's: ``shape (z, y, x)``, physical ``voxel_size (z, y, x)`` in
micrometres (anisotropic allowed) and ``origin (z, y, x)`` in micrometres, the physical
position of the **centre** of voxel ``(0, 0, 0)``. Voxel ``(i, j, k)`` has its centre at
``origin + (i, j, k) * voxel_size`` and covers the half-open box of one voxel around it.
Tracing positions come from :func:`bidspack.io.swc.calibrate` (micrometres, SWC
``(x, y, z)`` order); they are reversed to ``(z, y, x)`` here.

What is drawn (:func:`rasterize`):

- ``mode="line"``: every node-to-parent segment as a 26-connected voxel line with both
  end points set: the samples of ``skimage.draw.line_nd(start, stop, endpoint=True)``
  on the continuous voxel coordinates (parent -> child), computed for all segments at
  once and rounded half up (see :func:`line_voxels`); plus the voxel of every node.
  Every set voxel centre lies within half a voxel diagonal of its segment.
- ``mode="radius"``: the line voxels, plus every voxel whose centre lies inside the
  segment's *swept sphere* -- the union of the spheres centred on the segment with the
  radius interpolated linearly between the end radii (a tapered cone/frustum with
  spherical caps), computed in micrometres, i.e. ellipsoids in voxel units when
  voxels are anisotropic -- and the sphere of every isolated node.
- Somata (``soma="sphere"``, the default, both modes): a single-node soma and the
  NeuroMorpho 3-point soma are drawn as one sphere of the soma radius around the
  centre node. The 3-point soma's two side links are drawn as lines only (they lie
  inside the sphere), never swept, so no bar sticks out of the soma; a segment with one
  end on such a soma node takes the other end's radius at both ends (no cone from the
  soma radius). ``soma="segments"`` draws soma nodes as ordinary nodes (the naive
  rendering that produces the bar in radius mode).

Labels: ``"tree"`` (one label per tree, numbered 1.. over the tracings in the order
given, trees in root order), ``"file"`` (one per tracing, 1..) or ``"binary"`` (1).
When several labels fall on one voxel **the smallest label wins** (independent of
drawing order). Segments are clipped at the grid border; nodes outside the grid are
counted per tracing and tree in :attr:`SparseMask.outside`, never silently dropped.

The result is a :class:`SparseMask` (voxel coordinates and labels), never a dense
array unless :meth:`SparseMask.to_dense` or :meth:`SparseMask.to_dense_block` is
called.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bidspack.io.swc import PhysicalTracing, Tracing, calibrate

__all__ = [
    "LabelInfo",
    "OutsideNodes",
    "SparseMask",
    "VoxelGrid",
    "bbox_with_margin",
    "line_voxels",
    "rasterize",
]

Mode = Literal["line", "radius"]
LabelMode = Literal["tree", "file", "binary"]
SomaMode = Literal["sphere", "segments"]
Box = tuple[int, int, int, int, int, int]

#: Points (line samples or candidate voxels) handled per vectorised batch.
BATCH = 1 << 21
#: Collected voxel entries that trigger a deduplication pass.
COMPACT = 1 << 23


@dataclass(frozen=True)
class VoxelGrid:
    """An image's voxel grid.

    Attributes:
        shape: ``(z, y, x)`` voxels.
        voxel_size: ``(z, y, x)`` micrometres per voxel.
        origin: ``(z, y, x)`` micrometres, the physical centre of voxel ``(0, 0, 0)``.
    """

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) < 1 for s in self.shape):
            raise ValueError(f"shape must be three positive sizes (z, y, x), got {self.shape}")
        if len(self.voxel_size) != 3 or not all(
            v > 0 and math.isfinite(v) for v in self.voxel_size
        ):
            raise ValueError(f"voxel_size must be three positive (z, y, x) um: {self.voxel_size}")
        if len(self.origin) != 3:
            raise ValueError(f"origin must be (z, y, x) um, got {self.origin}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "voxel_size", tuple(float(v) for v in self.voxel_size))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))

    @classmethod
    def covering(
        cls,
        xyz_um: np.ndarray,
        voxel_size: tuple[float, float, float],
        margin_um: float = 0.0,
    ) -> VoxelGrid:
        """The smallest grid of this voxel size covering ``xyz_um`` (``(n, 3)``, **x, y,
        z** micrometres) plus ``margin_um`` on every side; its origin is the minimum
        corner (rounded down to a whole voxel)."""
        zyx = np.asarray(xyz_um, dtype=np.float64)[:, ::-1]
        vs = np.asarray(voxel_size, dtype=np.float64)
        lo = np.floor((zyx.min(axis=0) - margin_um) / vs) * vs
        hi = zyx.max(axis=0) + margin_um
        shape = np.floor((hi - lo) / vs + 0.5).astype(int) + 1
        return cls(
            (int(shape[0]), int(shape[1]), int(shape[2])),
            (float(vs[0]), float(vs[1]), float(vs[2])),
            (float(lo[0]), float(lo[1]), float(lo[2])),
        )

    def to_index(self, zyx_um: np.ndarray) -> np.ndarray:
        """Continuous voxel coordinates ``(n, 3)`` (z, y, x) of physical ``(z, y, x)`` um;
        the voxel containing a point is ``floor(coordinates + 0.5)`` (voxel ``i`` covers
        ``[i - 0.5, i + 0.5)``)."""
        return (np.asarray(zyx_um, dtype=np.float64) - self.origin) / self.voxel_size

    def to_physical(self, zyx_index: np.ndarray) -> np.ndarray:
        """Physical ``(z, y, x)`` um of voxel coordinates ``(n, 3)`` (centres for
        integers)."""
        return np.asarray(zyx_index, dtype=np.float64) * self.voxel_size + self.origin

    @property
    def half_diagonal_um(self) -> float:
        """Half the voxel diagonal in micrometres."""
        return 0.5 * float(np.linalg.norm(self.voxel_size))


@dataclass(frozen=True)
class LabelInfo:
    """What one label value stands for.

    Attributes:
        label: the value in the mask (1..).
        tracing_index: position of the tracing in the ``tracings`` argument, or
            ``None`` for ``"binary"``.
        path: the tracing's file (``None`` for ``"binary"``).
        tree: the tree number in that file (``"tree"`` labels), else ``None``.
        sha256: sha256 of the file (``None`` for ``"binary"``).
    """

    label: int
    tracing_index: int | None
    path: str | None
    tree: int | None
    sha256: str | None


@dataclass(frozen=True)
class OutsideNodes:
    """Nodes of one tree of one tracing that lie outside the grid.

    Attributes:
        tracing_index, path, tree: which tree.
        n_outside: nodes whose voxel is outside the grid.
        n_nodes: nodes of the tree.
        first_line: the SWC line of the first outside node.
    """

    tracing_index: int
    path: str
    tree: int
    n_outside: int
    n_nodes: int
    first_line: int


@dataclass(frozen=True, eq=False)
class SparseMask:
    """A label mask as voxel coordinates; unique voxels, sorted in C order (z, y, x).

    Attributes:
        shape: the grid shape ``(z, y, x)``.
        coords: ``(k, 3)`` int32 voxel coordinates ``(z, y, x)``, unique, sorted by
            ``z``, then ``y``, then ``x`` (cast to int64 before computing linear
            indices of large grids).
        labels: ``(k,)`` uint32 labels (>= 1) of those voxels.
        label_info: one :class:`LabelInfo` per label value, in label order.
        outside: :class:`OutsideNodes` for each tree with nodes outside the grid.
        n_segments_clipped: segments that cross the grid border (drawn up to it).
        voxel_size, origin: the grid's ``(z, y, x)`` um.
    """

    shape: tuple[int, int, int]
    coords: np.ndarray
    labels: np.ndarray
    label_info: tuple[LabelInfo, ...]
    outside: tuple[OutsideNodes, ...]
    n_segments_clipped: int
    voxel_size: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def n_voxels(self) -> int:
        """Number of set voxels."""
        return int(self.coords.shape[0])

    @property
    def n_nodes_outside(self) -> int:
        """Total number of nodes outside the grid."""
        return sum(o.n_outside for o in self.outside)

    @property
    def bbox(self) -> Box | None:
        """Half-open bounding box ``(z0, z1, y0, y1, x0, x1)`` of the set voxels, or
        ``None`` when none is set."""
        if self.n_voxels == 0:
            return None
        lo = self.coords.min(axis=0)
        hi = self.coords.max(axis=0) + 1
        return (int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))

    def _dtype(self, dtype: np.typing.DTypeLike | None) -> np.dtype:
        if dtype is not None:
            return np.dtype(dtype)
        top = int(self.labels.max()) if self.labels.size else 1
        return np.dtype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)

    def to_dense(self, dtype: np.typing.DTypeLike | None = None) -> np.ndarray:
        """The whole mask as a dense ``(z, y, x)`` array (0 = background; dtype the
        smallest unsigned type holding the labels unless given). Allocates the full
        grid: prefer :meth:`to_dense_block` for large images."""
        out = np.zeros(self.shape, dtype=self._dtype(dtype))
        out[tuple(self.coords.T)] = self.labels
        return out

    def to_dense_block(
        self,
        zslice: slice,
        yslice: slice,
        xslice: slice,
        dtype: np.typing.DTypeLike | None = None,
    ) -> np.ndarray:
        """One dense block ``[zslice, yslice, xslice]`` (step 1, clipped like NumPy
        slicing), for writing a large mask chunk by chunk."""
        rng = [s.indices(n) for s, n in zip((zslice, yslice, xslice), self.shape, strict=True)]
        if any(step != 1 for _, _, step in rng):
            raise ValueError("to_dense_block takes slices with step 1")
        (z0, z1, _), (y0, y1, _), (x0, x1, _) = rng
        shape = (max(z1 - z0, 0), max(y1 - y0, 0), max(x1 - x0, 0))
        out = np.zeros(shape, dtype=self._dtype(dtype))
        if 0 in shape or self.n_voxels == 0:
            return out
        zc = self.coords[:, 0]
        a, b = np.searchsorted(zc, [z0, z1])
        c = self.coords[a:b]
        keep = (c[:, 1] >= y0) & (c[:, 1] < y1) & (c[:, 2] >= x0) & (c[:, 2] < x1)
        c = c[keep]
        out[c[:, 0] - z0, c[:, 1] - y0, c[:, 2] - x0] = self.labels[a:b][keep]
        return out


# ---------------------------------------------------------------------------
# lines


def _batches(counts: np.ndarray, limit: int) -> Iterator[slice]:
    """Consecutive slices of ``counts`` whose sums stay within ``limit`` (a single
    larger item forms its own batch)."""
    cs = np.cumsum(counts)
    start, n = 0, counts.size
    while start < n:
        base = int(cs[start - 1]) if start else 0
        stop = max(int(np.searchsorted(cs, base + limit, side="right")), start + 1)
        yield slice(start, stop)
        start = stop


def _group_ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``counts[i]`` items in group ``i``: (group of each item, index within it)."""
    total = int(counts.sum())
    group = np.repeat(np.arange(counts.size), counts)
    starts = np.cumsum(counts) - counts
    within = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    return group, within


def line_voxels(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels of many 3D lines at once: the samples of ``skimage.draw.line_nd(start,
    stop, endpoint=True)`` (same count, same float values), rounded half up.

    The result equals ``line_nd`` for each pair except where a sample lies exactly on a
    half-integer: there ``line_nd`` rounds half to even and a decreasing line can skip a
    voxel (not 26-connected); this rounding cannot.

    Args:
        starts, stops: ``(m, 3)`` continuous voxel coordinates (any axis order; the
            output has the same).

    Returns:
        ``(coords, segment)``: ``(k, 3)`` int64 voxels (duplicates possible) and
        ``(k,)`` the row of ``starts`` each belongs to. Each line is 26-connected and
        contains the voxels ``floor(start + 0.5)`` and ``floor(stop + 0.5)``.
    """
    a = np.asarray(starts, dtype=np.float64).reshape(-1, 3)
    b = np.asarray(stops, dtype=np.float64).reshape(-1, 3)
    d = b - a
    npts = np.ceil(np.abs(d).max(axis=1)).astype(np.int64) + 1
    seg, k = _group_ranges(npts)
    div = (npts - 1).astype(np.float64)
    safe = np.where(div > 0, div, 1.0)
    step = d / safe[:, None]
    # numpy.linspace: if any axis has step 0 it computes k / div * delta, else k * step
    zero = (step == 0).any(axis=1)
    kf = k.astype(np.float64)[:, None]
    sz = zero[seg]
    vals = np.where(sz[:, None], (kf / safe[seg][:, None]) * d[seg], kf * step[seg])
    vals += a[seg]
    last = (k == npts[seg] - 1) & (npts[seg] > 1)
    vals[last] = b[seg[last]]
    # round half up, floor(v + 0.5), not skimage's round-half-even: monotone and
    # shift-invariant, so samples at most 1 apart give voxels at most 1 apart (26-
    # connected) also when samples fall exactly on x.5 (skimage 0.26's _round_safe
    # handles only increasing lines there; decreasing ones can skip a voxel)
    out = np.floor(vals + 0.5).astype(np.int64)
    return out, seg


def _clip_segments(
    a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Liang-Barsky clip of segments a->b to the box [lo, hi]. Returns clipped a, b,
    a mask of segments that intersect the box and a mask of those that were cut."""
    d = b - a
    t0 = np.zeros(a.shape[0])
    t1 = np.ones(a.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        for ax in range(3):
            for p, q in ((-d[:, ax], a[:, ax] - lo[ax]), (d[:, ax], hi[ax] - a[:, ax])):
                par = p == 0
                r = np.where(par, 0.0, q / np.where(par, 1.0, p))
                outside = par & (q < 0)
                t0 = np.where(~par & (p < 0), np.maximum(t0, r), t0)
                t1 = np.where(~par & (p > 0), np.minimum(t1, r), t1)
                t1 = np.where(outside, -1.0, t1)
    hit = t0 <= t1
    cut = hit & ((t0 > 0) | (t1 < 1))
    na = np.where(cut[:, None] & (t0[:, None] > 0), a + t0[:, None] * d, a)
    nb = np.where(cut[:, None] & (t1[:, None] < 1), a + t1[:, None] * d, b)
    return na, nb, hit, cut


# ---------------------------------------------------------------------------
# swept spheres


def _swept_tasks(
    lo_v: np.ndarray, hi_v: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each box [lo_v, hi_v) into pieces of at most ``limit`` voxels (along z,
    then y, then x). Returns (source row, lo, hi) of the pieces."""
    rows = [np.arange(lo_v.shape[0])]
    los, his = [lo_v], [hi_v]
    for ax in range(3):
        row, lo, hi = np.concatenate(rows), np.concatenate(los), np.concatenate(his)
        size = np.prod(hi - lo, axis=1)
        big = size > limit
        if not big.any():
            return row, lo, hi
        rows, los, his = [row[~big]], [lo[~big]], [hi[~big]]
        other = size[big] // np.maximum(hi[big, ax] - lo[big, ax], 1)
        per = np.maximum(limit // np.maximum(other, 1), 1)
        n_piece = -(-(hi[big, ax] - lo[big, ax]) // per)
        src, j = _group_ranges(n_piece)
        plo, phi = lo[big][src].copy(), hi[big][src].copy()
        plo[:, ax] = lo[big][src, ax] + j * per[src]
        phi[:, ax] = np.minimum(plo[:, ax] + per[src], hi[big][src, ax])
        rows.append(row[big][src])
        los.append(plo)
        his.append(phi)
    return np.concatenate(rows), np.concatenate(los), np.concatenate(his)


def _swept_voxels(
    pa: np.ndarray,
    pb: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    grid: VoxelGrid,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Voxels whose centres lie in the swept sphere of each segment (physical (z, y, x)
    um end points ``pa``, ``pb`` and radii ``ra``, ``rb``), in batches of
    ``(linear index, segment row)``."""
    vs = np.asarray(grid.voxel_size)
    org = np.asarray(grid.origin)
    shape = np.asarray(grid.shape)
    lo_p = np.minimum(pa - ra[:, None], pb - rb[:, None])
    hi_p = np.maximum(pa + ra[:, None], pb + rb[:, None])
    lo_v = np.clip(np.ceil((lo_p - org) / vs), 0, shape).astype(np.int64)
    hi_v = np.clip(np.floor((hi_p - org) / vs) + 1, 0, shape).astype(np.int64)
    hi_v = np.maximum(hi_v, lo_v)
    keep = np.prod(hi_v - lo_v, axis=1) > 0
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return
    row, lo, hi = _swept_tasks(lo_v[idx], hi_v[idx], BATCH)
    row = idx[row]
    ab = pb - pa
    length = np.linalg.norm(ab, axis=1)
    pos = length > 0
    dirn = np.where(pos[:, None], ab / np.where(pos, length, 1.0)[:, None], 0.0)
    # a zero-length segment is one sphere of the larger radius
    r0 = np.where(pos, ra, np.maximum(ra, rb))
    slope = np.where(pos, (rb - ra) / np.where(pos, length, 1.0), 0.0)
    # closest point parameter t* = clip(s + coef * h, tmin, tmax) along the axis (see
    # the module docstring); |k| >= 1: one end sphere contains the other
    steep = np.abs(slope) >= 1
    coef = np.where(steep, 0.0, slope / np.sqrt(np.where(steep, 1.0, 1.0 - slope * slope)))
    tmin = np.where(steep & (slope > 0), length, 0.0)
    tmax = np.where(steep & (slope < 0), 0.0, length)
    sizes = np.prod(hi - lo, axis=1)
    ny, nx = int(shape[1]), int(shape[2])
    for sl in _batches(sizes, BATCH):
        t_lo, t_row = lo[sl], row[sl]
        dims = hi[sl] - t_lo
        task, w = _group_ranges(np.prod(dims, axis=1))
        dx = dims[:, 2][task]
        dyx = (dims[:, 1] * dims[:, 2])[task]
        iz = w // dyx
        w -= iz * dyx
        iy = w // dx
        ix = w - iy * dx
        # position of the voxel centre relative to the segment start, per axis (um)
        base = t_lo * vs + org - pa[t_row]
        rz = base[:, 0][task] + iz * vs[0]
        ry = base[:, 1][task] + iy * vs[1]
        rx = base[:, 2][task] + ix * vs[2]
        d = dirn[t_row]
        sproj = rz * d[:, 0][task] + ry * d[:, 1][task] + rx * d[:, 2][task]
        rel2 = rz * rz + ry * ry + rx * rx
        h = np.sqrt(np.maximum(rel2 - sproj * sproj, 0.0))
        t = np.clip(sproj + coef[t_row][task] * h, tmin[t_row][task], tmax[t_row][task])
        reach = r0[t_row][task] + slope[t_row][task] * t + 1e-9
        inside = rel2 - 2.0 * t * sproj + t * t <= reach * reach
        sel = np.flatnonzero(inside)
        tsel = task[sel]
        lin = ((t_lo[tsel, 0] + iz[sel]) * ny + t_lo[tsel, 1] + iy[sel]) * nx + (
            t_lo[tsel, 2] + ix[sel]
        )
        yield lin, t_row[tsel]


# ---------------------------------------------------------------------------
# rasterise


def _dedup(lin: np.ndarray, lab: np.ndarray, n_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique voxels sorted by linear index; where labels differ the smallest wins."""
    if lin.size == 0:
        return lin, lab
    top = int(lab.max()) + 1
    if n_voxels * top < 2**62:  # one sort of a combined key
        key = lin * top + lab
        key.sort()
        lin, lab = key // top, (key % top).astype(np.uint32)
    else:
        order = np.lexsort((lab, lin))
        lin, lab = lin[order], lab[order]
    first = np.ones(lin.size, dtype=bool)
    first[1:] = lin[1:] != lin[:-1]
    return lin[first], lab[first]


@dataclass
class _Parts:
    """Voxels collected so far (linear index, label), deduplicated whenever the pending
    pieces exceed ``COMPACT`` entries, so memory follows the unique voxel count."""

    n_voxels: int
    lin: list[np.ndarray]
    lab: list[np.ndarray]
    pending: int = 0

    def add(self, lin: np.ndarray, lab: np.ndarray | int) -> None:
        if lin.size:
            self.lin.append(lin.astype(np.int64, copy=False))
            self.lab.append(np.broadcast_to(np.asarray(lab, dtype=np.uint32), lin.shape).copy())
            self.pending += lin.size
            if self.pending > COMPACT:
                self.compact()

    def compact(self) -> tuple[np.ndarray, np.ndarray]:
        lin = np.concatenate(self.lin) if self.lin else np.zeros(0, np.int64)
        lab = np.concatenate(self.lab) if self.lab else np.zeros(0, np.uint32)
        self.lin, self.lab = [], []
        lin, lab = _dedup(lin, lab, self.n_voxels)
        self.lin, self.lab = [lin], [lab]
        self.pending = 0
        return lin, lab


def rasterize(
    tracings: PhysicalTracing | Tracing | Sequence[PhysicalTracing | Tracing],
    grid: VoxelGrid,
    *,
    mode: Mode = "line",
    labels: LabelMode = "tree",
    soma: SomaMode = "sphere",
) -> SparseMask:
    """Rasterise tracings into ``grid`` as a sparse label mask.

    Args:
        tracings: one or several tracings in micrometres (:func:`bidspack.io.swc.
            calibrate`); a plain :class:`~bidspack.io.swc.Tracing` is calibrated with
            the unit its header states.
        grid: the image grid: shape, voxel size and origin, all ``(z, y, x)``, um.
        mode: ``"line"`` (26-connected lines) or ``"radius"`` (lines plus swept
            spheres of the node radii); see the module docstring.
        labels: ``"tree"``, ``"file"`` or ``"binary"`` (the smallest label wins where
            labels overlap).
        soma: ``"sphere"`` (single-node and 3-point somata as one sphere) or
            ``"segments"`` (soma nodes as ordinary nodes).

    Returns:
        :class:`SparseMask` with unique voxels in C order, the label table, the nodes
        outside the grid per tracing and tree, and the number of clipped segments.

    Raises:
        SourceError: a plain Tracing whose header states no unit.
        ValueError: an unknown ``mode``, ``labels`` or ``soma``.
    """
    if mode not in ("line", "radius"):
        raise ValueError(f"mode must be 'line' or 'radius', not {mode!r}")
    if labels not in ("tree", "file", "binary"):
        raise ValueError(f"labels must be 'tree', 'file' or 'binary', not {labels!r}")
    if soma not in ("sphere", "segments"):
        raise ValueError(f"soma must be 'sphere' or 'segments', not {soma!r}")
    items: Sequence[PhysicalTracing | Tracing]
    items = [tracings] if isinstance(tracings, PhysicalTracing | Tracing) else tracings
    pts = [t if isinstance(t, PhysicalTracing) else calibrate(t) for t in items]

    shape = np.asarray(grid.shape)
    nyx = int(shape[1] * shape[2])
    nx = int(shape[2])
    parts = _Parts(int(np.prod(shape, dtype=np.int64)), [], [])
    infos: list[LabelInfo] = []
    outside: list[OutsideNodes] = []
    n_clipped = 0
    next_label = 1
    box_lo = np.full(3, -1.0)
    box_hi = shape.astype(np.float64)

    for ti, pt in enumerate(pts):
        tr = pt.tracing
        # label of every tree of this tracing
        if labels == "tree":
            tree_label = np.arange(next_label, next_label + tr.n_trees, dtype=np.uint32)
            for t in range(tr.n_trees):
                infos.append(LabelInfo(next_label + t, ti, tr.path, t, tr.sha256))
            next_label += tr.n_trees
        elif labels == "file":
            tree_label = np.full(tr.n_trees, next_label, dtype=np.uint32)
            infos.append(LabelInfo(next_label, ti, tr.path, None, tr.sha256))
            next_label += 1
        else:
            tree_label = np.ones(tr.n_trees, dtype=np.uint32)
            if not infos:
                infos.append(LabelInfo(1, None, None, None, None))
        node_label = tree_label[tr.tree]

        zyx = pt.xyz_um[:, ::-1]
        cont = grid.to_index(zyx)
        rad = np.asarray(pt.radius_um, dtype=np.float64).copy()

        # nodes: set their voxels, count those outside
        vox = np.floor(cont + 0.5).astype(np.int64)
        inside = ((vox >= 0) & (vox < shape)).all(axis=1)
        parts.add((vox[inside, 0] * nyx + vox[inside, 1] * nx + vox[inside, 2]), node_label[inside])
        if not inside.all():
            out_idx = np.flatnonzero(~inside)
            counts = np.bincount(tr.tree[out_idx], minlength=tr.n_trees)
            sizes = np.bincount(tr.tree, minlength=tr.n_trees)
            for t in np.flatnonzero(counts).tolist():
                first = out_idx[tr.tree[out_idx] == t][0]
                outside.append(
                    OutsideNodes(
                        ti, tr.path, int(t), int(counts[t]), int(sizes[t]), int(tr.lines[first])
                    )
                )

        # segments (parent -> child); soma geometry
        child = np.flatnonzero(tr.parent_index >= 0)
        parent = tr.parent_index[child]
        sweep = np.ones(child.size, dtype=bool)
        ra, rb = rad[parent], rad[child]
        spheres: list[int] = []
        sphere_r: list[float] = []
        if soma == "sphere":
            sphere_node = np.zeros(tr.n_nodes, dtype=bool)
            side_node = np.zeros(tr.n_nodes, dtype=bool)
            for s in tr.somata:
                if s.kind == "multi":
                    continue
                sphere_node[s.center] = True
                spheres.append(s.center)
                sphere_r.append(float(s.radius) * float(np.prod(pt.scale_um)) ** (1 / 3))
                if s.kind == "three_point":
                    side_node[list(s.indices[1:])] = True
            # the 3-point soma's side links: lines only, inside the sphere
            sweep &= ~(side_node[child] & sphere_node[parent])
            # a segment touching a soma drawn as a sphere takes the other end's radius
            on_p = sphere_node[parent] | side_node[parent]
            on_c = sphere_node[child] | side_node[child]
            ra = np.where(on_p & ~on_c, rb, ra)
            rb = np.where(on_c & ~on_p, ra, rb)
        seg_label = node_label[child]

        a, b = cont[parent], cont[child]
        ca, cb, hit, cut = _clip_segments(a, b, box_lo, box_hi)
        n_clipped += int(cut.sum())
        # lines in batches of at most BATCH points
        sel = np.flatnonzero(hit)
        npts = np.ceil(np.abs(cb[sel] - ca[sel]).max(axis=1)).astype(np.int64) + 1
        for sl in _batches(npts, BATCH):
            rows = sel[sl]
            v, sg = line_voxels(ca[rows], cb[rows])
            ok = ((v >= 0) & (v < shape)).all(axis=1)
            parts.add(v[ok, 0] * nyx + v[ok, 1] * nx + v[ok, 2], seg_label[rows][sg[ok]])

        if mode == "radius":
            pa, pb = zyx[parent][sweep], zyx[child][sweep]
            lab = seg_label[sweep]
            ra_s, rb_s = ra[sweep], rb[sweep]
            # isolated nodes (no parent, no children) are spheres too
            has_child = np.zeros(tr.n_nodes, dtype=bool)
            has_child[parent] = True
            lone = np.flatnonzero((tr.parent_index < 0) & ~has_child)
            if soma == "sphere":
                lone = lone[~np.isin(lone, spheres)]
            pa = np.concatenate([pa, zyx[lone]])
            pb = np.concatenate([pb, zyx[lone]])
            ra_s = np.concatenate([ra_s, rad[lone]])
            rb_s = np.concatenate([rb_s, rad[lone]])
            lab = np.concatenate([lab, node_label[lone]])
            for lin, sg in _swept_voxels(pa, pb, ra_s, rb_s, grid):
                parts.add(lin, lab[sg])
        if spheres:
            c = np.asarray(spheres)
            r = np.asarray(sphere_r)
            for lin, sg in _swept_voxels(zyx[c], zyx[c], r, r, grid):
                parts.add(lin, node_label[c][sg])

    lin, lab = parts.compact()
    # int32 coordinates (each axis < 2**31): 12 bytes per voxel instead of 24
    coords = np.empty((lin.size, 3), dtype=np.int32)
    z = lin // nyx
    coords[:, 0] = z
    lin -= z * nyx
    del z
    coords[:, 1] = lin // nx
    coords[:, 2] = lin % nx
    del lin
    coords.setflags(write=False)
    lab.setflags(write=False)
    return SparseMask(
        shape=grid.shape,
        coords=coords,
        labels=lab,
        label_info=tuple(infos),
        outside=tuple(outside),
        n_segments_clipped=n_clipped,
        voxel_size=grid.voxel_size,
        origin=grid.origin,
    )


def bbox_with_margin(
    mask_or_coords: SparseMask | np.ndarray,
    *,
    image_shape: Sequence[int] | None = None,
    voxel_size: Sequence[float] | None = None,
    margin_um: float | Sequence[float] | None = None,
    margin_voxels: int | Sequence[int] | None = None,
) -> Box | None:
    """The crop box around voxels plus a margin, clipped at the image border.

    Args:
        mask_or_coords: a :class:`SparseMask` or ``(k, 3)`` integer voxel coordinates
            ``(z, y, x)``.
        image_shape: ``(z, y, x)`` image size (default: the mask's).
        voxel_size: ``(z, y, x)`` um, needed for ``margin_um`` (default: the mask's).
        margin_um: margin in micrometres, one number or ``(z, y, x)``; converted to
            whole voxels per axis rounding up, so the physical margin is at least this.
        margin_voxels: margin in voxels, one number or ``(z, y, x)``. Exclusive with
            ``margin_um``; default no margin.

    Returns:
        Half-open ``(z0, z1, y0, y1, x0, x1)``, or ``None`` when there are no voxels.

    Raises:
        ValueError: both margins, a missing shape or voxel size, negative margins.
    """
    if margin_um is not None and margin_voxels is not None:
        raise ValueError("give margin_um or margin_voxels, not both")
    if isinstance(mask_or_coords, SparseMask):
        coords = mask_or_coords.coords
        image_shape = mask_or_coords.shape if image_shape is None else image_shape
        voxel_size = mask_or_coords.voxel_size if voxel_size is None else voxel_size
    else:
        coords = np.asarray(mask_or_coords).reshape(-1, 3)
    if image_shape is None:
        raise ValueError("image_shape (z, y, x) is needed")
    shp = np.asarray(image_shape, dtype=np.int64)
    if margin_um is not None:
        if voxel_size is None:
            raise ValueError("margin_um needs voxel_size (z, y, x) um")
        m_um = np.broadcast_to(np.asarray(margin_um, dtype=np.float64), (3,))
        if (m_um < 0).any():
            raise ValueError(f"margin must not be negative: {margin_um}")
        vs = np.asarray(voxel_size, dtype=np.float64)
        margin = np.ceil(m_um / vs - 1e-9).astype(np.int64)
    else:
        margin = np.broadcast_to(np.asarray(margin_voxels or 0, dtype=np.int64), (3,))
        if (margin < 0).any():
            raise ValueError(f"margin must not be negative: {margin_voxels}")
    inside = ((coords >= 0) & (coords < shp)).all(axis=1)
    coords = coords[inside]
    if coords.shape[0] == 0:
        return None
    lo = np.maximum(coords.min(axis=0) - margin, 0)
    hi = np.minimum(coords.max(axis=0) + 1 + margin, shp)
    return (int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))
