"""OME-NGFF versions as classes: what each fixes (Zarr format, where metadata lives,
chunk layout, codecs), after ome-zarr-py's ``ome_zarr.format.FormatV04`` / ``FormatV05``.

Sources: OME-NGFF 0.4 (https://ngff.openmicroscopy.org/0.4/) and 0.5
(https://ngff.openmicroscopy.org/0.5/); Zarr v2 and v3 core.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from bidspack.io.omezarr.store import ChunkFiles, ChunkStore, ShardFiles

DEFAULT_VERSION = "0.5"
#: Blosc settings of every chunk: (compressor, level, shuffle). zstd level 1 with byte
#: shuffle encodes about 400 MB/s per core and compresses 2.4x the synthetic 16-bit
#: light-sheet-like planes of benchmarks/bench_omezarr.py (level 5, ome-zarr's default,
#: is 5x slower for 1% smaller chunks; lz4 is 2.5x faster but 15% larger).
BLOSC = ("zstd", 1, "shuffle")


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
    def ome_attributes(
        self,
        multiscale: dict[str, Any],
        omero: dict | None,
        image_label: dict[str, Any] | None = None,
    ) -> dict:
        """The group attributes of an image (what the NGFF ``image.schema`` validates),
        or of a label image with *image_label* (``label.schema``, #label-md)."""

    @abstractmethod
    def labels_attributes(self, names: list[str]) -> dict[str, Any]:
        """The attributes of an image's ``labels`` group listing its label images
        (#labels-md)."""

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

    def ome_attributes(
        self,
        multiscale: dict[str, Any],
        omero: dict | None,
        image_label: dict[str, Any] | None = None,
    ) -> dict:
        attrs: dict[str, Any] = {"multiscales": [{**multiscale, "version": self.version}]}
        if omero is not None:
            attrs["omero"] = omero
        if image_label is not None:
            attrs["image-label"] = {**image_label, "version": self.version}
        return attrs

    def labels_attributes(self, names: list[str]) -> dict[str, Any]:
        return {"labels": list(names)}

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

    def ome_attributes(
        self,
        multiscale: dict[str, Any],
        omero: dict | None,
        image_label: dict[str, Any] | None = None,
    ) -> dict:
        ome: dict[str, Any] = {"version": self.version, "multiscales": [multiscale]}
        if omero is not None:
            ome["omero"] = omero
        if image_label is not None:
            ome["image-label"] = image_label
        return {"ome": ome}

    def labels_attributes(self, names: list[str]) -> dict[str, Any]:
        return {"ome": {"labels": list(names), "version": self.version}}

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
