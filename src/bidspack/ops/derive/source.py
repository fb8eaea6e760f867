"""Opening a source dataset read-only: its version, its manifest digest, its images.

A *source dataset* is a bidspack dataset (``bidspack package`` output, or a DataLad
clone of one). :class:`SourceDataset` finds its images by BIDS entities (raw images
under ``sub-*/[ses-*/]micr/`` and images of ``derivatives/<pipeline>/``), and each
image is an :class:`ImageHandle`: ``(z, y, x)`` shape, dtype, voxel size and origin in
micrometres, the pixel hash the source manifest records for it, and region reads
(:meth:`ImageHandle.read`) that decode only the chunks or tiles a region touches:

- OME-Zarr (NGFF 0.4/0.5): level 0 through zarr-python; voxel size and origin from
  ``multiscales[0]`` (``scale`` and ``translation`` of ``datasets[0]``, times the
  multiscale-wide transformations, in each axis's unit; NGFF #trafo-md, #axes-md).
- OME-TIFF: level 0 of the first series through tifffile's Zarr store over the TIFF
  tiles/strips (``TiffPageSeries.aszarr``), so a region decodes the tiles it covers;
  voxel size and origin from the OME-XML (``PhysicalSize*``, ``Plane`` ``Position*``).

The origin is the position of the *centre* of voxel ``(0, 0, 0)``, as in
:class:`bidspack.io.sources.StackInfo`; ``None`` when the file records none.
Nothing here writes to the source.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from bidspack.errors import PlanError, SourceError
from bidspack.provenance.manifest import MANIFEST_TSV, read_manifest
from bidspack.safety import is_within

#: Image file extensions bidspack writes, longest first.
IMAGE_EXTENSIONS = (".ome.zarr", ".ome.tif", ".ome.btf")
#: Entity keys a selection may use (BIDS short keys, as in file names).
ENTITY_KEYS = ("sub", "ses", "sample", "acq", "stain", "run", "chunk", "desc")
_PART = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9+]+)$")


@dataclass(frozen=True)
class BidsName:
    """A parsed BIDS image file name: entities (short keys, in file order), suffix and
    extension. ``sub-1_sample-A_stain-N4_SPIM.ome.tif`` ->
    ``{"sub": "1", "sample": "A", "stain": "N4"}``, ``"SPIM"``, ``".ome.tif"``."""

    entities: dict[str, str]
    suffix: str
    extension: str

    @property
    def stem(self) -> str:
        """The file name without its extension."""
        parts = [f"{k}-{v}" for k, v in self.entities.items()]
        return "_".join([*parts, self.suffix])


def parse_bids_name(name: str) -> BidsName | None:
    """Parse an image file name written by bidspack; ``None`` if it is not one
    (unknown extension, no ``sub-`` entity first, a part that is not ``key-label``)."""
    ext = next((e for e in IMAGE_EXTENSIONS if name.endswith(e)), None)
    if ext is None:
        return None
    parts = name[: -len(ext)].split("_")
    if len(parts) < 2:
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        m = _PART.match(part)
        if m is None or m.group(1) in entities:
            return None
        entities[m.group(1)] = m.group(2)
    suffix = parts[-1]
    if not suffix.isalnum() or next(iter(entities), None) != "sub":
        return None
    return BidsName(entities, suffix, ext)


@dataclass
class ImageHandle:
    """One image of a source dataset, opened for region reads.

    Attributes:
        dataset: the source dataset folder.
        rel: dataset-relative POSIX path (``sub-1/micr/sub-1_SPIM.ome.tif``).
        name: the parsed file name.
        pipeline: ``derivatives/<pipeline>`` the image belongs to, ``None`` if raw.
        shape: ``(z, y, x)`` in voxels (level 0).
        dtype: pixel type.
        voxel_um: ``(z, y, x)`` voxel size in micrometres.
        origin_um: ``(z, y, x)`` position of the centre of voxel ``(0, 0, 0)`` in
            micrometres, or ``None`` if the file records none.
        pixel_hash: the source manifest's pixel hash of level 0 (``None`` if the
            manifest lists none; see :meth:`ensure_pixel_hash`).
        file_digest: the source manifest's xxh3-128 of the file (OME-TIFF) or of the
            level-0 array (OME-Zarr), ``None`` if unlisted.
    """

    dataset: Path
    rel: str
    name: BidsName
    pipeline: str | None
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_um: tuple[float, float, float]
    origin_um: tuple[float, float, float] | None
    pixel_hash: str | None = None
    file_digest: str | None = None
    _array: Any = field(default=None, repr=False)
    _tiff: Any = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        """Absolute path of the image file or folder."""
        return self.dataset / self.rel

    @property
    def format(self) -> str:
        """``"ome-zarr"`` or ``"ome-tiff"``."""
        return "ome-zarr" if self.rel.endswith(".ome.zarr") else "ome-tiff"

    @property
    def manifest_key(self) -> str:
        """The manifest row holding this image's level-0 digests."""
        return self.rel + "/0" if self.format == "ome-zarr" else self.rel

    def _open(self) -> Any:
        if self._array is not None:
            return self._array
        import zarr

        if self.format == "ome-zarr":
            from bidspack.io.omezarr.reader import open_level

            self._array = open_level(self.path, 0)
        else:
            import tifffile

            try:
                self._tiff = tifffile.TiffFile(self.path)
                store = self._tiff.series[0].aszarr(level=0)
                self._array = zarr.open_array(store, mode="r")
            except Exception as exc:
                self.close()
                raise SourceError(self.path, f"cannot open OME-TIFF for reading ({exc})") from exc
        if tuple(self._array.shape) != self.shape:
            raise SourceError(self.path, f"level 0 has shape {self._array.shape}, not {self.shape}")
        return self._array

    @property
    def chunks(self) -> tuple[int, int, int]:
        """``(z, y, x)`` chunk (OME-Zarr) or tile (OME-TIFF, z = 1) shape of level 0."""
        return tuple(int(c) for c in self._open().chunks)  # type: ignore[return-value]

    def read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The region ``[z0:z1, y0:y1, x0:x1]`` (half-open voxel ranges) as a
        ``(z, y, x)`` array of :attr:`dtype`, decoding only the chunks/tiles it covers.

        Raises:
            SourceError: the region is outside the image or cannot be decoded.
        """
        nz, ny, nx = self.shape
        if not (0 <= z0 < z1 <= nz and 0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
            raise SourceError(
                self.path,
                f"region z {z0}:{z1}, y {y0}:{y1}, x {x0}:{x1} is outside the image {self.shape}",
            )
        arr = self._open()
        try:
            out = np.asarray(arr[z0:z1, y0:y1, x0:x1])
        except Exception as exc:
            raise SourceError(self.path, f"cannot decode region ({exc})") from exc
        return out.astype(self.dtype, copy=False)

    def ensure_pixel_hash(self) -> str:
        """:attr:`pixel_hash`, computed from the pixels (streaming) when the manifest
        lists none."""
        if self.pixel_hash is None:
            if self.format == "ome-zarr":
                from bidspack.io.omezarr import pixel_hash_of_zarr

                self.pixel_hash = pixel_hash_of_zarr(self.path)
            else:
                from bidspack.io.ometiff import pixel_hash_of_file

                self.pixel_hash = pixel_hash_of_file(self.path)
        return self.pixel_hash

    def close(self) -> None:
        """Release open file handles (reads reopen them)."""
        if self._tiff is not None:
            self._tiff.close()
        self._tiff = None
        self._array = None

    def __enter__(self) -> ImageHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _zarr_geometry(
    path: Path,
) -> tuple[tuple[int, int, int], np.dtype, tuple[float, float, float], tuple[float, ...] | None]:
    """Shape, dtype, voxel size and origin (micrometres) of an OME-Zarr image."""
    from bidspack.io.omezarr.reader import (
        NGFF_UNIT_TO_UM,
        multiscale_of,
        ome_zarr_scale_um,
        open_level,
    )

    voxel = ome_zarr_scale_um(path)
    arr = open_level(path, 0)
    if arr.ndim != 3:
        raise SourceError(path, f"level 0 has {arr.ndim} dimensions, expected 3 (z, y, x)")
    _, ms = multiscale_of(path)
    origin: tuple[float, ...] | None = None
    try:
        axes = [a["name"] for a in ms["axes"]]
        total = np.zeros(len(axes))
        found = False
        for transforms in (ms["datasets"][0]["coordinateTransformations"],):
            for t in transforms:
                if t.get("type") == "translation":
                    total += np.asarray(t["translation"], float)
                    found = True
        if found:
            origin = tuple(
                float(total[axes.index(n)]) * NGFF_UNIT_TO_UM[ms["axes"][axes.index(n)]["unit"]]
                for n in "zyx"
            )
    except (KeyError, IndexError, TypeError, ValueError):
        origin = None
    shape = (int(arr.shape[0]), int(arr.shape[1]), int(arr.shape[2]))
    return shape, np.dtype(arr.dtype), voxel, origin


def open_image(
    dataset: Path, rel: str, manifest: dict[str, dict[str, Any]] | None = None
) -> ImageHandle:
    """Open the image *rel* of *dataset* (metadata only; pixels are read on demand).

    Raises:
        SourceError: not a bidspack image name, unreadable, not 3D grayscale, or no
            physical voxel size.
    """
    from bidspack.io.sources import TiffStack

    path = Path(dataset) / rel
    name = parse_bids_name(PurePosixPath(rel).name)
    if name is None:
        raise SourceError(path, "not a BIDS microscopy image name (sub-<label>_..._<suffix>)")
    parts = PurePosixPath(rel).parts
    pipeline = parts[1] if parts[0] == "derivatives" and len(parts) > 2 else None
    origin: tuple[float, ...] | None
    if name.extension == ".ome.zarr":
        shape, dtype, voxel_t, origin = _zarr_geometry(path)
        voxel: tuple[float, float, float] | None = voxel_t
    else:
        stack = TiffStack(path)
        shape, dtype = stack.shape, stack.dtype
        voxel, origin = stack.info.physical_size, stack.info.origin
    if voxel is None:
        raise SourceError(path, "the image records no physical voxel size")
    rows = manifest or {}
    key = rel + "/0" if name.extension == ".ome.zarr" else rel
    row = rows.get(key) or {}
    return ImageHandle(
        dataset=Path(dataset),
        rel=rel,
        name=name,
        pipeline=pipeline,
        shape=shape,
        dtype=dtype,
        voxel_um=voxel,
        origin_um=None if origin is None else (origin[0], origin[1], origin[2]),
        pixel_hash=row.get("pixel_hash"),
        file_digest=row.get("xxh3_128"),
    )


def _git(dataset: Path, *args: str) -> str | None:
    """stdout of ``git -C dataset args`` or ``None`` when git fails or is missing."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(dataset), *args], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


class SourceDataset:
    """A bidspack dataset opened read-only as the source of a derived dataset.

    Attributes:
        path: the folder as given.
        commit: ``git rev-parse HEAD`` when the dataset is a git/DataLad dataset with
            a commit, else ``None``.
        tag: the tag pointing exactly at that commit (``git describe --tags
            --exact-match``), else ``None``.
        dirty: whether git reports uncommitted changes (``None`` without git).
        manifest_sha256: sha256 of ``code/bidspack/manifest.tsv``.

    Raises:
        PlanError: *path* is not a folder, or has no bidspack manifest.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise PlanError(self.path, "source dataset does not exist or is not a folder")
        manifest = self.path / MANIFEST_TSV
        if not manifest.is_file():
            raise PlanError(
                self.path,
                f"not a bidspack dataset (no {MANIFEST_TSV})",
                hint="derive from a dataset made by 'bidspack package'",
            )
        self.manifest_sha256 = hashlib.sha256(manifest.read_bytes()).hexdigest()
        self.manifest = read_manifest(self.path)
        self.commit: str | None = None
        self.tag: str | None = None
        self.dirty: bool | None = None
        if (self.path / ".git").exists():
            self.commit = _git(self.path, "rev-parse", "--verify", "-q", "HEAD")
            if self.commit:
                self.tag = _git(self.path, "describe", "--tags", "--exact-match", "HEAD")
                status = _git(self.path, "status", "--porcelain", "--untracked-files=no")
                self.dirty = bool(status)

    @property
    def version(self) -> str | None:
        """The release tag if the commit is tagged, else the commit, else ``None``."""
        return self.tag or self.commit

    def image_paths(self) -> list[str]:
        """Dataset-relative paths of every image (raw and derivatives), sorted."""
        found: list[str] = []
        roots = [self.path]
        deriv = self.path / "derivatives"
        if deriv.is_dir():
            roots += sorted(p for p in deriv.iterdir() if p.is_dir() and not p.is_symlink())
        for root in roots:
            for micr in sorted(root.glob("sub-*/micr")) + sorted(root.glob("sub-*/ses-*/micr")):
                if micr.is_symlink() or not micr.is_dir():
                    continue
                for entry in sorted(micr.iterdir()):
                    if parse_bids_name(entry.name) is None:
                        continue
                    # an annexed file (DataLad) is a link into .git/annex/objects: read
                    # it; a link leading outside the dataset is never followed
                    if entry.is_symlink() and not is_within(entry, self.path):
                        continue
                    found.append(entry.relative_to(self.path).as_posix())
        return sorted(found)

    def select_images(
        self,
        *,
        suffix: str | None = None,
        pipeline: str | None = None,
        fmt: str = "auto",
        **entities: str | None,
    ) -> list[ImageHandle]:
        """The images whose file name has every given entity value (short keys:
        ``sub``, ``ses``, ``sample``, ``acq``, ``stain``, ``run``, ``chunk``, ``desc``)
        and *suffix*; *pipeline* ``"raw"`` for raw images only, a pipeline name for
        ``derivatives/<pipeline>/`` only, ``None`` for both.

        *fmt*: ``"ome-zarr"`` or ``"ome-tiff"`` keep only that format; ``"auto"``
        keeps one file per image (the OME-Zarr where both were written: chunked reads).

        Raises:
            PlanError: an unknown entity key or format.
            SourceError: a matching image cannot be opened.
        """
        unknown = sorted(set(entities) - set(ENTITY_KEYS))
        if unknown:
            raise PlanError(self.path, f"unknown entity {unknown[0]!r}; use {ENTITY_KEYS}")
        if fmt not in ("auto", "ome-zarr", "ome-tiff"):
            raise PlanError(self.path, f"unknown format {fmt!r}")
        wanted = {k: v for k, v in entities.items() if v is not None}
        chosen: dict[str, str] = {}
        for rel in self.image_paths():
            name = parse_bids_name(PurePosixPath(rel).name)
            assert name is not None
            parts = PurePosixPath(rel).parts
            where = parts[1] if parts[0] == "derivatives" else "raw"
            if pipeline is not None and where != pipeline:
                continue
            if suffix is not None and name.suffix != suffix:
                continue
            if any(name.entities.get(k) != v for k, v in wanted.items()):
                continue
            is_zarr = name.extension == ".ome.zarr"
            if fmt != "auto" and (fmt == "ome-zarr") != is_zarr:
                continue
            key = str(PurePosixPath(rel).parent / name.stem)
            if key not in chosen or is_zarr:
                chosen[key] = rel
        return [open_image(self.path, rel, self.manifest) for rel in sorted(chosen.values())]


__all__ = [
    "ENTITY_KEYS",
    "BidsName",
    "ImageHandle",
    "SourceDataset",
    "open_image",
    "parse_bids_name",
]
