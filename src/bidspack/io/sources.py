"""Image sources: a slice folder or a multi-page (OME-)TIFF, read lazily as ``(z, y, x)``.

A *slice folder* holds one 2D TIFF per Z plane. The Z index of a file is the last run
of digits in its name, parsed as an integer, so ``Z990.tif``, ``Z0990.tif`` and
``Z00990.tif`` all have index 990 (zero padding is irrelevant). A valid folder has
exactly one file per index, consecutive indices (no gaps), and one shape and dtype
for all files. A *stack file* is a multi-page TIFF or OME-TIFF whose first series has
axes ``ZYX`` (or ``IYX``/``QYX``, read as Z), or ``YX`` for a single plane.

Physical sizes are micrometres, ordered ``(z, y, x)``. Slice TIFFs rarely carry them;
OME-TIFF inputs do (read from their OME-XML with ome-types).
"""

from __future__ import annotations

import itertools
import os
import re
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import tifffile

from bidspack.errors import ResourceLimitError, SourceError

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
#: The first bytes of a TIFF (classic or BigTIFF, either byte order).
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Default budget for one decoded 2D plane, in MiB (``BIDSPACK_MAX_PLANE_MB`` raises it):
#: a header that claims more is refused before anything is decoded.
DEFAULT_MAX_PLANE_MB = 1024


def max_plane_bytes() -> int:
    """The decoded-plane budget in bytes (``BIDSPACK_MAX_PLANE_MB``, default
    :data:`DEFAULT_MAX_PLANE_MB`)."""
    raw = os.environ.get("BIDSPACK_MAX_PLANE_MB", "")
    try:
        mb = int(raw) if raw else DEFAULT_MAX_PLANE_MB
    except ValueError:
        mb = DEFAULT_MAX_PLANE_MB
    return max(mb, 1) << 20


def check_plane_budget(path: Path, shape_yx: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a plane whose decoded size exceeds the budget, before decoding it.

    Raises:
        ResourceLimitError: naming the file, the plane size and the budget.
    """
    n = 1
    for d in shape_yx:
        n *= int(d)
    need = n * np.dtype(dtype).itemsize
    budget = max_plane_bytes()
    if need > budget:
        raise ResourceLimitError(
            path,
            f"one plane of {' x '.join(map(str, shape_yx))} {np.dtype(dtype).name} pixels "
            f"would need {need / 2**20:.0f} MiB decoded, over the budget of "
            f"{budget >> 20} MiB per plane",
            hint="set BIDSPACK_MAX_PLANE_MB to raise it if the header is right",
        )


_INDEX = re.compile(r"(\d+)(?!.*\d)")

#: Units accepted for physical sizes and their factor to micrometres.
UNIT_TO_UM = {
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micrometer": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "m": 1e6,
    "cm": 1e4,
    "Å": 1e-4,
    "pm": 1e-6,
}


def is_tiff(path: Path) -> bool:
    """True if *path* has a TIFF file suffix (case-insensitive)."""
    return path.suffix.lower() in TIFF_SUFFIXES


def slice_index(name: str) -> int | None:
    """The Z index of a slice file name: its last run of digits, as an integer.

    >>> slice_index("Z00990.tif"), slice_index("image_0012.ome.tif"), slice_index("a.tif")
    (990, 12, None)
    """
    stem = name
    for suffix in (".ome.tiff", ".ome.tif", *TIFF_SUFFIXES):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    match = _INDEX.search(stem)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class StackInfo:
    """Shape and metadata of a source, known without decoding pixels.

    Attributes:
        shape: ``(z, y, x)`` in pixels.
        dtype: NumPy dtype of the pixels.
        physical_size: ``(z, y, x)`` micrometres per voxel, or ``None`` if the files
            carry none (or only some axes).
        origin: ``(z, y, x)`` position in micrometres of the centre of the first voxel
            (OME-XML ``Plane`` positions in a length unit), or ``None``.
        physical_axes: ``(z, y, x)`` micrometres per voxel axis by axis, ``None`` for an
            axis the files do not carry (e.g. an OME-TIFF with PhysicalSizeX/Y and no
            PhysicalSizeZ); ``None`` altogether: as *physical_size*.
    """

    shape: tuple[int, int, int]
    dtype: np.dtype
    physical_size: tuple[float, float, float] | None
    origin: tuple[float, float, float] | None = None
    physical_axes: tuple[float | None, float | None, float | None] | None = None

    def found_sizes(self) -> tuple[float | None, float | None, float | None]:
        """``(z, y, x)`` micrometres the files carry, ``None`` per missing axis."""
        if self.physical_axes is not None:
            return self.physical_axes
        if self.physical_size is not None:
            z, y, x = self.physical_size
            return (z, y, x)
        return (None, None, None)


class ImageSource(ABC):
    """A 3D grayscale image, ``(z, y, x)``, read plane by plane.

    Attributes:
        path: the folder (slice folder) or file (stack file) as found.
        files: every file that makes up the image, in Z order for slice folders.
        info: shape, dtype and physical size.
    """

    path: Path
    files: tuple[Path, ...]
    info: StackInfo
    #: what the file holds beyond this (z, y, x) selection (vendor files: other
    #: channels, time points, scenes, hidden dimensions); empty when nothing is left
    left_out: tuple[str, ...] = ()
    #: channels and time points the file holds (the image is one of them; vendor and
    #: container files may hold several, see ``left_out``)
    n_channels: int = 1
    n_times: int = 1
    #: the channel names the file gives (vendor and container files; may be empty)
    channel_names: tuple[str, ...] = ()
    #: ``(t, c, z)`` of an image with C and/or T axes read as a flattened
    #: ``(t * c * z, y, x)`` stack (:class:`ChannelTimeStack`, an OME-TIFF read with
    #: ``channels_and_times``); ``None`` for a plain ``(z, y, x)`` stack
    tcz: tuple[int, int, int] | None = None
    #: acquisition metadata the file carries, keyed by BIDS sidecar field names
    #: (``Manufacturer``, ``NumericalAperture``, ...; see
    #: :func:`bidspack.io.omexml.instrument_of`); empty when none
    instrument: Mapping[str, Any] = MappingProxyType({})

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` in pixels."""
        return self.info.shape

    @property
    def dtype(self) -> np.dtype:
        """Pixel dtype."""
        return self.info.dtype

    @property
    def nbytes(self) -> int:
        """Uncompressed size in bytes."""
        z, y, x = self.shape
        return z * y * x * self.dtype.itemsize

    @abstractmethod
    def read_plane(self, z: int) -> np.ndarray:
        """Decode plane *z* as a ``(y, x)`` array.

        Raises:
            SourceError: the file is unreadable or the plane has the wrong shape/dtype.
        """

    def iter_planes(self, *, prefetch: int = 4, workers: int = 2) -> Iterator[np.ndarray]:
        """Yield the ``(y, x)`` planes in Z order, decoding up to *prefetch* ahead.

        Memory is bounded by ``prefetch`` planes, whatever the stack depth.
        """
        nz = self.shape[0]
        if prefetch <= 1 or nz <= 1:
            for z in range(nz):
                yield self.read_plane(z)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            window: deque[Future[np.ndarray]] = deque()
            nxt = 0
            while nxt < nz and len(window) < prefetch:
                window.append(pool.submit(self.read_plane, nxt))
                nxt += 1
            while window:
                plane = window.popleft().result()
                if nxt < nz:
                    window.append(pool.submit(self.read_plane, nxt))
                    nxt += 1
                yield plane

    def _check_plane(self, plane: np.ndarray, path: Path) -> np.ndarray:
        _, y, x = self.shape
        if plane.shape != (y, x) or plane.dtype != self.dtype:
            raise SourceError(
                path,
                f"decoded plane has shape {plane.shape} and dtype {plane.dtype}, "
                f"expected {(y, x)} and {self.dtype}",
            )
        return plane


def _tiff_header(path: Path) -> tuple[tuple[int, ...], str, np.dtype, int]:
    """(shape, axes, dtype, page count) of the first series of a TIFF, without decoding.

    The file must be a regular file starting with a TIFF signature (checked before
    tifffile reads it), and one plane must fit the decoded-plane budget.

    Raises:
        SourceError: not a regular file, not a TIFF, unreadable header.
        ResourceLimitError: one plane exceeds the budget (:func:`check_plane_budget`).
    """
    from bidspack.safety import entry_kind

    # a link is followed here (packaging decides earlier which links may be read, and
    # annexed files are links), but its target must be a regular file: never a FIFO
    kind = entry_kind(Path(os.path.realpath(path)))
    if kind != "file":
        raise SourceError(path, f"not a regular file ({kind}); not read")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise SourceError(path, f"cannot read ({exc.strerror})") from exc
    if head not in TIFF_MAGIC:
        raise SourceError(
            path, f"not a readable TIFF file (it starts with {head!r}, not a TIFF signature)"
        )
    header = _tiff_series(path)
    shape, _, dtype, _ = header
    check_plane_budget(path, shape[-2:], dtype)
    return header


def _tiff_series(path: Path) -> tuple[tuple[int, ...], str, np.dtype, int]:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(series.shape), series.axes, np.dtype(series.dtype), len(tif.pages)
    except Exception as exc:  # tifffile raises many types for malformed files
        raise SourceError(path, f"not a readable TIFF file ({exc})") from exc


class SliceFolder(ImageSource):
    """A folder of 2D TIFF slices, one per Z index (see module docstring for the rules).

    Args:
        path: the folder.
        files: the slice files; if ``None``, every TIFF in *path* (non-recursive).

    Raises:
        SourceError: no slices, a name without an index, two files with one index,
            gaps between indices, a slice that is not 2D, mixed shapes or dtypes,
            unreadable files. The message names the files concerned.
    """

    def __init__(self, path: Path, files: list[Path] | None = None):
        self.path = Path(path)
        if files is None:
            files = [p for p in self.path.iterdir() if p.is_file() and is_tiff(p)]
        if not files:
            raise SourceError(self.path, "no TIFF slices found")
        by_index: dict[int, Path] = {}
        for f in sorted(files):
            idx = slice_index(f.name)
            if idx is None:
                raise SourceError(f, "slice file name has no Z index (no digits in the name)")
            if idx in by_index:
                raise SourceError(
                    self.path,
                    f"two files have Z index {idx}: {by_index[idx].name} and {f.name}",
                    hint="slice names may differ only in zero padding; keep one",
                )
            by_index[idx] = f
        indices = sorted(by_index)
        # counted arithmetically: a name such as Z99999999999.tif must not make us
        # build the range of every index in between
        n_missing = indices[-1] - indices[0] + 1 - len(indices)
        if n_missing:
            shown: list[int] = []
            for lo, hi in itertools.pairwise(indices):
                shown.extend(range(lo + 1, min(hi, lo + 1 + 10 - len(shown))))
                if len(shown) >= 10:
                    break
            text = ", ".join(map(str, shown)) + (" ..." if n_missing > len(shown) else "")
            raise SourceError(
                self.path,
                f"gap in slice indices: {n_missing} missing between {indices[0]} and "
                f"{indices[-1]} (missing: {text})",
            )
        self.first_index = indices[0]
        self.files = tuple(by_index[i] for i in indices)
        ref_shape, ref_axes, ref_dtype, _ = _tiff_header(self.files[0])
        if len(ref_shape) != 2:
            raise SourceError(
                self.files[0], f"a slice must be a 2D image, found shape {ref_shape} ({ref_axes})"
            )
        for f in self.files[1:]:
            shape, _, dtype, _ = _tiff_header(f)
            if shape != ref_shape or dtype != ref_dtype:
                raise SourceError(
                    f,
                    f"shape {shape} and dtype {dtype} differ from {self.files[0].name} "
                    f"({ref_shape}, {ref_dtype})",
                    hint="all slices of a stack must have one shape and dtype",
                )
        self.info = StackInfo(
            shape=(len(self.files), int(ref_shape[0]), int(ref_shape[1])),
            dtype=ref_dtype,
            physical_size=None,
        )

    def read_plane(self, z: int) -> np.ndarray:
        """Decode slice *z* (0-based position, not the file's index)."""
        path = self.files[z]
        try:
            plane = tifffile.imread(path, series=0, level=0)
        except Exception as exc:
            raise SourceError(path, f"cannot decode slice ({exc})") from exc
        return self._check_plane(np.asarray(plane), path)


class TiffStack(ImageSource):
    """A multi-page TIFF or OME-TIFF holding one grayscale stack.

    Physical sizes come from the OME-XML (``PhysicalSizeX/Y/Z`` with their units,
    converted to micrometres) when the file is an OME-TIFF that gives all three.

    With *channels_and_times*, an OME-TIFF with C and/or T axes (as bidspack writes
    for ``whole = true``) is read too: its pages in file order (Z fastest, then C,
    then T) as a flattened ``(t * c * z, y, x)`` stack, with :attr:`tcz` giving
    ``(t, c, z)``; :func:`stack_axes` names its pixel-hash axes.

    Raises:
        SourceError: unreadable file, more than one channel or time point (unless
            *channels_and_times*), RGB.
    """

    _PLANE_AXES = ("ZYX", "IYX", "QYX", "YX")
    _TC_AXES = ("CZYX", "TZYX", "TCZYX", "CYX", "TYX", "TCYX")

    def __init__(self, path: Path, *, channels_and_times: bool = False):
        self.path = Path(path)
        self.files = (self.path,)
        shape, axes, dtype, _ = _tiff_header(self.path)
        self.tcz = None
        if channels_and_times and axes in self._TC_AXES:
            sizes = dict(zip(axes, shape, strict=True))
            t, c, z = sizes.get("T", 1), sizes.get("C", 1), sizes.get("Z", 1)
            self.tcz = (int(t), int(c), int(z))
            self.n_channels, self.n_times = int(c), int(t)
            shape = (t * c * z, sizes["Y"], sizes["X"])
            axes = "ZYX"
        if axes not in self._PLANE_AXES:
            raise SourceError(
                self.path,
                f"stack axes {axes} with shape {shape} are not supported; expected one "
                "grayscale channel and time point (ZYX)",
                hint="split channels/time points into separate files",
            )
        if axes == "YX":
            shape = (1, *shape)
        axes_um, origin, self.instrument = _ome_geometry(self.path)
        z_um, y_um, x_um = axes_um or (None, None, None)
        complete = None
        if z_um is not None and y_um is not None and x_um is not None:
            complete = (z_um, y_um, x_um)
        self.info = StackInfo(
            shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            dtype=dtype,
            physical_size=complete,
            origin=origin,
            physical_axes=axes_um,
        )

    def read_plane(self, z: int) -> np.ndarray:
        """Decode page *z* of the first series (level 0)."""
        try:
            with tifffile.TiffFile(self.path) as tif:
                page = tif.series[0].pages[z]
                assert page is not None
                plane = np.asarray(page.asarray()).reshape(self.shape[1:])
        except Exception as exc:  # a damaged page can decode to any size
            raise SourceError(self.path, f"cannot decode plane {z} ({exc})") from exc
        return self._check_plane(plane, self.path)

    def iter_planes(self, *, prefetch: int = 4, workers: int = 2) -> Iterator[np.ndarray]:
        """Yield planes in Z order from one open file handle (pages are decoded in order)."""
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                for z in range(self.shape[0]):
                    page = series.pages[z]
                    assert page is not None
                    plane = np.asarray(page.asarray()).reshape(self.shape[1:])
                    yield self._check_plane(plane, self.path)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(self.path, f"cannot decode stack ({exc})") from exc


def _ome_geometry(
    path: Path,
) -> tuple[
    tuple[float | None, float | None, float | None] | None,
    tuple[float, float, float] | None,
    dict[str, Any],
]:
    """Voxel sizes (``(z, y, x)`` micrometres, each axis or ``None``), origin
    (``(z, y, x)`` or ``None``) and acquisition metadata
    (:func:`~bidspack.io.omexml.instrument_of`) of the first OME image of *path*, from
    its OME-XML (``PhysicalSize*``, ``Plane`` ``Position*``, ``Instrument``).

    Raises:
        SourceError: the OME-XML physical sizes are unusable.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
    except Exception:
        return None, None, {}
    if not xml:
        return None, None, {}
    from bidspack.io.omexml import instrument_of, origin_um, physical_sizes_um

    try:
        return physical_sizes_um(xml), origin_um(xml), instrument_of(xml)
    except ValueError as exc:
        raise SourceError(path, f"OME-XML physical sizes unusable ({exc})") from exc


def left_out_of(src: ImageSource, split: Sequence[str] = ()) -> tuple[str, ...]:
    """What *src*'s file holds beyond the image bidspack reads: its own ``left_out``
    plus other channels and time points known only from ``n_channels`` / ``n_times``
    (container readers), without the dimensions in *split* (``"channel"``,
    ``"time"``), which are written as images of their own."""
    items = list(src.left_out)
    if src.tcz is not None:  # every channel and time point is read
        return tuple(items)
    channel = getattr(src, "channel", 0) or 0
    time = getattr(src, "time", 0) or 0
    if src.n_channels > 1 and not any(i.startswith("channel(s)") for i in items):
        others = [str(c) for c in range(src.n_channels) if c != channel]
        items.append("channel(s) " + ", ".join(others))
    if src.n_times > 1 and not any(i.startswith("time point(s)") for i in items):
        others = [str(t) for t in range(src.n_times) if t != time]
        if len(others) > 8:
            others = [*others[:3], "...", others[-1]]
        items.append("time point(s) " + ", ".join(others))
    drop = tuple(p for d, p in (("channel", "channel(s)"), ("time", "time point(s)")) if d in split)
    return tuple(i for i in items if not (drop and i.startswith(drop)))


def stack_axes(
    tcz: tuple[int, int, int] | None, shape_zyx: Sequence[int]
) -> tuple[str, tuple[int, ...]]:
    """Pixel-hash axes and shape of an image: ``ZYX`` and its shape for one stack (a 2D
    image too: Z of size 1 is kept, as every bidspack hash of a stack does), else
    ``TCZYX`` without the T or C of size 1, for a flattened ``(t * c * z, y, x)``
    source with ``tcz`` ``(t, c, z)``."""
    if tcz is None or (tcz[0] == 1 and tcz[1] == 1):
        return "ZYX", tuple(int(v) for v in shape_zyx)
    t, c, z = tcz
    axes = ("T" if t > 1 else "") + ("C" if c > 1 else "") + "ZYX"
    dims = ([t] if t > 1 else []) + ([c] if c > 1 else []) + [z, shape_zyx[1], shape_zyx[2]]
    return axes, tuple(int(v) for v in dims)


class ChannelTimeStack(ImageSource):
    """Every channel and time point of a vendor or container file as one flattened
    ``(t * c * z, y, x)`` source (planes in OME ``XYZCT`` order: Z fastest, then C,
    then T), for ``whole = true``: an OME-TIFF with C and T axes.

    Attributes:
        tcz: ``(t, c, z)``.
        channel_names: names of the C channels (empty strings where the file has none).
        channel_instruments: per channel, the file's acquisition metadata for it.

    Raises:
        SourceError: the file cannot be read, or its channels/time points differ in
            shape or pixel type.
    """

    def __init__(self, path: Path, *, scene: int | str | None = None):
        self.path = Path(path)
        self.files = (self.path,)
        self.scene = scene
        first = open_source(self.path, scene=scene, channel=0, time=0)
        t, c = first.n_times, first.n_channels
        z, y, x = first.shape
        self._tcz = (t, c, z)
        self.tcz = self._tcz
        self.n_channels, self.n_times = c, t
        self.left_out = left_out_of(first, ("channel", "time"))
        names = [str(n or "") for n in first.channel_names]
        self.channel_names = tuple(names + [""] * (c - len(names)))[:c]
        self.channel_instruments: list[Mapping[str, Any]] = []
        for ci in range(c):
            one = first if ci == 0 else open_source(self.path, scene=scene, channel=ci, time=0)
            if one.shape != first.shape or one.dtype != first.dtype:
                raise SourceError(
                    self.path,
                    f"channel {ci} is {one.shape} {one.dtype}, channel 0 {first.shape} "
                    f"{first.dtype}: one image with C and T axes needs equal stacks",
                )
            self.channel_instruments.append(dict(one.instrument))
        self.instrument = first.instrument
        self.info = StackInfo(
            shape=(t * c * z, y, x),
            dtype=first.dtype,
            physical_size=first.info.physical_size,
            origin=first.info.origin,
            physical_axes=first.info.found_sizes(),
        )

    def _stack(self, t: int, ci: int) -> ImageSource:
        return open_source(self.path, scene=self.scene, channel=ci, time=t)

    def read_plane(self, z: int) -> np.ndarray:
        """Plane *z* of the flattened stack: time ``z // (c * nz)``, channel
        ``(z // nz) % c``, slice ``z % nz``."""
        _, c, nz = self._tcz
        return self._stack(z // (c * nz), (z // nz) % c).read_plane(z % nz)

    def iter_planes(self, *, prefetch: int = 4, workers: int = 2) -> Iterator[np.ndarray]:
        """Every plane in ``XYZCT`` order, one (z, y, x) stack after the other."""
        t, c, _ = self._tcz
        for ti in range(t):
            for ci in range(c):
                yield from self._stack(ti, ci).iter_planes(prefetch=prefetch, workers=workers)


def open_files(folder: Path, files: list[Path]) -> ImageSource:
    """The image made of *files* (TIFFs of *folder*): one file holding more than one
    plane is a stack (:class:`TiffStack`); anything else is a slice folder.

    Raises:
        SourceError: see :class:`SliceFolder` and :class:`TiffStack`.
    """
    if len(files) == 1:
        shape, _, _, _ = _tiff_header(files[0])
        if len(shape) > 2:
            return TiffStack(files[0])
    return SliceFolder(folder, files)


def open_source(path: Path, **selection: Any) -> ImageSource:
    """Open a slice folder, a stack file or a vendor file as an :class:`ImageSource`.

    A folder with exactly one TIFF that has more than one page is read as that stack;
    any other folder is read as a slice folder. A file that is not a TIFF is read with
    bioio (:class:`bidspack.io.vendor.VendorImage`), *selection* choosing its
    ``scene``, ``channel`` and ``time`` point.

    Raises:
        SourceError: see :class:`SliceFolder`, :class:`TiffStack` and
            :class:`~bidspack.io.vendor.VendorImage`; a *selection* for a TIFF source.
    """
    path = Path(path)
    from bidspack.io.containers import container_kind, open_container

    if container_kind(path) is not None:  # MRC, NRRD, HDF5, Imaris, N5/Zarr, video
        return open_container(path, **selection)
    if path.is_file() and not is_tiff(path):
        from bidspack.io.vendor import VendorImage

        return VendorImage(path, **{k: v for k, v in selection.items() if v is not None})
    if any(v is not None for v in selection.values()):
        raise SourceError(
            path, "scene, channel and time point select inside vendor files, not TIFFs"
        )
    if path.is_dir():
        return open_files(path, [p for p in path.iterdir() if p.is_file() and is_tiff(p)])
    if path.is_file():
        return TiffStack(path)
    raise SourceError(path, "not a slice folder, a TIFF/OME-TIFF or a vendor image file")
