"""``bidspack report``: one self-contained HTML quality-control report of a dataset.

The report opens offline: inline CSS, one small inline script (it only counts the
images that decoded, for tests), every image a ``data:`` URI, histograms inline SVG.

**Which pixels are read.** Never level 0 of a large image. Per image, one pyramid level
is chosen (:func:`choose_level`): the *coarsest level whose longer in-plane side (y or
x) is at least* :data:`MIN_SIDE` *pixels*; if no level is that large, the coarsest
level. OME-Zarr levels are ``multiscales[0].datasets``; OME-TIFF levels are tifffile's
``series[0].levels`` (the SubIFD pyramid; Z is not reduced there). That level is read
once, in slabs of whole chunks (:func:`bidspack.io.omezarr.reader.iter_slabs`, at most
64 MiB each), and everything of the image comes from that pass: the mid-slices (xy,
xz, yz), the maximum-intensity projections along z, y and x, the histogram (64 bins,
log counts) and the zero and saturated fractions. Statistics are therefore those of
the chosen level (block means smooth extremes: the saturated fraction of level 0 can
be higher). Memory: one slab, the three projections and the label planes.

**Images.** Every ``.ome.zarr`` folder and ``.ome.tif``/``.ome.btf`` file of the dataset
(not under ``sourcedata/``, ``code/`` or hidden folders); an image written in both
formats is one section (the OME-Zarr is read: it may carry NGFF labels). **Labels**
drawn as coloured outlines over an intensity image: its NGFF labels
(``labels/<name>``), and label derivatives (``image = "label"`` in the packaging
plan, or an OME-Zarr with ``nearest`` downsampling or ``image-label`` metadata) with
the same subject and sample and the same level-0 shape. Label images themselves are
shown in label colours.

**Everything else.** Per image: shape, dtype, voxel size (of level 0 and of the level
read), levels, file size, sidecar fields, the step that wrote it (manifest), its
validation messages and its QC rating. Per subject and sample: the ``participants.tsv``
and ``samples.tsv`` rows. The validator's and ``bidspack verify``'s records (or that
they were skipped). The provenance records as a timeline (step, time, files made).
Derived datasets (``DatasetType`` ``derivative`` with a bidspack ``index.parquet`` or
``classification.parquet``): patch counts, kept and duplicate counts, classification
decisions, and a grid of sample patches.

**QC table.** ``qc.tsv`` (BIDScoin slicereport style): one row per image, columns
``image``, ``subject``, ``sample``, ``rating``, ``notes``, ratings ``n/a`` for people
to fill in. It is written if absent and read back (never rewritten) when present; the
report shows each image's rating.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import imagecodecs
import numpy as np

from bidspack.io.omezarr.reader import (
    NGFF_UNIT_TO_UM,
    iter_slabs,
    multiscale_of,
    open_level,
    read_attributes,
    scale_of,
)
from bidspack.io.thumbnails import label_colours
from bidspack.records import Record

#: The chosen level is the coarsest whose longer in-plane side has at least this many pixels.
MIN_SIDE = 256
#: Longest side of every view in the report, in pixels.
VIEW_SIDE = 256
#: Histogram bins.
BINS = 64
#: JPEG quality of the views (intensity views are JPEG: PNG of noisy microscopy is ~5x larger).
JPEG_QUALITY = 80
#: Sample patches shown per derived dataset.
SAMPLE_PATCHES = 24
QC_COLUMNS = ("image", "subject", "sample", "rating", "notes")
_ENT = re.compile(r"(?:^|_)(sub|ses|sample)-([0-9a-zA-Z+]+)")
_SKIP_TOP = {"sourcedata", "code"}


# -- levels -----------------------------------------------------------------------------


def choose_level(shapes: list[tuple[int, ...]], min_side: int = MIN_SIDE) -> int:
    """Index of the level to read: the coarsest level whose longer in-plane side (the
    last two axes) is at least *min_side*; if none is, the coarsest level."""
    if not shapes:
        raise ValueError("no levels")
    for i in range(len(shapes) - 1, -1, -1):
        if max(shapes[i][-2:]) >= min_side:
            return i
    return len(shapes) - 1


@dataclass
class Level:
    """One opened pyramid level: a zarr-python array, its index and voxel size (µm)."""

    array: Any
    index: int
    voxel_um: tuple[float, float, float] | None


@dataclass
class Pyramid:
    """The levels of an image file (shapes only) and how to open one."""

    path: Path
    fmt: str  # "ome-zarr" | "ome-tiff"
    shapes: list[tuple[int, ...]]
    dtype: str
    voxel0_um: tuple[float, float, float] | None
    open: Callable[[int], Level]
    extra: dict[str, Any] = field(default_factory=dict)


def _zarr_pyramid(path: Path) -> Pyramid:
    import zarr

    fmt, ms = multiscale_of(path)
    datasets = ms.get("datasets", [])
    shapes: list[tuple[int, ...]] = []
    dtype = "?"
    for ds in datasets:
        arr = zarr.open_array(
            store=str(path / ds["path"]), mode="r", zarr_format=fmt.zarr_format
        )  # metadata only
        shapes.append(tuple(int(s) for s in arr.shape))
        dtype = str(arr.dtype)
    axes = [a.get("name") for a in ms.get("axes", [])]

    def voxel(level: int) -> tuple[float, float, float] | None:
        try:
            scale = np.asarray(scale_of(datasets[level]["coordinateTransformations"]), float)
            if ms.get("coordinateTransformations"):
                scale = scale * np.asarray(scale_of(ms["coordinateTransformations"]), float)
            out = []
            for name in "zyx":
                i = axes.index(name)
                out.append(float(scale[i]) * NGFF_UNIT_TO_UM[ms["axes"][i]["unit"]])
            return out[0], out[1], out[2]
        except (KeyError, IndexError, ValueError, TypeError):
            return None

    attrs = fmt.ome_metadata(read_attributes(path, fmt))
    extra = {
        "ngff": fmt.version,
        "method": str(ms.get("type", "")),
        "image_label": "image-label" in attrs,
    }
    return Pyramid(
        path,
        "ome-zarr",
        shapes,
        dtype,
        voxel(0),
        lambda level: Level(open_level(path, level), level, voxel(level)),
        extra,
    )


def _tiff_pyramid(path: Path) -> Pyramid:
    import tifffile

    from bidspack.io.omexml import physical_size_um

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shapes = [tuple(int(s) for s in lv.shape) for lv in series.levels]
        dtype = str(series.dtype)
        try:
            voxel0: tuple[float, float, float] | None = physical_size_um(tif.ome_metadata or "")
        except (ValueError, TypeError):
            voxel0 = None

    def open_tiff(level: int) -> Level:
        import zarr

        tif = tifffile.TiffFile(path)  # closed with the report's cleanup (see _close)
        store = tif.series[0].aszarr(level=level)
        arr = zarr.open_array(store, mode="r")
        _OPEN_FILES.append(tif)
        vox = None
        if voxel0 is not None:
            s0, sl = shapes[0], shapes[level]
            vox = (
                voxel0[0] * (s0[0] / sl[0] if len(s0) == 3 else 1.0),
                voxel0[1] * s0[-2] / sl[-2],
                voxel0[2] * s0[-1] / sl[-1],
            )
        return Level(arr, level, vox)

    return Pyramid(path, "ome-tiff", shapes, dtype, voxel0, open_tiff)


_OPEN_FILES: list[Any] = []


def _close() -> None:
    while _OPEN_FILES:
        with contextlib.suppress(Exception):  # closing must not hide the report's outcome
            _OPEN_FILES.pop().close()


def open_pyramid(path: Path) -> Pyramid:
    """The :class:`Pyramid` of an ``.ome.zarr`` folder or an OME-TIFF file."""
    path = Path(path)
    return _zarr_pyramid(path) if path.is_dir() else _tiff_pyramid(path)


# -- one pass over a level ----------------------------------------------------------------


@dataclass
class Views:
    """What one pass over a level gives: mid-slices, projections, statistics."""

    shape: tuple[int, int, int]
    planes: dict[str, np.ndarray]
    hist: np.ndarray | None = None
    edges: np.ndarray | None = None
    zero_frac: float = 0.0
    saturated_frac: float | None = None
    vmin: float = 0.0
    vmax: float = 0.0
    distinct: int | None = None


def _slabs(arr: Any) -> Iterator[np.ndarray]:
    if arr.ndim == 2:
        yield np.asarray(arr[:])[None]
        return
    if arr.ndim != 3:
        raise ValueError(f"{arr.ndim} dimensions; the report shows (z, y, x) images")
    yield from iter_slabs(arr)


def read_views(arr: Any, *, label: bool, stats: bool = True) -> Views:
    """Mid-slices and maximum projections (and, with *stats*, the histogram) of a
    ``(z, y, x)`` (or ``(y, x)``) array, in one pass of slabs."""
    shape3 = tuple(int(s) for s in (arr.shape if arr.ndim == 3 else (1, *arr.shape)))
    nz, ny, nx = shape3
    dt = np.dtype(arr.dtype)
    mip_z: np.ndarray | None = None
    xz_parts, yz_parts, mipy_parts, mipx_parts = [], [], [], []
    mid_xy: np.ndarray | None = None
    small_int = dt.kind in "ub" and dt.itemsize <= 2
    counts = np.zeros(2 ** (8 * dt.itemsize), np.int64) if (stats and small_int) else None
    sample: list[np.ndarray] = []
    n = zeros = sat = 0
    vmin, vmax = math.inf, -math.inf
    uniq: set[int] = set()
    z0 = 0
    for slab in _slabs(arr):
        dz = slab.shape[0]
        if z0 <= nz // 2 < z0 + dz:
            mid_xy = slab[nz // 2 - z0].copy()
        m = slab.max(axis=0)
        mip_z = m if mip_z is None else np.maximum(mip_z, m)
        xz_parts.append(slab[:, ny // 2, :].copy())
        yz_parts.append(slab[:, :, nx // 2].copy())
        mipy_parts.append(slab.max(axis=1))
        mipx_parts.append(slab.max(axis=2))
        if stats:
            n += slab.size
            zeros += int(np.count_nonzero(slab == 0))
            if dt.kind in "ui":
                sat += int(np.count_nonzero(slab == np.iinfo(dt).max))
            if slab.size:
                vmin = min(vmin, float(slab.min()))
                vmax = max(vmax, float(slab.max()))
            if counts is not None:
                counts += np.bincount(slab.ravel(), minlength=counts.size)[: counts.size]
            else:
                step = max(1, slab.size // 200_000)
                sample.append(slab.ravel()[::step].astype(np.float64))
            if label and len(uniq) <= 100_000:
                uniq.update(np.unique(slab).tolist())
        z0 += dz
    assert mip_z is not None and mid_xy is not None
    planes = {
        "xy": mid_xy,
        "xz": np.concatenate(xz_parts),
        "yz": np.concatenate(yz_parts),
        "mip_z": mip_z,
        "mip_y": np.concatenate(mipy_parts),
        "mip_x": np.concatenate(mipx_parts),
    }
    views = Views(shape3, planes)  # type: ignore[arg-type]
    if stats and n:
        views.zero_frac = zeros / n
        views.saturated_frac = sat / n if dt.kind in "ui" else None
        views.vmin, views.vmax = vmin, vmax
        hi = vmax if vmax > vmin else vmin + 1
        edges = np.linspace(vmin, hi, BINS + 1)
        if counts is not None:
            values = np.arange(counts.size, dtype=np.float64)
            hist, _ = np.histogram(values, bins=edges, weights=counts)
        else:
            hist, _ = np.histogram(np.concatenate(sample), bins=edges)
        views.hist, views.edges = hist.astype(np.int64), edges
    if label:
        views.distinct = len(uniq - {0})
    return views


# -- drawing ------------------------------------------------------------------------------


def _resample(plane: np.ndarray, extent: tuple[float, float], side: int = VIEW_SIDE) -> np.ndarray:
    """*plane* resampled (nearest) so its aspect is the physical *extent* (rows, cols)
    and its longer side is *side* pixels at most (small planes enlarged up to it)."""
    h, w = plane.shape
    eh, ew = extent
    if not (eh > 0 and ew > 0):
        eh, ew = float(h), float(w)
    k = side / max(eh, ew)
    oh, ow = max(1, round(eh * k)), max(1, round(ew * k))
    ri = np.minimum((np.arange(oh) * h / oh).astype(np.int64), h - 1)
    ci = np.minimum((np.arange(ow) * w / ow).astype(np.int64), w - 1)
    return plane[ri][:, ci]


def _scale8(plane: np.ndarray) -> np.ndarray:
    p = plane.astype(np.float64)
    if p.size == 0:
        return p.astype(np.uint8)
    lo, hi = np.percentile(p, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1
    return (np.clip((p - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def outline(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of label boundaries: labelled pixels with a 4-neighbour of another
    value (the image edge does not count)."""
    edge = np.zeros(labels.shape, bool)
    diff_v = labels[1:] != labels[:-1]
    diff_h = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= diff_v
    edge[:-1] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    return edge & (labels != 0)


def _jpeg(img: np.ndarray) -> str:
    data = imagecodecs.jpeg8_encode(np.ascontiguousarray(img), level=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(bytes(data)).decode("ascii")


def _png(img: np.ndarray) -> str:
    data = imagecodecs.png_encode(np.ascontiguousarray(img), level=9)
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode("ascii")


#: (view name, title, (rows axis, columns axis) as indices into (z, y, x)).
VIEWS = (
    ("xy", "xy mid-slice", (1, 2)),
    ("xz", "xz mid-slice", (0, 2)),
    ("yz", "yz mid-slice", (0, 1)),
    ("mip_z", "MIP along z", (1, 2)),
    ("mip_y", "MIP along y", (0, 2)),
    ("mip_x", "MIP along x", (0, 1)),
)


def render_view(
    name: str,
    views: Views,
    voxel: tuple[float, float, float] | None,
    *,
    label: bool,
    overlays: list[Views] = (),  # type: ignore[assignment]
) -> str:
    """The data URI of one view: grey (JPEG), label colours (PNG), or grey with
    coloured label outlines (JPEG)."""
    axes = dict((v[0], v[2]) for v in VIEWS)[name]
    plane = views.planes[name]
    vox = voxel or (1.0, 1.0, 1.0)
    extent = (plane.shape[0] * vox[axes[0]], plane.shape[1] * vox[axes[1]])
    small = _resample(plane, extent)
    if label:
        return _png(label_colours(small))
    grey = _scale8(small)
    if not overlays or name.startswith("mip"):  # outlines on the mid-slices only
        return _jpeg(grey)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for ov in overlays:
        lab = _resample(ov.planes[name], extent)
        if lab.shape != grey.shape:
            continue
        edge = outline(lab)
        rgb[edge] = label_colours(lab)[edge] | np.uint8(64)
    return _jpeg(rgb)


def histogram_svg(views: Views, dtype: str) -> str:
    """An inline SVG histogram (log10(count + 1) bars) with its range."""
    if views.hist is None or views.edges is None:
        return ""
    w, h = 256, 80
    logs = np.log10(views.hist.astype(np.float64) + 1)
    top = float(logs.max()) or 1.0
    bw = w / len(logs)
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{h - v / top * h:.1f}" width="{bw:.1f}" '
        f'height="{v / top * h:.1f}"/>'
        for i, v in enumerate(logs)
        if v > 0
    )
    sat = "n/a" if views.saturated_frac is None else f"{views.saturated_frac:.3%}"
    return (
        f'<svg class="hist" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'role="img" aria-label="histogram"><rect width="{w}" height="{h}" fill="#f4f4f4"/>'
        f'<g fill="#3a6ea5">{bars}</g></svg>'
        f"<div class='small'>{views.vmin:g} .. {views.vmax:g} ({dtype}), log counts; "
        f"zero {views.zero_frac:.3%}, saturated {sat}</div>"
    )


# -- the dataset --------------------------------------------------------------------------


@dataclass
class Image:
    """One image of the dataset (one or two files: OME-Zarr and/or OME-TIFF)."""

    key: str  # dataset-relative path without the image extension
    files: dict[str, Path]  # format -> path
    entities: dict[str, str]
    label: bool = False

    @property
    def read_path(self) -> Path:
        """The file read for the report: the OME-Zarr if any, else the OME-TIFF."""
        return self.files.get("ome-zarr") or self.files["ome-tiff"]


def _stem(name: str) -> str | None:
    for ext in (".ome.zarr", ".ome.tif", ".ome.btf"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def find_images(dataset: Path) -> list[Image]:
    """Every image of *dataset* (see the module docstring), in path order."""
    found: dict[str, Image] = {}
    for dirpath, dirnames, filenames in os.walk(dataset):
        rel = Path(dirpath).relative_to(dataset)
        if rel.parts and (rel.parts[0] in _SKIP_TOP or rel.parts[0].startswith(".")):
            dirnames[:] = []
            continue
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if d.endswith(".ome.zarr"):
                filenames.append(d)
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            stem = _stem(f)
            if stem is None:
                continue
            path = Path(dirpath) / f
            if path.is_symlink():
                continue
            key = (rel / stem).as_posix()
            fmt = "ome-zarr" if f.endswith(".ome.zarr") else "ome-tiff"
            img = found.setdefault(key, Image(key, {}, dict(_ENT.findall(stem))))
            img.files[fmt] = path
    return [found[k] for k in sorted(found, key=lambda k: (k.startswith("derivatives/"), k))]


def _plan_labels(dataset: Path) -> set[str]:
    """Image keys that the packaging plan marks ``image = "label"``."""
    plan = dataset / "code" / "bidspack" / "plan.json"
    out: set[str] = set()
    try:
        actions = json.loads(plan.read_text(encoding="utf-8")).get("actions", [])
    except (OSError, ValueError, AttributeError):
        return out
    for a in actions:
        params = a.get("params") if isinstance(a, dict) else None
        target = a.get("target") if isinstance(a, dict) else None
        if isinstance(params, dict) and params.get("image") == "label" and isinstance(target, str):
            stem = _stem(target.rsplit("/", 1)[-1])
            if stem:
                out.add(target.rsplit("/", 1)[0] + "/" + stem)
    return out


def _read_tsv(path: Path) -> list[dict[str, str]]:
    from bidspack.bids.tables import read_tsv

    return read_tsv(path) if path.is_file() else []


def _dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# -- qc.tsv -------------------------------------------------------------------------------


def ensure_qc(path: Path, images: list[Image]) -> tuple[dict[str, dict[str, str]], bool]:
    """Read ``qc.tsv`` (image -> row); write it first (ratings ``n/a``) if absent.

    Returns the rows and whether the file was written now.
    """
    written = False
    if not path.exists():
        lines = ["\t".join(QC_COLUMNS)]
        for img in images:
            sub = img.entities.get("sub", "n/a")
            sample = img.entities.get("sample", "n/a")
            lines.append("\t".join((img.key, f"sub-{sub}", f"sample-{sample}", "n/a", "n/a")))
        tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        written = True
    rows: dict[str, dict[str, str]] = {}
    text = path.read_text(encoding="utf-8").splitlines()
    if text:
        head = text[0].split("\t")
        for line in text[1:]:
            if line.strip():
                cells = line.split("\t")
                row = dict(zip(head, cells + [""] * (len(head) - len(cells)), strict=False))
                rows[row.get("image", "")] = row
    return rows, written


# -- sections -----------------------------------------------------------------------------


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;max-width:1700px}
h1{font-size:1.4em} h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
h3{font-size:1em;margin:.2em 0}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:.8em;vertical-align:top;text-align:left}
th{background:#eee}
section.image{border:1px solid #bbb;border-radius:4px;padding:.6em;margin:.8em 0}
.views{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;text-align:center} figcaption{font-size:.75em;color:#555}
img{image-rendering:pixelated;border:1px solid #999;display:block;background:#000;
max-width:208px;max-height:208px}
.meta{display:flex;gap:1.2em;flex-wrap:wrap}
.small{font-size:.75em;color:#555}
.err{color:#a00;font-weight:600} .ok{color:#070} .warn{color:#a60}
tr.error td{background:#fdd} .rating{font-weight:600}
.patches{display:flex;flex-wrap:wrap;gap:3px}
.patches img{width:96px;height:96px}
"""

SCRIPT = """
window.addEventListener('error', function (e) {
  document.documentElement.setAttribute('data-js-error', String(e.message));
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
  var n = document.querySelectorAll('section.image').length;
  document.body.setAttribute('data-sections', String(n));
});
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], cls: str = "") -> str:
    if not rows:
        return "<p class='small'>none</p>"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


@dataclass
class ReportResult:
    """What :func:`write_report` did."""

    output: Path
    qc: Path
    qc_written: bool
    images: int
    levels_read: dict[str, tuple[str, int, tuple[int, ...]]]  # key -> (file, level, shape)
    validation: str
    size: int
    seconds: float
    errors: list[str] = field(default_factory=list)


def _validation(dataset: Path, run: bool) -> tuple[str, list[Record], list[Record], list[str]]:
    """(status line, validate records, verify records, notes)."""
    if not run:
        return "skipped (--no-validate)", [], [], []
    from bidspack.errors import BidspackError
    from bidspack.ops.validate import validate_dataset
    from bidspack.ops.verify import verify

    notes: list[str] = []
    vrecs: list[Record] = []
    frecs: list[Record] = []
    try:
        vrecs = list(validate_dataset(dataset))
    except BidspackError as exc:
        notes.append(f"validate not run: {exc}")
    try:
        frecs = list(verify(dataset))
    except BidspackError as exc:
        notes.append(f"verify not run: {exc}")
    return "run", vrecs, frecs, notes


def _records_html(recs: list[Record], title: str) -> str:
    errors = [r for r in recs if r.status == "error"]
    warnings = [r for r in recs if r.details.get("severity") == "warning"]
    oks = len(recs) - len(errors) - len(warnings)
    cls = "err" if errors else "ok"
    out = [
        f"<h3>{_e(title)}: <span class='{cls}' id='{_e(title.split()[0])}-summary'>"
        f"{len(errors)} error(s)</span>, {len(warnings)} warning group(s), {oks} ok</h3>"
    ]
    if errors:
        out.append(_table([{"path": r.path, "message": r.message} for r in errors[:500]], "errors"))
    if warnings:
        out.append(_table([{"path": r.path, "message": r.message} for r in warnings[:200]]))
    return "".join(out)


def _provenance_html(dataset: Path) -> tuple[str, dict[str, str]]:
    """The timeline (oldest step first) and file -> step label."""
    from bidspack.provenance.record import read_records

    try:
        recs = read_records(dataset)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"<p class='err'>provenance unreadable: {_e(exc)}</p>", {}
    made_by: dict[str, str] = {}
    rows = []
    for rec in reversed(recs):
        act = rec["Records"]["Activities"][0]
        label = f"{act.get('Label', '?')}:{act.get('Step', '?')}"
        outputs = [
            e.get("AtLocation", "")
            for e in rec["Records"].get("Entities", [])
            if e.get("GeneratedBy") == act.get("Id")
        ]
        for o in outputs:
            made_by[o] = f"{label} ({act.get('EndedAtTime', '')})"
        shown = sorted(
            {o.split(".ome.zarr/")[0] + ".ome.zarr" if ".ome.zarr/" in o else o for o in outputs}
        )
        rows.append(
            "<tr>"
            f"<td>{_e(act.get('StartedAtTime', ''))}</td><td>{_e(act.get('EndedAtTime', ''))}</td>"
            f"<td>{_e(act.get('Label', ''))}</td><td>{_e(act.get('Step', ''))}</td>"
            f"<td>{len(act.get('Used', []))}</td>"
            f"<td><details><summary>{len(outputs)} file(s)</summary>"
            + "<br>".join(_e(s) for s in shown[:200])
            + "</details></td></tr>"
        )
    if not rows:
        return "<p class='small'>no provenance records</p>", made_by
    return (
        "<table id='timeline'><tr><th>started</th><th>ended</th><th>operation</th>"
        "<th>step</th><th>inputs used</th><th>files made</th></tr>" + "".join(rows) + "</table>",
        made_by,
    )


def _derived_html(dataset: Path) -> str:
    """Summary of a bidspack derived dataset (patches or classification), or ''."""
    desc_file = dataset / "dataset_description.json"
    try:
        desc = json.loads(desc_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if desc.get("DatasetType") != "derivative":
        return ""
    import pyarrow.parquet as pq

    parts = []
    op = (desc.get("bidspack") or {}).get("operation", "")
    index = dataset / "index.parquet"
    if index.is_file():
        t = pq.read_table(index).to_pandas()
        kept = int(t["kept"].sum()) if "kept" in t else len(t)
        reasons = t["reason"].astype(str) if "reason" in t else None
        exact = int(reasons.str.startswith("exact").sum()) if reasons is not None else 0
        near = int(reasons.str.startswith("near").sum()) if reasons is not None else 0
        parts.append(
            f"<p id='patch-counts'>{_e(op or 'patches')}: <b>{len(t)}</b> patches, "
            f"<b>{kept}</b> kept, <b>{len(t) - kept}</b> duplicates ({exact} exact, {near} "
            "near)</p>"
        )
        if "source" in t and "plane" in t:
            g = t.groupby(["source", "plane"]).agg(
                patches=("patch_id", "size"),
                kept=("kept", "sum") if "kept" in t else ("patch_id", "size"),
            )
            parts.append(
                _table(
                    [
                        {"source": s, "plane": p, "patches": int(r.patches), "kept": int(r.kept)}
                        for (s, p), r in g.iterrows()
                    ]
                )
            )
        parts.append(_patch_grid(dataset, t))
    table = dataset / "classification.parquet"
    if table.is_file():
        t = pq.read_table(table).to_pandas()
        counts = t["decision"].value_counts().to_dict() if "decision" in t else {}
        score = t.get("score")
        parts.append(
            f"<p id='classification'>classification: <b>{len(t)}</b> patches; "
            + ", ".join(f"{_e(k)} <b>{int(v)}</b>" for k, v in sorted(counts.items()))
            + (
                f"; score min {score.min():.3g}, median {score.median():.3g}, max {score.max():.3g}"
                if score is not None and len(score)
                else ""
            )
            + "</p>"
        )
    if not parts:
        return ""
    return "<h2>Derived dataset</h2>" + "".join(parts)


def _patch_grid(dataset: Path, index: Any) -> str:
    import zarr

    if not {"array", "row"} <= set(index.columns):
        return ""
    rows = index[index["kept"]] if "kept" in index else index
    if not len(rows):
        return ""
    pick = np.unique(np.linspace(0, len(rows) - 1, min(SAMPLE_PATCHES, len(rows))).astype(int))
    imgs = []
    cache: dict[str, Any] = {}
    for i in pick:
        r = rows.iloc[int(i)]
        rel = str(r["array"])
        path = (dataset / rel).resolve()
        if not path.is_relative_to(dataset.resolve()):
            continue
        if rel not in cache:
            cache[rel] = zarr.open_array(str(path), mode="r")
        patch = np.asarray(cache[rel][int(r["row"])])
        imgs.append(
            f"<figure><img alt='patch {_e(r.get('patch_id', ''))}' src='{_png(patch)}'>"
            f"<figcaption>{_e(str(r.get('patch_id', ''))[-28:])}</figcaption></figure>"
        )
    return "<h3>Sample patches (kept)</h3><div class='patches'>" + "".join(imgs) + "</div>"


def _label_images(images: list[Image], dataset: Path) -> None:
    plan = _plan_labels(dataset)
    for img in images:
        if img.key in plan:
            img.label = True
            continue
        z = img.files.get("ome-zarr")
        if z is not None:
            try:
                p = _zarr_pyramid(z)
                img.label = p.extra.get("method") == "nearest" or bool(p.extra.get("image_label"))
            except Exception:  # unreadable: shown as an error in its section
                pass


def _overlays(
    img: Image,
    pyr: Pyramid,
    level: int,
    images: list[Image],
    shape0: tuple[int, ...],
) -> list[tuple[str, Views]]:
    """Label planes (same level shape) to outline over *img*: NGFF labels, then label
    derivatives of the same subject and sample with the same level-0 shape."""
    out: list[tuple[str, Views]] = []
    target = pyr.shapes[level]
    z = img.files.get("ome-zarr")
    if z is not None and (z / "labels").is_dir():
        try:
            from bidspack.io.omezarr.versions import ngff_version

            fmt = ngff_version(pyr.extra["ngff"])
            names = fmt.ome_metadata(read_attributes(z / "labels", fmt)).get("labels", [])
        except Exception:
            names = []
        for name in names:
            lp = z / "labels" / str(name)
            if not lp.resolve().is_relative_to(z.resolve()):
                continue
            try:
                lpyr = open_pyramid(lp)
                if target in lpyr.shapes:
                    arr = lpyr.open(lpyr.shapes.index(target)).array
                    out.append((f"NGFF label {name}", read_views(arr, label=True, stats=False)))
            except Exception:
                continue
    for other in images:
        if not other.label or other is img:
            continue
        if other.entities.get("sub") != img.entities.get("sub") or other.entities.get(
            "sample"
        ) != img.entities.get("sample"):
            continue
        try:
            opyr = open_pyramid(other.read_path)
        except Exception:
            continue
        if opyr.shapes[0] != shape0 or target not in opyr.shapes:
            continue
        arr = opyr.open(opyr.shapes.index(target)).array
        out.append((other.key, read_views(arr, label=True, stats=False)))
    return out


def _image_section(
    dataset: Path,
    img: Image,
    images: list[Image],
    *,
    sidecar: dict[str, Any],
    made_by: str,
    messages: list[Record],
    qc_row: dict[str, str] | None,
    levels_read: dict[str, tuple[str, int, tuple[int, ...]]],
) -> str:
    e = _e
    out = [f"<section class='image' id='img-{e(img.key)}'><h3>{e(img.key)}</h3>"]
    try:
        pyr = open_pyramid(img.read_path)
        level = choose_level(pyr.shapes)
        lv = pyr.open(level)
        rel = img.read_path.relative_to(dataset).as_posix()
        levels_read[img.key] = (rel, level, pyr.shapes[level])
        views = read_views(lv.array, label=img.label)
        overlays = [] if img.label else _overlays(img, pyr, level, images, pyr.shapes[0])
        figs = []
        for name, title, _ in VIEWS:
            uri = render_view(
                name, views, lv.voxel_um, label=img.label, overlays=[v for _, v in overlays]
            )
            figs.append(
                f"<figure><img alt='{e(img.key)} {e(title)}' src='{uri}'>"
                f"<figcaption>{e(title)}</figcaption></figure>"
            )
        out.append("<div class='views'>" + "".join(figs) + "</div>")
        hist = histogram_svg(views, pyr.dtype)
    except Exception as exc:  # one unreadable image must not stop the report
        out.append(f"<p class='err'>cannot read: {e(type(exc).__name__)}: {e(exc)}</p></section>")
        return "".join(out)
    sizes = {fmt: _dir_size(p) for fmt, p in img.files.items()}
    vox0 = pyr.voxel0_um
    meta = {
        "files": ", ".join(p.relative_to(dataset).as_posix() for p in img.files.values()),
        "kind": "label" if img.label else "intensity",
        "shape (z, y, x)": " x ".join(map(str, views.shape if level == 0 else pyr.shapes[0])),
        "dtype": pyr.dtype,
        "voxel size (z, y, x) µm": ", ".join(f"{v:g}" for v in vox0) if vox0 else "unknown",
        "levels": "; ".join("x".join(map(str, s)) for s in pyr.shapes),
        "level shown": f"{level} ({'x'.join(map(str, pyr.shapes[level]))}, read from "
        f"{pyr.fmt})"
        + (f", voxel {', '.join(f'{v:g}' for v in lv.voxel_um)} µm" if lv.voxel_um else ""),
        "file size": "; ".join(f"{fmt} {_human(n)}" for fmt, n in sizes.items()),
        "written by": made_by or "unknown",
    }
    if views.distinct is not None:
        meta["label values (level shown)"] = str(views.distinct)
    if overlays:
        meta["outlines"] = ", ".join(n for n, _ in overlays)
    rating = (qc_row or {}).get("rating", "not in qc.tsv")
    notes = (qc_row or {}).get("notes", "")
    meta["QC rating"] = rating + (f" ({notes})" if notes and notes != "n/a" else "")
    out.append("<div class='meta'><table>")
    for k, v in meta.items():
        cls = " class='rating'" if k == "QC rating" else ""
        out.append(f"<tr><th>{e(k)}</th><td{cls}>{e(v)}</td></tr>")
    out.append("</table><div>" + hist + "</div>")
    if sidecar:
        out.append(
            "<table><tr><th colspan=2>sidecar</th></tr>"
            + "".join(
                f"<tr><td>{e(k)}</td><td>{e(json.dumps(v) if not isinstance(v, str) else v)}"
                "</td></tr>"
                for k, v in sidecar.items()
            )
            + "</table>"
        )
    out.append("</div>")
    errs = [r for r in messages if r.status == "error"]
    if errs:
        out.append(
            "<ul class='err'>"
            + "".join(f"<li>{e(r.action)}: {e(r.message)}</li>" for r in errs)
            + "</ul>"
        )
    out.append("</section>")
    return "".join(out)


def _sidecar(img: Image) -> dict[str, Any]:
    p = img.read_path
    stem = _stem(p.name) or p.name
    side = p.with_name(stem + ".json")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _made_by(
    manifest: dict[str, dict[str, Any]], prov: dict[str, str], img: Image, dataset: Path
) -> str:
    for p in img.files.values():
        rel = p.relative_to(dataset).as_posix()
        if rel in prov:
            return prov[rel]
        if rel in manifest:
            return str(manifest[rel].get("step", ""))
        for k, row in manifest.items():
            if k.startswith(rel + "/"):
                return str(row.get("step", ""))
    return ""


def render_report(
    dataset: Path,
    out: TextIO,
    *,
    validate: bool = True,
    qc_rows: dict[str, dict[str, str]] | None = None,
    qc_name: str = "qc.tsv",
    images: list[Image] | None = None,
    levels_read: dict[str, tuple[str, int, tuple[int, ...]]] | None = None,
) -> str:
    """Write the HTML of *dataset*'s report to *out*, section by section (one image's
    pixels in memory at a time). Returns the validation status line."""
    from bidspack.provenance.manifest import read_manifest

    dataset = Path(dataset)
    images = find_images(dataset) if images is None else images
    levels_read = {} if levels_read is None else levels_read
    qc_rows = qc_rows or {}
    _label_images(images, dataset)
    try:
        desc = json.loads((dataset / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        desc = {}
    status, vrecs, frecs, notes = _validation(dataset, validate)
    timeline, made_by = _provenance_html(dataset)
    try:
        manifest = read_manifest(dataset)
    except Exception:
        manifest = {}
    e = _e
    w = out.write
    w("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>")
    w(f"<title>bidspack report: {e(desc.get('Name', dataset.name))}</title>")
    w(f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>")
    w(f"<h1>{e(desc.get('Name', dataset.name))}</h1>")
    w(
        f"<p class='small'>Dataset <code>{e(dataset.name)}</code>, "
        f"{e(desc.get('DatasetType', 'raw'))}, BIDS {e(desc.get('BIDSVersion', '?'))}; "
        f"{len(images)} image(s); report by bidspack, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Views from the coarsest pyramid level whose longer side is at least {MIN_SIDE} px "
        f"(never level 0 of a larger pyramid); QC ratings from <code>{e(qc_name)}</code>.</p>"
    )
    # contents
    w("<h2>Contents</h2><ul class='small'>")
    for img in images:
        w(f"<li><a href='#img-{e(img.key)}'>{e(img.key)}</a></li>")
    w("</ul>")
    # validation
    w("<h2 id='validation'>Validation</h2>")
    w(
        "<p id='validation-status'>bids-validator-deno + bidspack checks, bidspack verify: "
        f"{e(status)}</p>"
    )
    for n in notes:
        w(f"<p class='warn'>{e(n)}</p>")
    if validate:
        w(_records_html(vrecs, "validate (bids-validator-deno and bidspack checks)"))
        w(_records_html(frecs, "verify (manifest digests and pixel hashes)"))
    # subjects
    participants = _read_tsv(dataset / "participants.tsv")
    samples = _read_tsv(dataset / "samples.tsv")
    if participants or samples:
        w("<h2 id='subjects'>Subjects and samples</h2>")
        for prow in participants:
            pid = prow.get("participant_id", "")
            w(f"<h3>{e(pid)}</h3>")
            w(_table([prow]))
            w(_table([s for s in samples if s.get("participant_id") == pid]))
    w(_derived_html(dataset))
    # images
    w("<h2 id='images'>Images</h2>")
    by_path: dict[str, list[Record]] = {}
    for r in vrecs + frecs:
        by_path.setdefault(r.path, []).append(r)
    for img in images:
        msgs = []
        for p in img.files.values():
            rel = p.relative_to(dataset).as_posix()
            msgs += [
                r for k, rs in by_path.items() if k == rel or k.startswith(rel + "/") for r in rs
            ]
        w(
            _image_section(
                dataset,
                img,
                images,
                sidecar=_sidecar(img),
                made_by=_made_by(manifest, made_by, img, dataset),
                messages=msgs,
                qc_row=qc_rows.get(img.key),
                levels_read=levels_read,
            )
        )
        _close()
    w("<h2 id='provenance'>Provenance timeline</h2>")
    w(timeline)
    w("</body></html>\n")
    return status


def write_report(
    dataset: Path,
    output: Path,
    *,
    validate: bool = True,
    force: bool = False,
    qc: Path | None = None,
) -> ReportResult:
    """Write the report of *dataset* to *output* (staged beside it, renamed into place)
    and read or write ``qc.tsv`` beside it (or *qc*).

    Raises:
        OutputError: *output* exists and *force* is false; *dataset* is not a dataset.
    """
    from bidspack.errors import OutputError

    t0 = time.perf_counter()
    dataset = Path(dataset)
    output = Path(output)
    if not (dataset / "dataset_description.json").is_file():
        raise OutputError(dataset, "not a BIDS dataset (no dataset_description.json)")
    if (output.exists() or output.is_symlink()) and not force:
        raise OutputError(output, "exists", hint="pass --force to replace it")
    if output.is_dir():
        raise OutputError(output, "is a folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    qc_path = Path(qc) if qc is not None else output.parent / "qc.tsv"
    images = find_images(dataset)
    qc_rows, qc_written = ensure_qc(qc_path, images)
    levels: dict[str, tuple[str, int, tuple[int, ...]]] = {}
    tmp = output.with_name(f".{output.name}.part-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            status = render_report(
                dataset,
                fh,
                validate=validate,
                qc_rows=qc_rows,
                qc_name=qc_path.name,
                images=images,
                levels_read=levels,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _close()
        raise
    return ReportResult(
        output,
        qc_path,
        qc_written,
        len(images),
        levels,
        status,
        output.stat().st_size,
        time.perf_counter() - t0,
    )
