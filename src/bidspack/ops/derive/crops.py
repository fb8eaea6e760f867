"""``bidspack derive crops``: image + mask training pairs cropped to the annotated region.

Annotations come in two kinds:

- **SWC tracings** (``--swc``; Cannon et al. 1998, NeuroMorpho.Org StdSwc 1.3): read
  and validated by :func:`bidspack.io.swc.read_swc`, calibrated to micrometres by
  :func:`bidspack.io.swc.calibrate` (the header's unit, or ``unit=`` um/nm, or voxel
  coordinates of a stated ``(z, y, x)`` size, plus an ``(z, y, x)`` offset in
  micrometres for tracings made on a crop), and rasterised sparsely into the source
  image's voxel grid (its ``(z, y, x)`` shape, voxel size and origin in micrometres,
  from its OME metadata) by :func:`bidspack.io.rasterize.rasterize` (26-connected lines
  or radius-aware swept spheres; one label per tree, per file, or binary). Nodes outside
  the image are counted per file and reported (records, table), never dropped silently.
- **An existing label image** (``--mask``): a packaged label image of the source dataset
  selected by entities (``desc``, optionally its pipeline) or a TIFF file / slice folder
  of the image's shape.

Each image gives one crop (the union of its annotations) or one crop per tree / label
value (``per_tree``): the bounding box of the annotated voxels plus a margin (whole
voxels per axis: ``ceil(margin_um / voxel_um)``, or given in voxels), clipped at the
image border. Image and mask are cropped together and written as BIDS derivative
images of a standalone derived dataset (:mod:`bidspack.ops.derive.dataset`):

- OME-TIFF (:func:`bidspack.io.ometiff.write_ome_tiff`): the image
  ``sub-<l>/[ses-<l>/]micr/<entities>_desc-crop<N>_<suffix>.ome.tif`` and the mask
  ``..._desc-crop<N>mask_<suffix>.ome.tif``;
- OME-Zarr (:func:`bidspack.io.omezarr.write_ome_zarr`): the image
  ``..._desc-crop<N>_<suffix>.ome.zarr`` with the mask as its NGFF label
  ``labels/mask`` (OME-NGFF #labels-md);

both with the crop's physical origin (OME-XML ``Plane`` ``Position*``, NGFF
``translation``): ``origin_crop = origin_source + (z0, y0, x0) * voxel_size``, so crop
voxel ``(i, j, k)`` is source voxel ``(z0 + i, y0 + j, x0 + k)`` and lies at the same
physical position. A source without a recorded origin counts as origin 0. The mask is
written plane by plane from the sparse mask (:meth:`SparseMask.to_dense_block`), never
dense for the whole image.

Table ``crops.parquet`` (and ``crops.tsv``), one row per crop, columns
:data:`TABLE_COLUMNS`, JSON Schema ``specs/crops-index.schema.json``. SWC files are
copied to ``sourcedata/swc/`` (their sha256 in the table). ``--export hdf5 FILE`` writes
one HDF5 file with a group per crop (``image``, ``mask`` and attributes), staged beside
FILE and renamed into place (:func:`bidspack.txn.beside.staged_beside`).

Steps: one per crop (``crops/<crop id>``: the crop's images, sidecars and its row in
``crops/<crop id>.json``), then ``index`` (table, SWC copies, participants/samples
tables, dataset_description.json, README.md, .bidsignore). See ``docs/crops.md``.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, cast

import numpy as np

from bidspack.bids.paths import micr_path
from bidspack.bids.tables import json_text, read_tsv, tsv_text, write_text
from bidspack.errors import OutputError, PlanError, SourceError
from bidspack.io.pixelhash import PixelHasher
from bidspack.io.rasterize import SparseMask, VoxelGrid, bbox_with_margin, rasterize
from bidspack.io.sources import ImageSource, StackInfo
from bidspack.io.swc import PhysicalTracing, Tracing, calibrate, read_swc, tracing_from_arrays
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
from bidspack.safety import is_within
from bidspack.txn import Transaction
from bidspack.txn.steps import file_xxh3, record_path, text_xxh3

OPERATION = "derive-crops"
FORMATS = ("ome-tiff", "ome-zarr")
MODES = ("line", "radius")
LABEL_MODES = ("tree", "file", "binary")
SOMA_MODES = ("sphere", "segments")
SWC_UNITS = ("um", "nm", "voxel")
TABLE_PARQUET = "crops.parquet"
TABLE_TSV = "crops.tsv"
PARTS = "crops"
SWC_COPIES = "sourcedata/swc"
#: NGFF label name of the mask inside a crop's OME-Zarr.
NGFF_LABEL = "mask"
#: Bytes of label-image pixels read at once when looking for its non-zero voxels.
SLAB_BYTES = 64 << 20
Box = tuple[int, int, int, int, int, int]
Triple = tuple[float, float, float]

#: Columns of ``crops.parquet`` / ``crops.tsv`` (name, Arrow type), in order; see
#: ``specs/crops-index.schema.json``.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("crop_id", "string"),
    ("crop_index", "int64"),
    ("image_ome_tiff", "string"),
    ("mask_ome_tiff", "string"),
    ("image_ome_zarr", "string"),
    ("mask_ngff_label", "string"),
    ("source", "string"),
    ("source_format", "string"),
    ("source_pixel_hash", "string"),
    ("annotation", "string"),
    ("target", "string"),
    ("target_label", "int64"),
    ("target_file", "string"),
    ("target_tree", "int64"),
    ("swc_files", "list<string>"),
    ("swc_sources", "list<string>"),
    ("swc_sha256", "list<string>"),
    ("swc_nodes", "list<int64>"),
    ("swc_trees", "list<int64>"),
    ("swc_nodes_outside", "list<int64>"),
    ("swc_calibration", "list<string>"),
    ("nodes_outside", "int64"),
    ("mask_source", "string"),
    ("mask_source_pixel_hash", "string"),
    ("mode", "string"),
    ("labels", "string"),
    ("z0", "int64"),
    ("z1", "int64"),
    ("y0", "int64"),
    ("y1", "int64"),
    ("x0", "int64"),
    ("x1", "int64"),
    ("size_z", "int64"),
    ("size_y", "int64"),
    ("size_x", "int64"),
    ("voxel_z_um", "float64"),
    ("voxel_y_um", "float64"),
    ("voxel_x_um", "float64"),
    ("offset_z_um", "float64"),
    ("offset_y_um", "float64"),
    ("offset_x_um", "float64"),
    ("origin_z_um", "float64"),
    ("origin_y_um", "float64"),
    ("origin_x_um", "float64"),
    ("source_origin_recorded", "bool"),
    ("margin_z", "int64"),
    ("margin_y", "int64"),
    ("margin_x", "int64"),
    ("crop_voxels", "int64"),
    ("mask_voxels", "int64"),
    ("mask_labels", "int64"),
    ("image_pixel_hash", "string"),
    ("mask_pixel_hash", "string"),
)


def _bad(what: str) -> PlanError:
    return PlanError(None, f"derive crops: {what}")


@dataclass(frozen=True)
class CropParams:
    """Parameters of ``derive crops`` (all recorded in the derived dataset).

    Attributes:
        mode: ``line`` (26-connected segment lines) or ``radius`` (plus swept spheres of
            the node radii, in micrometres); SWC only.
        labels: ``tree`` (one label per tree, 1.. over the files in order), ``file``
            (one per SWC file) or ``binary`` (1); SWC only. Where labels meet, the
            smallest wins.
        soma: ``sphere`` (single-node and NeuroMorpho 3-point somata as one sphere) or
            ``segments``.
        per_tree: one crop per tree (SWC) or per non-zero label value (``--mask``)
            instead of one crop of the union.
        margin_um: margin in micrometres ``(z, y, x)``; converted per axis to
            ``ceil(margin / voxel)`` voxels. Exclusive with *margin_voxels*.
        margin_voxels: margin in voxels ``(z, y, x)``.
        swc_unit: ``um``, ``nm`` or ``voxel`` (then *swc_voxel_size*); ``None``: the
            unit the SWC header states.
        swc_voxel_size: ``(z, y, x)`` micrometres of one SWC coordinate unit when
            *swc_unit* is ``voxel`` (hemibrain: 0.008).
        swc_offset_um: ``(z, y, x)`` micrometres added to the calibrated positions
            (tracings made on a crop: the crop's physical origin).
        formats: output formats, subset of ``("ome-tiff", "ome-zarr")``.
        tsv: also write ``crops.tsv``.
    """

    mode: str = "line"
    labels: str = "tree"
    soma: str = "sphere"
    per_tree: bool = False
    margin_um: Triple | None = None
    margin_voxels: tuple[int, int, int] | None = None
    swc_unit: str | None = None
    swc_voxel_size: Triple | None = None
    swc_offset_um: Triple | None = None
    formats: tuple[str, ...] = ("ome-tiff",)
    tsv: bool = True

    def check(self) -> None:
        """Raises:
        PlanError: an unknown mode, label mode, soma mode, unit or format; both
            margins; negative or non-finite margins, sizes or offsets; a voxel unit
            without a size (or a size without the voxel unit).
        """
        if self.mode not in MODES:
            raise _bad(f"mode {self.mode!r}: one of {', '.join(MODES)}")
        if self.labels not in LABEL_MODES:
            raise _bad(f"labels {self.labels!r}: one of {', '.join(LABEL_MODES)}")
        if self.soma not in SOMA_MODES:
            raise _bad(f"soma {self.soma!r}: one of {', '.join(SOMA_MODES)}")
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise _bad(f"formats {list(self.formats)}: each one of {', '.join(FORMATS)}")
        if len(set(self.formats)) != len(self.formats):
            raise _bad(f"formats {list(self.formats)} name a format twice")
        if self.margin_um is not None and self.margin_voxels is not None:
            raise _bad("give a margin in micrometres or in voxels, not both")
        if self.margin_um is not None and not all(
            math.isfinite(m) and m >= 0 for m in self.margin_um
        ):
            raise _bad(f"margin {list(self.margin_um)} um: numbers >= 0")
        if self.margin_voxels is not None and not all(m >= 0 for m in self.margin_voxels):
            raise _bad(f"margin {list(self.margin_voxels)} voxels: integers >= 0")
        if self.swc_unit is not None and self.swc_unit not in SWC_UNITS:
            raise _bad(f"SWC unit {self.swc_unit!r}: one of {', '.join(SWC_UNITS)}")
        if (self.swc_unit == "voxel") != (self.swc_voxel_size is not None):
            raise _bad(
                "--swc-unit voxel needs --swc-voxel-size Z,Y,X (micrometres), and the "
                "voxel size is only for --swc-unit voxel"
            )
        if self.swc_voxel_size is not None and not all(
            math.isfinite(v) and v > 0 for v in self.swc_voxel_size
        ):
            raise _bad(f"SWC voxel size {list(self.swc_voxel_size)} um: numbers > 0")
        if self.swc_offset_um is not None and not all(math.isfinite(v) for v in self.swc_offset_um):
            raise _bad(f"SWC offset {list(self.swc_offset_um)} um: finite numbers")

    def to_dict(self) -> dict[str, Any]:
        """Every parameter as JSON (recorded in ``dataset_description.json``)."""
        return {
            "mode": self.mode,
            "labels": self.labels,
            "soma": self.soma,
            "per_tree": self.per_tree,
            "margin_um": None if self.margin_um is None else list(self.margin_um),
            "margin_voxels": None if self.margin_voxels is None else list(self.margin_voxels),
            "swc_unit": self.swc_unit,
            "swc_voxel_size_um": None if self.swc_voxel_size is None else list(self.swc_voxel_size),
            "swc_offset_um": None if self.swc_offset_um is None else list(self.swc_offset_um),
            "formats": list(self.formats),
            "tsv": self.tsv,
        }

    def margin_for(self, voxel_um: Triple) -> tuple[int, int, int]:
        """The margin in whole voxels ``(z, y, x)`` for this voxel size (micrometres:
        ``ceil(margin / voxel - 1e-9)`` per axis, as
        :func:`bidspack.io.rasterize.bbox_with_margin`)."""
        if self.margin_voxels is not None:
            mz, my, mx = self.margin_voxels
            return (int(mz), int(my), int(mx))
        m = self.margin_um or (0.0, 0.0, 0.0)
        out = [math.ceil(a / v - 1e-9) for a, v in zip(m, voxel_um, strict=True)]
        return (max(out[0], 0), max(out[1], 0), max(out[2], 0))


@dataclass(frozen=True)
class MaskSpec:
    """Where ``--mask`` finds the label image of each selected image.

    Attributes:
        path: a TIFF/OME-TIFF file or a slice folder with the image's ``(z, y, x)``
            shape (one selected image only), or ``None``.
        desc: ``desc`` label of a packaged label image of the source dataset, matched to
            each image by its ``sub``, ``ses`` and ``sample`` (and ``acq``, ``stain``,
            ``run``, ``chunk`` where the label image has them).
        pipeline: ``derivatives/<pipeline>`` of that label image (default: any).
    """

    path: Path | None = None
    desc: str | None = None
    pipeline: str | None = None


# -- region readers ----------------------------------------------------------------------------


class _PlaneReader:
    """Region reads of an :class:`ImageSource` (a TIFF or slice folder): whole planes
    decoded, then cut."""

    def __init__(self, source: ImageSource):
        self.source = source
        self.shape = source.shape
        self.dtype = np.dtype(source.dtype)
        self.chunks = (1, source.shape[1], source.shape[2])
        self.path = source.path

    def read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.stack([self.source.read_plane(z)[y0:y1, x0:x1] for z in range(z0, z1)])


class RegionSource(ImageSource):
    """The box ``(z0, z1, y0, y1, x0, x1)`` (half-open source voxels) of an image as an
    :class:`~bidspack.io.sources.ImageSource` ``(z, y, x)`` for the writers: read in
    slabs of whole source chunks along z (each chunk decoded once), planes yielded in
    order, in the calling thread.

    Args:
        reader: an :class:`ImageHandle` (or a TIFF reader) with ``read(z0, z1, y0, y1,
            x0, x1)``.
        box: the region in source voxels.
        voxel_um: ``(z, y, x)`` voxel size in micrometres.
        origin_um: ``(z, y, x)`` micrometres of the centre of the region's first voxel.
    """

    def __init__(self, reader: Any, box: Box, voxel_um: Triple, origin_um: Triple):
        z0, z1, y0, y1, x0, x1 = box
        self.reader = reader
        self.box = box
        self.path = Path(reader.path)
        self.files = (self.path,)
        self.info = StackInfo(
            (z1 - z0, y1 - y0, x1 - x0), np.dtype(reader.dtype), voxel_um, origin_um
        )
        self._cz = max(1, int(reader.chunks[0]))
        self._slab: np.ndarray | None = None
        self._slab_z = 0

    def read_plane(self, z: int) -> np.ndarray:
        """Plane *z* of the region, ``(y, x)``.

        Raises:
            SourceError: the source cannot be decoded.
        """
        z0, z1, y0, y1, x0, x1 = self.box
        slab = self._slab
        if slab is None or not (self._slab_z <= z < self._slab_z + slab.shape[0]):
            a = z0 + z
            b = min(z1, (a // self._cz + 1) * self._cz)
            slab = self.reader.read(a, b, y0, y1, x0, x1)
            self._slab, self._slab_z = slab, z
        return np.ascontiguousarray(slab[z - self._slab_z])

    def iter_planes(self, *, prefetch: int = 4, workers: int = 2) -> Iterator[np.ndarray]:
        """The region's planes in Z order (sequential: the source's file handle is not
        shared between threads)."""
        for z in range(self.shape[0]):
            yield self.read_plane(z)
        self._slab = None


class SparseMaskSource(ImageSource):
    """A box of a :class:`~bidspack.io.rasterize.SparseMask` as an ``ImageSource``,
    plane by plane (:meth:`SparseMask.to_dense_block`: never dense beyond one plane of
    the box), labels mapped through *lut* (``lut[label]``) to *dtype*."""

    def __init__(
        self,
        mask: SparseMask,
        box: Box,
        lut: np.ndarray,
        dtype: np.dtype,
        voxel_um: Triple,
        origin_um: Triple,
        path: Path,
    ):
        z0, z1, y0, y1, x0, x1 = box
        self.mask = mask
        self.box = box
        self.lut = lut
        self.path = path
        self.files = (path,)
        self.info = StackInfo((z1 - z0, y1 - y0, x1 - x0), np.dtype(dtype), voxel_um, origin_um)

    def read_plane(self, z: int) -> np.ndarray:
        """Plane *z* of the box, ``(y, x)``, labels mapped."""
        z0, _, y0, y1, x0, x1 = self.box
        block = self.mask.to_dense_block(
            slice(z0 + z, z0 + z + 1), slice(y0, y1), slice(x0, x1), dtype=np.uint32
        )[0]
        return self.lut[block].astype(self.dtype, copy=False)

    def iter_planes(self, *, prefetch: int = 4, workers: int = 2) -> Iterator[np.ndarray]:
        """The box's planes in Z order."""
        for z in range(self.shape[0]):
            yield self.read_plane(z)


# -- annotations -------------------------------------------------------------------------------


@dataclass
class SwcFile:
    """One SWC file of an image: as read and calibrated, and what rasterising found.

    Attributes:
        source: the file as given (absolute path).
        copy: dataset-relative path of its copy (``sourcedata/swc/<name>``).
        tracing: the calibrated tracing (micrometres).
        outside: nodes outside the image (all trees).
        first_outside_line: SWC line of the first node outside, or ``None``.
    """

    source: Path
    copy: str
    tracing: PhysicalTracing
    outside: int = 0
    first_outside_line: int | None = None

    @property
    def sha256(self) -> str:
        """sha256 of the file."""
        return self.tracing.tracing.sha256


@dataclass
class SwcAnnotation:
    """The SWC annotation of one image: the files and their sparse mask (tree labels
    1.. in file order), and *lut* mapping tree labels to the written labels."""

    files: list[SwcFile]
    mask: SparseMask
    lut: np.ndarray
    dtype: np.dtype


@dataclass
class LabelAnnotation:
    """An existing label image of one image: a packaged image of the source dataset
    (*rel* set) or a TIFF/slice folder outside it."""

    reader: Any
    name: str  # source-dataset-relative path, or the absolute path
    pixel_hash: str
    dtype: np.dtype


@dataclass
class CropPlan:
    """One crop: its image, box (half-open source voxels), what it targets and its
    output names."""

    image: ImageHandle
    index: int
    box: Box
    margin: tuple[int, int, int]
    annotation: SwcAnnotation | LabelAnnotation
    target: str  # union | tree | label
    target_label: int | None = None
    target_file: str | None = None
    target_tree: int | None = None
    crop_id: str = ""
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def step(self) -> str:
        """Step name (``crops/<crop id>``)."""
        return f"{PARTS}/{self.crop_id}"

    @property
    def part(self) -> str:
        """Dataset-relative path of the crop's row (JSON)."""
        return f"{PARTS}/{self.crop_id}.json"

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` voxels of the crop."""
        z0, z1, y0, y1, x0, x1 = self.box
        return (z1 - z0, y1 - y0, x1 - x0)

    @property
    def offset_um(self) -> Triple:
        """``(z0, y0, x0) * voxel size``: the crop's offset from the source origin (um)."""
        v = self.image.voxel_um
        return (self.box[0] * v[0], self.box[2] * v[1], self.box[4] * v[2])

    @property
    def origin_um(self) -> Triple:
        """Physical ``(z, y, x)`` um of the centre of the crop's first voxel: the
        source origin (0 when unrecorded) plus :attr:`offset_um`."""
        o = self.image.origin_um or (0.0, 0.0, 0.0)
        off = self.offset_um
        return (o[0] + off[0], o[1] + off[1], o[2] + off[2])

    def all_outputs(self) -> list[str]:
        """Every output of the step (images, sidecars, part)."""
        return [*self.outputs.values(), self.part]


# -- SWC ----------------------------------------------------------------------------------------


def _is_swc(name: str) -> bool:
    low = name.lower()
    return low.endswith((".swc", ".swc.txt"))


def find_swc_files(paths: Sequence[Path]) -> list[Path]:
    """The SWC files named by *paths*: files as given, folders as their ``*.swc`` /
    ``*.swc.txt`` files (not recursive, sorted by name); duplicates removed.

    Raises:
        PlanError: a path that does not exist, or a folder without SWC files.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and _is_swc(f.name))
            if not files:
                raise PlanError(p, "the folder holds no SWC file (*.swc, *.swc.txt)")
        elif p.is_file():
            files = [p]
        else:
            raise PlanError(p, "no such SWC file or folder")
        for f in files:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                found.append(f.absolute())
    return found


def _calibrate(tracing: Tracing, params: CropParams) -> PhysicalTracing:
    """Micrometres, as *params* say (see :class:`CropParams`).

    Raises:
        SourceError: no unit is known for the file (naming it).
    """
    if params.swc_unit == "voxel":
        return calibrate(tracing, voxel_size=params.swc_voxel_size, offset=params.swc_offset_um)
    if params.swc_unit is not None:
        return calibrate(tracing, unit=params.swc_unit, offset=params.swc_offset_um)
    return calibrate(tracing, offset=params.swc_offset_um)


def _copy_names(files: Sequence[Path], digests: Sequence[str]) -> list[str]:
    """Dataset-relative names of the SWC copies: ``sourcedata/swc/<name>``; a name used
    by two different files gets ``-<sha256[:8]>`` before its extension."""
    names = [f.name for f in files]
    out = []
    for f, d in zip(files, digests, strict=True):
        name = f.name
        clash = sum(1 for n in names if n == name) > 1
        if clash:
            stem, dot, ext = name.partition(".")
            name = f"{stem}-{d[:8]}{dot}{ext}"
        out.append(f"{SWC_COPIES}/{name}")
    return out


def swc_annotation(image: ImageHandle, files: Sequence[Path], params: CropParams) -> SwcAnnotation:
    """Read, calibrate and rasterise *files* into *image*'s voxel grid (its shape,
    voxel size and origin in micrometres; no pixel is read).

    Returns:
        The annotation: one sparse mask with tree labels (1.. over the files in order,
        trees in root order), and the label map for *params.labels*.

    Raises:
        SourceError: a malformed SWC file (file and line named), or one without a known
            unit.
    """
    tracings = []
    for f in files:
        tr = read_swc(f)
        try:
            tracings.append(_calibrate(tr, params))
        except ValueError as exc:
            raise SourceError(f, str(exc)) from None
    grid = VoxelGrid(image.shape, image.voxel_um, image.origin_um or (0.0, 0.0, 0.0))
    mask = rasterize(
        tracings,
        grid,
        mode=cast(Literal["line", "radius"], params.mode),
        labels="tree",
        soma=cast(Literal["sphere", "segments"], params.soma),
    )
    copies = _copy_names(files, [t.tracing.sha256 for t in tracings])
    swcs = [SwcFile(Path(f), c, t) for f, c, t in zip(files, copies, tracings, strict=True)]
    for o in mask.outside:
        s = swcs[o.tracing_index]
        s.outside += o.n_outside
        if s.first_outside_line is None or o.first_line < s.first_outside_line:
            s.first_outside_line = o.first_line
    # tree label -> written label (monotone, so "smallest label wins" is kept)
    n = len(mask.label_info)
    lut = np.zeros(n + 1, dtype=np.uint32)
    for info in mask.label_info:
        if params.labels == "tree":
            lut[info.label] = info.label
        elif params.labels == "file":
            lut[info.label] = (info.tracing_index or 0) + 1
        else:
            lut[info.label] = 1
    top = int(lut.max()) if lut.size else 1
    dtype = np.dtype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)
    return SwcAnnotation(swcs, mask, lut, dtype)


def _sub_tracing(pt: PhysicalTracing, tree: int) -> PhysicalTracing:
    """The nodes of one tree of a calibrated tracing, as a tracing of their own."""
    tr = pt.tracing
    sel = np.flatnonzero(tr.tree == tree)
    pidx = tr.parent_index[sel]
    parents = np.where(pidx >= 0, tr.ids[np.maximum(pidx, 0)], -1)
    sub = tracing_from_arrays(
        tr.ids[sel],
        tr.types[sel],
        tr.xyz[sel],
        tr.radius[sel],
        parents,
        path=tr.path,
        sha256=tr.sha256,
        lines=tr.lines[sel],
    )
    return PhysicalTracing(
        tracing=sub,
        xyz_um=pt.xyz_um[sel],
        radius_um=pt.radius_um[sel],
        scale_um=pt.scale_um,
        offset_um=pt.offset_um,
        calibration=pt.calibration,
    )


def _swc_boxes(
    image: ImageHandle, ann: SwcAnnotation, params: CropParams, margin: tuple[int, int, int]
) -> list[tuple[str, Box, int | None, str | None, int | None]]:
    """``(target, box, label, file, tree)`` of each crop of an SWC annotation; a tree
    with no voxel in the image gives no crop (an ``impossible`` record)."""
    if not params.per_tree:
        box = bbox_with_margin(ann.mask, margin_voxels=margin)
        return [] if box is None else [("union", box, None, None, None)]
    out: list[tuple[str, Box, int | None, str | None, int | None]] = []
    grid = VoxelGrid(image.shape, image.voxel_um, image.origin_um or (0.0, 0.0, 0.0))
    for info in ann.mask.label_info:
        swc = ann.files[info.tracing_index or 0]
        tree = int(info.tree or 0)
        one = rasterize(
            _sub_tracing(swc.tracing, tree),
            grid,
            mode=cast(Literal["line", "radius"], params.mode),
            labels="binary",
            soma=cast(Literal["sphere", "segments"], params.soma),
        )
        box = bbox_with_margin(one, margin_voxels=margin)
        if box is not None:
            out.append(("tree", box, int(ann.lut[info.label]), str(swc.source), tree))
    return out


# -- label images -------------------------------------------------------------------------------


def _label_boxes(
    ann: LabelAnnotation, shape: tuple[int, int, int], per_label: bool
) -> tuple[dict[int, list[int]], str]:
    """Bounding boxes of the non-zero voxels of a label image (all together under key
    0, or per label value), read in slabs of whole chunks; and its pixel hash.

    Returns:
        ``{label: [zmin, zmax, ymin, ymax, xmin, xmax]}`` (inclusive), pixel hash.
    """
    nz, ny, nx = shape
    plane = max(1, ny * nx * ann.dtype.itemsize)
    cz = max(1, int(ann.reader.chunks[0]))
    depth = max(cz, (max(1, SLAB_BYTES // plane) // cz) * cz)
    hasher = PixelHasher("ZYX", shape, ann.dtype)
    boxes: dict[int, list[int]] = {}
    for z0 in range(0, nz, depth):
        slab = np.asarray(ann.reader.read(z0, min(nz, z0 + depth), 0, ny, 0, nx))
        hasher.update(slab)
        if per_label:
            zz, yy, xx = np.nonzero(slab)
            if zz.size == 0:
                continue
            vals = slab[zz, yy, xx].astype(np.int64)
            order = np.argsort(vals, kind="stable")
            vals, zz, yy, xx = vals[order], zz[order] + z0, yy[order], xx[order]
            starts = np.flatnonzero(np.r_[True, vals[1:] != vals[:-1]])
            mins = [np.minimum.reduceat(a, starts) for a in (zz, yy, xx)]
            maxs = [np.maximum.reduceat(a, starts) for a in (zz, yy, xx)]
            for k, first in enumerate(starts):
                lab = int(vals[first])
                b = [int(mins[0][k]), int(maxs[0][k]), int(mins[1][k]), int(maxs[1][k])]
                b += [int(mins[2][k]), int(maxs[2][k])]
                _widen(boxes, lab, b)
        else:
            nzmask = slab != 0
            if not nzmask.any():
                continue
            zs = np.flatnonzero(nzmask.any(axis=(1, 2)))
            ys = np.flatnonzero(nzmask.any(axis=(0, 2)))
            xs = np.flatnonzero(nzmask.any(axis=(0, 1)))
            b = [int(zs[0]) + z0, int(zs[-1]) + z0, int(ys[0]), int(ys[-1])]
            b += [int(xs[0]), int(xs[-1])]
            _widen(boxes, 0, b)
    return boxes, hasher.hexdigest()


def _widen(boxes: dict[int, list[int]], key: int, b: list[int]) -> None:
    if key not in boxes:
        boxes[key] = b
        return
    cur = boxes[key]
    for i in (0, 2, 4):
        cur[i] = min(cur[i], b[i])
        cur[i + 1] = max(cur[i + 1], b[i + 1])


def _with_margin(b: list[int], margin: tuple[int, int, int], shape: tuple[int, int, int]) -> Box:
    """Inclusive bounds plus a margin, clipped, as a half-open box."""
    z0, z1, y0, y1, x0, x1 = b
    mz, my, mx = margin
    nz, ny, nx = shape
    return (
        max(0, z0 - mz),
        min(nz, z1 + 1 + mz),
        max(0, y0 - my),
        min(ny, y1 + 1 + my),
        max(0, x0 - mx),
        min(nx, x1 + 1 + mx),
    )


def _find_label_image(
    source: SourceDataset, image: ImageHandle, spec: MaskSpec, masks: list[ImageHandle]
) -> LabelAnnotation:
    """The label image of *image*: *spec.path*, or the packaged image matched by
    entities among *masks*.

    Raises:
        PlanError: none or several match; shape or voxel size differ; not integers.
        SourceError: the file cannot be opened.
    """
    if spec.path is not None:
        from bidspack.io.sources import open_source

        src = open_source(spec.path)
        reader: Any = _PlaneReader(src)
        name = str(Path(spec.path).absolute())
        pixel_hash = ""  # computed while looking for the bounding box
        voxel = src.info.physical_size
    else:
        ents = image.name.entities
        found = [
            m
            for m in masks
            if all(m.name.entities.get(k) == ents.get(k) for k in ("sub", "ses", "sample"))
            and all(
                m.name.entities[k] == ents.get(k)
                for k in ("acq", "stain", "run", "chunk")
                if k in m.name.entities
            )
        ]
        if len(found) != 1:
            what = "no label image" if not found else f"{len(found)} label images"
            raise PlanError(
                source.path,
                f"{what} with desc {spec.desc!r} match {image.rel}"
                + (": " + ", ".join(m.rel for m in found) if found else ""),
                hint="select the image (entities) or the label image (--mask-pipeline)",
            )
        reader = found[0]
        name = found[0].rel
        pixel_hash = found[0].pixel_hash or ""
        voxel = found[0].voxel_um
    if tuple(reader.shape) != tuple(image.shape):
        raise PlanError(
            Path(reader.path),
            f"label image shape {tuple(reader.shape)} (z, y, x) differs from the image's "
            f"{image.shape} ({image.rel})",
        )
    if voxel is not None and not all(
        math.isclose(a, b, rel_tol=1e-6) for a, b in zip(voxel, image.voxel_um, strict=True)
    ):
        raise PlanError(
            Path(reader.path),
            f"label image voxel size {tuple(voxel)} um differs from the image's "
            f"{image.voxel_um} um ({image.rel})",
        )
    dtype = np.dtype(reader.dtype)
    if dtype.kind not in "ui":
        raise PlanError(Path(reader.path), f"a label image has integer pixels, not {dtype}")
    return LabelAnnotation(reader, name, pixel_hash, dtype)


# -- planning -----------------------------------------------------------------------------------


def _output_names(plan: CropPlan, formats: Sequence[str]) -> None:
    """Fill in the crop id and the dataset-relative output paths (BIDS derivative
    names: the source's entities, ``desc-[<desc>]crop<N>``, the mask ``...mask``)."""
    from bidspack.io.ometiff import ome_tiff_extension

    img = plan.image
    ents = dict(img.name.entities)
    prefix = ents.pop("desc", "")
    desc = f"{prefix}crop{plan.index}"
    suffix = img.name.suffix
    image_ents = {**ents, "desc": desc}
    mask_ents = {**ents, "desc": desc + "mask"}
    stem = PurePosixPath(micr_path(image_ents, suffix, "")).name
    plan.crop_id = stem
    out: dict[str, str] = {}
    if "ome-tiff" in formats:
        ext = ome_tiff_extension(plan.shape, img.dtype)
        mask_dtype = plan.annotation.dtype
        out["image_ome_tiff"] = micr_path(image_ents, suffix, ext)
        out["image_sidecar"] = micr_path(image_ents, suffix, ".json")
        out["mask_ome_tiff"] = micr_path(
            mask_ents, suffix, ome_tiff_extension(plan.shape, mask_dtype)
        )
        out["mask_sidecar"] = micr_path(mask_ents, suffix, ".json")
    if "ome-zarr" in formats:
        out["image_ome_zarr"] = micr_path(image_ents, suffix, ".ome.zarr")
        out["image_sidecar"] = micr_path(image_ents, suffix, ".json")
    plan.outputs = out


def plan_crops(
    source: SourceDataset,
    params: CropParams,
    *,
    swc: Sequence[Path] = (),
    mask: MaskSpec | None = None,
    suffix: str | None = None,
    pipeline: str | None = None,
    fmt: str = "auto",
    entities: dict[str, str | None] | None = None,
) -> tuple[list[CropPlan], list[Record]]:
    """Select the image(s), read the annotations and plan every crop (boxes in source
    voxels). SWC annotations read no pixel; a label image is read once (slabs) to find
    its non-zero bounding box.

    Returns:
        The crops, and records about the annotations (``swc`` records with node, tree and
        outside counts per file; ``impossible`` records for trees without a voxel in
        the image).

    Raises:
        PlanError: bad parameters; neither or both of *swc* and *mask*; no matching
            image; several images for SWC files or a mask path; no annotated voxel in
            an image; two crops with one name.
        SourceError: a malformed SWC file (file and line named), an SWC without a known
            unit, an unreadable image or label image.
    """
    params.check()
    mask = mask if mask is not None and (mask.path or mask.desc) else None
    if bool(swc) == (mask is not None):
        raise _bad("give SWC tracings (--swc) or a label image (--mask/--mask-desc), one of them")
    if mask is not None and mask.path is not None and mask.desc is not None:
        raise _bad("give --mask PATH or --mask-desc, not both")
    files = find_swc_files(swc) if swc else []
    images = source.select_images(suffix=suffix, pipeline=pipeline, fmt=fmt, **(entities or {}))
    masks: list[ImageHandle] = []
    if mask is not None and mask.desc is not None:
        masks = source.select_images(pipeline=mask.pipeline, desc=mask.desc)
        mask_rels = {m.rel for m in masks}
        images = [
            i for i in images if i.rel not in mask_rels and i.name.entities.get("desc") != mask.desc
        ]
    if not images:
        wanted = {"suffix": suffix, "pipeline": pipeline, **(entities or {})}
        shown = ", ".join(f"{k} {v}" for k, v in wanted.items() if v is not None) or "any"
        raise PlanError(source.path, f"no image matches the selection ({shown})")
    if (files or (mask is not None and mask.path is not None)) and len(images) != 1:
        raise PlanError(
            source.path,
            f"{len(images)} images match the selection ({', '.join(i.rel for i in images[:4])}"
            f"{' ...' if len(images) > 4 else ''}); SWC files or a mask file belong to one image",
            hint="select one image with --sub, --sample, --stain, --suffix, --format ...",
        )
    plans: list[CropPlan] = []
    records: list[Record] = []
    for image in images:
        margin = params.margin_for(image.voxel_um)
        ann: SwcAnnotation | LabelAnnotation
        if files:
            ann = swc_annotation(image, files, params)
            for s in ann.files:
                t = s.tracing.tracing
                msg = (
                    f"{t.n_nodes} nodes, {t.n_trees} tree(s), {s.tracing.calibration}; "
                    f"{s.outside} node(s) outside the image {image.shape}"
                )
                if s.first_outside_line is not None:
                    msg += f" (first on line {s.first_outside_line})"
                records.append(
                    Record(
                        "swc",
                        str(s.source),
                        "ok",
                        msg,
                        {
                            "image": image.rel,
                            "sha256": s.sha256,
                            "nodes": t.n_nodes,
                            "trees": t.n_trees,
                            "nodes_outside": s.outside,
                            "first_outside_line": s.first_outside_line,
                            "calibration": s.tracing.calibration,
                        },
                    )
                )
            boxes = _swc_boxes(image, ann, params, margin)
            if params.per_tree:
                have = {(b[3], b[4]) for b in boxes}
                for info in ann.mask.label_info:
                    f = str(ann.files[info.tracing_index or 0].source)
                    if (f, int(info.tree or 0)) not in have:
                        records.append(
                            Record(
                                "crop",
                                f,
                                "impossible",
                                f"tree {info.tree} has no voxel in the image {image.rel}",
                                {"image": image.rel, "tree": info.tree},
                            )
                        )
        else:
            assert mask is not None
            ann = _find_label_image(source, image, mask, masks)
            found, digest = _label_boxes(ann, image.shape, params.per_tree)
            ann.pixel_hash = ann.pixel_hash or digest
            boxes = [
                (
                    "label" if params.per_tree else "union",
                    _with_margin(b, margin, image.shape),
                    lab if params.per_tree else None,
                    None,
                    None,
                )
                for lab, b in sorted(found.items())
            ]
        if not boxes:
            raise PlanError(
                Path(image.path),
                "no annotated voxel lies in the image "
                f"{image.shape} (z, y, x) at {image.voxel_um} um, origin "
                f"{image.origin_um or (0.0, 0.0, 0.0)} um",
                hint="check the SWC unit, voxel size and offset (--swc-unit, "
                "--swc-voxel-size, --swc-offset) or the label image",
            )
        for k, (target, box, lab, tfile, tree) in enumerate(boxes, start=1):
            plan = CropPlan(image, k, box, margin, ann, target, lab, tfile, tree)
            _output_names(plan, params.formats)
            plans.append(plan)
    seen: dict[str, str] = {}
    for p in plans:
        if p.crop_id in seen:
            raise PlanError(
                source.path,
                f"{seen[p.crop_id]} and {p.image.rel} would both give {p.crop_id}",
                hint="select one of them (--format, --pipeline or entities)",
            )
        seen[p.crop_id] = p.image.rel
    return plans, records


# -- writing ------------------------------------------------------------------------------------


def _mask_source(plan: CropPlan, path: Path) -> ImageSource:
    ann = plan.annotation
    if isinstance(ann, SwcAnnotation):
        return SparseMaskSource(
            ann.mask, plan.box, ann.lut, ann.dtype, plan.image.voxel_um, plan.origin_um, path
        )
    return RegionSource(ann.reader, plan.box, plan.image.voxel_um, plan.origin_um)


def _source_sidecar(image: ImageHandle) -> dict[str, Any]:
    side = image.path.with_name(image.name.stem + ".json")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return (
        {k: v for k, v in meta.items() if k not in ("PixelSize", "PixelSizeUnits")}
        if isinstance(meta, dict)
        else {}
    )


def _sidecar(plan: CropPlan, what: str) -> str:
    from bidspack.bids.metadata import micr_sidecar

    z0, z1, y0, y1, x0, x1 = plan.box
    desc = (
        f"{what} of {plan.image.rel}, source voxels [{z0}:{z1}, {y0}:{y1}, {x0}:{x1}] "
        f"(z, y, x, half-open); first voxel centre at "
        f"{tuple(round(v, 9) for v in plan.origin_um)} um (bidspack derive crops)"
    )
    return micr_sidecar(plan.image.voxel_um, _source_sidecar(plan.image), {"Description": desc})


def _mask_counts(plan: CropPlan) -> tuple[int, int]:
    """Non-zero voxels and distinct non-zero labels of an SWC crop's mask (from the
    sparse mask)."""
    ann = plan.annotation
    assert isinstance(ann, SwcAnnotation)
    z0, z1, y0, y1, x0, x1 = plan.box
    c = ann.mask.coords
    a, b = np.searchsorted(c[:, 0], [z0, z1])
    cc = c[a:b]
    keep = (cc[:, 1] >= y0) & (cc[:, 1] < y1) & (cc[:, 2] >= x0) & (cc[:, 2] < x1)
    labs = ann.lut[ann.mask.labels[a:b][keep]]
    labs = labs[labs > 0]
    return int(labs.size), int(np.unique(labs).size)


def _row(plan: CropPlan, image_hash: str, mask_hash: str, counts: tuple[int, int]) -> dict:
    """The crop's row of the table."""
    img = plan.image
    ann = plan.annotation
    z0, z1, y0, y1, x0, x1 = plan.box
    swc = isinstance(ann, SwcAnnotation)
    files = ann.files if isinstance(ann, SwcAnnotation) else []
    zarr = plan.outputs.get("image_ome_zarr")
    row: dict[str, Any] = {
        "crop_id": plan.crop_id,
        "crop_index": plan.index,
        "image_ome_tiff": plan.outputs.get("image_ome_tiff"),
        "mask_ome_tiff": plan.outputs.get("mask_ome_tiff"),
        "image_ome_zarr": zarr,
        "mask_ngff_label": f"{zarr}/labels/{NGFF_LABEL}" if zarr else None,
        "source": img.rel,
        "source_format": img.format,
        "source_pixel_hash": img.ensure_pixel_hash(),
        "annotation": "swc" if swc else "mask",
        "target": plan.target,
        "target_label": plan.target_label,
        "target_file": plan.target_file,
        "target_tree": plan.target_tree,
        "swc_files": [s.copy for s in files],
        "swc_sources": [str(s.source) for s in files],
        "swc_sha256": [s.sha256 for s in files],
        "swc_nodes": [s.tracing.tracing.n_nodes for s in files],
        "swc_trees": [s.tracing.tracing.n_trees for s in files],
        "swc_nodes_outside": [s.outside for s in files],
        "swc_calibration": [s.tracing.calibration for s in files],
        "nodes_outside": sum(s.outside for s in files),
        "mask_source": None if swc else cast(LabelAnnotation, ann).name,
        "mask_source_pixel_hash": None if swc else cast(LabelAnnotation, ann).pixel_hash,
        "mode": None,
        "labels": "source",
        "z0": z0,
        "z1": z1,
        "y0": y0,
        "y1": y1,
        "x0": x0,
        "x1": x1,
        "size_z": z1 - z0,
        "size_y": y1 - y0,
        "size_x": x1 - x0,
        "voxel_z_um": img.voxel_um[0],
        "voxel_y_um": img.voxel_um[1],
        "voxel_x_um": img.voxel_um[2],
        "offset_z_um": plan.offset_um[0],
        "offset_y_um": plan.offset_um[1],
        "offset_x_um": plan.offset_um[2],
        "origin_z_um": plan.origin_um[0],
        "origin_y_um": plan.origin_um[1],
        "origin_x_um": plan.origin_um[2],
        "source_origin_recorded": img.origin_um is not None,
        "margin_z": plan.margin[0],
        "margin_y": plan.margin[1],
        "margin_x": plan.margin[2],
        "crop_voxels": (z1 - z0) * (y1 - y0) * (x1 - x0),
        "mask_voxels": counts[0],
        "mask_labels": counts[1],
        "image_pixel_hash": image_hash,
        "mask_pixel_hash": mask_hash,
    }
    return row


def _stage_crop(txn: Transaction, plan: CropPlan, params: CropParams) -> Iterator[Record]:
    """Write the crop's image and mask (each format), sidecars and row."""
    from bidspack.io.ometiff import write_ome_tiff
    from bidspack.io.omezarr import write_ome_zarr

    img = plan.image
    out = plan.outputs
    image_hash = mask_hash = ""
    swc = isinstance(plan.annotation, SwcAnnotation)

    def region() -> RegionSource:
        return RegionSource(img, plan.box, img.voxel_um, plan.origin_um)

    counting = _CountingSource(_mask_source(plan, img.path)) if not swc else None
    if "image_ome_tiff" in out:
        res = write_ome_tiff(
            txn.stage_path(out["image_ome_tiff"]),
            region(),
            physical_size_zyx_um=img.voxel_um,
            name=plan.crop_id,
            kind="intensity",
            workdir=txn.workdir(),
            origin_zyx_um=plan.origin_um,
        )
        image_hash = res.pixel_hash
        msrc = counting or _mask_source(plan, img.path)
        mres = write_ome_tiff(
            txn.stage_path(out["mask_ome_tiff"]),
            msrc,
            physical_size_zyx_um=img.voxel_um,
            name=PurePosixPath(out["mask_ome_tiff"]).name.split(".")[0],
            kind="label",
            workdir=txn.workdir(),
            origin_zyx_um=plan.origin_um,
        )
        mask_hash = mres.pixel_hash
        write_text(txn.stage_path(out["mask_sidecar"]), _sidecar(plan, "Mask crop"))
    if "image_ome_zarr" in out:
        msrc = _mask_source(plan, img.path)
        if counting is not None and counting.done is None:
            msrc = counting
        zres = write_ome_zarr(
            txn.stage_path(out["image_ome_zarr"]),
            region(),
            physical_size_zyx_um=img.voxel_um,
            name=plan.crop_id,
            kind="intensity",
            labels={NGFF_LABEL: msrc},
            origin_zyx_um=plan.origin_um,
        )
        image_hash = image_hash or zres.pixel_hash
        mask_hash = mask_hash or zres.labels[0].pixel_hash
    write_text(txn.stage_path(out["image_sidecar"]), _sidecar(plan, "Image crop"))
    counts = (
        _mask_counts(plan) if swc else (counting.done if counting and counting.done else (0, 0))
    )
    row = _row(plan, image_hash, mask_hash, counts)
    write_text(txn.stage_path(plan.part), json_text(row))
    z0, z1, y0, y1, x0, x1 = plan.box
    yield Record(
        "crop",
        out.get("image_ome_tiff") or out["image_ome_zarr"],
        "ok",
        f"{plan.shape} (z, y, x) voxels [{z0}:{z1}, {y0}:{y1}, {x0}:{x1}] of {img.rel}; "
        f"mask: {counts[0]} voxels, {counts[1]} label(s)",
        {
            "source": img.rel,
            "box": list(plan.box),
            "origin_um": list(plan.origin_um),
            "image_pixel_hash": image_hash,
            "mask_pixel_hash": mask_hash,
            "mask_voxels": counts[0],
            "step": plan.step,
        },
    )


class _CountingSource(ImageSource):
    """Wraps a label source: counts non-zero voxels and distinct labels of the planes a
    writer reads (``done`` once every plane was read)."""

    def __init__(self, inner: ImageSource):
        self.inner = inner
        self.path = inner.path
        self.files = inner.files
        self.info = inner.info
        self._seen: dict[int, tuple[int, np.ndarray]] = {}

    def _count(self, z: int, plane: np.ndarray) -> np.ndarray:
        nzv = plane[plane != 0]
        self._seen[z] = (int(nzv.size), np.unique(nzv))
        return plane

    def read_plane(self, z: int) -> np.ndarray:
        return self._count(z, self.inner.read_plane(z))

    def iter_planes(self, *, prefetch: int = 4, workers: int = 2) -> Iterator[np.ndarray]:
        for z, plane in enumerate(self.inner.iter_planes(prefetch=prefetch, workers=workers)):
            yield self._count(z, plane)

    @property
    def done(self) -> tuple[int, int] | None:
        """(non-zero voxels, distinct non-zero labels), or ``None`` before every plane
        was read."""
        if len(self._seen) != self.shape[0]:
            return None
        values = np.unique(np.concatenate([v for _, v in self._seen.values()]))
        return sum(n for n, _ in self._seen.values()), int(values.size)


# -- table --------------------------------------------------------------------------------------


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    base = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
    }
    if kind.startswith("list<"):
        return pa.list_(base[kind[5:-1]])
    return base[kind]


def _tsv_cell(value: Any) -> Any:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return value


def _stage_index(
    txn: Transaction,
    derived: Path,
    plans: list[CropPlan],
    params: CropParams,
    texts: dict[str, str],
    copies: dict[str, Path],
) -> Iterator[Record]:
    """Stage the table, the SWC copies and the dataset-level text files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads((derived / p.part).read_text(encoding="utf-8")) for p in plans]
    for p, r in zip(plans, rows, strict=True):
        if isinstance(p.annotation, SwcAnnotation):
            r["mode"], r["labels"] = params.mode, params.labels
    names = [n for n, _ in TABLE_COLUMNS]
    schema = pa.schema([(n, _arrow_type(k)) for n, k in TABLE_COLUMNS])
    table = pa.table({n: [r.get(n) for r in rows] for n in names}, schema=schema)
    pq.write_table(table, txn.stage_path(TABLE_PARQUET), compression="zstd")
    if params.tsv:
        write_text(
            txn.stage_path(TABLE_TSV),
            tsv_text(names, [{n: _tsv_cell(r.get(n)) for n in names} for r in rows]),
        )
    for rel, src in copies.items():
        txn.stage_path(rel).write_bytes(src.read_bytes())
    for rel, text in texts.items():
        write_text(txn.stage_path(rel), text)
    yield Record(
        "index",
        TABLE_PARQUET,
        "ok",
        f"{len(rows)} crop(s) from {len({r['source'] for r in rows})} image(s)",
        {"crops": len(rows), "step": "index"},
    )


def _tables(source: SourceDataset, plans: list[CropPlan]) -> dict[str, str]:
    """participants/samples tables (and their data dictionaries) of the source, with the
    rows of the subjects and samples the crops use."""
    subs = {f"sub-{p.image.name.entities['sub']}" for p in plans}
    samples = {
        (f"sample-{p.image.name.entities['sample']}", f"sub-{p.image.name.entities['sub']}")
        for p in plans
        if "sample" in p.image.name.entities
    }
    out: dict[str, str] = {}
    for name, keep in (
        ("participants", lambda r: r.get("participant_id") in subs),
        ("samples", lambda r: (r.get("sample_id"), r.get("participant_id")) in samples),
    ):
        tsv = source.path / f"{name}.tsv"
        if not tsv.is_file():
            continue
        header = tsv.read_text(encoding="utf-8").split("\n", 1)[0].rstrip("\r").split("\t")
        rows = [r for r in read_tsv(tsv) if keep(r)]
        if not rows:
            continue
        out[f"{name}.tsv"] = tsv_text(header, rows)
        side = source.path / f"{name}.json"
        if side.is_file():
            out[f"{name}.json"] = side.read_text(encoding="utf-8")
    return out


# -- HDF5 ---------------------------------------------------------------------------------------


def _open_crop(path: Path) -> Any:
    """A written crop (OME-TIFF file or OME-Zarr image/label root) as an object with
    ``shape``, ``dtype`` and ``read_plane(z)``."""
    if path.name.endswith((".ome.tif", ".ome.btf")):
        from bidspack.io.sources import TiffStack

        return TiffStack(path)
    from bidspack.io.omezarr.reader import open_level

    arr = open_level(path, 0)

    class _Z:
        shape = tuple(arr.shape)
        dtype = np.dtype(arr.dtype)

        def read_plane(self, z: int) -> np.ndarray:
            return np.asarray(arr[z])

    return _Z()


def export_hdf5(dataset: Path, file: Path) -> Iterator[Record]:
    """Write the crops of the derived dataset *dataset* to one HDF5 file *file*: a group
    per crop (its ``crop_id``) with ``image`` and ``mask`` datasets ``(z, y, x)``
    (chunks of one plane, at most 256 x 256, gzip) and attributes (``axes`` ``zyx``,
    ``voxel_size_um``, ``offset_voxels``, ``offset_um``, ``origin_um``, ``shape``,
    ``source``, ``source_pixel_hash``, ``source_dataset``, pixel hashes, SWC files and
    sha256); datasets carry ``element_size_um``. Pixels are read back plane by plane from
    the written crops. The file is staged beside *file* and renamed into place.

    Raises:
        OutputError: *file* is a folder, or cannot be written.
    """
    import h5py
    import pyarrow.parquet as pq

    from bidspack import __version__
    from bidspack.txn.beside import remove_stale, staged_beside

    file = Path(file)
    if file.is_dir():
        raise OutputError(file, "is a folder; --export hdf5 writes a file")
    rows = pq.read_table(dataset / TABLE_PARQUET).to_pylist()
    desc = json.loads((dataset / "dataset_description.json").read_text(encoding="utf-8"))
    src_url = desc.get("bidspack", {}).get("source", {}).get("URL", "")
    remove_stale(file)
    strs = h5py.string_dtype()
    try:
        with staged_beside(file, create=None) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
            h5.attrs["bidspack_version"] = __version__
            h5.attrs["source_dataset"] = src_url
            h5.attrs["derived_dataset"] = dataset.absolute().as_uri()
            h5.attrs["crops"] = np.array([r["crop_id"] for r in rows], dtype=strs)
            h5.attrs["axes"] = "zyx"
            for r in rows:
                g = h5.create_group(r["crop_id"], track_order=True)
                voxel = np.array([r["voxel_z_um"], r["voxel_y_um"], r["voxel_x_um"]])
                attrs: dict[str, Any] = {
                    "axes": "zyx",
                    "voxel_size_um": voxel,
                    "offset_voxels": np.array([r["z0"], r["y0"], r["x0"]], dtype=np.int64),
                    "offset_um": np.array([r["offset_z_um"], r["offset_y_um"], r["offset_x_um"]]),
                    "origin_um": np.array([r["origin_z_um"], r["origin_y_um"], r["origin_x_um"]]),
                    "box_voxels": np.array(
                        [r[k] for k in ("z0", "z1", "y0", "y1", "x0", "x1")], dtype=np.int64
                    ),
                    "shape": np.array([r["size_z"], r["size_y"], r["size_x"]], dtype=np.int64),
                    "source": r["source"],
                    "source_pixel_hash": r["source_pixel_hash"],
                    "source_dataset": src_url,
                    "image_pixel_hash": r["image_pixel_hash"],
                    "mask_pixel_hash": r["mask_pixel_hash"],
                    "annotation": r["annotation"],
                    "labels": r["labels"],
                    "swc_files": np.array(r["swc_sources"], dtype=strs),
                    "swc_sha256": np.array(r["swc_sha256"], dtype=strs),
                    "nodes_outside": int(r["nodes_outside"]),
                }
                if r["mode"]:
                    attrs["mode"] = r["mode"]
                if r["mask_source"]:
                    attrs["mask_source"] = r["mask_source"]
                for k, v in attrs.items():
                    g.attrs[k] = v
                pairs = (
                    ("image", r["image_ome_tiff"] or r["image_ome_zarr"]),
                    ("mask", r["mask_ome_tiff"] or r["mask_ngff_label"]),
                )
                for name, rel in pairs:
                    src = _open_crop(dataset / rel)
                    nz, ny, nx = src.shape
                    ds = g.create_dataset(
                        name,
                        shape=(nz, ny, nx),
                        dtype=src.dtype,
                        chunks=(1, min(ny, 256), min(nx, 256)),
                        compression="gzip",
                        compression_opts=4,
                        track_times=False,
                    )
                    for z in range(nz):
                        ds[z] = src.read_plane(z)
                    ds.attrs["axes"] = "zyx"
                    ds.attrs["element_size_um"] = voxel
                    ds.attrs["from"] = rel
    except OSError as exc:
        raise OutputError(file, f"cannot write the HDF5 file ({exc})") from exc
    yield Record(
        "export",
        str(file),
        "ok",
        f"HDF5: {len(rows)} crop group(s) with image and mask",
        {"format": "hdf5", "crops": len(rows)},
    )


# -- the verb -----------------------------------------------------------------------------------


def readme_text(
    source: SourceDataset, params: CropParams, plans: list[CropPlan], out: Path | None = None
) -> str:
    """``README.md`` of a crops dataset."""
    version = source.version or "not under version control"
    return "\n".join(
        [
            "# Annotated crops (bidspack derive crops)",
            "",
            "A BIDS derivative dataset of image + mask pairs cropped to the annotated",
            "region of images of a bidspack dataset (SWC tracings rasterised in the",
            "image's voxel grid, or an existing label image).",
            "",
            f"- Source dataset: `{source_url(source.path, out)}`, version {version}",
            f"- Source manifest (code/bidspack/manifest.tsv) sha256: {source.manifest_sha256}",
            f"- Crops: {len(plans)} from {len({p.image.rel for p in plans})} image(s)",
            f"- Parameters: `{json.dumps(params.to_dict(), sort_keys=True)}`",
            "",
            "## Layout",
            "",
            "- `sub-*/micr/*_desc-crop<N>_<suffix>.ome.tif`: the image crop;",
            "  `*_desc-crop<N>mask_<suffix>.ome.tif`: its mask (0 = background);",
            "  `*.ome.zarr`: the image crop with the mask as NGFF label `labels/mask`.",
            "  The OME metadata holds the crop's physical origin: crop voxel (i, j, k) is",
            "  source voxel (z0 + i, y0 + j, x0 + k).",
            "- `crops.parquet` (and `crops.tsv`): one row per crop: source image, SWC files",
            "  and sha256, box in source voxels (half-open z0:z1, y0:y1, x0:x1), offset and",
            "  origin in micrometres, voxel counts, nodes outside the image.",
            "- `sourcedata/swc/`: the SWC files used.",
            "- `code/bidspack/`: manifest and provenance records (`bidspack verify`,",
            "  `bidspack log`). See bidspack's docs/crops.md.",
            "",
        ]
    )


def command_line(
    source: Path,
    params: CropParams,
    selection: dict[str, Any],
    swc: Sequence[Path],
    mask: MaskSpec | None,
    out: Path | None = None,
) -> str:
    """The command as recorded (``GeneratedBy.Description``): the source as a
    ``file://`` URL (or ``sourcedata/<name>``, *out*'s installed input), the output as
    ``.``, every parameter spelled out."""
    args = ["bidspack", "derive", "crops", source_url(source, out), "."]
    for key, value in sorted(selection.items()):
        if value is not None:
            args += [f"--{key}", str(value)]
    for p in swc:
        args += ["--swc", str(Path(p).absolute())]
    if mask is not None and mask.path is not None:
        args += ["--mask", str(Path(mask.path).absolute())]
    if mask is not None and mask.desc is not None:
        args += ["--mask-desc", mask.desc]
        if mask.pipeline:
            args += ["--mask-pipeline", mask.pipeline]
    if swc:
        args += ["--mode", params.mode, "--labels", params.labels, "--soma", params.soma]
        if params.swc_unit:
            args += ["--swc-unit", params.swc_unit]
        if params.swc_voxel_size:
            args += ["--swc-voxel-size", ",".join(f"{v:g}" for v in params.swc_voxel_size)]
        if params.swc_offset_um:
            args += ["--swc-offset", ",".join(f"{v:g}" for v in params.swc_offset_um)]
    if params.per_tree:
        args.append("--per-tree")
    # the command replays to the same parameters: a margin only when one was given
    if params.margin_voxels is not None:
        args += ["--margin-voxels", ",".join(str(v) for v in params.margin_voxels)]
    elif params.margin_um is not None:
        args += ["--margin", ",".join(f"{v:g}" for v in params.margin_um)]
    args += ["--formats", ",".join(params.formats)]
    if not params.tsv:
        args.append("--no-tsv")
    return shlex.join(args)


def _plan_records(plans: list[CropPlan]) -> Iterator[Record]:
    for p in plans:
        z0, z1, y0, y1, x0, x1 = p.box
        ann = p.annotation
        what = (
            f"{len(ann.files)} SWC file(s)"
            if isinstance(ann, SwcAnnotation)
            else f"label image {ann.name}"
        )
        yield Record(
            "crop",
            p.outputs.get("image_ome_tiff") or p.outputs["image_ome_zarr"],
            "planned",
            f"{p.shape} (z, y, x) voxels [{z0}:{z1}, {y0}:{y1}, {x0}:{x1}] of {p.image.rel} "
            f"({p.target}{'' if p.target_label is None else f' label {p.target_label}'}; {what})",
            {
                "source": p.image.rel,
                "box": list(p.box),
                "shape_zyx": list(p.shape),
                "origin_um": list(p.origin_um),
                "margin_voxels": list(p.margin),
                "target": p.target,
                "outputs": sorted(p.all_outputs()),
                "step": p.step,
            },
        )


def _check_export(export: Path | None, source: Path, out: Path) -> None:
    if export is None:
        return
    export = Path(export)
    if export.is_dir():
        raise OutputError(export, "is a folder; --export hdf5 writes a file")
    if is_within(export, out) or is_within(export, source):
        raise OutputError(
            export,
            "lies inside the derived or the source dataset",
            hint="write the HDF5 file outside both datasets",
        )
    if export.exists() or export.is_symlink():
        import h5py

        try:
            with h5py.File(export, "r") as h5:
                ours = "bidspack_version" in h5.attrs and "crops" in h5.attrs
        except OSError:
            ours = False
        if not ours:
            raise OutputError(
                export,
                "exists and is not an HDF5 export of 'bidspack derive crops'",
                hint="choose a new file name (an earlier crops export is replaced)",
            )


def derive_crops(
    source_path: Path,
    out: Path,
    params: CropParams,
    *,
    swc: Sequence[Path] = (),
    mask: MaskSpec | None = None,
    suffix: str | None = None,
    pipeline: str | None = None,
    fmt: str = "auto",
    entities: dict[str, str | None] | None = None,
    export_hdf5_file: Path | None = None,
    dry_run: bool = False,
    validate: bool = True,
    recover_first: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    datalad: bool = False,
) -> Iterator[Record]:
    """Plan and (unless *dry_run*) write a derived dataset of image + mask crops at
    *out* from the bidspack dataset *source_path* (see the module docstring).

    With *datalad*, *out* is a DataLad dataset in the YODA layout (the source installed
    at ``sourcedata/<name>``, pinned; each step saved with a run record:
    :mod:`bidspack.ops.derive.yoda`). SWC files and a ``--mask`` file are named by
    their absolute paths in the run record: a rerun needs them at the same place.

    Args:
        source_path: the source bidspack dataset (read-only).
        out: the derived dataset folder (absent, empty, or a previous run's).
        params: see :class:`CropParams`.
        swc: SWC files or folders of SWC files (all for one selected image).
        mask: an existing label image (see :class:`MaskSpec`); exclusive with *swc*.
        suffix, pipeline, fmt, entities: image selection, as
            :meth:`SourceDataset.select_images`.
        export_hdf5_file: also write this HDF5 file (outside both datasets).
        dry_run: yield the plan (``swc`` and ``crop`` ``planned`` records) and write
            nothing (a label image is read to find its bounding box; the image is not).
        validate: validate *out* at the end (bids-validator-deno on *out* alone and
            bidspack's checks).
        progress: called as ``progress(crop id, crops done, crops planned)``.

    Yields ``swc`` records (nodes, trees, nodes outside per file), ``crop`` records
    (``planned``, ``ok``, ``impossible``), ``step`` records, the ``index`` record, the
    validation records and the ``export`` record.

    Raises:
        PlanError: bad parameters, selection or annotations (nothing is written).
        SourceError: a malformed SWC file (its path and line named; nothing is written),
            an unreadable image.
        OutputError: *out* is not new, empty or a bidspack dataset; it is inside the
            source (or the source inside it); the export file is a folder or inside a
            dataset; the lock is held.
    """
    source_path, out = Path(source_path), Path(out)
    source = SourceDataset(source_path)
    check_roots(source_path, out)
    _check_export(export_hdf5_file, source_path, out)
    plans, ann_records = plan_crops(
        source,
        params,
        swc=swc,
        mask=mask,
        suffix=suffix,
        pipeline=pipeline,
        fmt=fmt,
        entities=entities,
    )
    derived = DerivedDataset(out)
    yield from ann_records
    if dry_run:
        yield from _plan_records(plans)
        return
    needed: list[str] = []
    if datalad:
        needed = sorted(
            {p.image.rel for p in plans}
            | {
                p.annotation.name
                for p in plans
                if isinstance(p.annotation, LabelAnnotation)
                and not Path(p.annotation.name).is_absolute()
            }
        )
        adopted = adopt_source(source_path, out, needed)
        yield from adopted.records
        for img in {id(p.image): p.image for p in plans}.values():
            img.close()
        for p in plans:
            if isinstance(p.annotation, LabelAnnotation) and hasattr(p.annotation.reader, "close"):
                p.annotation.reader.close()
        source_path = adopted.path
        source = SourceDataset(source_path)
        plans, _ = plan_crops(
            source,
            params,
            swc=swc,
            mask=mask,
            suffix=suffix,
            pipeline=pipeline,
            fmt=fmt,
            entities=entities,
        )
    selection: dict[str, Any] = {
        "suffix": suffix,
        "pipeline": pipeline,
        "format": None if fmt == "auto" else fmt,
    }
    selection.update(entities or {})
    selection = {k: v for k, v in selection.items() if v is not None}
    mask_used = mask if mask is not None and (mask.path or mask.desc) else None
    swc_files = find_swc_files(swc) if swc else []
    command = command_line(source_path, params, selection, swc_files, mask_used, out)
    if datalad:
        record_steps(
            derived,
            summary="bidspack derive crops",
            command=command,
            inputs=[f"{source_url(source_path, out)}/{rel}" for rel in needed],
        )
    description = derived_description(
        name="Annotated crops from " + source_path.absolute().name,
        operation=OPERATION,
        command=command,
        parameters={
            **params.to_dict(),
            "selection": selection,
            "swc": [str(p) for p in swc_files],
            "mask": None
            if mask_used is None
            else {
                "path": None if mask_used.path is None else str(Path(mask_used.path).absolute()),
                "desc": mask_used.desc,
                "pipeline": mask_used.pipeline,
            },
        },
        source=source,
        out=out,
    )
    texts = {
        "dataset_description.json": description,
        "README.md": readme_text(source, params, plans, out),
        ".bidsignore": bidsignore_text(PARTS, TABLE_PARQUET, *([TABLE_TSV] if params.tsv else [])),
        **_tables(source, plans),
    }
    copies: dict[str, Path] = {}
    for p in plans:
        if isinstance(p.annotation, SwcAnnotation):
            for s in p.annotation.files:
                copies[s.copy] = s.source
    try:
        with derived.session(recover_first=recover_first) as recovered:
            yield from recovered
            for k, p in enumerate(plans):
                yield from _crop_step(derived, p, params)
                if progress is not None:
                    progress(p.crop_id, k + 1, len(plans))
            yield from _final_step(derived, plans, params, texts, copies)
    finally:
        for img in {id(p.image): p.image for p in plans}.values():
            img.close()
        for p in plans:
            if isinstance(p.annotation, LabelAnnotation) and hasattr(p.annotation.reader, "close"):
                p.annotation.reader.close()
    if validate:
        from bidspack.ops.validate import validate_dataset

        yield from validate_dataset(out, recursive=False)
    if export_hdf5_file is not None:
        yield from export_hdf5(out, export_hdf5_file)


def _crop_step(derived: DerivedDataset, plan: CropPlan, params: CropParams) -> Iterator[Record]:
    image = plan.image
    pixel_hash = image.ensure_pixel_hash()
    digest = image.file_digest or pixel_hash
    ann = plan.annotation
    inputs = {f"source:{image.rel}": pixel_hash, f"source-file:{image.rel}": digest}
    used: list[dict[str, Any]] = [{"path": f"source:{image.rel}", "xxh3_128": digest}]
    if isinstance(ann, SwcAnnotation):
        for s in ann.files:
            inputs[f"swc:{s.source}"] = s.sha256
            used.append({"path": str(s.source), "xxh3_128": file_xxh3(s.source)})
        annotation: dict[str, Any] = {
            "swc": [str(s.source) for s in ann.files],
            "mode": params.mode,
            "labels": params.labels,
            "soma": params.soma,
            "swc_unit": params.swc_unit,
            "swc_voxel_size_um": None
            if params.swc_voxel_size is None
            else list(params.swc_voxel_size),
            "swc_offset_um": None if params.swc_offset_um is None else list(params.swc_offset_um),
        }
    else:
        inputs[f"mask:{ann.name}"] = ann.pixel_hash
        used.append({"path": f"mask:{ann.name}", "xxh3_128": ann.pixel_hash})
        annotation = {"mask": ann.name}
    step = DerivedStep(
        name=plan.step,
        operation=OPERATION,
        outputs=sorted(set(plan.all_outputs())),
        parameters={
            "source": image.rel,
            "box": list(plan.box),
            "margin_voxels": list(plan.margin),
            "target": plan.target,
            "target_label": plan.target_label,
            "target_file": plan.target_file,
            "target_tree": plan.target_tree,
            "formats": list(params.formats),
            **annotation,
        },
        inputs=inputs,
        used=used,
        stage=lambda txn: _stage_crop(txn, plan, params),
    )
    yield from derived.run_step(step)


def _final_step(
    derived: DerivedDataset,
    plans: list[CropPlan],
    params: CropParams,
    texts: dict[str, str],
    copies: dict[str, Path],
) -> Iterator[Record]:
    """The ``index`` step: table, SWC copies, dataset-level files; removes the outputs
    and step records of crops no longer planned."""
    current = {p.step for p in plans} | {"index"}
    retired: list[str] = []
    for name, rec in derived.step_records(OPERATION).items():
        if name not in current:
            retired += [*rec.get("outputs", []), record_path(name)]
    outputs = [TABLE_PARQUET, *([TABLE_TSV] if params.tsv else []), *texts, *copies]
    inputs = {p.part: file_xxh3(derived.path / p.part) for p in plans}
    inputs.update({rel: file_xxh3(src) for rel, src in copies.items()})
    step = DerivedStep(
        name="index",
        operation=OPERATION,
        outputs=sorted(set(outputs)),
        parameters={
            "tsv": params.tsv,
            "mode": params.mode,
            "labels": params.labels,
            "parts": [p.part for p in plans],
            "texts": {k: text_xxh3(v) for k, v in sorted(texts.items())},
        },
        inputs=inputs,
        used=[{"path": str(src), "xxh3_128": inputs[rel]} for rel, src in sorted(copies.items())],
        stage=lambda txn: _stage_index(txn, derived.path, plans, params, texts, copies),
        delete=sorted(set(retired) - set(outputs)),
    )
    yield from derived.run_step(step)


__all__ = [
    "TABLE_COLUMNS",
    "CropParams",
    "CropPlan",
    "MaskSpec",
    "RegionSource",
    "SparseMaskSource",
    "derive_crops",
    "export_hdf5",
    "find_swc_files",
    "plan_crops",
    "swc_annotation",
]
