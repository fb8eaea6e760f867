"""SWC neuron tracings: reading, validating and calibrating to micrometres.

Format
------
An SWC file (Cannon et al. 1998, J. Neurosci. Methods 84:49-54; NeuroMorpho.Org
"StdSwc" 1.3) is a text table with one node per line and seven whitespace-separated
columns::

    id  type  x  y  z  radius  parent

``id`` is an integer node id, ``type`` the structure (0 undefined, 1 soma, 2 axon,
3 basal dendrite, 4 apical dendrite, others custom), ``x y z`` the position and
``radius`` the radius, both in the file's units, and ``parent`` the id of the parent
node, negative (``-1``) for a root. Lines starting with ``#`` are comments; the
comments before the first node form the *header*. Text after a ``#`` on a data line is
a comment too.

What :func:`read_swc` accepts beyond the strict format (what real files do):

- several roots in one file (a forest: fragments, or several neurons); trees are
  numbered ``0..n_trees-1`` in the order their roots appear in the file;
- ids that are not consecutive, not starting at 1, and parents listed after their
  children (ids are resolved after the whole file is read);
- ids and types written as integral floats (``1.0``);
- a radius that is missing (``nan``, ``NA``, ``none``, ``null``) or negative: read as
  0 and counted in :attr:`Tracing.n_missing_radius`;
- the NeuroMorpho 3-point soma (a type-1 node with two type-1 children at equal and
  opposite offsets of length ``radius``, by the StdSwc convention along y) and the
  single-node soma; both are described by :class:`Soma` so that a rasteriser draws a
  sphere, not a bar through the three points. Other type-1 groups (soma contours or
  cylinder stacks) are ``kind="multi"`` and drawn as ordinary segments.

Errors (all :class:`bidspack.errors.SourceError` with the file path and ``line N`` in
the reason): an empty file or one without nodes, a row with other than 7 columns,
a non-numeric or non-finite field, a duplicate id, a parent id that is not in the file,
a node that is its own parent, and cycles.

Units
-----
SWC does not fix a unit. :func:`read_swc` takes one from the header when it states one:

- navis: ``# Meta: {"units": "8 nanometer", ...}``;
- SNT (Fiji): ``# All positions and radii in <unit>``; its
  ``# Voxel separation (x,y,z): sx, sy, sz`` is recorded in
  :attr:`Tracing.voxel_separation` but never used as a size: SNT writes it for
  calibrated images (coordinates already physical), and other tools write
  ``1, 1, 1`` with pixel coordinates, so a file in pixels needs ``voxel_size=``;
- generic ``# UNIT nm``, ``# units: um``, ``# Unit = 8 nm``;
- NeuroMorpho.Org standardised files (a header mentioning ``StdSwc`` or
  ``NeuroMorpho``): micrometres by the NeuroMorpho convention (unit source
  ``"stdswc"``). Their ``# SCALE sx sy sz`` line is recorded in
  :attr:`Tracing.header_scale` but not applied: the standardised coordinates are
  already in micrometres.

Otherwise :attr:`Tracing.unit` is ``None`` and :func:`to_physical` needs ``unit=`` or
``voxel_size=`` (hemibrain skeletons, for example, are in 8 nm voxels and say so
nowhere in the file).

Axis order
----------
**SWC stores x, y, z; bidspack images are indexed (z, y, x).** Arrays that mirror SWC
columns (:attr:`Tracing.xyz`, the result of :func:`to_physical`) keep the SWC order
``(x, y, z)`` in their last axis. Every parameter that describes image space -- voxel
sizes, offsets, origins -- is ``(z, y, x)`` in micrometres, like every other bidspack
image parameter. The rasteriser (:mod:`bidspack.io.rasterize`) does the reversal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from bidspack.errors import SourceError

__all__ = [
    "PhysicalTracing",
    "Soma",
    "Tracing",
    "calibrate",
    "parse_unit",
    "read_swc",
    "to_physical",
    "tracing_from_arrays",
]

#: Units understood in headers and in ``unit=``; value: micrometres per unit, or
#: ``None`` for pixels/voxels (their size must be stated separately).
UNIT_TO_UM: dict[str, float | None] = {
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micrometer": 1.0,
    "micrometers": 1.0,
    "micrometre": 1.0,
    "micrometres": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometers": 1e-3,
    "nanometre": 1e-3,
    "nanometres": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimeters": 1e3,
    "millimetre": 1e3,
    "millimetres": 1e3,
    "m": 1e6,
    "meter": 1e6,
    "meters": 1e6,
    "metre": 1e6,
    "metres": 1e6,
    "pixel": None,
    "pixels": None,
    "px": None,
    "voxel": None,
    "voxels": None,
}
_CANONICAL = {1.0: "um", 1e-3: "nm", 1e3: "mm", 1e6: "m"}
_MISSING = {"nan", "na", "n/a", "none", "null", "-"}
SOMA_TYPE = 1

UnitSource = Literal["header", "stdswc"]
SomaKind = Literal["single", "three_point", "multi"]


def parse_unit(text: str) -> tuple[str, float]:
    """Parse a unit such as ``"um"``, ``"µm"``, ``"nanometer"``, ``"8 nm"``, ``"pixel"``.

    Returns:
        ``(name, factor)``: the canonical name (``"um"``, ``"nm"``, ``"mm"``, ``"m"`` or
        ``"pixel"``) and the number of those units per coordinate unit (``8.0`` for
        ``"8 nm"``, else 1.0).

    Raises:
        ValueError: the text is not a known unit.
    """
    s = text.strip().strip("\"'").strip()
    m = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?\s*([^\s\d].*)", s)
    if not m:
        raise ValueError(f"not a unit: {text!r}")
    factor = float(m.group(1)) if m.group(1) else 1.0
    name = m.group(2).strip().lower().rstrip(".")
    if name not in UNIT_TO_UM or not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"not a unit: {text!r}")
    per = UNIT_TO_UM[name]
    return ("pixel" if per is None else _CANONICAL[per]), factor


@dataclass(frozen=True)
class Soma:
    """One soma: a connected group of type-1 nodes.

    Attributes:
        kind: ``"single"`` (one type-1 node), ``"three_point"`` (the NeuroMorpho
            3-point soma: a centre and two children at +/- radius, by convention along
            y) or ``"multi"`` (any other group: contour or cylinder stack, drawn as
            ordinary segments).
        center: index (into the tracing's arrays) of the centre node; for ``"multi"``
            the group's first node in file order.
        indices: indices of all nodes of the group, centre first.
        radius: the centre's radius in file units (for ``"three_point"`` the mean
            distance of the side points from the centre when the radius column is 0).
        tree: the tree the soma belongs to.
    """

    kind: SomaKind
    center: int
    indices: tuple[int, ...]
    radius: float
    tree: int


@dataclass(frozen=True, eq=False)
class Tracing:
    """A validated SWC tracing; arrays are read-only and parallel (one row per node).

    Attributes:
        path: the file read (or a label for tracings built from arrays).
        sha256: hex sha256 of the file bytes (``""`` when built from arrays).
        ids: ``(n,)`` int64 SWC ids, in file order.
        types: ``(n,)`` int32 SWC types.
        xyz: ``(n, 3)`` float64 positions **in x, y, z order** as stored, in file units.
        radius: ``(n,)`` float64 radii in file units (missing/negative read as 0).
        parent_index: ``(n,)`` int64 index of the parent node in these arrays, -1 for
            a root.
        tree: ``(n,)`` int64 tree number of each node, ``0..n_trees-1`` in root order.
        roots: ``(n_trees,)`` int64 indices of the roots, in file order.
        lines: ``(n,)`` int64 1-based line number of each node in the file.
        unit: the unit stated by the header (``"um"``, ``"nm"``, ``"mm"``, ``"m"``,
            ``"pixel"``) or ``None``.
        unit_scale: ``(x, y, z)`` units per coordinate unit (``(8, 8, 8)`` for navis
            ``"8 nanometer"``, else ones).
        unit_source: where the unit came from: ``"header"``, ``"stdswc"`` (NeuroMorpho
            convention) or ``None``.
        unit_line: the header line the unit was read from (1-based) or ``None``.
        voxel_separation: the SNT ``# Voxel separation (x,y,z)`` values if present
            (recorded, not applied).
        header: the header comment lines (without ``#``), in order.
        header_scale: the NeuroMorpho ``# SCALE`` factors ``(x, y, z)`` if present
            (recorded, not applied).
        somata: the somata found (see :class:`Soma`).
        n_missing_radius: rows whose radius was missing, non-finite or negative.
    """

    path: str
    sha256: str
    ids: np.ndarray
    types: np.ndarray
    xyz: np.ndarray
    radius: np.ndarray
    parent_index: np.ndarray
    tree: np.ndarray
    roots: np.ndarray
    lines: np.ndarray
    unit: str | None = None
    unit_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit_source: UnitSource | None = None
    unit_line: int | None = None
    voxel_separation: tuple[float, float, float] | None = None
    header: tuple[str, ...] = ()
    header_scale: tuple[float, float, float] | None = None
    somata: tuple[Soma, ...] = ()
    n_missing_radius: int = 0

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return int(self.ids.shape[0])

    @property
    def n_trees(self) -> int:
        """Number of trees (roots)."""
        return int(self.roots.shape[0])

    @property
    def soma(self) -> Soma | None:
        """The first soma, or ``None`` (see :attr:`somata` for all)."""
        return self.somata[0] if self.somata else None

    def __repr__(self) -> str:
        return (
            f"Tracing({self.path!r}, nodes={self.n_nodes}, trees={self.n_trees}, "
            f"unit={self.unit!r}, somata={[s.kind for s in self.somata]})"
        )


# ---------------------------------------------------------------------------
# reading


def _number(tok: str, path: str, line: int, column: str) -> float:
    try:
        value = float(tok)
    except ValueError:
        raise SourceError(path, f"line {line}: {column} {tok!r} is not a number") from None
    return value


def _integer(tok: str, path: str, line: int, column: str) -> int:
    try:
        return int(tok)
    except ValueError:
        pass
    value = _number(tok, path, line, column)
    if not math.isfinite(value) or value != int(value):
        raise SourceError(path, f"line {line}: {column} {tok!r} is not an integer")
    return int(value)


_COLUMNS = ("id", "type", "x", "y", "z", "radius", "parent")


def read_swc(path: str | Path) -> Tracing:
    """Read and validate one SWC file.

    Args:
        path: the ``.swc`` file (any suffix; NeuroMorpho's ``.CNG.swc.txt`` too).

    Returns:
        The :class:`Tracing`, positions in file units in ``(x, y, z)`` order.

    Raises:
        SourceError: the file cannot be read, is empty, or is malformed; the reason
            names the 1-based line (``line 12: parent id 7 is not in the file``).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SourceError(p, f"cannot read the SWC file: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    spath = str(p)
    header: list[tuple[int, str]] = []
    ids: list[int] = []
    types: list[int] = []
    coords: list[tuple[float, float, float]] = []
    radii: list[float] = []
    parents: list[int] = []
    lines: list[int] = []
    n_missing = 0
    n_lines = 0
    for n_lines, raw in enumerate(text.splitlines(), start=1):
        body, hash_, comment = raw.partition("#")
        if hash_ and not ids and not body.strip():
            header.append((n_lines, comment.strip()))
        toks = body.split()
        if not toks:
            continue
        if len(toks) != 7:
            raise SourceError(
                spath,
                f"line {n_lines}: {len(toks)} columns, expected 7 ({' '.join(_COLUMNS)})",
            )
        nid = _integer(toks[0], spath, n_lines, "id")
        ntype = _integer(toks[1], spath, n_lines, "type")
        xyz = tuple(_number(toks[i], spath, n_lines, _COLUMNS[i]) for i in (2, 3, 4))
        if not all(math.isfinite(v) for v in xyz):
            raise SourceError(spath, f"line {n_lines}: coordinates {toks[2:5]} are not finite")
        if toks[5].lower() in _MISSING:
            r = 0.0
            n_missing += 1
        else:
            r = _number(toks[5], spath, n_lines, "radius")
            if not math.isfinite(r) or r < 0:
                r = 0.0
                n_missing += 1
        par = _integer(toks[6], spath, n_lines, "parent")
        ids.append(nid)
        types.append(ntype)
        coords.append((xyz[0], xyz[1], xyz[2]))
        radii.append(r)
        parents.append(par)
        lines.append(n_lines)
    if not ids:
        what = "empty" if not data.strip() else f"has no node rows ({n_lines} lines)"
        raise SourceError(spath, f"line {max(n_lines, 1)}: the SWC file is {what}")
    unit = _header_unit([h for h in header])
    return tracing_from_arrays(
        ids,
        types,
        np.asarray(coords, dtype=np.float64),
        radii,
        parents,
        path=spath,
        sha256=digest,
        lines=lines,
        header=tuple(h for _, h in header),
        unit=unit,
        n_missing_radius=n_missing,
    )


@dataclass(frozen=True)
class _HeaderUnit:
    unit: str | None = None
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: UnitSource | None = None
    line: int | None = None
    voxel_separation: tuple[float, float, float] | None = None
    header_scale: tuple[float, float, float] | None = None


_SNT_UNIT = re.compile(r"all positions and radii in\s+(.+?)\s*$", re.IGNORECASE)
_SNT_SEP = re.compile(
    r"voxel separation\s*\(x,\s*y,\s*z\)\s*:\s*([^,\s]+)\s*,\s*([^,\s]+)\s*,\s*([^,\s]+)",
    re.IGNORECASE,
)
_GENERIC_UNIT = re.compile(r"^units?\s*[:=]?\s+(.+?)\s*$|^units?\s*[:=]\s*(.+?)\s*$", re.I)
_SCALE = re.compile(r"^scale\s+(\S+)\s+(\S+)\s+(\S+)\s*$", re.IGNORECASE)


def _header_unit(header: Sequence[tuple[int, str]]) -> _HeaderUnit:
    """Find a unit statement in the header lines (see the module docstring)."""
    unit: str | None = None
    scale = (1.0, 1.0, 1.0)
    source: UnitSource | None = None
    where: int | None = None
    sep: tuple[float, float, float] | None = None
    header_scale: tuple[float, float, float] | None = None
    stdswc = False
    for line, text in header:
        low = text.lower()
        if "stdswc" in low or "neuromorpho" in low:
            stdswc = True
        m = _SCALE.match(text)
        if m:
            with contextlib.suppress(ValueError):
                header_scale = (float(m[1]), float(m[2]), float(m[3]))
        m = _SNT_SEP.search(text)
        if m:
            try:
                sep = (float(m[1]), float(m[2]), float(m[3]))
            except ValueError:
                sep = None
        if unit is not None:
            continue
        candidate: str | None = None
        if low.startswith("meta:"):
            try:
                meta = json.loads(text[5:].strip())
            except ValueError:
                meta = None
            if isinstance(meta, dict):
                for key in ("units", "unit"):
                    if isinstance(meta.get(key), str):
                        candidate = meta[key]
                        break
        else:
            m = _SNT_UNIT.search(text) or _GENERIC_UNIT.match(text)
            if m:
                candidate = next(g for g in m.groups() if g)
        if candidate is None:
            continue
        try:
            name, factor = parse_unit(candidate)
        except ValueError:
            continue  # e.g. navis "dimensionless": no unit stated
        unit, scale, source, where = name, (factor, factor, factor), "header", line
    if unit is None and stdswc:
        unit, source = "um", "stdswc"
    return _HeaderUnit(unit, scale, source, where, sep, header_scale)


def tracing_from_arrays(
    ids: Sequence[int] | np.ndarray,
    types: Sequence[int] | np.ndarray,
    xyz: np.ndarray,
    radius: Sequence[float] | np.ndarray,
    parents: Sequence[int] | np.ndarray,
    *,
    path: str = "<arrays>",
    sha256: str = "",
    lines: Sequence[int] | np.ndarray | None = None,
    header: tuple[str, ...] = (),
    unit: _HeaderUnit | str | None = None,
    n_missing_radius: int = 0,
) -> Tracing:
    """Build and validate a :class:`Tracing` from SWC columns (what :func:`read_swc` does
    after parsing; also for synthetic tracings).

    Args:
        ids, types: ``(n,)`` integers.
        xyz: ``(n, 3)`` positions in ``(x, y, z)`` order, file units.
        radius: ``(n,)``; NaN or negative is read as 0.
        parents: ``(n,)`` parent ids, negative for roots.
        path: a name for error messages.
        lines: ``(n,)`` line numbers for error messages (default: row number + 1).
        unit: a unit name such as ``"um"`` (source ``"header"``), or ``None``.

    Raises:
        SourceError: duplicate ids, missing parents, self-parents, cycles, wrong shapes.
    """
    ids_a = np.asarray(ids, dtype=np.int64)
    n = ids_a.shape[0]
    types_a = np.asarray(types, dtype=np.int32)
    xyz_a = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    rad = np.asarray(radius, dtype=np.float64)
    par = np.asarray(parents, dtype=np.int64)
    line_a = np.arange(1, n + 1, dtype=np.int64) if lines is None else np.asarray(lines)
    line_a = line_a.astype(np.int64)
    if not (types_a.shape == rad.shape == par.shape == line_a.shape == (n,)) or (
        xyz_a.shape != (n, 3)
    ):
        raise SourceError(path, "SWC columns have different lengths")
    if n == 0:
        raise SourceError(path, "line 1: the tracing has no nodes")
    bad = ~np.isfinite(rad) | (rad < 0)
    if bad.any():
        rad = np.where(bad, 0.0, rad)
        n_missing_radius = max(n_missing_radius, int(bad.sum()))

    # duplicate ids
    order = np.argsort(ids_a, kind="stable")
    sorted_ids = ids_a[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
        first, second = sorted(order[[dup[0], dup[0] + 1]])
        raise SourceError(
            path,
            f"line {line_a[second]}: duplicate id {ids_a[second]} "
            f"(first defined on line {line_a[first]})",
        )
    # parents -> indices
    is_root = par < 0
    pos = np.searchsorted(sorted_ids, par)
    pos_c = np.minimum(pos, n - 1)
    found = sorted_ids[pos_c] == par
    missing = ~is_root & ~found
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise SourceError(
            path, f"line {line_a[i]}: parent id {par[i]} of node {ids_a[i]} is not in the file"
        )
    pidx = np.where(is_root, -1, order[pos_c]).astype(np.int64)
    selfp = pidx == np.arange(n)
    if selfp.any():
        i = int(np.flatnonzero(selfp)[0])
        raise SourceError(path, f"line {line_a[i]}: node {ids_a[i]} is its own parent")
    roots = np.flatnonzero(is_root).astype(np.int64)
    # root of every node by pointer jumping; nodes that reach no root are in or below a cycle
    jump = np.where(is_root, np.arange(n), pidx)
    for _ in range(max(1, int(n).bit_length()) + 1):
        nxt = jump[jump]
        if np.array_equal(nxt, jump):
            break
        jump = nxt
    reached = is_root[jump]
    if not reached.all():
        _raise_cycle(path, int(np.flatnonzero(~reached)[0]), pidx, ids_a, line_a)
    tree_of_root = np.full(n, -1, dtype=np.int64)
    tree_of_root[roots] = np.arange(roots.size)
    tree = tree_of_root[jump]

    hu = unit if isinstance(unit, _HeaderUnit) else None
    if isinstance(unit, str):
        name, factor = parse_unit(unit)
        hu = _HeaderUnit(name, (factor, factor, factor), "header")
    hu = hu or _HeaderUnit()
    for a in (ids_a, types_a, xyz_a, rad, pidx, tree, roots, line_a):
        a.setflags(write=False)
    somata = _find_somata(types_a, xyz_a, rad, pidx, tree)
    return Tracing(
        path=path,
        sha256=sha256,
        ids=ids_a,
        types=types_a,
        xyz=xyz_a,
        radius=rad,
        parent_index=pidx,
        tree=tree,
        roots=roots,
        lines=line_a,
        unit=hu.unit,
        unit_scale=hu.scale,
        unit_source=hu.source,
        unit_line=hu.line,
        voxel_separation=hu.voxel_separation,
        header=header,
        header_scale=hu.header_scale,
        somata=somata,
        n_missing_radius=n_missing_radius,
    )


def _raise_cycle(
    path: str, start: int, pidx: np.ndarray, ids: np.ndarray, lines: np.ndarray
) -> None:
    seen: dict[int, int] = {}
    i = start
    while i not in seen:
        seen[i] = len(seen)
        i = int(pidx[i])
    cycle = [k for k, _ in sorted(seen.items(), key=lambda kv: kv[1])][seen[i] :]
    first = min(cycle, key=lambda k: lines[k])
    shown = " -> ".join(str(ids[k]) for k in cycle[:8]) + (" ..." if len(cycle) > 8 else "")
    raise SourceError(
        path,
        f"line {lines[first]}: node {ids[first]} is in a cycle of parent links "
        f"({shown} -> {ids[cycle[0]]}); no root is reachable from it",
    )


def _find_somata(
    types: np.ndarray, xyz: np.ndarray, radius: np.ndarray, pidx: np.ndarray, tree: np.ndarray
) -> tuple[Soma, ...]:
    soma_nodes = np.flatnonzero(types == SOMA_TYPE)
    if soma_nodes.size == 0:
        return ()
    # group type-1 nodes linked by parent edges (union-find over the small soma set)
    group = {int(i): int(i) for i in soma_nodes}

    def find(a: int) -> int:
        while group[a] != a:
            group[a] = group[group[a]]
            a = group[a]
        return a

    for i in soma_nodes:
        p = int(pidx[i])
        if p >= 0 and types[p] == SOMA_TYPE:
            group[find(int(i))] = find(p)
    members: dict[int, list[int]] = {}
    for node in soma_nodes.tolist():
        members.setdefault(find(node), []).append(node)
    out: list[Soma] = []
    for idx in sorted(members.values(), key=lambda m: m[0]):
        if len(idx) == 1:
            one = idx[0]
            out.append(Soma("single", one, (one,), float(radius[one]), int(tree[one])))
            continue
        three = _three_point(idx, xyz, radius, pidx)
        if three is not None:
            c, sides, r = three
            out.append(Soma("three_point", c, (c, *sides), r, int(tree[c])))
        else:
            out.append(Soma("multi", idx[0], tuple(idx), float(radius[idx[0]]), int(tree[idx[0]])))
    return tuple(out)


def _three_point(
    idx: list[int], xyz: np.ndarray, radius: np.ndarray, pidx: np.ndarray
) -> tuple[int, tuple[int, int], float] | None:
    """The NeuroMorpho 3-point soma: centre c and two type-1 children a, b with
    ``a - c == -(b - c)`` and ``|a - c| == radius(c)`` (StdSwc puts them along y; any
    axis is accepted). Returns ``(c, (a, b), r)`` or ``None``."""
    if len(idx) != 3:
        return None
    for c in idx:
        sides = [i for i in idx if i != c]
        if not all(pidx[s] == c for s in sides):
            continue
        da = xyz[sides[0]] - xyz[c]
        db = xyz[sides[1]] - xyz[c]
        la, lb = float(np.linalg.norm(da)), float(np.linalg.norm(db))
        scale = max(la, lb, 1e-12)
        if la == 0 or np.linalg.norm(da + db) > 0.02 * scale or abs(la - lb) > 0.02 * scale:
            return None
        r = float(radius[c])
        if r > 0 and abs(la - r) > 0.05 * r:
            return None
        return c, (sides[0], sides[1]), r if r > 0 else 0.5 * (la + lb)
    return None


# ---------------------------------------------------------------------------
# calibration to micrometres


@dataclass(frozen=True, eq=False)
class PhysicalTracing:
    """A tracing with positions and radii in micrometres.

    Attributes:
        tracing: the source :class:`Tracing`.
        xyz_um: ``(n, 3)`` float64 positions in micrometres, **(x, y, z) order**.
        radius_um: ``(n,)`` float64 radii in micrometres (for anisotropic scales the
            geometric mean of the three axis scales is applied).
        scale_um: ``(z, y, x)`` micrometres per file coordinate unit.
        offset_um: ``(z, y, x)`` micrometres added after scaling.
        calibration: how the unit was chosen, e.g. ``"header: 8 nm"``, ``"unit=um"``,
            ``"voxel_size=(0.008, 0.008, 0.008) um"``.
    """

    tracing: Tracing
    xyz_um: np.ndarray
    radius_um: np.ndarray
    scale_um: tuple[float, float, float]
    offset_um: tuple[float, float, float]
    calibration: str = field(default="")

    @property
    def path(self) -> str:
        """The tracing's path."""
        return self.tracing.path


def _triple(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        return (float(value), float(value), float(value))
    t = [float(v) for v in value]
    if len(t) != 3:
        raise ValueError(f"{name} must be one number or three (z, y, x), got {value!r}")
    return (t[0], t[1], t[2])


def calibrate(
    tracing: Tracing,
    *,
    unit: str | None = None,
    voxel_size: float | Sequence[float] | None = None,
    offset: float | Sequence[float] | None = None,
) -> PhysicalTracing:
    """Convert a tracing's positions and radii to micrometres.

    ``physical_um[x, y, z] = xyz * scale[x, y, z] + offset[x, y, z]``.

    Args:
        tracing: from :func:`read_swc`.
        unit: the file's unit when the header does not state it, or to override it:
            ``"um"``/``"µm"``, ``"nm"``, ``"mm"``, or a multiple such as ``"8 nm"``.
        voxel_size: the coordinates are voxel indices of this size, **(z, y, x)
            micrometres** (hemibrain: ``(0.008, 0.008, 0.008)``); one number for
            isotropic voxels. Exclusive with ``unit``.
        offset: the physical position in micrometres, **(z, y, x)**, of the tracing's
            coordinate origin (SWC ``(0, 0, 0)``), added after scaling: for a tracing
            made on a crop whose first voxel is ``(z0, y0, x0)`` of an image with origin
            ``o`` and voxel size ``v``, ``offset = o + (z0, y0, x0) * v``.
            Default 0.

    Returns:
        :class:`PhysicalTracing` (positions ``(n, 3)`` in **x, y, z** order, um).

    Raises:
        SourceError: no unit is known (the header states none and neither ``unit``
            nor ``voxel_size`` is given), or the header states pixels without a size.
        ValueError: bad arguments (both ``unit`` and ``voxel_size``, unknown unit,
            non-positive sizes).
    """
    if unit is not None and voxel_size is not None:
        raise ValueError("give unit= or voxel_size=, not both")
    if voxel_size is not None:
        vz, vy, vx = _triple(voxel_size, "voxel_size")
        scale_xyz = (vx, vy, vz)
        how = f"voxel_size=({vz:g}, {vy:g}, {vx:g}) um"
    elif unit is not None:
        name, factor = parse_unit(unit)
        if name == "pixel":
            raise ValueError("unit='pixel' needs a size: pass voxel_size=(z, y, x) in um")
        s = factor * UNIT_TO_UM[name]  # type: ignore[operator]
        scale_xyz = (s, s, s)
        how = f"unit={unit}"
    elif tracing.unit is not None and tracing.unit != "pixel":
        per = UNIT_TO_UM[tracing.unit]
        assert per is not None
        sx, sy, sz = tracing.unit_scale
        scale_xyz = (sx * per, sy * per, sz * per)
        how = f"{tracing.unit_source}: {tracing.unit}"
    else:
        stated = "states pixels without a voxel size" if tracing.unit else "states no unit"
        raise SourceError(
            tracing.path,
            f"the SWC header {stated}; the physical size of its coordinates is unknown",
            hint="give the unit (um, nm, '8 nm') or the voxel size of the coordinates",
        )
    if not all(s > 0 and math.isfinite(s) for s in scale_xyz):
        raise ValueError(f"scales must be positive, got {scale_xyz}")
    oz, oy, ox = _triple(0.0 if offset is None else offset, "offset")
    xyz = tracing.xyz * np.asarray(scale_xyz) + np.asarray((ox, oy, oz))
    r_scale = float(np.prod(scale_xyz)) ** (1.0 / 3.0)
    rad = tracing.radius * r_scale
    xyz.setflags(write=False)
    rad.setflags(write=False)
    return PhysicalTracing(
        tracing=tracing,
        xyz_um=xyz,
        radius_um=rad,
        scale_um=(scale_xyz[2], scale_xyz[1], scale_xyz[0]),
        offset_um=(oz, oy, ox),
        calibration=how,
    )


def to_physical(
    tracing: Tracing,
    *,
    unit: str | None = None,
    voxel_size: float | Sequence[float] | None = None,
    offset: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Node positions in micrometres, ``(n, 3)`` in **x, y, z** order (the SWC order).

    Same arguments and errors as :func:`calibrate` (``voxel_size`` and ``offset`` are
    **(z, y, x)** micrometres); reverse the last axis (``[:, ::-1]``) for bidspack's
    ``(z, y, x)`` image order.
    """
    return calibrate(tracing, unit=unit, voxel_size=voxel_size, offset=offset).xyz_um
