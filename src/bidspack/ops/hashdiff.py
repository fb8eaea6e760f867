"""``bidspack hashdiff A B``: compare two image folders, trees or stacks by pixel hash.

Pairing (padding-insensitive):

- two slice folders: slices are paired by Z index (the last number in the file name,
  :func:`bidspack.io.sources.slice_index`), so ``Z0990.tif`` pairs with ``Z00990.tif``;
- two trees: sub-folders are paired by their relative path, then slices as above;
- two multi-page stack files: pages are paired by page number.

Per pair, the byte hash (xxh3-128 of the file bytes, or of the page's stored segments
for multi-page stacks) and the pixel hash (:mod:`bidspack.io.pixelhash`, axes ``YX``)
give the class: ``identical_bytes``, ``identical_pixels`` (different encoding or
metadata), ``different_pixels``, ``only_in_a``, ``only_in_b``, ``unreadable``,
``skipped``. Differing pixels are described by the count and fraction of differing
pixels, the maximum absolute difference and, for label images (integer planes with at
most :data:`MAX_LABELS` distinct values), the labels present in one side only and the
labelled (non-zero) pixels lost or gained, summed up in a verdict that gives absolute
counts beside percentages ("B lost 8,019 of 8,021 labelled pixels (99.98%); 2 remain
labelled"); a percentage reads 0% or 100% only when exact (:func:`percent`).

Hostile input: entries are classified by ``lstat`` (:func:`bidspack.safety.entry_kind`)
before anything is opened. Symbolic links (to files or folders), FIFOs, sockets and
devices inside A or B are never opened or followed: each becomes a ``skipped`` pair
naming what it is (a FIFO cannot hang the comparison). Files are opened with
``O_NOFOLLOW | O_NONBLOCK`` and checked to be regular again after opening, and a
file's first bytes are checked for the TIFF signature before it is hashed, so a
non-TIFF (even one of 200 GB named ``.tif``) is reported ``unreadable`` at once. Other
files that are not TIFFs by suffix are not compared (A and B themselves, as given on
the command line, may be symbolic links: those are followed).

Work is parallel over pairs (threads; decoding and hashing release the GIL) with a
bounded number of pairs in flight, so memory does not grow with the number of files.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

import numpy as np
import tifffile
import xxhash

from bidspack.errors import SourceError
from bidspack.io.pixelhash import pixel_hash_array
from bidspack.io.sources import is_tiff, slice_index
from bidspack.io.thumbnails import diffmap_png, thumbnail_png
from bidspack.safety import EntryKind, entry_kind

PairStatus = Literal[
    "identical_bytes",
    "identical_pixels",
    "different_pixels",
    "only_in_a",
    "only_in_b",
    "unreadable",
    "skipped",
]
#: Every pair class, in report order (derived from :data:`PairStatus`).
STATUSES: tuple[PairStatus, ...] = get_args(PairStatus)
MAX_LABELS = 4096
#: Pairs whose previews are kept for the HTML report (the rest are listed only).
MAX_PREVIEWS = 400
#: The first four bytes of a TIFF (little/big endian) or BigTIFF file.
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: How each kind of non-regular entry is named in verdicts.
KIND_TEXT: dict[str, str] = {
    "symlink": "a symbolic link",
    "fifo": "a FIFO (named pipe)",
    "socket": "a socket",
    "device": "a device file",
    "dir": "a folder",
    "other": "not a regular file",
}


def describe_entry(path: Path, kind: str) -> str:
    """What a non-regular entry is, in words (a symlink with its target, read without
    following it)."""
    text = KIND_TEXT.get(kind, kind)
    if kind == "symlink":
        with contextlib.suppress(OSError):
            text += f" to {os.readlink(path)}"
    return text


def open_regular(path: Path) -> BinaryIO:
    """Open *path* for reading only if it is a regular file: never follows a final
    symbolic link, never blocks on a FIFO (``O_NOFOLLOW | O_NONBLOCK``) and checks the
    opened file with ``fstat``.

    Raises:
        SourceError: *path* is a symbolic link, FIFO, socket, device or folder.
        OSError: it cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        kind = entry_kind(path)
        if kind not in ("file", "missing"):
            raise SourceError(path, f"is {describe_entry(path, kind)}: not opened") from exc
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "dir" if stat.S_ISDIR(mode) else entry_kind(path)
        raise SourceError(path, f"is {describe_entry(path, kind)}: not opened")
    fh = os.fdopen(fd, "rb")
    fh.raw.name = str(path)  # type: ignore[attr-defined]  # for tifffile's messages
    return fh


def check_tiff_signature(fh: BinaryIO, path: Path) -> None:
    """Refuse a file whose first bytes are not a TIFF signature (read: 4 bytes).

    Raises:
        SourceError: empty or not a TIFF file.
    """
    head = fh.read(4)
    fh.seek(0)
    if not head:
        raise SourceError(path, "empty file")
    if head not in TIFF_SIGNATURES:
        raise SourceError(
            path, f"not a TIFF file (starts with {head!r}, not a TIFF signature); not read"
        )


def percent(n: int, total: int) -> str:
    """*n* of *total* as a percentage that reads ``0%`` or ``100%`` only when exact:
    ``<0.01%`` / ``>99.99%`` at the ends, otherwise two significant digits below 1%
    (``0.012%``) and one decimal above (more where it would round to 100%).

    >>> percent(1, 8021), percent(8019, 8021), percent(0, 5), percent(1, 10**6)
    ('0.012%', '99.98%', '0%', '<0.01%')
    """
    if total <= 0 or n <= 0:
        return "0%"
    if n >= total:
        return "100%"
    p = 100.0 * n / total
    if p < 0.01:
        return "<0.01%"
    if p > 99.99:
        return ">99.99%"
    if p < 1:
        return f"{p:.2g}%"
    text = f"{p:.1f}"
    if float(text) >= 100:
        text = f"{p:.2f}"
    return f"{text}%"


def count_of(n: int, total: int) -> str:
    """``"1 of 8,021"``: an absolute count with thousands separators."""
    return f"{n:,} of {total:,}"


@dataclass(frozen=True)
class Item:
    """One image plane of one side: a single-page file or one page of a stack file.

    ``rel`` is the file path relative to the side's root (POSIX), ``page`` the page
    number for stack files (``None`` for single-page files). ``kind`` is the entry's
    kind from ``lstat``: anything but ``"file"`` is skipped, never opened.
    """

    key: str
    path: Path
    rel: str
    page: int | None = None
    kind: EntryKind = "file"

    def label(self) -> str:
        """``rel`` plus the page, for tables."""
        return self.rel if self.page is None else f"{self.rel}#page{self.page}"


@dataclass
class PairResult:
    """The comparison of one pair (one row of ``comparison_results.csv``)."""

    key: str
    status: PairStatus
    a_path: str | None
    b_path: str | None
    a_bytes_xxh3: str | None = None
    b_bytes_xxh3: str | None = None
    a_pixel_hash: str | None = None
    b_pixel_hash: str | None = None
    shape_a: str | None = None
    shape_b: str | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    n_diff: int | None = None
    frac_diff: float | None = None
    max_abs_diff: float | None = None
    is_label: bool | None = None
    labels_only_a: list[float] | None = None
    labels_only_b: list[float] | None = None
    nonzero_a: int | None = None
    nonzero_b: int | None = None
    nonzero_lost_frac: float | None = None
    nonzero_gained_frac: float | None = None
    n_pixels: int | None = None
    nonzero_lost: int | None = None
    nonzero_gained: int | None = None
    a_kind: str | None = None
    b_kind: str | None = None
    verdict: str = ""
    error: str | None = None
    previews: dict[str, bytes] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """Flat row for CSV/Parquet (label lists as ``;``-joined text, no previews)."""
        d = asdict(self)
        d.pop("previews")
        for k in ("labels_only_a", "labels_only_b"):
            d[k] = None if d[k] is None else ";".join(_num(v) for v in d[k])
        return d


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


# -- collecting items -------------------------------------------------------------------------


def _pages(path: Path) -> int:
    try:
        with open_regular(path) as fh:
            check_tiff_signature(fh, path)
            with tifffile.TiffFile(fh) as tif:
                series = tif.series[0]
                return int(np.prod(series.shape[:-2])) if len(series.shape) > 2 else 1
    except Exception:
        return 1  # unreadable files are reported per pair


def _root_kind(root: Path) -> tuple[Path, EntryKind]:
    """*root* (followed if it is a symbolic link: it was named by the user) and its kind.

    Raises:
        SourceError: *root* does not exist or is a FIFO, socket or device.
    """
    kind = entry_kind(root)
    if kind == "symlink":
        if not root.exists():
            raise SourceError(root, f"is {describe_entry(root, kind)}, which does not exist")
        root = root.resolve()
        kind = entry_kind(root)
    if kind == "missing":
        raise SourceError(root, "does not exist")
    if kind not in ("file", "dir"):
        raise SourceError(
            root, f"is {describe_entry(root, kind)}, not an image file or folder: not opened"
        )
    return root, kind


def collect(root: Path) -> dict[str, Item]:
    """Every image plane under *root* (a stack file, a slice folder or a tree), by key.

    Non-regular entries below *root* (symbolic links to files or folders, FIFOs,
    sockets, devices) are returned as items of their ``kind``, whatever their name, and
    are never opened or followed; the key of one whose name carries a Z index pairs it
    with the other side's slice.

    Raises:
        SourceError: *root* does not exist or is not a file or folder, or two files of
            one folder have the same Z index (names differing only in zero padding).
    """
    root, root_kind = _root_kind(Path(root))
    items: dict[str, Item] = {}
    if root_kind == "file":
        for i in range(_pages(root)):
            items[f"page{i:05d}"] = Item(f"page{i:05d}", root, root.name, i)
        return items
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        folder = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if folder == "." else folder + "/"
        names = [(n, entry_kind(Path(dirpath) / n)) for n in dirnames + filenames]
        # os.walk lists a symlink to a folder among dirnames and does not descend it
        dirnames[:] = [n for n in dirnames if entry_kind(Path(dirpath) / n) == "dir"]
        for name, kind in sorted(names):
            if kind in ("dir", "missing"):
                continue  # a folder is walked; an entry gone since listing is ignored
            path = Path(dirpath) / name
            if kind == "file" and not is_tiff(path):
                continue
            rel = prefix + name
            idx = slice_index(name) if is_tiff(path) else None
            if kind != "file":
                key = f"{prefix}z{idx}" if idx is not None else rel
                if key in items:
                    key = rel
                items[key] = Item(key, path, rel, None, kind)
                continue
            # a file whose name carries a Z index is a slice (compared whole, without
            # opening it here); any other TIFF may be a stack, compared page by page
            n = 1 if idx is not None else _pages(path)
            if idx is None:
                for i in range(n):
                    key = f"{rel}/page{i:05d}" if n > 1 else rel
                    items[key] = Item(key, path, rel, i if n > 1 else None)
                continue
            key = f"{prefix}z{idx}"
            if key in items:
                other = items[key]
                if other.kind != "file":  # a skipped entry gives way, keyed by its name
                    items[other.rel] = Item(other.rel, other.path, other.rel, None, other.kind)
                else:
                    raise SourceError(
                        Path(dirpath),
                        f"two files have Z index {idx}: {other.path.name} and {name}",
                    )
            items[key] = Item(key, path, rel)
    return items


def _sort_key(key: str) -> tuple:
    parts = key.rsplit("/", 1)
    tail = parts[-1]
    num = int(tail[1:]) if tail.startswith("z") and tail[1:].isdigit() else -1
    return (parts[0] if len(parts) > 1 else "", num, key)


# -- comparing --------------------------------------------------------------------------------


def _read(item: Item) -> tuple[str, np.ndarray | None, Callable[[], np.ndarray]]:
    """(byte hash, pixels if they are free to get, decoder) of one item.

    The file is opened only if it is a regular file (:func:`open_regular`) and hashed
    only once its first bytes are a TIFF signature. Single-page files are
    memory-mapped: the byte hash reads the page cache directly, and for uncompressed
    contiguous TIFFs the pixels are a view of the same mapping (no copy, no decode).
    Otherwise the returned decoder decodes with tifffile.
    """
    h = xxhash.xxh3_128()
    if item.page is None:
        with open_regular(item.path) as fh:
            check_tiff_signature(fh, item.path)
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            h.update(mm)
            view = None
            with tifffile.TiffFile(fh) as tif:
                series = tif.series[0]
                offset = series.dataoffset
                if offset is not None and len(series.shape) >= 2:
                    dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
                    view = np.ndarray(series.shape, dtype=dtype, buffer=mm, offset=offset)
        return h.hexdigest(), view, lambda: _decode(item)
    with open_regular(item.path) as fh:
        check_tiff_signature(fh, item.path)
        with tifffile.TiffFile(fh) as tif:
            page = tif.series[0].pages[item.page]
            assert page is not None
            tfh = tif.filehandle
            for off, cnt in zip(page.dataoffsets, page.databytecounts, strict=True):
                tfh.seek(off)
                h.update(tfh.read(cnt))
    return h.hexdigest(), None, lambda: _decode(item)


def _decode(item: Item) -> np.ndarray:
    """The decoded plane of *item* (``(y, x)``; more axes for a multi-page slice file)."""
    with open_regular(item.path) as fh, tifffile.TiffFile(fh) as tif:
        if item.page is None:
            arr = tif.series[0].levels[0].asarray()
        else:
            page = tif.series[0].pages[item.page]
            assert page is not None
            arr = page.asarray()
    return _squeeze(np.asarray(arr))


def _squeeze(arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 2 and arr.size == arr.shape[-1] * arr.shape[-2]:
        arr = arr.reshape(arr.shape[-2:])
    return arr


def _axes(arr: np.ndarray) -> str:
    """Canonical axes of a decoded item: ``YX``, or ``ZYX``... for a multi-page slice."""
    return "TCZYX"[-arr.ndim :] if arr.ndim <= 5 else "YX"


def _distinct(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values; ``bincount`` for 8/16-bit unsigned (O(n))."""
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=1)).astype(arr.dtype)
    return np.unique(arr)


def _looks_like_labels(arr: np.ndarray) -> bool:
    """An integer plane made of uniform regions: most pixels equal their right-hand
    neighbour (checked on every 16th row), and few distinct values."""
    if arr.dtype.kind not in "iub" or arr.ndim < 2 or arr.shape[-1] < 2:
        return False
    rows = arr.reshape(-1, arr.shape[-1])[::16]
    return bool(np.mean(rows[:, 1:] == rows[:, :-1]) > 0.5)


def _is_label(a: np.ndarray, b: np.ndarray) -> tuple[bool, np.ndarray, np.ndarray]:
    if not (_looks_like_labels(a) and _looks_like_labels(b)):
        return False, np.empty(0), np.empty(0)
    ua, ub = _distinct(a), _distinct(b)
    return (len(ua) <= MAX_LABELS and len(ub) <= MAX_LABELS), ua, ub


def compare_pair(a: Item | None, b: Item | None, *, previews: bool = True) -> PairResult:
    """Compare one pair (either side may be missing). Never raises for bad files:
    an unreadable file gives status ``unreadable`` with the error text."""
    key = (a or b).key  # type: ignore[union-attr]
    res = PairResult(key, "unreadable", a.label() if a else None, b.label() if b else None)
    res.a_kind = a.kind if a else None
    res.b_kind = b.kind if b else None
    odd = [(s, i) for s, i in (("A", a), ("B", b)) if i is not None and i.kind != "file"]
    if odd:  # never opened or followed
        res.status = "skipped"
        res.verdict = "; ".join(
            f"{s}: {i.rel} is {describe_entry(i.path, i.kind)}: skipped, not opened" for s, i in odd
        )
        return res
    arrays: dict[str, np.ndarray] = {}
    digests: dict[str, str] = {}
    for side, item in (("a", a), ("b", b)):
        if item is None:
            continue
        try:
            digest, view, decode = _read(item)
            digests[side] = digest
            setattr(res, f"{side}_bytes_xxh3", digest)
            if side == "b" and "a" in arrays and digests["a"] == digest:
                arr = arrays["a"]  # identical bytes decode to identical pixels
                res.b_pixel_hash = res.a_pixel_hash
            else:
                arr = _squeeze(view) if view is not None else decode()
                setattr(res, f"{side}_pixel_hash", pixel_hash_array(arr, _axes(arr)))
        except Exception as exc:  # tifffile raises many types for malformed files
            why = exc.reason if isinstance(exc, SourceError) else str(exc)
            res.error = f"{side.upper()}: {item.label()}: {why}"
            res.verdict = f"{side.upper()} is unreadable: {why}"
            return res
        arrays[side] = arr
        setattr(res, f"shape_{side}", "x".join(map(str, arr.shape)))
        setattr(res, f"dtype_{side}", arr.dtype.name)
    if a is None or b is None:
        side = "a" if a is not None else "b"
        res.status = "only_in_a" if a is not None else "only_in_b"
        res.verdict = f"only in {side.upper()}"
        if previews:
            arr = arrays[side]
            res.previews[side] = thumbnail_png(arr, label=_is_label(arr, arr)[0])
        return res
    A, B = arrays["a"], arrays["b"]
    if res.a_bytes_xxh3 == res.b_bytes_xxh3:
        res.status, res.verdict = "identical_bytes", "identical files"
        return res
    if res.a_pixel_hash == res.b_pixel_hash:
        res.status, res.verdict = "identical_pixels", "same pixels, different encoding/metadata"
        return res
    res.status = "different_pixels"
    if A.shape != B.shape or A.dtype != B.dtype:
        res.verdict = f"shapes/dtypes differ: {A.shape} {A.dtype} vs {B.shape} {B.dtype}"
        if previews:
            res.previews = {"a": thumbnail_png(A, label=False), "b": thumbnail_png(B, label=False)}
        return res
    diff = A != B
    res.n_diff = int(diff.sum())
    res.n_pixels = int(diff.size)
    res.frac_diff = res.n_diff / diff.size
    res.max_abs_diff = float(np.abs(A.astype(np.float64) - B.astype(np.float64)).max())
    changed = f"{count_of(res.n_diff, diff.size)} pixels"
    label, ua, ub = _is_label(A, B)
    res.is_label = label
    if label:
        res.labels_only_a = [float(v) for v in np.setdiff1d(ua, ub)]
        res.labels_only_b = [float(v) for v in np.setdiff1d(ub, ua)]
        nza, nzb = int(np.count_nonzero(A)), int(np.count_nonzero(B))
        res.nonzero_a, res.nonzero_b = nza, nzb
        lost = int(np.count_nonzero((A != 0) & (B == 0)))
        gained = int(np.count_nonzero((A == 0) & (B != 0)))
        res.nonzero_lost, res.nonzero_gained = lost, gained
        res.nonzero_lost_frac = lost / nza if nza else 0.0
        res.nonzero_gained_frac = gained / nza if nza else (1.0 if gained else 0.0)
        parts = []
        if lost:
            text = f"B lost {count_of(lost, nza)} labelled pixels ({percent(lost, nza)})"
            if lost < nza:
                text += f"; {nza - lost:,} remain labelled"
            parts.append(text)
        if gained:
            of_a = f"{percent(gained, nza)} of A's {nza:,}" if nza else "A has none"
            noun = "pixel" if gained == 1 else "pixels"
            parts.append(f"B gained {gained:,} labelled {noun} ({of_a})")
        if res.labels_only_a:
            parts.append(f"labels only in A: {_fmt_labels(res.labels_only_a)}")
        if res.labels_only_b:
            parts.append(f"labels only in B: {_fmt_labels(res.labels_only_b)}")
        if not parts:
            parts.append(f"labels changed in {changed} ({percent(res.n_diff, diff.size)})")
        res.verdict = "; ".join(parts)
    else:
        res.verdict = (
            f"{changed} differ ({percent(res.n_diff, diff.size)}; "
            f"max |A-B| {_num(res.max_abs_diff)})"
        )
    if previews:
        res.previews = {
            "a": thumbnail_png(A, label=label),
            "b": thumbnail_png(B, label=label),
            "diff": diffmap_png(A, B, label=label),
        }
    return res


def _fmt_labels(values: list[float]) -> str:
    shown = ", ".join(_num(v) for v in values[:8])
    return shown + (f" ... ({len(values)} in all)" if len(values) > 8 else "")


@dataclass
class HashDiff:
    """All pair results of one comparison, in key order."""

    a: Path
    b: Path
    results: list[PairResult]

    def counts(self) -> dict[str, int]:
        """Number of pairs per status (every status present)."""
        out: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for r in self.results:
            out[r.status] += 1
        return out

    @property
    def identical(self) -> bool:
        """True when every pair has identical bytes or pixels (a skipped entry makes
        the comparison incomplete, so not identical)."""
        return all(r.status in ("identical_bytes", "identical_pixels") for r in self.results)

    @property
    def verdict(self) -> Literal["identical", "different", "incomplete"]:
        """``identical``; ``different`` when a compared pair differs (or is only on one
        side, or unreadable); else ``incomplete`` when entries were skipped."""
        if self.identical:
            return "identical"
        if any(r.status != "skipped" for r in self.different()):
            return "different"
        return "incomplete"

    @property
    def a_name(self) -> str:
        """A's name for titles and folder names (its last component; ``.`` and ``..``
        resolved to the folder's own name)."""
        return side_name(self.a)

    @property
    def b_name(self) -> str:
        """B's name (see :attr:`a_name`)."""
        return side_name(self.b)

    def different(self) -> list[PairResult]:
        """The pairs that are not identical."""
        return [r for r in self.results if r.status not in ("identical_bytes", "identical_pixels")]


def side_name(path: Path) -> str:
    """The name of a compared side for titles and folder names: its last component,
    or, for ``.``, ``..`` or ``/``, the resolved folder's name (``root`` for ``/``)."""
    name = path.name
    if name in ("", ".", ".."):
        name = path.resolve().name or "root"
    return name


def hashdiff(
    a: Path,
    b: Path,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> HashDiff:
    """Compare *a* and *b* (see module docstring).

    Raises:
        SourceError: a side does not exist, is not a file or folder (a FIFO ...) or
            has two files with one Z index.
    """
    items_a, items_b = collect(Path(a)), collect(Path(b))
    keys = sorted(set(items_a) | set(items_b), key=_sort_key)
    workers = workers or os.cpu_count() or 1
    results: list[PairResult] = []
    shown = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window = workers * 4
        for start in range(0, len(keys), window):
            chunk = keys[start : start + window]
            futs = [pool.submit(compare_pair, items_a.get(k), items_b.get(k)) for k in chunk]
            for fut in futs:
                res = fut.result()
                if res.previews:
                    shown += 1
                    if shown > MAX_PREVIEWS:
                        res.previews = {}
                results.append(res)
            if progress:
                progress(len(results), len(keys))
    return HashDiff(Path(a), Path(b), results)


def iter_rows(diff: HashDiff) -> Iterator[dict[str, Any]]:
    """Rows of ``comparison_results.csv``."""
    for r in diff.results:
        yield r.row()
