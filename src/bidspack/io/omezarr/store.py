"""Chunk files (Zarr v2, one file per chunk) and shard files (Zarr v3
``sharding_indexed`` codec v1.0, https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/),
written as a stream and read back chunk by chunk."""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import google_crc32c  # the CRC32C implementation zarr-python uses
import numpy as np

from bidspack.errors import IntegrityError

if TYPE_CHECKING:
    from bidspack.io.omezarr.versions import Level

#: Largest uint64 (the sharding index's "empty chunk" marker).
_EMPTY = 2**64 - 1


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
