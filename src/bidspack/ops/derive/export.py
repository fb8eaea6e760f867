"""``bidspack derive export``: the patches of a derived patches dataset as TIFF files
or one HDF5 file, outside any dataset, for training code that expects them.

Also the shared readers of a patches dataset (:func:`open_patches`: its description,
its index as a pandas DataFrame, its Zarr arrays), used by
:mod:`bidspack.ops.derive.subvolume` and :mod:`bidspack.training`.

Formats (``docs/derived-datasets.md``, "Exports"):

- ``tiff``: a folder DEST with one uint8 TIFF per patch, ``(size, size)`` as stored in
  the array (zero padding of edge ``pad`` included; ``height``/``width`` give the valid
  part), its description a JSON object (``patch_id``, ``source``, ``plane``,
  ``slice_index``, voxel bounds). Names: ``<patch_id>.tiff`` (a patch of
  ``derivatives/<pipeline>`` lies in ``DEST/<pipeline>/``), or with ``loc_names`` the
  ``-LOC-`` convention of CEM's ``patchify3d.py`` (volume-em/cem-dataset):
  ``<image stem>-LOC-<axis>_<slice>_<r0>-<r1>_<c0>-<c1>.tiff`` (:func:`loc_name`).
  ``DEST/patches.tsv`` lists every file with its patch id and source voxels.
- ``hdf5``: a file DEST (h5py): dataset ``patches`` ``(n, size, size)`` uint8, chunks
  of one patch ``(1, size, size)``, gzip level 4; ``patch_id`` and ``source``
  (``(n,)`` UTF-8 strings), ``bounds`` (``(n, 6)`` int64, columns ``z0 z1 y0 y1 x0
  x1``, half-open source voxels), and every index column as ``index/<column>``; file
  attributes name the derived dataset, its source dataset and version.

DEST must not exist; it is written beside itself under a hidden name and renamed into
place when complete (:func:`bidspack.txn.beside.staged_beside`), so a failed or killed
run leaves no DEST (its leftovers are removed by the next run).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from bidspack import __version__
from bidspack.errors import OutputError, PlanError, SourceError
from bidspack.records import Record
from bidspack.safety import is_within
from bidspack.txn.beside import remove_stale, staged_beside

OPERATION = "derive-patches"
INDEX_PARQUET = "index.parquet"
FORMATS = ("tiff", "hdf5")
#: CEM's axis numbers (``cross_section.py``: 0 xy, 1 xz, 2 yz).
LOC_AXIS = {"xy": 0, "xz": 1, "yz": 2}
#: Source axes (of ``z, y, x``) of a patch's rows and columns, by plane.
ROW_COL = {"xy": ("y", "x"), "xz": ("z", "x"), "yz": ("z", "y")}
BOUNDS = ("z0", "z1", "y0", "y1", "x0", "x1")
#: Patches read from an array at once (one shard of ``derive patches``).
READ_BLOCK = 256


def open_array(path: Path) -> Any:
    """A patch array (Zarr v3, ``(n, size, size)`` uint8) opened read-only.

    Raises:
        SourceError: missing or not a 3D uint8 Zarr array.
    """
    import zarr

    try:
        arr = zarr.open_array(zarr.storage.LocalStore(str(path), read_only=True), mode="r")
    except Exception as exc:
        raise SourceError(path, f"cannot open the patch array ({exc})") from exc
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.dtype != np.uint8:
        raise SourceError(path, f"not a patch array (n, size, size) uint8: {arr.shape} {arr.dtype}")
    return arr


@dataclass
class PatchesDataset:
    """A derived patches dataset (``bidspack derive patches`` output) opened read-only.

    Attributes:
        path: the dataset folder.
        description: ``dataset_description.json`` as a dict.
        index: ``index.parquet`` as a DataFrame (one row per patch, columns of
            ``specs/derived-index.schema.json``), in file order.
    """

    path: Path
    description: dict[str, Any]
    index: pd.DataFrame
    _arrays: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def source_url(self) -> str | None:
        """``SourceDatasets[0].URL`` (a ``file://`` URL for a local source)."""
        src = self.description.get("SourceDatasets") or [{}]
        url = src[0].get("URL") if isinstance(src[0], dict) else None
        return str(url) if url else None

    @property
    def source_version(self) -> str | None:
        """``SourceDatasets[0].Version`` (release tag or commit), if recorded."""
        src = self.description.get("SourceDatasets") or [{}]
        ver = src[0].get("Version") if isinstance(src[0], dict) else None
        return str(ver) if ver else None

    def source_path(self) -> Path:
        """The local source dataset folder, from :attr:`source_url`.

        Raises:
            PlanError: no ``file://`` source URL is recorded.
        """
        url = self.source_url
        if not url or not url.startswith("file://"):
            raise PlanError(
                self.path,
                f"the source dataset is not a local folder (SourceDatasets URL {url!r})",
                hint="give the source dataset's folder with --source",
            )
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(url).path))

    def array(self, rel: str) -> Any:
        """The patch array *rel* (dataset-relative), opened once."""
        if rel not in self._arrays:
            self._arrays[rel] = open_array(self.path / rel)
        return self._arrays[rel]

    def rows(self, patch_ids: list[str]) -> pd.DataFrame:
        """The index rows of *patch_ids*, in that order.

        Raises:
            PlanError: an id is not in the index (the first unknown one is named).
        """
        pos = pd.Index(self.index["patch_id"])
        missing = [p for p in patch_ids if p not in pos]
        if missing:
            raise PlanError(
                self.path,
                f"patch {missing[0]!r} is not in {INDEX_PARQUET}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            )
        return self.index.iloc[pos.get_indexer(patch_ids)].reset_index(drop=True)


def open_patches(path: Path) -> PatchesDataset:
    """Open the derived patches dataset *path* (description and index; arrays lazily).

    Raises:
        PlanError: *path* is not a folder made by ``bidspack derive patches`` (no
            ``dataset_description.json`` with operation ``derive-patches``, or no
            ``index.parquet``).
    """
    path = Path(path)
    desc_path = path / "dataset_description.json"
    try:
        desc = json.loads(desc_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        desc = None
    op = desc.get("bidspack", {}).get("operation") if isinstance(desc, dict) else None
    if op != OPERATION or not (path / INDEX_PARQUET).is_file():
        raise PlanError(
            path,
            "not a derived patches dataset (no dataset_description.json of "
            f"'bidspack derive patches' with {INDEX_PARQUET})",
            hint="give the OUT folder of 'bidspack derive patches'",
        )
    import pyarrow.parquet as pq

    index = pq.read_table(path / INDEX_PARQUET).to_pandas()
    return PatchesDataset(path, desc, index)


def read_patches(ds: PatchesDataset, rows: pd.DataFrame) -> Iterator[tuple[int, np.ndarray]]:
    """``(position in rows, (size, size) uint8 patch)`` for every row of *rows*, reading
    each array in blocks of :data:`READ_BLOCK` consecutive rows (one shard) in array
    order; positions come in that order, not in the order of *rows*."""
    for rel, group in rows.groupby("array", sort=True):
        arr = ds.array(str(rel))
        order = group.sort_values("row")
        todo = list(zip(order.index.tolist(), order["row"].astype(int).tolist(), strict=True))
        i = 0
        while i < len(todo):
            first = todo[i][1]
            block_end = min(int(arr.shape[0]), (first // READ_BLOCK + 1) * READ_BLOCK)
            j = i
            while j < len(todo) and todo[j][1] < block_end:
                j += 1
            last = todo[j - 1][1]
            if last >= arr.shape[0]:
                raise SourceError(ds.path / str(rel), f"row {last} is outside the array")
            block = np.asarray(arr[first : last + 1])
            for pos, r in todo[i:j]:
                yield pos, block[r - first]
            i = j


def loc_name(row: dict[str, Any], width: int) -> str:
    """CEM's ``-LOC-`` name of a patch (``patchify3d.py``):
    ``<image stem>-LOC-<axis>_<slice>_<r0>-<r1>_<c0>-<c1>`` with *axis* 0 (xy), 1 (xz)
    or 2 (yz), *slice* the index along the plane's normal zero-padded to *width*
    digits, and ``r0-r1``, ``c0-c1`` the half-open source voxel ranges of the patch's
    rows and columns (xy: y, x; xz: z, x; yz: z, y). A patch of
    ``derivatives/<pipeline>`` keeps its ``<pipeline>/`` prefix (a subfolder)."""
    plane = str(row["plane"])
    stem = str(row["patch_id"]).rsplit("_plane-", 1)[0]
    r_ax, c_ax = ROW_COL[plane]
    r = f"{int(row[r_ax + '0'])}-{int(row[r_ax + '1'])}"
    c = f"{int(row[c_ax + '0'])}-{int(row[c_ax + '1'])}"
    return f"{stem}-LOC-{LOC_AXIS[plane]}_{str(int(row['slice_index'])).zfill(width)}_{r}_{c}"


def _loc_widths(index: pd.DataFrame) -> dict[tuple[str, str], int]:
    """Digits of the largest slice index per (source, plane) over the whole index
    (every slice is used, so the largest is ``n - 1`` with ``--slice-step 1``)."""
    out: dict[tuple[str, str], int] = {}
    for (src, plane), g in index.groupby(["source", "plane"], sort=False):
        out[(str(src), str(plane))] = len(str(int(g["slice_index"].max())))
    return out


def _check_dest(dest: Path, roots: list[Path]) -> None:
    if dest.exists() or dest.is_symlink():
        raise OutputError(dest, "already exists; an export never replaces anything")
    for root in roots:
        if is_within(dest.absolute(), root.absolute()):
            raise OutputError(
                dest,
                f"is inside the dataset {root}; exports are written outside datasets",
            )


def _selection(ds: PatchesDataset, kept_only: bool) -> pd.DataFrame:
    rows = ds.index[ds.index["kept"]] if kept_only else ds.index
    rows = rows.reset_index(drop=True)
    if rows.empty:
        raise PlanError(ds.path, "no patch to export" + (" (none is kept)" if kept_only else ""))
    return rows


def export_patches(
    patches_out: Path,
    dest: Path,
    *,
    fmt: str,
    kept_only: bool = False,
    loc_names: bool = False,
) -> Iterator[Record]:
    """Export the patches of the derived patches dataset *patches_out* to *dest* (see
    the module docstring for the formats); yields one ``export`` record.

    Args:
        fmt: ``"tiff"`` (a folder of TIFF files) or ``"hdf5"`` (one file).
        kept_only: only patches with ``kept`` true (exemplars), else all, in index
            order.
        loc_names: TIFF names in CEM's ``-LOC-`` convention (:func:`loc_name`).

    Raises:
        PlanError: unknown format, ``loc_names`` with ``hdf5``, *patches_out* not a
            patches dataset, nothing to export.
        OutputError: *dest* exists, or is inside the patches dataset or its source.
        SourceError: a patch array cannot be read.
    """
    patches_out, dest = Path(patches_out), Path(dest)
    if fmt not in FORMATS:
        raise PlanError(dest, f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    if loc_names and fmt != "tiff":
        raise PlanError(dest, "--loc-names names TIFF files; it does not apply to hdf5")
    ds = open_patches(patches_out)
    roots = [patches_out]
    with contextlib.suppress(PlanError):
        roots.append(ds.source_path())
    _check_dest(dest, roots)
    rows = _selection(ds, kept_only)
    remove_stale(dest)
    if fmt == "tiff":
        with staged_beside(dest, create="folder") as tmp:
            files = _write_tiffs(ds, rows, tmp, loc_names=loc_names)
        what = f"{len(rows)} TIFF files ({'-LOC- names' if loc_names else 'patch ids'})"
        details: dict[str, Any] = {"files": files}
    else:
        with staged_beside(dest, create=None) as tmp:
            _write_hdf5(ds, rows, tmp, kept_only=kept_only)
        what = f"HDF5 file with {len(rows)} patches"
        details = {}
    yield Record(
        "export",
        str(dest),
        "ok",
        f"{what} from {patches_out}" + (" (kept patches only)" if kept_only else ""),
        {"format": fmt, "patches": len(rows), "kept_only": kept_only, **details},
    )


def _tiff_description(row: dict[str, Any]) -> str:
    keys = {"patch_id", "source", "source_pixel_hash", "plane", "slice_index", *BOUNDS}
    keys |= {"height", "width", "intensity", "intensity_low", "intensity_high", "kept"}
    out = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items() if k in keys}
    return json.dumps({"bidspack": out}, sort_keys=True)


def _write_tiffs(ds: PatchesDataset, rows: pd.DataFrame, folder: Path, *, loc_names: bool) -> int:
    import tifffile

    from bidspack.bids.tables import tsv_text

    records = rows.to_dict("records")
    widths = _loc_widths(ds.index) if loc_names else {}
    names: list[str] = []
    seen: set[str] = set()
    for row in records:
        if loc_names:
            name = loc_name(row, widths[(str(row["source"]), str(row["plane"]))]) + ".tiff"
        else:
            name = f"{row['patch_id']}.tiff"
        parts = PurePosixPath(name).parts
        if name in seen or any(p in ("", ".", "..") for p in parts) or name.startswith("/"):
            raise OutputError(folder, f"cannot name a patch file {name!r} (unsafe or repeated)")
        seen.add(name)
        names.append(name)
    for pos, patch in read_patches(ds, rows):
        target = folder / names[pos]
        target.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(
            target,
            patch,
            photometric="minisblack",
            description=_tiff_description(records[pos]),
            metadata=None,
        )
    cols = ["file", "patch_id", "source", "plane", "slice_index", *BOUNDS, "height", "width"]
    cols.append("kept")
    table = [
        {
            "file": names[i],
            **{c: r[c] for c in cols[1:]},
            "kept": "true" if r["kept"] else "false",
        }
        for i, r in enumerate(records)
    ]
    (folder / "patches.tsv").write_text(tsv_text(cols, table), encoding="utf-8")
    return len(names)


def _write_hdf5(ds: PatchesDataset, rows: pd.DataFrame, path: Path, *, kept_only: bool) -> None:
    import h5py

    n = len(rows)
    first = ds.array(str(rows["array"].iloc[0]))
    size = int(first.shape[1])
    for rel in rows["array"].unique():
        if int(ds.array(str(rel)).shape[1]) != size:
            raise SourceError(ds.path / str(rel), f"patches are not {size} x {size}")
    text = h5py.string_dtype("utf-8")
    with h5py.File(path, "w", track_order=True) as f:
        f.attrs["bidspack_version"] = __version__
        f.attrs["operation"] = "derive-export"
        f.attrs["derived_dataset"] = ds.path.absolute().as_uri()
        f.attrs["source_dataset"] = ds.source_url or ""
        f.attrs["source_version"] = ds.source_version or ""
        f.attrs["kept_only"] = kept_only
        f.attrs["patch_size"] = size
        f.attrs["axes"] = "patch,row,column"
        data = f.create_dataset(
            "patches",
            shape=(n, size, size),
            dtype="uint8",
            chunks=(1, size, size),
            compression="gzip",
            compression_opts=4,
            track_times=False,
        )
        data.attrs["axes"] = "patch,row,column"
        for pos, patch in read_patches(ds, rows):
            data[pos] = patch
        f.create_dataset(
            "patch_id",
            data=rows["patch_id"].astype(str).to_numpy(dtype=object),
            dtype=text,
            track_times=False,
        )
        f.create_dataset(
            "source",
            data=rows["source"].astype(str).to_numpy(dtype=object),
            dtype=text,
            track_times=False,
        )
        bounds = f.create_dataset(
            "bounds", data=rows[list(BOUNDS)].to_numpy(dtype=np.int64), track_times=False
        )
        bounds.attrs["columns"] = list(BOUNDS)
        bounds.attrs["meaning"] = "half-open source voxels [z0:z1, y0:y1, x0:x1]"
        group = f.create_group("index", track_order=True)
        for col in rows.columns:
            values = rows[col]
            if values.dtype == object or str(values.dtype).startswith(("string", "str")):
                group.create_dataset(
                    col,
                    data=values.astype(str).to_numpy(dtype=object),
                    dtype=text,
                    track_times=False,
                )
            else:
                group.create_dataset(col, data=values.to_numpy(), track_times=False)


__all__ = [
    "FORMATS",
    "LOC_AXIS",
    "PatchesDataset",
    "export_patches",
    "loc_name",
    "open_array",
    "open_patches",
    "read_patches",
]
