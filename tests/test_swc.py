"""SWC reading (bidspack.io.swc) and rasterisation (bidspack.io.rasterize) on the real
tracings in ../shared/realdata/swc/ (hemibrain skeletons in 8 nm voxels, one with two
roots; NeuroMorpho StdSwc files in micrometres)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from skimage.draw import line_nd

from bidspack.errors import SourceError
from bidspack.io.rasterize import (
    SparseMask,
    VoxelGrid,
    bbox_with_margin,
    line_voxels,
    rasterize,
)
from bidspack.io.swc import PhysicalTracing, calibrate, parse_unit, read_swc, to_physical

SWC_DIR = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "swc"
if not SWC_DIR.is_dir():  # pragma: no cover - layout of other checkouts
    SWC_DIR = Path("/work/shared/realdata/swc")
HEMIBRAIN = sorted(SWC_DIR.glob("*[0-9].swc"))
NEUROMORPHO = sorted(SWC_DIR.glob("*.CNG.swc.txt"))
HEMIBRAIN_VOXEL_UM = 0.008
ISO = (1.0, 1.0, 1.0)
ANISO = (1.0, 0.5, 0.5)
CUBE = np.ones((3, 3, 3), dtype=bool)

pytestmark = pytest.mark.skipif(not HEMIBRAIN or not NEUROMORPHO, reason="no real SWC data")


def _calibrated(path: Path) -> PhysicalTracing:
    t = read_swc(path)
    if t.unit is None:  # hemibrain: 8 nm voxels, stated nowhere in the file
        return calibrate(t, voxel_size=HEMIBRAIN_VOXEL_UM)
    return calibrate(t)


_CACHE: dict[Path, PhysicalTracing] = {}


def calibrated(path: Path) -> PhysicalTracing:
    if path not in _CACHE:
        _CACHE[path] = _calibrated(path)
    return _CACHE[path]


# ---------------------------------------------------------------------------
# geometry helpers (independent of the rasteriser)


def segments(pt: PhysicalTracing, skip_soma_links: bool = True):
    """Physical (z, y, x) segments parent->child with their larger end radius; the
    3-point soma's side links left out (the soma is checked as a sphere)."""
    tr = pt.tracing
    child = np.flatnonzero(tr.parent_index >= 0)
    parent = tr.parent_index[child]
    if skip_soma_links:
        sides = {i for s in tr.somata if s.kind == "three_point" for i in s.indices[1:]}
        keep = np.array([c not in sides for c in child], dtype=bool)
        child, parent = child[keep], parent[keep]
    zyx = pt.xyz_um[:, ::-1]
    r = np.maximum(pt.radius_um[child], pt.radius_um[parent])
    return zyx[parent], zyx[child], r


def soma_spheres(pt: PhysicalTracing):
    scale = float(np.prod(pt.scale_um)) ** (1 / 3)
    c = [pt.xyz_um[s.center, ::-1] for s in pt.tracing.somata if s.kind != "multi"]
    r = [s.radius * scale for s in pt.tracing.somata if s.kind != "multi"]
    return np.asarray(c).reshape(-1, 3), np.asarray(r)


def point_segment_distance(p, a, b):
    ab = b - a
    ll = np.einsum("ij,ij->i", ab, ab)
    t = np.where(ll > 0, np.einsum("ij,ij->i", p - a, ab) / np.where(ll > 0, ll, 1), 0.0)
    t = np.clip(t, 0, 1)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def explained(points, pt: PhysicalTracing, allowed_seg, sphere_slack):
    """For each physical (z, y, x) point: is it within ``allowed_seg[j]`` of some
    segment j, or within radius + ``sphere_slack`` of a soma centre?"""
    a, b, _ = segments(pt)
    mids = 0.5 * (a + b)
    half = 0.5 * np.linalg.norm(b - a, axis=1)
    reach = float(half.max() + allowed_seg.max()) + 1e-6
    pairs = cKDTree(points).sparse_distance_matrix(cKDTree(mids), reach, output_type="ndarray")
    i, j = pairs["i"], pairs["j"]
    d = point_segment_distance(points[i], a[j], b[j])
    ok = np.zeros(len(points), dtype=bool)
    ok[i[d <= allowed_seg[j] + 1e-9]] = True
    centres, radii = soma_spheres(pt)
    for c, r in zip(centres, radii, strict=True):
        ok |= np.linalg.norm(points - c, axis=1) <= r + sphere_slack + 1e-9
    return ok


def node_voxels(pt: PhysicalTracing, grid: VoxelGrid):
    return np.floor(grid.to_index(pt.xyz_um[:, ::-1]) + 0.5).astype(np.int64)


def is_set(mask: SparseMask, vox: np.ndarray) -> np.ndarray:
    ny, nx = mask.shape[1:]
    c = mask.coords.astype(np.int64)
    lin = (c[:, 0] * ny + c[:, 1]) * nx + c[:, 2]
    q = (vox[:, 0] * ny + vox[:, 1]) * nx + vox[:, 2]
    return np.isin(q, lin)


# ---------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("path", HEMIBRAIN + NEUROMORPHO, ids=lambda p: p.name)
def test_read_real_files(path: Path) -> None:
    t = read_swc(path)
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert t.n_nodes == len(rows)
    assert t.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # x, y, z as stored, in file units
    np.testing.assert_array_equal(t.xyz[0], [float(v) for v in rows[0][2:5]])
    np.testing.assert_array_equal(t.ids, [int(r[0]) for r in rows])
    assert (t.parent_index[t.roots] == -1).all()
    assert t.tree.min() == 0 and t.tree.max() == t.n_trees - 1
    # parents resolve to the stated ids
    child = t.parent_index >= 0
    np.testing.assert_array_equal(
        t.ids[t.parent_index[child]], [int(r[6]) for r, c in zip(rows, child, strict=True) if c]
    )
    if path in HEMIBRAIN:
        assert t.unit is None and t.unit_source is None
        assert t.n_trees == (2 if path.name == "754538881.swc" else 1)
        assert all(s.kind == "single" for s in t.somata)
    else:
        # NeuroMorpho StdSwc: micrometres by convention, SCALE recorded not applied
        assert (t.unit, t.unit_source, t.header_scale) == ("um", "stdswc", (1.0, 1.0, 1.0))
        assert t.n_trees == 1


def test_two_roots_are_two_trees() -> None:
    t = read_swc(SWC_DIR / "754538881.swc")
    assert t.n_trees == 2
    assert list(t.tree[t.roots]) == [0, 1]
    assert np.bincount(t.tree).tolist() == [4833, 48]


def test_units_and_axis_order(tmp_path: Path) -> None:
    t = read_swc(HEMIBRAIN[0])
    with pytest.raises(SourceError, match="states no unit"):
        to_physical(t)
    iso = to_physical(t, voxel_size=0.008)
    np.testing.assert_allclose(iso, t.xyz * 0.008)
    np.testing.assert_allclose(to_physical(t, unit="8 nm"), iso)
    np.testing.assert_allclose(to_physical(t, unit="nm"), t.xyz * 1e-3)
    # voxel_size and offset are (z, y, x); the result keeps SWC's (x, y, z)
    an = to_physical(t, voxel_size=(0.04, 0.008, 0.004), offset=(100.0, 10.0, 1.0))
    np.testing.assert_allclose(an[:, 0], t.xyz[:, 0] * 0.004 + 1.0)
    np.testing.assert_allclose(an[:, 1], t.xyz[:, 1] * 0.008 + 10.0)
    np.testing.assert_allclose(an[:, 2], t.xyz[:, 2] * 0.04 + 100.0)
    nm = read_swc(NEUROMORPHO[0])
    np.testing.assert_allclose(to_physical(nm), nm.xyz)
    assert parse_unit("µm") == ("um", 1.0) and parse_unit("8 nanometer") == ("nm", 8.0)
    with pytest.raises(ValueError):
        calibrate(t, unit="um", voxel_size=1.0)

    body = "1 1 10 20 30 2 -1\n2 3 12 20 30 1 1\n"
    cases = {
        '# Meta: {"id": "1", "units": "8 nanometer"}\n': ("nm", (8.0,) * 3, 0.008),
        "# UNIT nm\n": ("nm", (1.0,) * 3, 0.001),
        "# units: um\n": ("um", (1.0,) * 3, 1.0),
        "# All positions and radii in micrometers\n": ("um", (1.0,) * 3, 1.0),
        "# All positions and radii in pixels\n# Voxel separation (x,y,z): 0.25, 0.5, 2.0\n": (
            "pixel",
            (1.0,) * 3,
            None,
        ),
    }
    for i, (head, (unit, scale, um)) in enumerate(cases.items()):
        f = tmp_path / f"u{i}.swc"
        f.write_text(head + body)
        tr = read_swc(f)
        assert (tr.unit, tr.unit_scale, tr.unit_source) == (unit, scale, "header"), head
        if um is not None:
            np.testing.assert_allclose(to_physical(tr), tr.xyz * um)
            continue
        # pixels: the stated separation is recorded, the voxel size must be given
        assert tr.voxel_separation == (0.25, 0.5, 2.0)
        with pytest.raises(SourceError, match="states pixels without a voxel size"):
            to_physical(tr)
        xyz = to_physical(tr, voxel_size=(2.0, 0.5, 0.25))  # (z, y, x)
        np.testing.assert_allclose(xyz, tr.xyz * [0.25, 0.5, 2.0])


def test_lenient_forms(tmp_path: Path) -> None:
    """Non-consecutive ids, parent after child, float ids, missing radius, inline comments."""
    f = tmp_path / "ok.swc"
    f.write_text(
        "# comment\n\n"
        "40 3 1 1 1 nan 7   # child before its parent\n"
        "7.0 1 0 0 0 2.5 -1\n"
        "9 3 2 2 2 -1 40\n"
        "100 2 5 5 5 1 -1\n"
    )
    t = read_swc(f)
    assert t.ids.tolist() == [40, 7, 9, 100]
    assert t.parent_index.tolist() == [1, -1, 0, -1]
    assert t.tree.tolist() == [0, 0, 0, 1] and t.roots.tolist() == [1, 3]
    assert t.radius.tolist() == [0.0, 2.5, 0.0, 1.0] and t.n_missing_radius == 2
    assert t.lines.tolist() == [3, 4, 5, 6]
    assert [s.kind for s in t.somata] == ["single"]


BAD = {
    "missing_parent": ("1 1 0 0 0 1 -1\n2 3 1 0 0 1 1\n3 3 2 0 0 1 5\n", 3, "parent id 5"),
    "cycle": ("1 1 0 0 0 1 -1\n2 3 1 0 0 1 4\n3 3 2 0 0 1 2\n4 3 3 0 0 1 3\n", 2, "cycle"),
    "self_parent": ("1 1 0 0 0 1 -1\n2 3 1 0 0 1 2\n", 2, "own parent"),
    "duplicate_id": ("1 1 0 0 0 1 -1\n2 3 1 0 0 1 1\n2 3 2 0 0 1 1\n", 3, "duplicate id 2"),
    "non_numeric": ("1 1 0 0 0 1 -1\n2 3 1 abc 0 1 1\n", 2, "'abc' is not a number"),
    "non_integer_id": ("1 1 0 0 0 1 -1\n2.5 3 1 0 0 1 1\n", 2, "not an integer"),
    "wrong_columns": ("1 1 0 0 0 1 -1\n2 3 1 0 0 1\n", 2, "6 columns, expected 7"),
    "extra_columns": ("1 1 0 0 0 1 -1 9\n", 1, "8 columns"),
    "infinite": ("1 1 inf 0 0 1 -1\n", 1, "not finite"),
    "empty": ("", 1, "empty"),
    "comments_only": ("# SWC\n# nothing\n", 2, "no node rows"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_files(tmp_path: Path, case: str) -> None:
    text, line, words = BAD[case]
    f = tmp_path / f"{case}.swc"
    f.write_text("# header\n" * 0 + text)
    with pytest.raises(SourceError) as info:
        read_swc(f)
    err = info.value
    assert err.path == str(f)
    assert f"line {line}:" in err.reason, err.reason
    assert words in err.reason, err.reason
    assert str(f) in str(err)


# ---------------------------------------------------------------------------
# rasterisation on the real tracings


def sparse_components(coords: np.ndarray) -> int:
    """26-connected components of a voxel list without a dense array (for fine grids)."""
    c = coords.astype(np.int64)
    c = c - c.min(axis=0) + 1
    ny, nx = int(c[:, 1].max()) + 2, int(c[:, 2].max()) + 2
    lin = (c[:, 0] * ny + c[:, 1]) * nx + c[:, 2]
    order = np.argsort(lin)
    lin = lin[order]
    rows, cols = [], []
    for dz, dy, dx in np.argwhere(CUBE) - 1:
        if (dz, dy, dx) <= (0, 0, 0):
            continue
        o = (dz * ny + dy) * nx + dx
        j = np.minimum(np.searchsorted(lin, lin + o), len(lin) - 1)
        hit = lin[j] == lin + o
        rows.append(np.flatnonzero(hit))
        cols.append(j[hit])
    r, q = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r)), (r, q)), shape=(len(lin), len(lin)))
    return int(connected_components(graph, directed=False)[0])


#: trees of 754538881.swc come within 0.99 um of each other: at 1 um voxels (and at
#: (1, 0.5, 0.5)) their voxels touch, so the binary mask has one component there; the
#: per-tree labels still have one component each.
MERGED = {("754538881.swc", ISO), ("754538881.swc", ANISO)}


def check_mask(pt: PhysicalTracing, grid: VoxelGrid, mode: str) -> SparseMask:
    mask = rasterize(pt, grid, mode=mode, labels="tree")
    tr = pt.tracing
    assert mask.outside == ()
    assert len(mask.label_info) == tr.n_trees
    # unique voxels inside the grid
    assert len(np.unique(mask.coords, axis=0)) == mask.n_voxels
    assert ((mask.coords >= 0) & (mask.coords < grid.shape)).all()
    # one 26-connected component per tree label, as many as trees in the binary mask
    box = mask.bbox
    assert box is not None
    expected = 1 if (Path(tr.path).name, grid.voxel_size) in MERGED else tr.n_trees
    if np.prod(np.diff(np.reshape(box, (3, 2)), axis=1)) < 40e6:
        dense = mask.to_dense_block(slice(*box[0:2]), slice(*box[2:4]), slice(*box[4:6]))
        for info in mask.label_info:
            _, n = ndimage.label(dense == info.label, structure=CUBE)
            assert n == 1, (tr.path, info, n)
        _, n = ndimage.label(dense > 0, structure=CUBE)
        assert n == expected == sparse_components(mask.coords)
    else:  # a fine grid: the same count without a dense array
        for info in mask.label_info:
            assert sparse_components(mask.coords[mask.labels == info.label]) == 1
        assert sparse_components(mask.coords) == expected
    # every node's voxel is set, with its tree's label
    vox = node_voxels(pt, grid)
    assert is_set(mask, vox).all()
    # no voxel further than the radius (radius mode) or half a voxel diagonal (lines)
    # from a segment, or than the soma radius (+ half a diagonal) from a soma centre
    phys = grid.to_physical(mask.coords)
    half = grid.half_diagonal_um
    _, _, r = segments(pt)
    allowed = np.full(r.shape, half) if mode == "line" else np.maximum(r, half)
    ok = explained(phys, pt, allowed, half)
    assert ok.all(), f"{(~ok).sum()} voxels far from the tracing"
    return mask


CASES = [(p, ISO, "line") for p in HEMIBRAIN + NEUROMORPHO]
CASES += [(p, ANISO, "radius") for p in HEMIBRAIN[:3] + NEUROMORPHO]
CASES += [(HEMIBRAIN[4], ANISO, "line"), (HEMIBRAIN[4], ISO, "radius")]
CASES += [(p, (0.5, 0.25, 0.25), "radius") for p in NEUROMORPHO]
# fine enough to separate the two trees of 754538881.swc (0.99 um apart)
CASES += [(SWC_DIR / "754538881.swc", (0.5, 0.25, 0.25), m) for m in ("line", "radius")]


@pytest.mark.parametrize(
    ("path", "voxel_size", "mode"), CASES, ids=[f"{c[0].name}-{c[1]}-{c[2]}" for c in CASES]
)
def test_rasterize_real(path: Path, voxel_size: tuple[float, float, float], mode: str) -> None:
    pt = calibrated(path)
    grid = VoxelGrid.covering(pt.xyz_um, voxel_size, margin_um=4.0)
    check_mask(pt, grid, mode)


def test_two_trees_labels_and_files() -> None:
    pt = calibrated(SWC_DIR / "754538881.swc")
    other = calibrated(HEMIBRAIN[0])
    both = np.concatenate([pt.xyz_um, other.xyz_um])
    grid = VoxelGrid.covering(both, ISO, margin_um=2.0)
    per_tree = rasterize([pt, other], grid, labels="tree")
    assert [(i.label, i.tree, i.tracing_index) for i in per_tree.label_info] == [
        (1, 0, 0),
        (2, 1, 0),
        (3, 0, 1),
    ]
    assert per_tree.label_info[0].sha256 == pt.tracing.sha256
    per_file = rasterize([pt, other], grid, labels="file")
    binary = rasterize([pt, other], grid, labels="binary")
    assert set(np.unique(per_file.labels)) == {1, 2}
    assert set(np.unique(binary.labels)) == {1}
    # the same voxels whatever the labelling; overlaps keep the smallest label
    for m in (per_file, binary):
        np.testing.assert_array_equal(m.coords, per_tree.coords)
    np.testing.assert_array_equal(per_file.labels == 1, per_tree.labels <= 2)
    alone = rasterize(other, grid)
    overlap = is_set(per_tree, alone.coords) & is_set(rasterize(pt, grid), alone.coords)
    assert overlap.any()  # these neurons cross at 1 um
    lab = per_tree.to_dense()[tuple(alone.coords[overlap].T)]
    assert (lab <= 2).all()  # the first file's (smaller) labels win


def test_round_trip_through_crop() -> None:
    pt = calibrated(SWC_DIR / "754538881.swc")
    grid = VoxelGrid(shape=(200, 500, 400), voxel_size=ANISO, origin=(80.0, 90.0, 10.0))
    mask = rasterize(pt, grid, mode="line")
    assert mask.outside == ()
    box = bbox_with_margin(mask, margin_um=3.0)
    assert box is not None
    z0, z1, y0, y1, x0, x1 = box
    lo = mask.coords.min(axis=0)
    hi = mask.coords.max(axis=0) + 1
    assert (z0, y0, x0) == tuple(np.maximum(lo - np.array((3, 6, 6)), 0))
    assert (z1, y1, x1) == tuple(np.minimum(hi + np.array((3, 6, 6)), grid.shape))
    crop = mask.to_dense_block(slice(z0, z1), slice(y0, y1), slice(x0, x1))
    # every node lies in the crop with the requested margin (3 um)
    nodes_zyx = pt.xyz_um[:, ::-1]
    crop_lo = grid.to_physical(np.array([[z0, y0, x0]]))[0] - 0.5 * np.array(ANISO)
    crop_hi = grid.to_physical(np.array([[z1, y1, x1]]))[0] - 0.5 * np.array(ANISO)
    assert (nodes_zyx - crop_lo >= 3.0 - 1e-9).all() and (crop_hi - nodes_zyx >= 3.0).all()
    # crop voxels -> physical through the crop offset and voxel size -> on the segments
    local = np.argwhere(crop)
    phys = grid.origin + (local + np.array((z0, y0, x0))) * np.asarray(ANISO)
    _, _, r = segments(pt)
    ok = explained(phys, pt, np.full(r.shape, grid.half_diagonal_um), grid.half_diagonal_um)
    assert ok.all()
    assert len(local) == mask.n_voxels


def test_nodes_outside_are_reported() -> None:
    pt = calibrated(SWC_DIR / "754538881.swc")
    full = VoxelGrid.covering(pt.xyz_um, ISO, margin_um=1.0)
    # a deliberately small grid: the middle third along x
    nx = full.shape[2]
    small = VoxelGrid(
        (full.shape[0], full.shape[1], nx // 3),
        ISO,
        (full.origin[0], full.origin[1], full.origin[2] + nx // 3),
    )
    mask = rasterize(pt, small, mode="radius")
    vox = node_voxels(pt, small)
    out = ~((vox >= 0) & (vox < small.shape)).all(axis=1)
    assert mask.n_nodes_outside == int(out.sum()) > 0
    per_tree = {o.tree: o for o in mask.outside}
    for t in range(pt.tracing.n_trees):
        n = int(out[pt.tracing.tree == t].sum())
        if n:
            o = per_tree[t]
            assert (o.n_outside, o.n_nodes) == (n, int((pt.tracing.tree == t).sum()))
            assert o.path == pt.tracing.path
            first = np.flatnonzero(out & (pt.tracing.tree == t))[0]
            assert o.first_line == pt.tracing.lines[first]
    assert mask.n_segments_clipped > 0
    assert ((mask.coords >= 0) & (mask.coords < small.shape)).all()
    assert is_set(mask, vox[~out]).all()
    # clipped segments are drawn up to the border
    assert mask.coords[:, 2].min() == 0 and mask.coords[:, 2].max() == small.shape[2] - 1


def _with_three_point_soma(tmp_path: Path, radius: float) -> Path:
    """A real NeuroMorpho neuron with a NeuroMorpho 3-point soma appended: ids 9001-9003
    at the end of the file (parents listed after their children), the soma centre
    ``radius`` before the original root along x, side points at +/- radius along y."""
    src = NEUROMORPHO[1]
    t = read_swc(src)
    root = t.roots[0]
    x, y, z = t.xyz[root]
    cx = x - radius
    out = []
    for ln in src.read_text().splitlines():
        f = ln.split()
        if f and not ln.lstrip().startswith("#") and int(f[0]) == t.ids[root]:
            f[6] = "9001"
            ln = " ".join(f)
        out.append(ln)
    out += [
        f"9001 1 {cx} {y} {z} {radius} -1",
        f"9002 1 {cx} {y - radius} {z} {radius} 9001",
        f"9003 1 {cx} {y + radius} {z} {radius} 9001",
    ]
    path = tmp_path / "with_soma.CNG.swc"
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.mark.parametrize("voxel_size", [ISO, ANISO, (0.5, 0.25, 0.25)])
def test_three_point_soma_is_a_sphere_not_a_bar(tmp_path: Path, voxel_size) -> None:
    radius = 4.0
    t = read_swc(_with_three_point_soma(tmp_path, radius))
    assert [s.kind for s in t.somata] == ["three_point"]
    soma = t.somata[0]
    assert t.ids[soma.center] == 9001 and soma.radius == radius and t.n_trees == 1
    pt = calibrate(t)
    grid = VoxelGrid.covering(pt.xyz_um, voxel_size, margin_um=2 * radius)
    centre = pt.xyz_um[soma.center, ::-1]
    half = grid.half_diagonal_um

    def bar_voxels(mask: SparseMask) -> int:
        d = grid.to_physical(mask.coords) - centre  # (z, y, x)
        across = np.hypot(d[:, 0], d[:, 2])
        region = (np.abs(d[:, 1]) > radius + half) & (np.abs(d[:, 1]) <= 2 * radius)
        return int((region & (across <= radius / 2)).sum())

    for mode in ("line", "radius"):
        mask = check_mask(pt, grid, mode)
        assert bar_voxels(mask) == 0, mode
        # the sphere is filled: every voxel centre within radius - half diagonal is set
        idx = np.argwhere(
            np.ones(tuple(np.ceil(2 * radius / np.array(voxel_size)).astype(int) + 3), bool)
        )
        idx += np.rint(grid.to_index(centre[None]))[0].astype(int) - idx.max(axis=0) // 2
        inner = idx[np.linalg.norm(grid.to_physical(idx) - centre, axis=1) <= radius - half]
        assert len(inner) and is_set(mask, inner).all()
    # the naive rendering (segments through the three points) does draw the bar
    naive = rasterize(pt, grid, mode="radius", soma="segments")
    assert bar_voxels(naive) > 0


def test_single_node_soma_sphere_anisotropic() -> None:
    pt = calibrated(HEMIBRAIN[0])
    soma = pt.tracing.somata[0]
    r = soma.radius * HEMIBRAIN_VOXEL_UM
    vs = (1.0, 0.25, 0.25)
    centre = pt.xyz_um[soma.center, ::-1]
    grid = VoxelGrid((41, 81, 81), vs, tuple(centre - np.array(vs) * (20, 40, 40)))
    mask = rasterize(pt, grid, mode="line")
    d = grid.to_physical(mask.coords) - centre
    near = np.linalg.norm(d, axis=1) <= r
    # the sphere is an ellipsoid in voxel units: +-r/0.25 voxels in y, x; +-r in z
    span = np.ptp(mask.coords[near], axis=0) // 2
    assert tuple(span) == (int(r / 1.0), int(r / 0.25), int(r / 0.25))


# ---------------------------------------------------------------------------
# building blocks


def test_line_voxels_match_skimage_line_nd() -> None:
    pt = calibrated(NEUROMORPHO[0])
    grid = VoxelGrid.covering(pt.xyz_um, ANISO)
    cont = grid.to_index(pt.xyz_um[:, ::-1])
    child = np.flatnonzero(pt.tracing.parent_index >= 0)
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(-5, 30, (300, 3)), cont[pt.tracing.parent_index[child]]])
    b = np.concatenate([a[:300] + rng.normal(0, 5, (300, 3)), cont[child]])
    b[:10] = a[:10]  # zero length
    b[10:20, 1:] = a[10:20, 1:]  # along one axis
    v, seg = line_voxels(a, b)
    n_half = 0
    for i in range(len(a)):
        ref = np.stack(line_nd(a[i], b[i], endpoint=True), axis=1)
        samples = np.stack(line_nd(a[i], b[i], endpoint=True, integer=False), axis=1)
        # equal except where a sample is exactly x.5 (rounded half up here, half to
        # even by line_nd): the NeuroMorpho z values are integers, so these occur
        exact = ~(samples % 1 == 0.5).any(axis=1)
        n_half += int((~exact).sum())
        assert len(v[seg == i]) == len(ref)
        np.testing.assert_array_equal(v[seg == i][exact], ref[exact])
        assert (np.abs(v[seg == i] - ref) <= 1).all()
    assert n_half > 0
    # samples exactly on x.5: line_nd (round half to even) can skip a voxel on decreasing
    # lines; line_voxels stays 26-connected and keeps both end voxels
    a = np.array([[-3.0, 17.5, 25.0], [0.5, 0.5, 0.5], [4.5, 2.0, 7.5]])
    b = np.array([[-2.5, 11.5, 23.5], [6.5, 3.5, 0.5], [-3.5, 2.0, 7.5]])
    v, seg = line_voxels(a, b)
    for i in range(len(a)):
        line = v[seg == i]
        assert (np.abs(np.diff(line, axis=0)) <= 1).all()
        np.testing.assert_array_equal(line[[0, -1]], np.floor(np.stack([a[i], b[i]]) + 0.5))
    ref = np.stack(line_nd(a[0], b[0], endpoint=True), axis=1)
    assert (np.abs(np.diff(ref, axis=0)) > 1).any()  # the skimage behaviour avoided


def test_dense_blocks_and_bbox() -> None:
    pt = calibrated(NEUROMORPHO[0])
    grid = VoxelGrid.covering(pt.xyz_um, ANISO, margin_um=1.0)
    mask = rasterize(pt, grid, mode="radius")
    dense = mask.to_dense()
    assert dense.dtype == np.uint8 and int((dense > 0).sum()) == mask.n_voxels
    zs = [0, 17, 40, grid.shape[0]]
    ys = [0, 64, grid.shape[1]]
    rebuilt = np.zeros_like(dense)
    for z0, z1 in itertools.pairwise(zs):
        for y0, y1 in itertools.pairwise(ys):
            rebuilt[z0:z1, y0:y1] = mask.to_dense_block(slice(z0, z1), slice(y0, y1), slice(None))
    np.testing.assert_array_equal(rebuilt, dense)
    assert bbox_with_margin(mask.coords, image_shape=grid.shape) == mask.bbox
    box = bbox_with_margin(mask, margin_voxels=1000)
    assert box == (0, grid.shape[0], 0, grid.shape[1], 0, grid.shape[2])
    assert bbox_with_margin(np.zeros((0, 3), int), image_shape=(5, 5, 5)) is None
    with pytest.raises(ValueError):
        bbox_with_margin(mask, margin_um=1.0, margin_voxels=1)
