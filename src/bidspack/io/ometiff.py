"""Streaming OME-TIFF writer with reduced-resolution sub-levels (SubIFDs).

Layout of a file written here (OME-TIFF spec 2016-06, "OME-TIFF pyramids" as written
by Bio-Formats 6+ and read by Fiji, QuPath, napari and the BIDS validator):

- IFD *i* (i = 0 .. Z-1) holds plane Z=i at full resolution, tiled
  (:data:`DEFAULT_TILE` pixels square) and compressed (deflate/zlib by default, a codec
  Bio-Formats reads); each has SubIFDs pointing to its 2x, 4x, ... downsampled
  versions (mean of 2x2 blocks for intensity images, nearest pixel for label images,
  so labels never take new values). Levels are added until both sides fit in
  :data:`PYRAMID_MIN_SIDE` pixels.
- IFD 0's ImageDescription holds the OME-XML (UTF-8) and is written right after the
  first IFD, inside the first 4 KiB of the file, where the BIDS validator looks for it.
  The XML is padded with spaces to a multiple of :data:`OMEXML_BLOCK` bytes with at
  least :data:`OMEXML_SPARE` bytes spare, so that a later edit (a subject rename
  changes the ``Image`` name) can rewrite it in place, still inside the first 4 KiB.
- No UUID, date or timestamp: the same input and options give byte-identical files.

Classic TIFF (``.ome.tif``) is used when the uncompressed pixels of all levels fit
comfortably below 4 GiB, BigTIFF (``.ome.btf``) otherwise (:func:`needs_bigtiff`).

Memory: at most a few planes (prefetch window and tiles being compressed) are in
memory. The sub-levels are spilled to raw files in *workdir* during the single pass
over the source, then appended to the TIFF level by level.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

from bidspack.errors import IntegrityError
from bidspack.io.omexml import build_omexml
from bidspack.io.pixelhash import PixelHasher
from bidspack.io.sources import ImageSource, TiffStack, stack_axes

DEFAULT_TILE = 256
OMEXML_BLOCK = 512
#: Bytes of tiles tifffile collects before compressing them in parallel.
WRITE_BUFFER = 16 * 2**20
OMEXML_SPARE = 128
PYRAMID_MIN_SIDE = 512
#: Classic TIFF offsets are 32-bit; keep a margin for IFDs and tag values.
CLASSIC_TIFF_LIMIT = 2**32 - 2**26

ImageKind = Literal["intensity", "label"]
Compression = Literal["zlib", "lzw", "none"]


def pyramid_shapes(y: int, x: int, *, min_side: int = PYRAMID_MIN_SIDE) -> list[tuple[int, int]]:
    """``(y, x)`` of every level, level 0 first, halving (rounding up) until both sides
    are at most *min_side*."""
    shapes = [(y, x)]
    while max(shapes[-1]) > min_side:
        py, px = shapes[-1]
        shapes.append(((py + 1) // 2, (px + 1) // 2))
    return shapes


def needs_bigtiff(shape_zyx: tuple[int, int, int], dtype: np.dtype) -> bool:
    """True if the stack (all pyramid levels, uncompressed) would not fit a classic TIFF."""
    z, y, x = shape_zyx
    total = sum(z * ly * lx for ly, lx in pyramid_shapes(y, x)) * np.dtype(dtype).itemsize
    return total > CLASSIC_TIFF_LIMIT


def ome_tiff_extension(shape_zyx: tuple[int, int, int], dtype: np.dtype) -> str:
    """``.ome.btf`` for BigTIFF, ``.ome.tif`` otherwise (the BIDS micr extensions)."""
    return ".ome.btf" if needs_bigtiff(shape_zyx, dtype) else ".ome.tif"


def downsample2d(plane: np.ndarray, kind: ImageKind) -> np.ndarray:
    """Halve a ``(y, x)`` plane: 2x2 mean (intensity) or top-left pixel (label).

    Odd sides are padded by repeating the last row/column, so the result has
    ``ceil(y/2), ceil(x/2)`` pixels. Integer means round half up; the dtype is kept.
    """
    if kind == "label":
        return np.ascontiguousarray(plane[::2, ::2])
    y, x = plane.shape
    if y % 2 or x % 2:
        plane = np.pad(plane, ((0, y % 2), (0, x % 2)), mode="edge")
    if plane.dtype.kind in "ui":
        acc = plane.astype(np.int64)
        s = acc[0::2, 0::2] + acc[1::2, 0::2] + acc[0::2, 1::2] + acc[1::2, 1::2]
        return ((s + 2) // 4).astype(plane.dtype)
    accf = plane.astype(np.float64)
    m = (accf[0::2, 0::2] + accf[1::2, 0::2] + accf[0::2, 1::2] + accf[1::2, 1::2]) / 4
    return m.astype(plane.dtype)


def pad_description(xml: str, length: int | None = None) -> str:
    """Pad OME-XML with trailing spaces (allowed after the root element) to *length*
    bytes, or by default to a multiple of :data:`OMEXML_BLOCK` with at least
    :data:`OMEXML_SPARE` spare bytes.

    Raises:
        ValueError: *xml* is longer than *length*.
    """
    xml = xml.rstrip()
    size = len(xml.encode("utf-8"))
    if length is None:
        length = -(-(size + OMEXML_SPARE) // OMEXML_BLOCK) * OMEXML_BLOCK
    if size > length:
        raise ValueError(f"OME-XML of {size} bytes does not fit in {length}")
    return xml + " " * (length - size)


def _tiles(plane: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    y, x = plane.shape
    for ty in range(0, y, tile):
        for tx in range(0, x, tile):
            yield plane[ty : ty + tile, tx : tx + tile]


@dataclass(frozen=True)
class OmeTiffResult:
    """What :func:`write_ome_tiff` wrote.

    Attributes:
        pixel_hash: pixel hash (``ZYX``) of level 0, equal to the source's.
        shape: ``(z, y, x)``.
        dtype: NumPy dtype name.
        levels: ``(y, x)`` of every pyramid level.
        bigtiff: whether the file is BigTIFF.
    """

    pixel_hash: str
    shape: tuple[int, int, int]
    dtype: str
    levels: tuple[tuple[int, int], ...]
    bigtiff: bool


def write_ome_tiff(
    path: Path,
    source: ImageSource,
    *,
    physical_size_zyx_um: tuple[float | None, float, float],
    name: str,
    kind: ImageKind = "intensity",
    channel_name: str | None = None,
    instrument: Mapping[str, Any] | None = None,
    compression: Compression = "zlib",
    compression_level: int | None = 6,
    tile: int = DEFAULT_TILE,
    workdir: Path,
    max_workers: int | None = None,
    verify: bool = True,
    bigtiff: bool | None = None,
    origin_zyx_um: tuple[float, float, float] | None = None,
) -> OmeTiffResult:
    """Write *source* (``(z, y, x)``) to an OME-TIFF pyramid at *path*, streaming.

    Args:
        path: output file (``.ome.tif`` or ``.ome.btf``; see :func:`ome_tiff_extension`).
        source: the image, read plane by plane.
        physical_size_zyx_um: voxel size in micrometres, ``(z, y, x)``; ``z`` ``None``
            for a 2D image (no ``PhysicalSizeZ``).
        name: OME ``Image`` name.
        kind: ``"intensity"`` (mean downsampling) or ``"label"`` (nearest).
        channel_name: optional OME ``Channel`` name.
        instrument: acquisition metadata for the OME-XML ``Instrument`` and ``Channel``
            (see :func:`bidspack.io.omexml.build_omexml`).
        compression: ``"zlib"`` (Adobe deflate), ``"lzw"`` or ``"none"``.
        compression_level: zlib level (1 fast .. 9 small).
        tile: tile side in pixels (multiple of 16).
        workdir: folder for the spilled sub-levels (same filesystem as *path* advised).
        max_workers: threads compressing tiles (default: CPU count).
        verify: re-read level 0 and compare its pixel hash to the source's.
        bigtiff: force BigTIFF (``True``) or classic TIFF (``False``); by default
            :func:`needs_bigtiff` decides.
        origin_zyx_um: position in micrometres of the first voxel, kept as the OME-XML
            ``Plane`` position (default: the source's
            :attr:`~bidspack.io.sources.StackInfo.origin`; none if it has none).

    Returns:
        :class:`OmeTiffResult` with the pixel hash of the source.

    Raises:
        SourceError: a source plane cannot be decoded.
        IntegrityError: the written pixels do not hash like the source.
    """
    if tile % 16:
        raise ValueError("tile must be a multiple of 16")
    z, y, x = source.shape
    dtype = source.dtype
    levels = pyramid_shapes(y, x)
    if bigtiff is None:
        bigtiff = needs_bigtiff(source.shape, dtype)
    tcz = source.tcz
    xml = build_omexml(
        name=name,
        shape_zyx=(tcz[2], y, x) if tcz else source.shape,
        sizes_tc=(tcz[0], tcz[1]) if tcz else (1, 1),
        channel_metadata=getattr(source, "channel_instruments", None) if tcz else None,
        dtype=dtype,
        physical_size_zyx_um=physical_size_zyx_um,
        channel_name=channel_name,
        origin_zyx_um=origin_zyx_um or source.info.origin,
        instrument=instrument,
    )
    xml = pad_description(xml)
    workdir.mkdir(parents=True, exist_ok=True)
    spill_paths = [workdir / f"{path.name}.level{i}.raw" for i in range(1, len(levels))]
    hasher = PixelHasher(*stack_axes(tcz, source.shape), dtype)
    codec = None if compression == "none" else compression
    codec_args = {"level": compression_level} if compression == "zlib" else None
    workers = max_workers or os.cpu_count() or 1
    _, py, px = physical_size_zyx_um
    common: dict = dict(
        photometric="minisblack",
        compression=codec,
        compressionargs=codec_args,
        tile=(tile, tile),
        maxworkers=workers,
        # tifffile batches tiles for parallel compression in a buffer of 512 MiB by
        # default, which holds ~64 whole planes; bound it (measured: peak RSS 800 MB
        # -> 240 MB for 8 MiB planes, same throughput)
        buffersize=WRITE_BUFFER,
        metadata=None,
        software="bidspack",
    )
    spills = [open(p, "wb") for p in spill_paths]  # noqa: SIM115 - closed in finally
    try:

        def base_tiles() -> Iterator[np.ndarray]:
            for plane in source.iter_planes(workers=workers):
                hasher.update(plane)
                lower = plane
                for fh in spills:
                    lower = downsample2d(lower, kind)
                    fh.write(lower.tobytes())
                yield from _tiles(plane, tile)
            for fh in spills:
                fh.close()

        def level_tiles(i: int) -> Iterator[np.ndarray]:
            ly, lx = levels[i]
            nbytes = ly * lx * dtype.itemsize
            with open(spill_paths[i - 1], "rb") as fh:
                for _ in range(z):
                    buf = fh.read(nbytes)
                    plane = np.frombuffer(buf, dtype=dtype).reshape(ly, lx)
                    yield from _tiles(plane, tile)

        with tifffile.TiffWriter(path, bigtiff=bigtiff, byteorder="<") as tif:
            tif.write(
                base_tiles(),
                shape=(z, y, x),
                dtype=dtype,
                subifds=len(levels) - 1,
                description=xml.encode("utf-8"),
                resolution=(1e4 / px, 1e4 / py),
                resolutionunit="CENTIMETER",
                **common,
            )
            for i in range(1, len(levels)):
                ly, lx = levels[i]
                tif.write(
                    level_tiles(i),
                    shape=(z, ly, lx),
                    dtype=dtype,
                    subfiletype=1,
                    resolution=(1e4 / px / 2**i, 1e4 / py / 2**i),
                    resolutionunit="CENTIMETER",
                    **common,
                )
    finally:
        for fh in spills:
            fh.close()
        for p in spill_paths:
            p.unlink(missing_ok=True)
    digest = hasher.hexdigest()
    if verify:
        written = pixel_hash_of_file(path)
        if written != digest:
            raise IntegrityError(path, f"written pixels hash to {written}, source to {digest}")
    return OmeTiffResult(
        pixel_hash=digest,
        shape=source.shape,
        dtype=dtype.name,
        levels=tuple(levels),
        bigtiff=bigtiff,
    )


def pixel_hash_of_file(path: Path) -> str:
    """Pixel hash of level 0 of an (OME-)TIFF stack, streaming: ``ZYX`` for one stack,
    ``TCZYX`` (without T or C of size 1) for an OME-TIFF with C/T axes
    (:func:`bidspack.io.sources.stack_axes`)."""
    stack = TiffStack(path, channels_and_times=True)
    axes, shape = stack_axes(stack.tcz, stack.shape)
    hasher = PixelHasher(axes, shape, stack.dtype)
    for plane in stack.iter_planes():
        hasher.update(plane)
    return hasher.hexdigest()
