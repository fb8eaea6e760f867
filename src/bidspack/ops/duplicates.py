"""``bidspack duplicates ROOT``: groups of pixel-identical images anywhere in a tree.

Every TIFF/OME-TIFF file (whole stack, canonical axes; see :mod:`bidspack.io.pixelhash`)
and PNG file under *ROOT* is pixel-hashed; files with equal pixel hashes form a group,
whatever their names, folders, formats, compression or metadata. Parallel over files;
one image (or one plane at a time for stacks) in memory per worker.

Hostile input: entries are classified by ``lstat`` first. Symbolic links (to files or
folders), FIFOs, sockets and devices are never opened or followed: each is listed as
skipped with what it is. A file is opened only as a regular file
(:func:`bidspack.ops.hashdiff.open_regular`), and its first bytes are checked for the
TIFF or PNG signature before anything else is read; a PNG whose header promises more
than :data:`MAX_PNG_BYTES` of pixels is refused before it is read.
"""

from __future__ import annotations

import os
import struct
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
from bidspack.ops.hashdiff import check_tiff_signature, describe_entry, open_regular
from bidspack.safety import entry_kind

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Most decoded bytes of one PNG file (2 GiB); a larger one is reported, not read.
MAX_PNG_BYTES = 2 << 30


@dataclass(frozen=True)
class FileHash:
    """Pixel hash of one file (``error`` set and ``pixel_hash`` empty if unreadable;
    ``skipped`` set, saying what the entry is, for a symbolic link, FIFO, socket or
    device, which is never opened)."""

    path: str
    pixel_hash: str
    shape: str
    dtype: str
    error: str | None = None
    skipped: str | None = None


def _read_png(path: Path) -> bytes:
    """The bytes of a PNG file, after its signature and header were checked.

    Raises:
        SourceError: not a PNG, or over :data:`MAX_PNG_BYTES` decoded.
    """
    with open_regular(path) as fh:
        head = fh.read(26)
        if not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
            raise SourceError(path, f"not a PNG file (starts with {head[:8]!r}); not read")
        width, height, depth = struct.unpack(">IIB", head[16:25])
        decoded = width * height * 4 * max(1, depth // 8)  # at most 4 samples per pixel
        if decoded > MAX_PNG_BYTES:
            raise SourceError(
                path,
                f"PNG of {width} x {height} pixels would decode to up to {decoded:,} bytes, "
                f"over the budget of {MAX_PNG_BYTES:,} bytes; not read",
                hint="convert it to a tiled TIFF to compare it",
            )
        fh.seek(0)
        return fh.read()


def file_pixel_hash(path: Path) -> tuple[str, tuple[int, ...], str]:
    """(pixel hash, shape, dtype) of a TIFF stack/slice or PNG file, streaming planes.

    The file is opened only if it is a regular file, and read only once its first
    bytes are a TIFF or PNG signature.

    Raises:
        SourceError: not a regular file, unreadable or unsupported file.
    """
    if path.suffix.lower() == ".png":
        data = _read_png(path)
        try:
            arr = np.asarray(imagecodecs.png_decode(data))
        except Exception as exc:
            raise SourceError(path, f"not a readable PNG ({exc})") from exc
        axes = "YX" if arr.ndim == 2 else "YXS"
        if axes == "YXS":  # RGB(A): samples as a leading channel axis
            arr = np.moveaxis(arr, -1, 0)
            axes = "CYX"
        return pixel_hash_array(arr, axes), arr.shape, arr.dtype.name
    with open_regular(path) as fh:
        check_tiff_signature(fh, path)
    stack = TiffStack(path)
    z, y, x = stack.shape
    axes, shape = ("YX", (y, x)) if z == 1 else ("ZYX", (z, y, x))
    hasher = PixelHasher(axes, shape, stack.dtype)
    for plane in stack.iter_planes():
        hasher.update(plane)
    return hasher.hexdigest(), shape, stack.dtype.name


def scan(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(TIFF and PNG files, skipped entries with what each is) under *root*, sorted;
    hidden folders skipped. Entries are classified by ``lstat``: symbolic links (to
    files or folders), FIFOs, sockets and devices are skipped whatever their names,
    never opened or followed."""
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in list(dirnames):
            p = Path(dirpath) / d
            kind = entry_kind(p)
            if kind != "dir":  # os.walk lists a symlink to a folder here
                dirnames.remove(d)
                skipped.append((p, describe_entry(p, kind)))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            kind = entry_kind(p)
            if kind == "missing":
                continue
            if kind != "file":
                skipped.append((p, describe_entry(p, kind)))
            elif is_tiff(p) or p.suffix.lower() == ".png":
                images.append(p)
    return images, sorted(skipped)


def image_files(root: Path) -> list[Path]:
    """TIFF and PNG regular files under *root*, sorted, hidden folders skipped (see
    :func:`scan`)."""
    return scan(root)[0]


def find_duplicates(
    root: Path, *, workers: int | None = None, progress: Callable[[int, int], None] | None = None
) -> tuple[list[list[FileHash]], list[FileHash]]:
    """Return (groups of >= 2 pixel-identical files, every file's hash), paths relative
    to *root*. Groups are sorted by their first path; unreadable files have ``error``;
    skipped entries (symbolic links, FIFOs, sockets, devices; never opened) come last
    in the second list, with ``skipped`` saying what each is.

    Raises:
        SourceError: *root* is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(root, "is not a folder")
    files, skipped = scan(root)

    def one(p: Path) -> FileHash:
        rel = p.relative_to(root).as_posix()
        try:
            h, shape, dtype = file_pixel_hash(p)
        except SourceError as exc:
            return FileHash(rel, "", "", "", exc.reason)
        except OSError as exc:  # permission denied, gone since the scan ...
            return FileHash(rel, "", "", "", exc.strerror or str(exc))
        return FileHash(rel, h, "x".join(map(str, shape)), dtype)

    hashes: list[FileHash] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for i, fh in enumerate(pool.map(one, files), 1):
            hashes.append(fh)
            if progress:
                progress(i, len(files))
    for p, what in skipped:
        rel = p.relative_to(root).as_posix()
        hashes.append(FileHash(rel, "", "", "", skipped=f"{what}: skipped, not opened"))
    groups: dict[str, list[FileHash]] = defaultdict(list)
    for fh in hashes:
        if fh.pixel_hash:
            groups[fh.pixel_hash].append(fh)
    dup = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0].path)
    return dup, hashes
