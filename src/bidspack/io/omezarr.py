"""Streaming OME-Zarr writer (OME-NGFF 0.4 and 0.5) with a multiscale pyramid, and the
reader-side helpers that validation uses.

Specifications, cited by their section anchors: OME-NGFF 0.4
(https://ngff.openmicroscopy.org/0.4/) and 0.5 (https://ngff.openmicroscopy.org/0.5/);
Zarr v2 (https://zarr-specs.readthedocs.io/en/latest/v2/v2.0.html); Zarr v3 core and its
``sharding_indexed`` codec v1.0
(https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/).

Layout of an image written here (3D grayscale, axes ``z, y, x``):

- **0.5** (default): Zarr v3. The root ``zarr.json`` is a group whose ``attributes.ome``
  holds ``version`` "0.5" (0.5 #metadata), ``multiscales`` (#multiscale-md) and, for
  intensity images, ``omero`` (#omero-md). Level *i* is the array ``<i>/zarr.json``
  whose ``dimension_names`` are the axis names, as 0.5 #axes-md requires. Chunks of
  (1, 256, 256) pixels are stored in shards of at most 2048 x 2048 pixels in y/x, deep
  enough to hold :attr:`NgffV05.shard_bytes` (256 MiB) of pixels, clipped to the array:
  a 4.3 GB stack of 2048 x 2048 planes gives 22 shard files. Shard files are
  ``<i>/c/<z>/<y>/<x>``, index at the end, CRC32C-checked.
- **0.4**: Zarr v2. ``.zgroup`` and ``.zattrs`` (``multiscales`` with ``version`` "0.4",
  ``omero``) at the root; level *i* is ``<i>/.zarray``; one file per chunk of
  (8, 256, 256) pixels in the nested layout ``<i>/<z>/<y>/<x>`` (``dimension_separator``
  "/", 0.4 #on-disk).
- Axes (#axes-md): ``z``, ``y``, ``x``, type ``space``, unit ``micrometer``. Each level
  has a ``scale`` (#trafo-md, #multiscale-md) with its voxel size in micrometres (it
  doubles on each halved axis); mean-downsampled levels also have a ``translation``
  (after the scale, as required) of half a block minus half a level-0 voxel, so that
  voxel centres stay in place. Nearest (first-voxel) levels need none.
- Pixels are little-endian; chunks are Blosc-compressed (:data:`BLOSC`: zstd level 1,
  byte shuffle); edge chunks are padded with the fill value 0. JSON has sorted keys, and
  there is no timestamp or UUID: the same input gives byte-identical files, whatever the
  number of workers or the scheduler.

The pyramid (:func:`pyramid_shapes`): each level halves y and x (rounding up; an odd
last row or column is repeated) and also z once the voxel is close to isotropic (z
voxel size at most :data:`Z_ISOTROPY` times the y/x size), until y and x fit in one
chunk. Intensity images take the mean of each 2x2 (or 2x2x2) block, integers rounded
half up (as :func:`bidspack.io.ometiff.downsample2d`); label images take each block's
first voxel (top-left of its first plane), so labels never take new values. The
multiscale ``type`` is ``"mean"`` or ``"nearest"``.

Memory and parallelism: the source is read once, in Z order, and hashed
(:class:`~bidspack.io.pixelhash.PixelHasher`). Each *step* reads a window of about
:data:`STEP_TASKS` x workers x :data:`TASK_BYTES` of level-0 pixels and runs, as Dask
tasks, the encoding of every level's ready planes together with the computation of the
next level from them (in row bands when a plane is large); the driver then appends the
encoded chunks to their files in (z, y, x) order. Level *k+1* of a window is handled in
the step after level *k* (a pipeline), so only a few windows of planes are held, whatever
the stack depth: memory grows with plane size x chunk depth x workers, not with the
number of planes. With ``dask.distributed`` the tasks run on the cluster's workers,
while the driver reads, hashes and writes (one writer per shard file).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

import google_crc32c  # the CRC32C implementation zarr-python uses
import imagecodecs
import numcodecs.blosc
import numpy as np

from bidspack.errors import IntegrityError, OutputError, SourceError, ToolError
from bidspack.io.pixelhash import PixelHasher, canonical_dtype
from bidspack.io.sources import ImageSource

ImageKind = Literal["intensity", "label"]

DEFAULT_VERSION = "0.5"
#: Halve z once the z voxel size is at most this many times the y/x voxel size.
Z_ISOTROPY = 1.5
#: Bytes of pixels one parallel task aims at (a band of planes, of any level).
TASK_BYTES = 2 * 2**20
#: Tasks per worker in one step (one window of the stack, one ``dask.compute``).
STEP_TASKS = 4
#: Blosc settings of every chunk: (compressor, level, shuffle). zstd level 1 with byte
#: shuffle encodes about 400 MB/s per core and compresses 2.4x the synthetic 16-bit
#: light-sheet-like planes of benchmarks/bench_omezarr.py (level 5, ome-zarr's default,
#: is 5x slower for 1% smaller chunks; lz4 is 2.5x faster but 15% larger).
BLOSC = ("zstd", 1, "shuffle")
#: Largest uint64 (the sharding index's "empty chunk" marker).
_EMPTY = 2**64 - 1

#: NGFF space units (UDUNITS-2 names, #axes-md) in micrometres (the metric ones and inch/foot).
NGFF_UNIT_TO_UM = {
    "angstrom": 1e-4,
    "attometer": 1e-12,
    "centimeter": 1e4,
    "decimeter": 1e5,
    "femtometer": 1e-9,
    "foot": 304800.0,
    "inch": 25400.0,
    "kilometer": 1e9,
    "meter": 1e6,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "nanometer": 1e-3,
    "picometer": 1e-6,
}

_INT_ACC = {1: np.int16, 2: np.int32, 4: np.int64}
_UINT_ACC = {1: np.uint16, 2: np.uint32, 4: np.uint64}


# ---------------------------------------------------------------------------------------
# Pyramid plan
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """One array of the pyramid.

    Attributes:
        path: the array's path in the group (``"0"``, ``"1"``, ...).
        shape: ``(z, y, x)`` in pixels.
        scale_um: ``(z, y, x)`` voxel size in micrometres.
        factor: ``(z, y, x)`` size of one voxel in level-0 voxels (powers of two).
        chunk: ``(z, y, x)`` chunk shape (the requested chunk clipped to the shape).
        shard: ``(z, y, x)`` shard shape (a multiple of *chunk*), ``None`` without sharding.
        halve_z: whether the next level halves z (``False`` for the last level).
    """

    path: str
    shape: tuple[int, int, int]
    scale_um: tuple[float, float, float]
    factor: tuple[int, int, int]
    chunk: tuple[int, int, int]
    shard: tuple[int, int, int] | None
    halve_z: bool


def pyramid_shapes(
    shape_zyx: tuple[int, int, int],
    physical_size_zyx_um: tuple[float, float, float],
    chunk_yx: tuple[int, int],
) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """``(shape, factor)`` of every level, level 0 first (see the module docstring).

    Levels halve y and x (rounding up) until both fit in one chunk (``y <= chunk_yx[0]``
    and ``x <= chunk_yx[1]``); z is halved too while its voxel is at most
    :data:`Z_ISOTROPY` times the larger of the y/x voxel sizes and z > 1.

    >>> [s for s, _ in pyramid_shapes((270, 193, 271), (50.0, 40.0, 40.0), (256, 256))]
    [(270, 193, 271), (135, 97, 136)]
    """
    (z, y, x), (fz, fy, fx) = shape_zyx, (1, 1, 1)
    sz, sy, sx = physical_size_zyx_um
    out = [((z, y, x), (fz, fy, fx))]
    while y > chunk_yx[0] or x > chunk_yx[1]:
        if z > 1 and sz * fz <= Z_ISOTROPY * max(sy * fy, sx * fx):
            z, fz = -(-z // 2), fz * 2
        y, x, fy, fx = -(-y // 2), -(-x // 2), fy * 2, fx * 2
        out.append(((z, y, x), (fz, fy, fx)))
    return out


# ---------------------------------------------------------------------------------------
# NGFF versions
# ---------------------------------------------------------------------------------------


def _dumps(doc: dict[str, Any]) -> bytes:
    """Deterministic JSON: sorted keys, 2-space indent, no NaN, trailing newline."""
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


class NgffVersion(ABC):
    """What one OME-NGFF version fixes: Zarr format, where metadata lives, chunk layout.

    After ome-zarr-py's ``ome_zarr.format.FormatV04`` / ``FormatV05``; one instance per
    version in :data:`NGFF_VERSIONS`.
    """

    version: ClassVar[str]
    zarr_format: ClassVar[Literal[2, 3]]
    #: ``(z, y, x)`` chunk shape used when the caller gives none.
    default_chunk: ClassVar[tuple[int, int, int]]
    #: The file holding the group's attributes (``.zattrs`` or ``zarr.json``).
    attributes_file: ClassVar[str]

    def shard(
        self, shape: tuple[int, int, int], chunk: tuple[int, int, int], itemsize: int
    ) -> tuple[int, int, int] | None:
        """Shard shape of an array, or ``None`` if this version does not shard."""
        return None

    @abstractmethod
    def ome_attributes(self, multiscale: dict[str, Any], omero: dict | None) -> dict:
        """The group attributes (what the NGFF ``image.schema`` validates)."""

    @abstractmethod
    def ome_metadata(self, attributes: dict[str, Any]) -> dict[str, Any]:
        """The object holding ``multiscales`` and ``omero`` inside the group attributes."""

    @abstractmethod
    def group_files(self, attributes: dict[str, Any]) -> dict[str, bytes]:
        """Root metadata files (name -> content) of a group with *attributes*."""

    @abstractmethod
    def array_files(self, level: Level, dtype: np.dtype) -> dict[str, bytes]:
        """Metadata files of the array of *level*, relative to the array folder."""

    @abstractmethod
    def chunk_store(self, folder: Path, level: Level) -> ChunkStore:
        """The chunk files of *level* in *folder* (for writing, then reading back)."""


class NgffV04(NgffVersion):
    """OME-NGFF 0.4: Zarr v2, ``.zgroup``/``.zattrs``/``.zarray``, one file per chunk in
    the nested layout (``dimension_separator`` "/", 0.4 #on-disk), ``version`` "0.4" in
    each ``multiscales`` entry (0.4 #multiscale-md)."""

    version = "0.4"
    zarr_format = 2
    default_chunk = (8, 256, 256)
    attributes_file = ".zattrs"

    def ome_attributes(self, multiscale: dict[str, Any], omero: dict | None) -> dict:
        attrs: dict[str, Any] = {"multiscales": [{**multiscale, "version": self.version}]}
        if omero is not None:
            attrs["omero"] = omero
        return attrs

    def ome_metadata(self, attributes: dict[str, Any]) -> dict[str, Any]:
        return attributes

    def group_files(self, attributes: dict[str, Any]) -> dict[str, bytes]:
        return {".zgroup": _dumps({"zarr_format": 2}), ".zattrs": _dumps(attributes)}

    def array_files(self, level: Level, dtype: np.dtype) -> dict[str, bytes]:
        cname, clevel, _ = BLOSC
        zarray = {
            "chunks": list(level.chunk),
            "compressor": {
                "blocksize": 0,
                "clevel": clevel,
                "cname": cname,
                "id": "blosc",
                "shuffle": 1,  # byte shuffle
            },
            "dimension_separator": "/",
            "dtype": dtype.str,
            "fill_value": 0,
            "filters": None,
            "order": "C",
            "shape": list(level.shape),
            "zarr_format": 2,
        }
        return {".zarray": _dumps(zarray)}

    def chunk_store(self, folder: Path, level: Level) -> ChunkStore:
        return ChunkFiles(folder)


class NgffV05(NgffVersion):
    """OME-NGFF 0.5: Zarr v3 ``zarr.json`` with ``attributes.ome.version`` "0.5"
    (0.5 #metadata), arrays with ``dimension_names`` (0.5 #axes-md) and the
    ``sharding_indexed`` codec: chunks (1, 256, 256) in shards of up to :attr:`shard_yx`
    pixels in y/x and at least :attr:`shard_bytes` of pixels (unless the array is
    shallower)."""

    version = "0.5"
    zarr_format = 3
    default_chunk = (1, 256, 256)
    attributes_file = "zarr.json"
    #: Uncompressed bytes a shard aims at (at least, when the array is deep enough).
    shard_bytes = 256 * 2**20
    #: Largest shard side in y and x (pixels, rounded up to whole chunks).
    shard_yx = 2048

    def shard(
        self, shape: tuple[int, int, int], chunk: tuple[int, int, int], itemsize: int
    ) -> tuple[int, int, int]:
        (z, y, x), (cz, cy, cx) = shape, chunk
        sy = cy * min(-(-y // cy), max(1, self.shard_yx // cy))
        sx = cx * min(-(-x // cx), max(1, self.shard_yx // cx))
        kz = max(1, -(-self.shard_bytes // (cz * sy * sx * itemsize)))
        return (cz * min(kz, -(-z // cz)), sy, sx)

    def ome_attributes(self, multiscale: dict[str, Any], omero: dict | None) -> dict:
        ome: dict[str, Any] = {"version": self.version, "multiscales": [multiscale]}
        if omero is not None:
            ome["omero"] = omero
        return {"ome": ome}

    def ome_metadata(self, attributes: dict[str, Any]) -> dict[str, Any]:
        return dict(attributes.get("ome", {}))

    def group_files(self, attributes: dict[str, Any]) -> dict[str, bytes]:
        doc = {"attributes": attributes, "node_type": "group", "zarr_format": 3}
        return {"zarr.json": _dumps(doc)}

    def array_files(self, level: Level, dtype: np.dtype) -> dict[str, bytes]:
        assert level.shard is not None
        cname, clevel, shuffle = BLOSC
        little = {"name": "bytes", "configuration": {"endian": "little"}}
        blosc = {"cname": cname, "clevel": clevel, "shuffle": shuffle, "blocksize": 0}
        sharding = {
            "chunk_shape": list(level.chunk),
            "codecs": [
                little,
                {"name": "blosc", "configuration": blosc | {"typesize": dtype.itemsize}},
            ],
            "index_codecs": [little, {"name": "crc32c"}],
            "index_location": "end",
        }
        doc = {
            "attributes": {},
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(level.shard)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "codecs": [{"name": "sharding_indexed", "configuration": sharding}],
            "data_type": dtype.name,
            "dimension_names": ["z", "y", "x"],
            "fill_value": 0,
            "node_type": "array",
            "shape": list(level.shape),
            "storage_transformers": [],
            "zarr_format": 3,
        }
        return {"zarr.json": _dumps(doc)}

    def chunk_store(self, folder: Path, level: Level) -> ChunkStore:
        return ShardFiles(folder, level)


NGFF_VERSIONS: dict[str, type[NgffVersion]] = {"0.4": NgffV04, "0.5": NgffV05}


def ngff_version(version: str) -> NgffVersion:
    """The :class:`NgffVersion` for ``"0.4"`` or ``"0.5"``.

    Raises:
        ValueError: any other version.
    """
    try:
        return NGFF_VERSIONS[str(version)]()
    except KeyError:
        known = ", ".join(NGFF_VERSIONS)
        raise ValueError(f"OME-NGFF version {version!r} not supported (known: {known})") from None


# ---------------------------------------------------------------------------------------
# Chunk files and shard files
# ---------------------------------------------------------------------------------------


class ChunkStore(ABC):
    """The encoded chunks of one array on disk, by ``(z, y, x)`` chunk-grid index."""

    @abstractmethod
    def put(self, key: tuple[int, int, int], data: bytes) -> None:
        """Store one encoded chunk (each chunk once)."""

    @abstractmethod
    def get(self, key: tuple[int, int, int]) -> bytes:
        """Read one encoded chunk back from disk.

        Raises:
            IntegrityError: the chunk is missing or its shard is damaged.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Finish every file (all chunks must have been put)."""


class ChunkFiles(ChunkStore):
    """Zarr v2 with ``dimension_separator`` "/": chunk ``(z, y, x)`` is the file
    ``<folder>/z/y/x``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._dirs: set[Path] = set()

    def put(self, key: tuple[int, int, int], data: bytes) -> None:
        d = self.folder / str(key[0]) / str(key[1])
        if d not in self._dirs:
            d.mkdir(parents=True, exist_ok=True)
            self._dirs.add(d)
        (d / str(key[2])).write_bytes(data)

    def get(self, key: tuple[int, int, int]) -> bytes:
        path = self.folder.joinpath(*map(str, key))
        try:
            return path.read_bytes()
        except OSError as exc:
            raise IntegrityError(path, f"chunk unreadable ({exc})") from exc


@dataclass
class _OpenShard:
    file: BinaryIO
    index: np.ndarray  # (chunks per shard in z, y, x, 2): offset and size of each chunk
    left: int  # chunks inside the array still to come


class ShardFiles(ChunkStore):
    """Zarr v3 ``sharding_indexed`` shards, written as a stream.

    A shard ``<folder>/c/z/y/x`` is the concatenation of its encoded chunks (in the order
    they are put) followed by its index: ``(offset, nbytes)`` as little-endian uint64 for
    every chunk of the shard in C order (``2**64 - 1`` twice for a chunk outside the
    array), then the CRC32C of those bytes as little-endian uint32 (sharding codec v1.0,
    ``index_location`` "end"). Only the indexes of the open shards are held in memory; a
    shard is closed when its last chunk inside the array has been put.
    """

    def __init__(self, folder: Path, level: Level):
        assert level.shard is not None
        self.folder = folder
        self.per_shard = tuple(s // c for s, c in zip(level.shard, level.chunk, strict=True))
        self.grid = tuple(-(-n // c) for n, c in zip(level.shape, level.chunk, strict=True))
        self._open: dict[tuple[int, ...], _OpenShard] = {}
        self._read: dict[tuple[int, ...], np.ndarray] = {}  # shard -> index, when reading

    def _path(self, shard: tuple[int, ...]) -> Path:
        return self.folder.joinpath("c", *map(str, shard))

    def _split(self, key: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(shard index, chunk index inside the shard) of chunk *key*."""
        shard = tuple(k // p for k, p in zip(key, self.per_shard, strict=True))
        return shard, tuple(k % p for k, p in zip(key, self.per_shard, strict=True))

    def put(self, key: tuple[int, int, int], data: bytes) -> None:
        shard, local = self._split(key)
        if shard not in self._open:
            path = self._path(shard)
            path.parent.mkdir(parents=True, exist_ok=True)
            index = np.full((*self.per_shard, 2), _EMPTY, dtype="<u8")
            inside = math.prod(
                min(p, g - s * p) for s, p, g in zip(shard, self.per_shard, self.grid, strict=True)
            )
            self._open[shard] = _OpenShard(open(path, "wb"), index, inside)  # noqa: SIM115
        sh = self._open[shard]
        sh.index[local] = (sh.file.tell(), len(data))
        sh.file.write(data)
        sh.left -= 1
        if sh.left == 0:
            del self._open[shard]
            raw = sh.index.tobytes()
            sh.file.write(raw + google_crc32c.value(raw).to_bytes(4, "little"))
            sh.file.close()

    def get(self, key: tuple[int, int, int]) -> bytes:
        shard, local = self._split(key)
        path = self._path(shard)
        try:
            with open(path, "rb") as fh:
                if shard not in self._read:
                    self._read[shard] = self._read_index(fh, path)
                offset, nbytes = (int(v) for v in self._read[shard][local])
                if offset == _EMPTY:
                    raise IntegrityError(path, f"chunk {key} is missing from the shard")
                fh.seek(offset)
                data = fh.read(nbytes)
        except OSError as exc:
            raise IntegrityError(path, f"shard unreadable ({exc})") from exc
        if len(data) != nbytes:
            raise IntegrityError(path, f"shard truncated in chunk {key}")
        return data

    def _read_index(self, fh: BinaryIO, path: Path) -> np.ndarray:
        size = math.prod(self.per_shard) * 16
        fh.seek(-(size + 4), os.SEEK_END)
        raw = fh.read(size + 4)
        if len(raw) != size + 4 or google_crc32c.value(raw[:size]) != int.from_bytes(
            raw[size:], "little"
        ):
            raise IntegrityError(path, "shard index is damaged (CRC32C mismatch)")
        return np.frombuffer(raw[:size], dtype="<u8").reshape(*self.per_shard, 2)

    def close(self) -> None:
        unfinished = sorted(self._open)
        for shard in unfinished:
            self._open[shard].file.close()
        self._open.clear()
        if unfinished:
            raise AssertionError(f"shards {unfinished} of {self.folder} are incomplete")


# ---------------------------------------------------------------------------------------
# Pure functions run as parallel tasks
# ---------------------------------------------------------------------------------------


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulator type for sums of 8 values of *dtype* (float64 for 64-bit ints/floats)."""
    if dtype.kind == "u" and dtype.itemsize in _UINT_ACC:
        return np.dtype(_UINT_ACC[dtype.itemsize])
    if dtype.kind == "i" and dtype.itemsize in _INT_ACC:
        return np.dtype(_INT_ACC[dtype.itemsize])
    return np.dtype(np.float64)


def downsample_block(planes: Sequence[np.ndarray], kind: ImageKind) -> np.ndarray:
    """One plane of the next level from 1 or 2 consecutive ``(y, x)`` planes.

    Halves y and x (rounding up; an odd last row/column is repeated). Intensity: mean of
    each 2x2 (one plane) or 2x2x2 (two planes) block, rounded half up for integers
    (``(sum + n/2) // n``), dtype kept. Label: the block's first voxel (top-left of the
    first plane), so no new values appear.
    """
    first = planes[0]
    if kind == "label":
        return np.ascontiguousarray(first[::2, ::2])
    y, x = first.shape
    if y % 2 or x % 2:
        planes = [np.pad(p, ((0, y % 2), (0, x % 2)), mode="edge") for p in planes]
    acc = _acc_dtype(first.dtype)
    rows = planes[0][0::2].astype(acc)
    rows += planes[0][1::2]
    for p in planes[1:]:
        rows += p[0::2]
        rows += p[1::2]
    s = rows[:, 0::2] + rows[:, 1::2]
    n = 4 * len(planes)
    if acc.kind in "ui":
        s += n // 2
        s //= n
    elif first.dtype.kind in "ui":  # 64-bit integers summed as float64
        s = np.floor(s / n + 0.5)
    else:
        s /= n
    return s.astype(first.dtype)


def _encode_chunks(
    planes: Sequence[np.ndarray], z0: int, y0: int, level: Level
) -> list[tuple[tuple[int, int, int], bytes]]:
    """Encode the chunks of a band of planes: level planes ``z0 ..``, rows ``y0 ..``
    (``z0`` and ``y0`` on chunk boundaries), padding edge chunks with 0."""
    cname, clevel, _ = BLOSC
    cz, cy, cx = level.chunk
    rows, nx = planes[0].shape
    dtype = planes[0].dtype
    out = []
    for iz in range(0, len(planes), cz):
        group = planes[iz : iz + cz]
        for y in range(0, rows, cy):
            for x in range(0, nx, cx):
                parts = [p[y : y + cy, x : x + cx] for p in group]
                if len(parts) == cz and parts[0].shape == (cy, cx):
                    block = np.stack(parts) if cz > 1 else np.ascontiguousarray(parts[0])
                else:
                    block = np.zeros((cz, cy, cx), dtype=dtype)
                    for i, part in enumerate(parts):
                        block[i, : part.shape[0], : part.shape[1]] = part
                data = imagecodecs.blosc_encode(
                    block,  # type: ignore[arg-type]  # the stub omits arrays
                    level=clevel,
                    compressor=cname,
                    shuffle=1,  # byte shuffle
                    typesize=dtype.itemsize,
                    blocksize=0,
                    numthreads=1,
                )
                out.append((((z0 + iz) // cz, (y0 + y) // cy, x // cx), bytes(data)))
    return out


def _process(
    planes: list[np.ndarray], z0: int, y0: int, level: Level, kind: ImageKind, last: bool
) -> tuple[list[tuple[tuple[int, int, int], bytes]], list[np.ndarray], tuple[float, float] | None]:
    """One task on a band of planes (level planes ``z0 ..``, rows ``y0 ..``): encode its
    chunks and compute the same band of the next level's planes. The band starts on
    chunk boundaries, has an even height unless it ends the plane, and holds whole z
    pairs if the next level halves z unless it ends the level. The last level computes
    no planes; it returns the range of its finite values instead (intensity images, for
    the omero window)."""
    chunks = _encode_chunks(planes, z0, y0, level)
    if last:
        return chunks, [], _value_range(planes) if kind == "intensity" else None
    step = 2 if level.halve_z else 1
    lower = [downsample_block(planes[i : i + step], kind) for i in range(0, len(planes), step)]
    return chunks, lower, None


def _value_range(planes: list[np.ndarray]) -> tuple[float, float]:
    """(min, max) of the finite values of *planes* (``(inf, -inf)`` if there are none)."""
    lo, hi = math.inf, -math.inf
    for plane in planes:
        if plane.dtype.kind == "f":
            plane = plane[np.isfinite(plane)]
        if plane.size:
            lo, hi = min(lo, float(plane.min())), max(hi, float(plane.max()))
    return lo, hi


# ---------------------------------------------------------------------------------------
# Dask
# ---------------------------------------------------------------------------------------


class _Runner:
    """Runs a batch of independent tasks with Dask and returns their results in order.

    ``scheduler`` ``None``: Dask's local threaded scheduler with *workers* threads; a
    string with ``://`` (``tcp://host:8786``): a ``distributed.Client`` connected to that
    scheduler for the duration of the write; another string: a Dask scheduler name
    (``"threads"``, ``"synchronous"``); any other object: a ``distributed.Client``.
    """

    def __init__(self, scheduler: object, workers: int):
        self.workers = workers
        self._own_client = False
        self.client: Any = None
        self.scheduler: str = "threads"
        if isinstance(scheduler, str) and "://" in scheduler:
            from distributed import Client

            self.client = Client(scheduler, set_as_default=False)
            self._own_client = True
        elif isinstance(scheduler, str):
            self.scheduler = scheduler
        elif scheduler is not None:
            if not hasattr(scheduler, "submit"):
                raise ValueError(f"scheduler must be None, a string or a Client: {scheduler!r}")
            self.client = scheduler

    def map(self, fn: Callable[..., Any], jobs: list[tuple[Any, ...]]) -> list[Any]:
        if not jobs:
            return []
        if self.client is not None:
            futures = [self.client.submit(fn, *args, pure=False) for args in jobs]
            return list(self.client.gather(futures))
        import dask

        tasks = [dask.delayed(fn, pure=False, traverse=False)(*args) for args in jobs]
        return list(dask.compute(*tasks, scheduler=self.scheduler, num_workers=self.workers))

    def close(self) -> None:
        if self._own_client:
            self.client.close()


# ---------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OmeZarrResult:
    """What :func:`write_ome_zarr` wrote.

    Attributes:
        pixel_hash: pixel hash (``ZYX``) of level 0, equal to the source's.
        version: OME-NGFF version (``"0.4"`` or ``"0.5"``).
        levels: ``(z, y, x)`` shape of every level, level 0 first.
        scales_um: ``(z, y, x)`` voxel size in micrometres of every level.
        files: number of files written (metadata included).
        nbytes: bytes written (all files).
    """

    pixel_hash: str
    version: str
    levels: tuple[tuple[int, int, int], ...]
    scales_um: tuple[tuple[float, float, float], ...]
    files: int
    nbytes: int


@dataclass
class _Pending:
    """Planes of one level waiting to be encoded and downsampled."""

    level: Level
    align: int  # planes are taken in multiples of this until the level is complete
    planes: list[np.ndarray]
    z: int = 0  # index of planes[0] in the level
    complete: bool = False  # no more planes will arrive


def plan_pyramid(
    version: NgffVersion,
    shape_zyx: tuple[int, int, int],
    dtype: np.dtype,
    physical_size_zyx_um: tuple[float, float, float],
    chunk: tuple[int, int, int],
) -> list[Level]:
    """Every :class:`Level` of the pyramid (shapes from :func:`pyramid_shapes`)."""
    shapes = pyramid_shapes(shape_zyx, physical_size_zyx_um, (chunk[1], chunk[2]))
    levels = []
    for i, (shape, factor) in enumerate(shapes):
        ch = (min(chunk[0], shape[0]), min(chunk[1], shape[1]), min(chunk[2], shape[2]))
        nxt = shapes[i + 1][0] if i + 1 < len(shapes) else None
        levels.append(
            Level(
                path=str(i),
                shape=shape,
                scale_um=(
                    physical_size_zyx_um[0] * factor[0],
                    physical_size_zyx_um[1] * factor[1],
                    physical_size_zyx_um[2] * factor[2],
                ),
                factor=factor,
                chunk=ch,
                shard=version.shard(shape, ch, dtype.itemsize),
                halve_z=nxt is not None and nxt[0] != shape[0],
            )
        )
    return levels


def _multiscale(levels: list[Level], name: str, kind: ImageKind) -> dict[str, Any]:
    """The ``multiscales[0]`` object (#multiscale-md), without the 0.4 ``version``."""
    from bidspack import __version__

    s0 = levels[0].scale_um
    datasets = []
    for lv in levels:
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(lv.scale_um)}]
        if kind == "intensity" and lv.factor != (1, 1, 1):
            shift = [(f - 1) / 2 * s for f, s in zip(lv.factor, s0, strict=True)]
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
) -> OmeZarrResult:
    """Write *source* (``(z, y, x)``) as an OME-Zarr multiscale image at *path*, streaming.

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
        workers: threads of the local Dask scheduler (default: CPU count). Memory grows
            with it: a step holds about :data:`STEP_TASKS` x workers x :data:`TASK_BYTES`
            of level-0 pixels, and at least one chunk-deep slab of planes.
        scheduler: ``None`` (local threads), a Dask scheduler name, the address of a
            ``dask.distributed`` scheduler (``"tcp://..."``) or a ``distributed.Client``.
        verify: read level 0 back from disk (every chunk, decoded in parallel with the
            Blosc of numcodecs, shard indexes CRC-checked) and compare its pixel hash
            to the source's. :func:`pixel_hash_of_zarr` (zarr-python) is the slower
            independent check that validation runs.

    Returns:
        :class:`OmeZarrResult`.

    Raises:
        ValueError: bad *kind*, *version*, *chunk*, *workers* or physical size.
        OutputError: *path* exists.
        SourceError: a source plane cannot be decoded.
        IntegrityError: the written level 0 does not hash like the source.

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
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise OutputError(path, "already exists", hint="OME-Zarr output must be a new folder")
    dtype = canonical_dtype(source.dtype)
    if dtype.kind not in ("ui" if kind == "label" else "uif") or dtype.itemsize > 8:
        raise ValueError(f"pixel type {dtype} is not supported for {kind} images")
    levels = plan_pyramid(
        fmt, source.shape, dtype, (sizes[0], sizes[1], sizes[2]), (ch[0], ch[1], ch[2])
    )

    runner = _Runner(scheduler, workers)
    try:
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(path, f"cannot create the folder ({exc.strerror})") from exc
        try:
            digest = _write(path, fmt, source, levels, dtype, kind, name, runner)
            if verify:
                written = _hash_level(path, fmt, levels[0], dtype, runner)
                if written != digest:
                    raise IntegrityError(
                        path, f"written level 0 hashes to {written}, the source to {digest}"
                    )
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
    )


def _write(
    root: Path,
    fmt: NgffVersion,
    source: ImageSource,
    levels: list[Level],
    dtype: np.dtype,
    kind: ImageKind,
    name: str,
    runner: _Runner,
) -> str:
    """Write the chunks, then the array and group metadata; the source's pixel hash."""
    digest, lo, hi = _write_levels(root, fmt, source, levels, dtype, kind, runner)
    for lv in levels:
        (root / lv.path).mkdir(exist_ok=True)
        for fname, content in fmt.array_files(lv, dtype).items():
            (root / lv.path / fname).write_bytes(content)
    omero = _omero(name, dtype, source.shape[0], lo, hi) if kind == "intensity" else None
    attributes = fmt.ome_attributes(_multiscale(levels, name, kind), omero)
    for fname, content in fmt.group_files(attributes).items():
        (root / fname).write_bytes(content)
    return digest


def _write_levels(
    root: Path,
    fmt: NgffVersion,
    source: ImageSource,
    levels: list[Level],
    dtype: np.dtype,
    kind: ImageKind,
    runner: _Runner,
) -> tuple[str, float, float]:
    """Stream the source through the pyramid; (pixel hash, min and max of the last level)."""
    hasher = PixelHasher("ZYX", source.shape, source.dtype)
    pending = [_Pending(lv, math.lcm(lv.chunk[0], 2 if lv.halve_z else 1), []) for lv in levels]
    depth, bands = _task_shape(pending[0].align, levels[0], dtype.itemsize)
    window = depth * max(1, -(-STEP_TASKS * runner.workers // len(bands)))
    writers = [fmt.chunk_store(root / lv.path, lv) for lv in levels]
    # one thread decodes the next planes while a step runs; more threads (each with its
    # own malloc arena) raised peak RSS by ~25 MB for no measurable speed on 2 cores
    planes = source.iter_planes(prefetch=2, workers=1)
    value_range = [math.inf, -math.inf]
    try:
        while not all(p.complete and not p.planes for p in pending):
            if not pending[0].complete:
                _read_window(planes, pending[0], window, hasher, dtype)
            owners, args = _take(pending, kind)
            _store(owners, runner.map(_process, args), pending, writers, value_range)
            for above, below in itertools.pairwise(pending):
                if above.complete and not above.planes:
                    below.complete = True
        for w in writers:
            w.close()
    finally:
        close = getattr(planes, "close", None)
        if close is not None:
            close()  # stops the source's prefetch
    return hasher.hexdigest(), value_range[0], value_range[1]


def _take(
    pending: list[_Pending], kind: ImageKind
) -> tuple[list[tuple[int, int]], list[tuple[Any, ...]]]:
    """Take every level's ready planes off its queue as tasks: the (level, first plane)
    of each task's plane range, and each task's :func:`_process` arguments, in level,
    plane range, then band order."""
    owners: list[tuple[int, int]] = []
    args: list[tuple[Any, ...]] = []
    for k, pend in enumerate(pending):
        last = k == len(pending) - 1
        tasks = _tasks(pend)
        for start, stop, bands in tasks:
            for y0, y1 in bands:
                owners.append((k, pend.z + start))
                band = [p[y0:y1] for p in pend.planes[start:stop]]
                args.append((band, pend.z + start, y0, pend.level, kind, last))
        if tasks:
            taken = tasks[-1][1]
            del pend.planes[:taken]
            pend.z += taken
    return owners, args


def _store(
    owners: list[tuple[int, int]],
    results: list[Any],
    pending: list[_Pending],
    stores: list[ChunkStore],
    value_range: list[float],
) -> None:
    """Apply a step's task results, plane range by plane range: store the chunks in
    (z, y, x) order (so shard contents do not depend on how the work was split), join
    the bands of the next level's planes and queue them, widen the value range."""
    for (k, _), group in itertools.groupby(zip(owners, results, strict=True), key=_first):
        parts = [res for _, res in group]
        for key, data in sorted(chunk for chunks, _, _ in parts for chunk in chunks):
            stores[k].put(key, data)
        if k + 1 < len(pending):
            for pieces in zip(*(lower for _, lower, _ in parts), strict=True):
                pending[k + 1].planes.append(
                    pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
                )
        for _, _, rng in parts:
            if rng is not None:
                value_range[:] = min(value_range[0], rng[0]), max(value_range[1], rng[1])


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
    row bands ``(y0, y1)`` (see :func:`_task_shape`)."""
    n = len(pend.planes)
    take = n if pend.complete else n - n % pend.align
    if take == 0:
        return []
    depth, bands = _task_shape(pend.align, pend.level, pend.planes[0].itemsize)
    return [(s, min(s + depth, take), bands) for s in range(0, take, depth)]


def _task_shape(align: int, level: Level, itemsize: int) -> tuple[int, list[tuple[int, int]]]:
    """(planes, row bands) of a task on *level*: about :data:`TASK_BYTES` of pixels.
    Planes come in multiples of *align*; a plane range is split in bands only when
    *align* planes alone exceed :data:`TASK_BYTES`, with heights a multiple of the chunk
    height and even (so 2x2 blocks stay inside a band)."""
    _, ny, nx = level.shape
    row_bytes = nx * itemsize
    depth = align * max(1, TASK_BYTES // (align * ny * row_bytes))
    height = ny
    if depth == align:
        unit = math.lcm(level.chunk[1], 2)
        height = min(ny, unit * max(1, TASK_BYTES // (depth * unit * row_bytes)))
    return depth, [(y, min(y + height, ny)) for y in range(0, ny, height)]


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
    root: Path, fmt: NgffVersion, level: Level, dtype: np.dtype, runner: _Runner
) -> str:
    """Pixel hash of *level* as written: every chunk read back from disk and decoded in
    parallel blocks (plane range x row band), hashed plane by plane in Z order."""
    nz = level.shape[0]
    depth, bands = _task_shape(level.chunk[0], level, dtype.itemsize)
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


# ---------------------------------------------------------------------------------------
# Reading and validation
# ---------------------------------------------------------------------------------------


def detect_version(path: Path) -> NgffVersion:
    """The NGFF version of the OME-Zarr image at *path* (``zarr.json`` with
    ``attributes.ome.version``, or ``.zattrs`` with ``multiscales[0].version``).

    Raises:
        SourceError: not a folder with OME-Zarr image metadata of a supported version.
    """
    path = Path(path)
    if (path / "zarr.json").is_file():
        ome = read_attributes(path, NgffV05()).get("ome")
        found = str(ome.get("version", "")) if isinstance(ome, dict) else ""
    elif (path / ".zattrs").is_file():
        ms = read_attributes(path, NgffV04()).get("multiscales")
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], dict) else {}
        found = str(first.get("version", ""))
    else:
        raise SourceError(path, "not an OME-Zarr image (no zarr.json or .zattrs)")
    if found not in NGFF_VERSIONS:
        raise SourceError(path, f"OME-NGFF version {found or 'missing'} is not supported")
    return ngff_version(found)


def read_attributes(path: Path, fmt: NgffVersion) -> dict[str, Any]:
    """The group attributes of *path* as stored (``.zattrs``, or ``zarr.json``'s
    ``attributes``): what the NGFF JSON schemas validate.

    Raises:
        SourceError: missing or unreadable metadata.
    """
    file = Path(path) / fmt.attributes_file
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(file, f"unreadable Zarr metadata ({exc})") from exc
    if not isinstance(doc, dict):
        raise SourceError(file, "Zarr metadata is not a JSON object")
    return dict(doc.get("attributes", {})) if fmt.zarr_format == 3 else doc


def _multiscales0(path: Path) -> tuple[NgffVersion, dict[str, Any]]:
    fmt = detect_version(path)
    meta = fmt.ome_metadata(read_attributes(path, fmt))
    multiscales = meta.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise SourceError(path, "no multiscales metadata")
    return fmt, multiscales[0]


def ome_zarr_scale_um(path: Path) -> tuple[float, float, float]:
    """Level-0 voxel size ``(z, y, x)`` in micrometres of an OME-Zarr image.

    From ``multiscales[0]``: the ``scale`` of ``datasets[0]`` times the multiscale-wide
    ``scale`` if any (#multiscale-md, #trafo-md), converted from each axis's unit
    (#axes-md) to micrometres.

    Raises:
        SourceError: no metadata, no ``z``/``y``/``x`` space axes, a missing or unknown
            unit, or no scale.
    """
    path = Path(path)
    _, ms = _multiscales0(path)
    try:
        axes = [a["name"] for a in ms["axes"]]
        scale = np.asarray(_scale_of(ms["datasets"][0]["coordinateTransformations"]), float)
        if ms.get("coordinateTransformations"):
            scale = scale * np.asarray(_scale_of(ms["coordinateTransformations"]), float)
        out = []
        for name in "zyx":
            axis = ms["axes"][axes.index(name)]
            unit = axis.get("unit")
            if unit not in NGFF_UNIT_TO_UM:
                raise SourceError(path, f"axis {name} has unit {unit!r}, not a known length unit")
            out.append(float(scale[axes.index(name)]) * NGFF_UNIT_TO_UM[unit])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SourceError(path, f"multiscales metadata lacks z/y/x axes or scales ({exc})") from exc
    return out[0], out[1], out[2]


def _scale_of(transforms: list[dict[str, Any]]) -> list[float]:
    for t in transforms:
        if t.get("type") == "scale":
            return list(t["scale"])
    raise KeyError("no scale transformation")


def _open_array(path: Path, level: int) -> Any:
    """The zarr-python array of *level* (``multiscales[0].datasets[level].path``)."""
    import zarr

    fmt, ms = _multiscales0(path)
    try:
        sub = ms["datasets"][level]["path"]
    except (KeyError, IndexError, TypeError) as exc:
        raise SourceError(path, f"no dataset for level {level}") from exc
    try:
        return zarr.open_array(store=str(Path(path) / sub), mode="r", zarr_format=fmt.zarr_format)
    except Exception as exc:  # zarr raises many types for broken metadata
        raise SourceError(Path(path) / sub, f"not a readable Zarr array ({exc})") from exc


def _slabs(arr: Any, max_bytes: int = 64 * 2**20) -> Iterator[np.ndarray]:
    """The array's planes in Z order, read in slabs of whole chunks (shards if they fit)."""
    z, y, x = arr.shape
    plane = max(1, y * x * arr.dtype.itemsize)
    cz = arr.chunks[0]
    sz = arr.shards[0] if getattr(arr, "shards", None) else cz
    depth = sz if sz * plane <= max_bytes else cz * max(1, max_bytes // (cz * plane))
    for z0 in range(0, z, depth):
        yield np.asarray(arr[z0 : z0 + depth])


def pixel_hash_of_zarr(path: Path, level: int = 0) -> str:
    """Pixel hash (``ZYX``) of one level of a 3D OME-Zarr image, read with zarr-python in
    slabs (bounded memory).

    Raises:
        SourceError: no such level, unreadable metadata or chunks, not 3D.
    """
    arr = _open_array(path, level)
    if arr.ndim != 3:
        raise SourceError(path, f"level {level} has {arr.ndim} dimensions, expected 3 (z, y, x)")
    hasher = PixelHasher("ZYX", tuple(arr.shape), arr.dtype)
    try:
        for slab in _slabs(arr):
            hasher.update(slab)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(path, f"level {level} is unreadable ({exc})") from exc
    return hasher.hexdigest()


def _schema_dirs() -> list[Path]:
    """Where the official NGFF JSON schemas (``<dir>/0.4/*.schema``, ``0.5``) are looked
    for: ``$BIDSPACK_NGFF_SCHEMAS``, then ``bidspack/specs/ngff`` in the package, then
    ``shared/ngff-schemas`` beside the source checkout."""
    dirs = []
    if os.environ.get("BIDSPACK_NGFF_SCHEMAS"):
        dirs.append(Path(os.environ["BIDSPACK_NGFF_SCHEMAS"]))
    here = Path(__file__).resolve()
    dirs.append(here.parents[1] / "specs" / "ngff")
    if len(here.parents) > 4:
        dirs.append(here.parents[4] / "shared" / "ngff-schemas")
    return dirs


@lru_cache(maxsize=4)
def ngff_schema_validators(version: str) -> dict[str, Any]:
    """``{"image.schema": validator, "strict_image.schema": validator}`` for *version*,
    from the official OME-NGFF JSON Schemas (draft 2020-12), with a
    ``referencing.Registry`` of every schema of that version (they refer to each other
    by ``$id``).

    Raises:
        ToolError: the schemas are not found (see :func:`_schema_dirs`).
    """
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    folder = next((d / version for d in _schema_dirs() if (d / version).is_dir()), None)
    if folder is None:
        raise ToolError(
            None,
            f"the OME-NGFF {version} JSON schemas were not found",
            hint="set BIDSPACK_NGFF_SCHEMAS to a folder with 0.4/ and 0.5/ schemas",
        )
    resources = []
    schemas = {}
    for file in sorted(folder.glob("*.schema")):
        contents = json.loads(file.read_text(encoding="utf-8"))
        schemas[file.name] = contents
        resource = Resource.from_contents(contents, default_specification=DRAFT202012)
        resources.append((contents["$id"], resource))
    registry: Registry = Registry().with_resources(resources)
    return {
        name: Draft202012Validator(schemas[name], registry=registry)
        for name in ("image.schema", "strict_image.schema")
    }


def validate_ome_zarr(path: Path, *, full: bool = False) -> list[str]:
    """Problems of the OME-Zarr image at *path* (empty list: none found).

    Checks: the root attributes against the official OME-NGFF JSON schemas of its version
    (``image.schema`` and ``strict_image.schema``); the group with ome-zarr-models
    (metadata model, arrays present with matching dimensionality, 0.5 dimension names;
    its validation warnings count as problems); every level opens with zarr-python as a
    3D array of one dtype, each level's size on each axis is its predecessor's or half of
    it (rounded either way) with a matching scale (twice the predecessor's, or the exact
    size ratio), and its first and last planes decode (every chunk with ``full=True``).

    Raises:
        ToolError: the NGFF JSON schemas are not found.
    """
    path = Path(path)
    try:
        fmt = detect_version(path)
        attributes = read_attributes(path, fmt)
    except SourceError as exc:
        return [exc.message]
    problems = []
    for schema, validator in ngff_schema_validators(fmt.version).items():
        for err in sorted(validator.iter_errors(attributes), key=lambda e: e.json_path):
            problems.append(f"{schema}: {err.json_path}: {err.message}")
    problems += _ome_zarr_models_problems(path, fmt)
    try:
        problems += _array_problems(path, full=full)
    except SourceError as exc:
        problems.append(exc.message)
    return problems


def _ome_zarr_models_problems(path: Path, fmt: NgffVersion) -> list[str]:
    import zarr
    from ome_zarr_models.v04.image import Image as ImageV04
    from ome_zarr_models.v05.image import Image as ImageV05

    model = ImageV05 if fmt.version == "0.5" else ImageV04
    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            group = zarr.open_group(str(path), mode="r", zarr_format=fmt.zarr_format)
            model.from_zarr(group)
        except Exception as exc:  # pydantic / zarr errors
            problems.append(f"ome-zarr-models: {type(exc).__name__}: {exc}")
    for w in caught:
        if w.category.__module__.startswith("ome_zarr_models"):
            problems.append(f"ome-zarr-models warning: {w.message}")
    return problems


def _array_problems(path: Path, *, full: bool) -> list[str]:
    _, ms = _multiscales0(path)
    problems: list[str] = []
    prev: Any = None
    prev_scale: list[float] | None = None
    for i, ds in enumerate(ms.get("datasets", [])):
        where = f"level {i} ({ds.get('path')})"
        arr = _open_array(path, i)
        try:
            scale = _scale_of(ds.get("coordinateTransformations", []))
        except KeyError:
            problems.append(f"{where}: no scale transformation")
            scale = None
        if arr.ndim != 3:
            problems.append(f"{where}: {arr.ndim} dimensions, expected 3 (z, y, x)")
            continue
        if prev is not None:
            if arr.dtype != prev.dtype:
                problems.append(f"{where}: dtype {arr.dtype} differs from level 0's")
            for axis, (n, m) in enumerate(zip(prev.shape, arr.shape, strict=True)):
                if m not in (n, n // 2, -(-n // 2)):
                    problems.append(f"{where}: size {m} on axis {axis} is not {n} or half of it")
                elif scale is not None and prev_scale is not None and n > 1:
                    # 2x (block downsampling) or the exact size ratio (resampling writers)
                    wants = {prev_scale[axis] * f for f in ((1.0,) if m == n else (2.0, n / m))}
                    if not any(math.isclose(scale[axis], w, rel_tol=1e-6) for w in wants):
                        problems.append(
                            f"{where}: scale {scale[axis]} on axis {axis} does not match its "
                            f"size {m} (expected {' or '.join(f'{w:g}' for w in sorted(wants))})"
                        )
        try:
            if full:
                for _ in _slabs(arr):
                    pass
            else:
                np.asarray(arr[:1])
                np.asarray(arr[-1:])
        except Exception as exc:
            problems.append(f"{where}: unreadable chunks ({type(exc).__name__}: {exc})")
        prev, prev_scale = arr, scale
    return problems
