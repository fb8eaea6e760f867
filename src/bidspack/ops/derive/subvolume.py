"""``bidspack derive subvolume``: the 3D block around a 2D patch, re-read from the
source dataset (CEM's "flipbook", ``dataset/3d/reconstruct3d.py`` of
volume-em/cem-dataset).

A patch row of a derived patches dataset names its source image (source-dataset
relative path and level-0 pixel hash), its plane, slice and half-open voxel bounds, and
its intensity conversion. The block is ``depth`` slices along the plane's normal around
the patch's slice, with the patch's rows and columns, read from the source through
:class:`bidspack.ops.derive.source.SourceDataset` (only the chunks or tiles it covers)
and converted with the patch's recorded parameters
(:func:`bidspack.ops.derive.patches.to_uint8`), so that the block's slice at
:attr:`Subvolume.center` equals the stored patch exactly (checked on every read).

Geometry, all in source voxels:

- axes of the block: ``(normal, rows, columns)``, the patch's own orientation: ``xy``
  (z, y, x), ``xz`` (y, z, x), ``yz`` (x, z, y);
- along the normal, slices ``[s - depth // 2, s - depth // 2 + depth)`` around the
  patch's slice ``s`` (for an even depth one more slice before ``s`` than after);
- at the ends of the volume (``edge``): ``shift`` (default) moves the block inside,
  ``[0, depth)`` or ``[n - depth, n)``, so it always has ``depth`` slices (``n`` when
  the volume is thinner) and the patch's slice is not in the middle; ``clip`` cuts it
  at the volume, a shorter block. Either way :attr:`Subvolume.center` is the patch
  slice's position in the block. (CEM's ``reconstruct3d.py`` skips such patches, and
  also the last full position: ``highz >= shape`` is refused there.)
- rows and columns: the patch's ``[r0, r1)`` and ``[c0, c1)``; a padded patch (edge
  ``pad``) has zeros after them, as in the patch.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bidspack.errors import IntegrityError, OutputError, PlanError
from bidspack.ops.derive.export import PatchesDataset, open_patches
from bidspack.records import Record
from bidspack.txn.beside import remove_stale, staged_beside

#: Source axes (indices into ``z, y, x``) of ``(normal, rows, columns)`` by plane.
PLANE_AXES = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}
EDGES = ("shift", "clip")
#: Output formats by file name ending (longest first) and the folder format names.
SUFFIXES = {".ome.tiff": "ome-tiff", ".ome.tif": "ome-tiff", ".tiff": "tiff", ".tif": "tiff"}
SUFFIXES[".npy"] = "npy"
EXTENSION = {"ome-tiff": ".ome.tif", "tiff": ".tif", "npy": ".npy"}


@dataclass
class Subvolume:
    """The 3D block around one patch.

    Attributes:
        patch_id: the patch.
        data: ``(depth, size, size)`` uint8 (the source's dtype when read ``raw``),
            axes ``(normal, rows, columns)`` of the patch's plane.
        plane: ``xy``, ``xz`` or ``yz``.
        axes: source axis names of ``(normal, rows, columns)``: ``zyx``, ``yzx``, ``xzy``.
        center: index in ``data`` of the patch's slice (``data[center]`` is the patch).
        bounds: ``{"z0": .., "z1": .., ...}`` the block's half-open source voxels.
        height, width: rows/columns holding source voxels (the rest is zero).
        voxel_um: micrometres per voxel of ``(normal, rows, columns)``.
        source: source-dataset-relative image path; *source_dataset* its dataset.
        intensity, intensity_low, intensity_high: the conversion applied (``raw``:
            ``"none"`` and the source values).
    """

    patch_id: str
    data: np.ndarray
    plane: str
    axes: str
    center: int
    bounds: dict[str, int]
    height: int
    width: int
    voxel_um: tuple[float, float, float]
    source: str
    source_dataset: Path
    intensity: str
    intensity_low: float
    intensity_high: float

    def describe(self) -> dict[str, Any]:
        """JSON-able metadata (written into the output file's description)."""
        return {
            "patch_id": self.patch_id,
            "shape": list(self.data.shape),
            "dtype": str(self.data.dtype),
            "plane": self.plane,
            "axes": self.axes,
            "center": self.center,
            "bounds": self.bounds,
            "height": self.height,
            "width": self.width,
            "voxel_um": list(self.voxel_um),
            "source": self.source,
            "source_dataset": self.source_dataset.absolute().as_uri(),
            "intensity": self.intensity,
            "intensity_low": self.intensity_low,
            "intensity_high": self.intensity_high,
        }


def block_span(s: int, n: int, depth: int, edge: str) -> tuple[int, int]:
    """Half-open slice range of a *depth* block around slice *s* of an axis of *n*
    slices: ``[s - depth // 2, ... + depth)``, moved inside (``shift``) or cut
    (``clip``) at the ends. ``block_span(269, 270, 5, "shift") == (265, 270)``,
    ``block_span(269, 270, 5, "clip") == (267, 270)``."""
    lo = s - depth // 2
    hi = lo + depth
    if edge == "shift":
        if hi > n:
            lo, hi = n - depth, n
        if lo < 0:
            lo, hi = 0, min(depth, n)
        return lo, hi
    return max(0, lo), min(n, hi)


class _Reader:
    """Reads blocks of one patches dataset; source images opened once each."""

    def __init__(self, ds: PatchesDataset, source: Path | None):
        from bidspack.ops.derive.source import SourceDataset

        self.ds = ds
        self.source = SourceDataset(Path(source) if source is not None else ds.source_path())
        self.images: dict[str, Any] = {}

    def image(self, rel: str, pixel_hash: str) -> Any:
        from bidspack.ops.derive.source import open_image

        if rel not in self.images:
            img = open_image(self.source.path, rel, self.source.manifest)
            have = img.ensure_pixel_hash()
            if have != pixel_hash:
                raise IntegrityError(
                    img.path,
                    f"pixel hash {have} differs from {pixel_hash} recorded for the patches; "
                    "the source image changed since the patches were cut",
                )
            self.images[rel] = img
        return self.images[rel]

    def close(self) -> None:
        for img in self.images.values():
            img.close()

    def block(self, row: dict[str, Any], depth: int, edge: str, raw: bool) -> Subvolume:
        from bidspack.ops.derive.patches import to_uint8

        img = self.image(str(row["source"]), str(row["source_pixel_hash"]))
        plane = str(row["plane"])
        s_ax, r_ax, c_ax = PLANE_AXES[plane]
        names = "zyx"
        lo = [int(row[f"{a}0"]) for a in names]
        hi = [int(row[f"{a}1"]) for a in names]
        s = lo[s_ax]
        s0, s1 = block_span(s, img.shape[s_ax], depth, edge)
        lo[s_ax], hi[s_ax] = s0, s1
        region = img.read(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
        region = np.transpose(region, (s_ax, r_ax, c_ax))
        arr = self.ds.array(str(row["array"]))
        size = int(arr.shape[1])
        h, w = int(row["height"]), int(row["width"])
        if region.shape[1:] != (h, w):
            raise IntegrityError(
                self.ds.path / INDEX,
                f"patch {row['patch_id']}: bounds give {region.shape[1:]} voxels, "
                f"height/width say {(h, w)}",
            )
        method, low, high = (
            str(row["intensity"]),
            float(row["intensity_low"]),
            float(row["intensity_high"]),
        )
        if raw:
            values = region
            method, low, high = "none", float("nan"), float("nan")
        else:
            values = to_uint8(region, method, low, high)
        data = np.zeros((s1 - s0, size, size), dtype=values.dtype)
        data[:, :h, :w] = values
        center = s - s0
        stored = np.asarray(arr[int(row["row"])])
        if raw:  # the check converts the patch slice as the patch was converted
            got = np.zeros((size, size), np.uint8)
            got[:h, :w] = to_uint8(
                region[center],
                str(row["intensity"]),
                float(row["intensity_low"]),
                float(row["intensity_high"]),
            )
        else:
            got = data[center]
        if not np.array_equal(got, stored):
            raise IntegrityError(
                self.ds.path / str(row["array"]),
                f"patch {row['patch_id']} (row {row['row']}) differs from its source "
                "region re-read and converted; the patch array or the source changed",
            )
        return Subvolume(
            patch_id=str(row["patch_id"]),
            data=data,
            plane=plane,
            axes="".join(names[a] for a in (s_ax, r_ax, c_ax)),
            center=center,
            bounds={
                f"{a}{k}": v
                for a, lo_v, hi_v in zip(names, lo, hi, strict=True)
                for k, v in (("0", lo_v), ("1", hi_v))
            },
            height=h,
            width=w,
            voxel_um=(
                float(img.voxel_um[s_ax]),
                float(img.voxel_um[r_ax]),
                float(img.voxel_um[c_ax]),
            ),
            source=str(row["source"]),
            source_dataset=self.source.path,
            intensity=method,
            intensity_low=low,
            intensity_high=high,
        )


INDEX = "index.parquet"


def _check(depth: int, edge: str) -> None:
    if depth < 1:
        raise PlanError(None, f"derive subvolume: depth {depth}: at least 1 slice")
    if edge not in EDGES:
        raise PlanError(None, f"derive subvolume: edge {edge!r}: one of {', '.join(EDGES)}")


def subvolumes(
    patches_out: Path,
    patch_ids: list[str],
    *,
    depth: int = 5,
    edge: str = "shift",
    raw: bool = False,
    source: Path | None = None,
) -> list[Subvolume]:
    """The blocks around *patch_ids* of the derived patches dataset *patches_out*
    (see the module docstring), in the order given.

    Args:
        depth: slices along the plane's normal (``>= 1``).
        edge: ``shift`` (a block of *depth* slices moved inside the volume) or ``clip``
            (a shorter block at the ends).
        raw: keep the source values and dtype (no intensity conversion).
        source: the source dataset folder (default: ``SourceDatasets[0].URL`` of the
            patches dataset, a ``file://`` URL).

    Raises:
        PlanError: bad depth/edge, not a patches dataset, an unknown patch id, no local
            source.
        IntegrityError: the source image's pixel hash differs from the one recorded, or
            the re-read patch differs from the stored one.
        SourceError: the source image cannot be read.
    """
    _check(depth, edge)
    if not patch_ids:
        raise PlanError(patches_out, "no patch id given")
    ds = open_patches(Path(patches_out))
    rows = ds.rows(list(patch_ids)).to_dict("records")
    reader = _Reader(ds, source)
    try:
        return [reader.block(r, depth, edge, raw) for r in rows]
    finally:
        reader.close()


def subvolume(
    patches_out: Path,
    patch_id: str,
    *,
    depth: int = 5,
    edge: str = "shift",
    raw: bool = False,
    source: Path | None = None,
) -> Subvolume:
    """The block around one patch (:func:`subvolumes`); ``.data`` is the array
    ``(depth, size, size)``, axes ``(normal, rows, columns)``."""
    return subvolumes(patches_out, [patch_id], depth=depth, edge=edge, raw=raw, source=source)[0]


def output_format(dest: Path) -> str:
    """``ome-tiff``, ``tiff`` or ``npy`` from *dest*'s name ending.

    Raises:
        PlanError: another ending.
    """
    name = dest.name.lower()
    for suffix, fmt in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise PlanError(dest, "name a .ome.tif, .tif or .npy file (the ending chooses the format)")


def write_subvolume(sv: Subvolume, path: Path, fmt: str) -> None:
    """Write *sv* to *path* (which may lack the format's extension):

    - ``ome-tiff``: OME-TIFF, axes ZYX = ``(normal, rows, columns)``, ``PhysicalSize*``
      of the source axes they come from (micrometres), ``Name`` the patch id,
      ``Description`` the JSON of :meth:`Subvolume.describe`;
    - ``tiff``: plain TIFF pages, the same JSON as the image description;
    - ``npy``: the array (``numpy.save``); no metadata.
    """
    import tifffile

    text = json.dumps({"bidspack": sv.describe()}, sort_keys=True)
    if fmt == "npy":
        with open(path, "wb") as fh:
            np.save(fh, sv.data)
    elif fmt == "ome-tiff":
        vz, vy, vx = sv.voxel_um
        tifffile.imwrite(
            path,
            sv.data,
            ome=True,
            photometric="minisblack",
            metadata={
                "axes": "ZYX",
                "Name": sv.patch_id,
                "Description": text,
                "PhysicalSizeZ": vz,
                "PhysicalSizeZUnit": "µm",
                "PhysicalSizeY": vy,
                "PhysicalSizeYUnit": "µm",
                "PhysicalSizeX": vx,
                "PhysicalSizeXUnit": "µm",
            },
        )
    else:
        tifffile.imwrite(path, sv.data, photometric="minisblack", description=text, metadata=None)


def derive_subvolume(
    patches_out: Path,
    patch_ids: list[str],
    *,
    out: Path | None = None,
    depth: int = 5,
    edge: str = "shift",
    raw: bool = False,
    source: Path | None = None,
    fmt: str | None = None,
) -> Iterator[Record]:
    """``bidspack derive subvolume``: read the blocks (:func:`subvolumes`), then, with
    *out*, write them outside any dataset; yields one ``subvolume`` record per patch.

    *out* with one patch id is a file whose ending chooses the format (``.ome.tif``,
    ``.tif``, ``.npy``; :func:`output_format`), unless *fmt* is given; with several
    ids a new folder holding ``<patch_id><extension>`` per patch (*fmt* default
    ``ome-tiff``). Every block is read (and checked) before anything is written; *out*
    is written beside itself and renamed into place when complete.

    Raises:
        PlanError: see :func:`subvolumes`; an unknown format or file ending.
        OutputError: *out* exists, or is inside the patches dataset or its source.
        IntegrityError, SourceError: see :func:`subvolumes`.
    """
    from bidspack.safety import is_within

    _check(depth, edge)
    if fmt is not None and fmt not in EXTENSION:
        raise PlanError(out, f"unknown format {fmt!r}; one of {', '.join(EXTENSION)}")
    single = len(patch_ids) == 1
    if out is not None:
        out = Path(out)
        file_fmt = (fmt or output_format(out)) if single else (fmt or "ome-tiff")
        if out.exists() or out.is_symlink():
            raise OutputError(out, "already exists; nothing is replaced")
        ds = open_patches(Path(patches_out))
        roots = [Path(patches_out)]
        if source is not None:
            roots.append(Path(source))
        else:
            with contextlib.suppress(PlanError):
                roots.append(ds.source_path())
        for root in roots:
            if is_within(out.absolute(), root.absolute()):
                raise OutputError(out, f"is inside the dataset {root}; write it elsewhere")
    blocks = subvolumes(patches_out, patch_ids, depth=depth, edge=edge, raw=raw, source=source)
    targets: list[str | None] = [None] * len(blocks)
    if out is not None:
        remove_stale(out)
        if single:
            with staged_beside(out, create=None) as tmp:
                write_subvolume(blocks[0], tmp, file_fmt)
            targets = [str(out)]
        else:
            names = [f"{sv.patch_id}{EXTENSION[file_fmt]}" for sv in blocks]
            if len(set(names)) != len(names):
                raise PlanError(out, "a patch id is given twice")
            with staged_beside(out, create="folder") as tmp:
                for sv, name in zip(blocks, names, strict=True):
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    write_subvolume(sv, tmp / name, file_fmt)
            targets = [str(out / n) for n in names]
    for sv, target in zip(blocks, targets, strict=True):
        b = sv.bounds
        yield Record(
            "subvolume",
            target or sv.patch_id,
            "ok",
            f"{' x '.join(map(str, sv.data.shape))} {sv.data.dtype} ({sv.axes}) from "
            f"{sv.source} z {b['z0']}:{b['z1']}, y {b['y0']}:{b['y1']}, "
            f"x {b['x0']}:{b['x1']}; patch slice at {sv.center}"
            + ("" if target else " (not written: no --out)"),
            sv.describe(),
        )


__all__ = [
    "EDGES",
    "Subvolume",
    "block_span",
    "derive_subvolume",
    "output_format",
    "subvolume",
    "subvolumes",
    "write_subvolume",
]
