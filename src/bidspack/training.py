"""A small, framework-free loader of training patches (``bidspack.training``).

:class:`PatchSet` reads the patches of a derived patches dataset (``bidspack derive
patches``) by position or in seeded, shuffled batches, without importing PyTorch or
TensorFlow; ``docs/derived-datasets.md`` ("Loading patches for training") shows a
PyTorch ``Dataset`` and a ``tf.data.Dataset.from_generator`` built on it.

All it needs is a table with the columns ``patch_id``, ``array`` (the path of a Zarr
array ``(n, size, size)`` uint8, relative to a root folder) and ``row`` (the patch's
row in it): the ``index.parquet`` of a patches dataset, or any later table (a
selection) that refers to such arrays (:meth:`PatchSet.from_table`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bidspack.errors import PlanError, SourceError

#: Columns a patch table must have.
REQUIRED = ("patch_id", "array", "row")


class PatchSet:
    """The patches of a derived patches dataset, for training.

    Args:
        path: the dataset folder (its ``index.parquet`` is read), or a Parquet file of a
            patch table (array paths relative to the file's folder).
        kept_only: only rows whose ``kept`` is true (the exemplars; default), when the
            table has a ``kept`` column.
        query: a :meth:`pandas.DataFrame.query` expression selecting rows further, e.g.
            ``"plane == 'xy' and slice_index < 100"``.

    Attributes:
        index: the selected rows (a DataFrame, positions ``0 .. len - 1``, index order).
        root: folder the ``array`` paths are relative to.
        size: the patch side.

    Raises:
        PlanError: no index, a table without ``patch_id``/``array``/``row``, a bad
            query, repeated patch ids.
        SourceError: an array is missing, not ``(n, size, size)`` uint8, sizes differ,
            or a row is outside its array.
    """

    def __init__(self, path: Path | str, *, kept_only: bool = True, query: str | None = None):
        path = Path(path)
        table = path if path.is_file() else path / "index.parquet"
        if not table.is_file():
            raise PlanError(path, "no index.parquet: not a derived patches dataset")
        try:
            frame = pd.read_parquet(table)
        except Exception as exc:  # pyarrow raises several types
            raise PlanError(table, f"cannot read the patch table ({exc})") from exc
        self._setup(frame, table.parent, kept_only=kept_only, query=query, where=table)

    @classmethod
    def from_table(
        cls,
        table: pd.DataFrame,
        root: Path | str,
        *,
        kept_only: bool = True,
        query: str | None = None,
    ) -> PatchSet:
        """A patch set over any table with ``patch_id``, ``array`` (relative to *root*)
        and ``row`` columns (e.g. a selection of another dataset's patches).

        Raises:
            PlanError, SourceError: as the constructor.
        """
        self = cls.__new__(cls)
        self._setup(table, Path(root), kept_only=kept_only, query=query, where=Path(root))
        return self

    def _setup(
        self,
        frame: pd.DataFrame,
        root: Path,
        *,
        kept_only: bool,
        query: str | None,
        where: Path,
    ) -> None:
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise PlanError(where, f"the patch table has no {missing[0]!r} column")
        if kept_only and "kept" in frame.columns:
            frame = frame[frame["kept"].astype(bool)]
        if query:
            try:
                frame = frame.query(query)
            except Exception as exc:  # pandas raises many types for a bad expression
                raise PlanError(where, f"bad query {query!r} ({exc})") from exc
        self.index: pd.DataFrame = frame.reset_index(drop=True)
        if self.index["patch_id"].duplicated().any():
            dup = self.index["patch_id"][self.index["patch_id"].duplicated()].iloc[0]
            raise PlanError(where, f"patch id {dup!r} is listed twice")
        self.root = root
        self._arrays: dict[str, Any] = {}
        self._rel = self.index["array"].astype(str).to_numpy()
        self._row = self.index["row"].astype(np.int64).to_numpy()
        self._ids: list[str] = self.index["patch_id"].astype(str).tolist()
        self.size = 0
        for rel in sorted(set(self._rel.tolist())):
            arr = self._array(rel)
            rows = self._row[self._rel == rel]
            if rows.size and (rows.min() < 0 or rows.max() >= arr.shape[0]):
                raise SourceError(root / rel, f"row {int(rows.max())} is outside the array")
            if self.size and arr.shape[1] != self.size:
                raise SourceError(
                    root / rel, f"patches are {arr.shape[1]} wide, others {self.size}"
                )
            self.size = int(arr.shape[1])

    def _array(self, rel: str) -> Any:
        arr = self._arrays.get(rel)
        if arr is None:
            from bidspack.ops.derive.export import open_array

            arr = self._arrays[rel] = open_array(self.root / rel)
        return arr

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (PyTorch ``DataLoader`` workers): open arrays are not carried."""
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def __len__(self) -> int:
        return len(self.index)

    @property
    def ids(self) -> list[str]:
        """Patch ids, by position (one list, made once: do not modify it)."""
        return self._ids

    def __getitem__(self, i: int) -> np.ndarray:
        """Patch *i* (``-len <= i < len``) as ``(size, size)`` uint8 (rows, columns of
        its plane), read from its array: one chunk (one patch) is decoded.

        Raises:
            IndexError: *i* out of range.
        """
        n = len(self)
        if not isinstance(i, int | np.integer):
            raise TypeError(f"patch positions are integers, not {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"patch {i} of {n}")
        i = int(i) % n
        return np.asarray(self._array(str(self._rel[i]))[int(self._row[i])])

    def read(self, positions: np.ndarray | list[int]) -> np.ndarray:
        """The patches at *positions* as ``(len(positions), size, size)`` uint8, in that
        order; rows of one array are read together (whole shards where they share one).

        Raises:
            IndexError: a position out of range.
        """
        pos = np.asarray(positions, dtype=np.int64)
        n = len(self)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"positions out of range for {n} patches")
        pos = pos % n if n else pos
        out = np.empty((pos.size, self.size, self.size), np.uint8)
        rels = self._rel[pos]
        for rel in sorted(set(rels.tolist())):
            where = np.nonzero(rels == rel)[0]
            rows = self._row[pos[where]]
            order = np.argsort(rows, kind="stable")
            arr = self._array(rel)
            lo, hi = int(rows[order[0]]), int(rows[order[-1]])
            if hi - lo + 1 <= 4 * len(rows):  # dense enough: one contiguous read
                block = np.asarray(arr[lo : hi + 1])
                out[where] = block[rows - lo]
            else:
                out[where] = np.asarray(arr.get_orthogonal_selection((rows, slice(None))))
        return out

    def order(self, *, seed: int, shuffle: bool = True) -> np.ndarray:
        """Positions in batch order: ``numpy.random.default_rng(seed).permutation(len)``
        when *shuffle*, else ``0 .. len - 1``."""
        if shuffle:
            return np.random.default_rng(seed).permutation(len(self))
        return np.arange(len(self))

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> Iterator[tuple[np.ndarray, list[str]]]:
        """One epoch of batches ``(patches (b, size, size) uint8, their patch ids)``.

        With *shuffle* the order is ``numpy.random.default_rng(seed).permutation(len)``:
        the same seed gives the same batches (use ``seed + epoch`` for a new order each
        epoch); nothing is recorded. Every patch of the set is in exactly one batch;
        the last batch is smaller unless *drop_last* drops it.

        Raises:
            ValueError: *batch_size* < 1.
        """
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size}: at least 1")
        order = self.order(seed=seed, shuffle=shuffle)
        ids = np.asarray(self._ids, dtype=object)
        for start in range(0, len(order), batch_size):
            pos = order[start : start + batch_size]
            if drop_last and len(pos) < batch_size:
                return
            yield self.read(pos), ids[pos].tolist()


__all__ = ["PatchSet"]
