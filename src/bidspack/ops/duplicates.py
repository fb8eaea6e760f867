"""``bidspack duplicates ROOT``: groups of pixel-identical images anywhere in a tree.

Every TIFF/OME-TIFF file (whole stack, canonical axes; see :mod:`bidspack.io.pixelhash`)
and PNG file under *ROOT* is pixel-hashed; files with equal pixel hashes form a group,
whatever their names, folders, formats, compression or metadata. Parallel over files;
one image (or one plane at a time for stacks) in memory per worker.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np

from bidspack.errors import SourceError
from bidspack.io.pixelhash import PixelHasher, pixel_hash_array
from bidspack.io.sources import TiffStack, is_tiff


@dataclass(frozen=True)
class FileHash:
    """Pixel hash of one file (``error`` set and ``pixel_hash`` empty if unreadable)."""

    path: str
    pixel_hash: str
    shape: str
    dtype: str
    error: str | None = None


def file_pixel_hash(path: Path) -> tuple[str, tuple[int, ...], str]:
    """(pixel hash, shape, dtype) of a TIFF stack/slice or PNG file, streaming planes.

    Raises:
        SourceError: unreadable or unsupported file.
    """
    if path.suffix.lower() == ".png":
        try:
            arr = np.asarray(imagecodecs.png_decode(path.read_bytes()))
        except Exception as exc:
            raise SourceError(path, f"not a readable PNG ({exc})") from exc
        axes = "YX" if arr.ndim == 2 else "YXS"
        if axes == "YXS":  # RGB(A): samples as a leading channel axis
            arr = np.moveaxis(arr, -1, 0)
            axes = "CYX"
        return pixel_hash_array(arr, axes), arr.shape, arr.dtype.name
    stack = TiffStack(path)
    z, y, x = stack.shape
    axes, shape = ("YX", (y, x)) if z == 1 else ("ZYX", (z, y, x))
    hasher = PixelHasher(axes, shape, stack.dtype)
    for plane in stack.iter_planes():
        hasher.update(plane)
    return hasher.hexdigest(), shape, stack.dtype.name


def image_files(root: Path) -> list[Path]:
    """TIFF and PNG files under *root*, sorted, hidden folders skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if is_tiff(p) or p.suffix.lower() == ".png":
                out.append(p)
    return out


def find_duplicates(
    root: Path, *, workers: int | None = None, progress: Callable[[int, int], None] | None = None
) -> tuple[list[list[FileHash]], list[FileHash]]:
    """Return (groups of >= 2 pixel-identical files, every file's hash), paths relative
    to *root*. Groups are sorted by their first path; unreadable files have ``error``.

    Raises:
        SourceError: *root* is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(root, "is not a folder")
    files = image_files(root)

    def one(p: Path) -> FileHash:
        rel = p.relative_to(root).as_posix()
        try:
            h, shape, dtype = file_pixel_hash(p)
        except SourceError as exc:
            return FileHash(rel, "", "", "", exc.reason)
        return FileHash(rel, h, "x".join(map(str, shape)), dtype)

    hashes: list[FileHash] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for i, fh in enumerate(pool.map(one, files), 1):
            hashes.append(fh)
            if progress:
                progress(i, len(files))
    groups: dict[str, list[FileHash]] = defaultdict(list)
    for fh in hashes:
        if fh.pixel_hash:
            groups[fh.pixel_hash].append(fh)
    dup = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0].path)
    return dup, hashes
