"""Container and instrument formats as ``(z, y, x)`` image sources: MRC, NRRD, HDF5,
Imaris ``.ims``, N5, Zarr / OME-Zarr multiscales and video (AVI, MP4 ...).

Every reader is an :class:`~bidspack.io.sources.ImageSource`: ``shape`` is ``(z, y, x)``
in pixels, ``info.physical_size`` ``(z, y, x)`` micrometres per voxel (``None`` when the
file has no size with a known unit), ``info.origin`` ``(z, y, x)`` micrometres of the
centre of the first voxel where the file has one, ``channel_names`` the names the file
gives, ``levels`` the number of resolution levels, and :meth:`ContainerSource.metadata`
every value taken from the file with its origin (``"file"``) for the provenance.
Pixels are read plane by plane, or one chunk-deep slab at a time (a slab cache holds the
planes of the chunk last decoded, so a chunk is decoded once when planes are read in
order); nothing reads the whole volume, except ASCII/hex NRRD (small by nature).

Unit conversion is exact to the printed precision: values are taken as the decimal text
the file stores (float32 header fields as their shortest text, ``11.4`` not
``11.399999618530273``), converted with :mod:`decimal` and rounded to 12 significant
digits, so 11.4 Å is 0.00114 µm, not 0.0011400000000000002. An unknown unit, or two
sizes in one file that contradict each other, is a :class:`~bidspack.errors.SourceError`
naming the file and the value.

Sources of the rules implemented here:

- MRC: the MRC2014 format (Cheng et al. 2015, https://www.ccpem.ac.uk/mrc_format/mrc2014.php),
  headers read with ``mrcfile`` (https://mrcfile.readthedocs.io). The source's
  ``(z, y, x)`` are the stored (sections, rows, columns); each gets the voxel size of
  the crystallographic axis MAPS/MAPR/MAPC maps to it (``CELLA / MXYZ``, Å).
  Mode 0 is int8 (MRC2014), uint8 when the IMOD stamp says so (``imodStamp`` 1146047817
  with ``imodFlags`` bit 0); mode 6 uint16, 1 int16, 2 float32, 12 float16; complex and
  4-bit modes are refused. ``.mrc.gz``/``.mrc.bz2`` (and any MRC compressed so) are
  streamed: planes are decompressed in order, a backwards read restarts the stream.
  The origin is ``ORIGIN`` (Å, X/Y/Z mapped like the sizes) when non-zero, else
  ``N[XYZ]START`` times the voxel size.
- NRRD: the NRRD0005 format (https://teem.sourceforge.net/nrrd/format.html), headers
  with ``pynrrd``. Raw data is read plane by plane at its offset in the attached or
  detached data file; gzip/bzip2 data is streamed in order like compressed MRC;
  ASCII/hex data is read whole. Spacing from ``spacings`` (with ``units``) or from a
  diagonal ``space directions`` matrix (with ``space units``); an oblique matrix is an
  error. ``space origin`` gives the origin.
- HDF5 (``h5py``): see :class:`HDF5Source` for the attribute names.
- Imaris: the Imaris 5.5 file format (https://imaris.oxinst.com/support/imaris-file-format),
  ``DataSet/ResolutionLevel r/TimePoint t/Channel c/Data``, sizes and extents from the
  single-byte string attributes of ``DataSetInfo/Image``.
- N5: the N5 specification (https://github.com/saalfeldlab/n5, "file-system specification"),
  read here directly (zarr-python 3 has no N5 store): ``attributes.json`` with
  ``dimensions``/``blockSize`` (fastest axis first), ``dataType``, ``compression``
  (raw, gzip, bzip2, xz, zstd, blosc), block files ``x/y/z`` with a big-endian header.
  CellMap/OpenOrganelle ``pixelResolution`` and ``transform`` attributes give the sizes.
- OME-Zarr: OME-NGFF 0.4 and 0.5 (https://ngff.openmicroscopy.org) ``multiscales``
  through zarr-python 3 (Zarr v2 and v3 stores).
- Video: PyAV (FFmpeg libraries bundled in its wheels; no ffmpeg binary needed).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import os
import re
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bidspack.errors import SourceError
from bidspack.io.sources import ImageSource, StackInfo, check_plane_budget

#: Length units (as files spell them) and their factor to micrometres, exact.
UNIT_TO_UM_EXACT: dict[str, Decimal] = {
    **dict.fromkeys(
        ("um", "µm", "μm", "micrometer", "micrometre", "micron", "microns", "micrometers"),
        Decimal(1),
    ),
    **dict.fromkeys(("nm", "nanometer", "nanometre", "nanometers"), Decimal("0.001")),
    **dict.fromkeys(("mm", "millimeter", "millimetre", "millimeters"), Decimal(1000)),
    **dict.fromkeys(("cm", "centimeter", "centimetre"), Decimal(10000)),
    **dict.fromkeys(("m", "meter", "metre", "meters"), Decimal(1000000)),
    **dict.fromkeys(("å", "Å", "angstrom", "angstroms", "a"), Decimal("0.0001")),
    **dict.fromkeys(("pm", "picometer", "picometre"), Decimal("0.000001")),
}

#: Suffixes of files read by this module (lower case).
FILE_SUFFIXES = (
    ".mrc",
    ".mrcs",
    ".map",
    ".rec",
    ".st",
    ".ali",
    ".mrc.gz",
    ".mrc.bz2",
    ".map.gz",
    ".map.bz2",
    ".nrrd",
    ".nhdr",
    ".h5",
    ".hdf5",
    ".hdf",
    ".he5",
    ".ims",
    ".avi",
    ".mp4",
    ".mov",
    ".mkv",
    ".webm",
    ".m4v",
)
#: Folder suffixes read as N5 or Zarr containers.
FOLDER_SUFFIXES = (".n5", ".zarr")

#: Slab cache limit: a chunk deeper than this many bytes is read plane by plane.
SLAB_BYTES = 256 * 2**20
#: Significant digits kept by unit conversions (see module docstring).
SIGNIFICANT = 12


# --------------------------------------------------------------------------- helpers


def exact_decimal(value: Any) -> Decimal:
    """*value* as the decimal text it prints as: a float32 as its shortest float32 text
    (``np.float32(11.4)`` -> ``Decimal("11.4")``), a float as its ``repr``, bytes and
    strings parsed.

    Raises:
        ValueError: not a finite number.
    """
    if isinstance(value, bytes | np.bytes_):
        value = value.decode("ascii", "replace")
    if isinstance(value, np.floating):
        text = np.format_float_positional(value, unique=True, trim="-")
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value).strip()
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not d.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return d


def round_sig(d: Decimal) -> float:
    """*d* rounded to :data:`SIGNIFICANT` significant digits, as the nearest float."""
    if d == 0:
        return 0.0
    return float(format(d, f".{SIGNIFICANT}g"))


def unit_factor(unit: Any, path: Path, what: str) -> Decimal:
    """Factor from *unit* (a length unit as the file spells it) to micrometres.

    Raises:
        SourceError: not a known length unit (the message names the file and value).
    """
    text = unit.decode("utf-8", "replace") if isinstance(unit, bytes) else str(unit)
    key = text.strip()
    factor = UNIT_TO_UM_EXACT.get(key, UNIT_TO_UM_EXACT.get(key.lower()))
    if factor is None:
        raise SourceError(
            path,
            f"{what} unit {text!r} is not a known length unit",
            hint="known: " + ", ".join(sorted({k for k in UNIT_TO_UM_EXACT if k.isascii()})),
        )
    return factor


def to_um(value: Any, unit: Any, path: Path, what: str) -> float:
    """*value* in *unit* as micrometres, exact to the printed precision."""
    factor = unit_factor(unit, path, what)
    try:
        d = exact_decimal(value)
    except ValueError as exc:
        raise SourceError(path, f"{what} {exc}") from None
    with localcontext() as ctx:
        ctx.prec = 40
        return round_sig(d * factor)


def _positive(values: Sequence[float], path: Path, what: str) -> tuple[float, float, float]:
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise SourceError(path, f"{what} {list(values)} is not three positive sizes")
    return (values[0], values[1], values[2])


def _decode_text(value: Any) -> str:
    """An attribute as text: Imaris arrays of single-byte strings, bytes, or str."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "S":
            return b"".join(value.ravel().tolist()).decode("utf-8", "replace")
        if value.size == 1:
            return _decode_text(value.ravel()[0])
        return str(value.tolist())
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "S":
            return _decode_text(value)
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _regular_file(path: Path) -> None:
    from bidspack.safety import entry_kind

    kind = entry_kind(Path(os.path.realpath(path)))
    if kind == "missing":
        raise SourceError(path, "file not found")
    if kind not in ("file", "dir"):
        raise SourceError(path, f"not a regular file ({kind}); not read")


# --------------------------------------------------------------------------- base


class ContainerSource(ImageSource):
    """Base of the readers of this module (see the module docstring).

    Attributes:
        format: short format name (``"mrc"``, ``"nrrd"``, ``"hdf5"``, ``"imaris"``,
            ``"n5"``, ``"zarr"``, ``"ome-zarr"``, ``"video"``).
        axes: the file's axes, as letters (``"ZYX"``, ``"TCZYX"`` ...).
        file_shape: the array shape as stored, in *axes* order.
        channel_names: channel names the file gives (may be empty).
        channel: the selected channel index, or ``None``.
        time: the selected time point, or ``None``.
        levels: number of resolution levels (1 when the file has no pyramid).
        dataset: the dataset / array path inside a container, or ``None``.
        unit: the length unit as the file spells it, or ``None``.
    """

    format: str = ""
    axes: str = "ZYX"
    file_shape: tuple[int, ...] = ()
    channel: int | None = None
    channel_name: str | None = None
    time: int | None = None
    levels: int = 1
    dataset: str | None = None
    unit: str | None = None

    def _init(self, path: Path) -> None:
        self.path = Path(path)
        self.files = (self.path,)
        self._meta: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._slab: tuple[int, np.ndarray] | None = None

    def _note(self, name: str, value: Any) -> Any:
        """Record *value* (taken from the file) for :meth:`metadata`; return it."""
        self._meta[name] = {"value": _jsonable(value), "origin": "file"}
        return value

    def metadata(self) -> dict[str, Any]:
        """Every value taken from the file: ``{name: {"value": v, "origin": "file"}}``,
        plus the derived ``shape_zyx``, ``dtype``, ``physical_size_zyx_um`` and
        ``origin_zyx_um`` (origin ``"derived"``)."""
        out = dict(self._meta)
        derived = {
            "format": self.format,
            "shape_zyx": list(self.shape),
            "dtype": self.dtype.name,
            "physical_size_zyx_um": list(self.info.physical_size)
            if self.info.physical_size
            else None,
            "origin_zyx_um": list(self.info.origin) if self.info.origin else None,
        }
        for k, v in derived.items():
            out[k] = {"value": v, "origin": "derived"}
        return out

    def _set_info(
        self,
        shape: Sequence[int],
        dtype: np.dtype,
        physical: tuple[float, float, float] | None,
        origin: tuple[float, float, float] | None,
    ) -> None:
        z, y, x = (int(s) for s in shape)
        check_plane_budget(self.path, (y, x), dtype)
        self.info = StackInfo(
            shape=(z, y, x), dtype=np.dtype(dtype), physical_size=physical, origin=origin
        )

    # slab cache: chunked formats decode one chunk-deep slab and serve its planes
    _depth: int = 1

    def _read_block(self, z0: int, z1: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_plane(self, z: int) -> np.ndarray:
        """Plane *z* as a ``(y, x)`` array.

        Raises:
            SourceError: *z* out of range, or the data cannot be decoded.
        """
        nz = self.shape[0]
        if not 0 <= z < nz:
            raise SourceError(self.path, f"plane {z} does not exist ({nz} planes)")
        with self._lock:
            if self._slab is not None:
                z0, block = self._slab
                if z0 <= z < z0 + len(block):
                    return self._check_plane(block[z - z0], self.path)
            depth = max(1, self._depth)
            plane_bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize
            if depth * plane_bytes > SLAB_BYTES:
                depth = 1
            z0 = (z // depth) * depth
            z1 = min(nz, z0 + depth)
            try:
                block = np.asarray(self._read_block(z0, z1))
            except SourceError:
                raise
            except Exception as exc:  # the libraries raise many types for bad data
                raise SourceError(
                    self.path, f"cannot decode planes {z0}-{z1 - 1} ({type(exc).__name__}: {exc})"
                ) from exc
            if block.shape != (z1 - z0, *self.shape[1:]):
                raise SourceError(
                    self.path,
                    f"decoded planes {z0}-{z1 - 1} have shape {block.shape}, expected "
                    f"{(z1 - z0, *self.shape[1:])}",
                )
            self._slab = (z0, block) if depth > 1 else None
            return self._check_plane(block[z - z0], self.path)

    def iter_planes(self, *, prefetch: int = 4, workers: int = 2) -> Iterator[np.ndarray]:
        """The planes in Z order, from the slab cache (one decode per chunk)."""
        for z in range(self.shape[0]):
            yield self.read_plane(z)
        self._slab = None


def _select(
    path: Path, what: str, value: int | str | None, count: int, names: Sequence[str] = ()
) -> int:
    """Index of a channel/time point given as an index or a name."""
    if value is None:
        if count > 1:
            raise SourceError(
                path,
                f"the file has {count} {what}s"
                + (f" ({', '.join(names)})" if names else "")
                + f"; choose one (--{'time' if what == 'time point' else what})",
            )
        return 0
    if isinstance(value, str) and not value.isdigit():
        if value not in names:
            raise SourceError(path, f"no {what} named {value!r} ({what}s: {list(names)})")
        return list(names).index(value)
    idx = int(value)
    if not 0 <= idx < count:
        raise SourceError(path, f"{what} {idx} does not exist ({count} {what}(s))")
    return idx


# --------------------------------------------------------------------------- streams


class _Stream:
    """Planes of raw C-order data at *offset* of a file, plain or compressed.

    Plain files are read with one ``seek``/``read`` per plane (any order). gzip, bzip2
    and xz streams are decompressed in order through one handle; reading an earlier
    plane restarts the stream (documented cost).
    """

    def __init__(
        self,
        path: Path,
        offset: int,
        dtype: np.dtype,
        plane_shape: tuple[int, int],
        compression: str | None,
        *,
        file_offset: int = 0,
    ):
        self.path = path
        self.offset = offset
        self.file_offset = file_offset
        self.dtype = dtype
        self.plane_shape = plane_shape
        self.plane_bytes = plane_shape[0] * plane_shape[1] * dtype.itemsize
        self.compression = compression
        self._fh: Any = None
        self._raw: Any = None

    def _handle(self) -> Any:
        if self._fh is None:
            self._raw = open(self.path, "rb")  # noqa: SIM115 - kept open across planes
            self._raw.seek(self.file_offset)
            if self.compression == "gzip":
                self._fh = gzip.GzipFile(fileobj=self._raw, mode="rb")
            elif self.compression == "bzip2":
                self._fh = bz2.BZ2File(self._raw, mode="rb")
            else:
                self._fh = lzma.LZMAFile(self._raw, mode="rb")  # noqa: SIM115
        return self._fh

    def close(self) -> None:
        for h in (self._fh, self._raw):
            if h is not None:
                h.close()
        self._fh = self._raw = None

    def read(self, z0: int, z1: int) -> np.ndarray:
        n = (z1 - z0) * self.plane_bytes
        start = self.offset + z0 * self.plane_bytes
        try:
            if self.compression is None:
                with open(self.path, "rb") as fh:
                    fh.seek(self.file_offset + start)
                    buf = fh.read(n)
            else:
                fh = self._handle()
                if fh.tell() > start:
                    self.close()
                    fh = self._handle()
                fh.seek(start)
                buf = fh.read(n)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            self.close()
            raise SourceError(self.path, f"cannot read pixel data ({exc})") from exc
        if len(buf) != n:
            raise SourceError(
                self.path,
                f"pixel data is truncated: planes {z0}-{z1 - 1} need {n} bytes at data "
                f"offset {start}, {len(buf)} found",
            )
        arr = np.frombuffer(buf, dtype=self.dtype).reshape((z1 - z0, *self.plane_shape))
        return arr.astype(self.dtype.newbyteorder("="), copy=False)


def _sniff_compression(path: Path, offset: int = 0) -> str | None:
    with open(path, "rb") as fh:
        fh.seek(offset)
        head = fh.read(6)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    return None


# --------------------------------------------------------------------------- MRC

#: IMOD's stamp in the MRC header (bytes 152-155) and the flag for unsigned bytes.
IMOD_STAMP = 1146047817


class MRCSource(ContainerSource):
    """An MRC / CCP4 map (``.mrc``, ``.map``, ``.rec``, ``.mrcs``; gzip or bzip2
    compressed too) as ``(z, y, x)`` = the stored (sections, rows, columns).

    Voxel sizes in Å from ``CELLA / MX, MY, MZ``, assigned to the stored axes through
    ``MAPC/MAPR/MAPS``, converted exactly to µm; origin from ``ORIGIN`` (Å) or
    ``N[XYZ]START`` (see the module docstring). A volume stack (``ISPG`` 401) or image
    stack is read as its sections.

    Raises:
        SourceError: not an MRC file, an unsupported mode (complex, 4-bit), a file
            shorter than its header says, a zero cell size.
    """

    format = "mrc"

    def __init__(self, path: Path, **_: Any):
        self._init(path)
        _regular_file(self.path)
        import warnings

        import mrcfile
        from mrcfile.utils import data_dtype_from_header

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with mrcfile.open(self.path, header_only=True, permissive=True) as mrc:
                    header = mrc.header.copy()
        except Exception as exc:  # mrcfile raises ValueError/EOFError/OSError
            raise SourceError(self.path, f"not a readable MRC file ({exc})") from exc
        problems = [str(w.message) for w in caught]
        if header is None or (len(problems) and any("map ID" in p for p in problems)):
            raise SourceError(
                self.path, "not a readable MRC file: " + ("; ".join(problems) or "no header")
            )
        nx, ny, nz = (int(header.nx), int(header.ny), int(header.nz))
        mode = int(header.mode)
        self._note("NX, NY, NZ", [nx, ny, nz])
        self._note("MODE", mode)
        if min(nx, ny, nz) < 1:
            raise SourceError(self.path, f"header dimensions {nx} x {ny} x {nz} are not positive")
        try:
            dtype = np.dtype(data_dtype_from_header(header))
        except ValueError as exc:
            raise SourceError(self.path, f"MRC mode {mode} is not supported ({exc})") from exc
        if dtype.kind == "c":
            raise SourceError(self.path, f"MRC mode {mode} holds complex numbers; not an image")
        extra2 = bytes(header.extra2)
        stamp = int(np.frombuffer(extra2[40:44], dtype=dtype.byteorder.replace("|", "=") + "i4")[0])
        flags = int(np.frombuffer(extra2[44:48], dtype=dtype.byteorder.replace("|", "=") + "i4")[0])
        if mode == 0:
            unsigned = stamp == IMOD_STAMP and bool(flags & 1)
            self._note("imodStamp", stamp)
            self._note("imodFlags", flags)
            dtype = np.dtype(np.uint8 if unsigned else np.int8)
        mapcrs = [int(header.mapc), int(header.mapr), int(header.maps)]
        self._note("MAPC, MAPR, MAPS", mapcrs)
        if sorted(mapcrs) != [1, 2, 3]:
            mapcrs = [1, 2, 3]  # MRC2014: invalid axis mapping means the default
        cella = [header.cella.x, header.cella.y, header.cella.z]
        mxyz = [int(header.mx), int(header.my), int(header.mz)]
        self._note("CELLA (Å)", [float(exact_decimal(v)) for v in cella])
        self._note("MX, MY, MZ", mxyz)
        origin_xyz = [header.origin.x, header.origin.y, header.origin.z]
        starts_crs = [int(header.nxstart), int(header.nystart), int(header.nzstart)]
        self._note("ORIGIN (Å)", [float(exact_decimal(v)) for v in origin_xyz])
        self._note("NXSTART, NYSTART, NZSTART", starts_crs)
        self.unit = "Å"
        physical: tuple[float, float, float] | None = None
        origin: tuple[float, float, float] | None = None
        # voxel size per crystallographic axis X, Y, Z (Å, exact decimal)
        if all(m > 0 for m in mxyz) and all(exact_decimal(c) > 0 for c in cella):
            with localcontext() as ctx:
                ctx.prec = 40
                voxel_xyz = [exact_decimal(c) / m for c, m in zip(cella, mxyz, strict=True)]
                # stored axis (columns, rows, sections) -> crystallographic axis
                voxel_crs = [voxel_xyz[a - 1] for a in mapcrs]
                zyx = [voxel_crs[2], voxel_crs[1], voxel_crs[0]]
                factor = UNIT_TO_UM_EXACT["Å"]
                physical = _positive(
                    [round_sig(v * factor) for v in zyx], self.path, "MRC voxel size"
                )
                org_xyz = [exact_decimal(v) for v in origin_xyz]
                if any(v != 0 for v in org_xyz):
                    org_crs = [org_xyz[a - 1] for a in mapcrs]
                else:
                    org_crs = [s * v for s, v in zip(starts_crs, voxel_crs, strict=True)]
                origin = (
                    round_sig(org_crs[2] * factor),
                    round_sig(org_crs[1] * factor),
                    round_sig(org_crs[0] * factor),
                )
        self._note("ISPG", int(header.ispg))
        self._note("NSYMBT", int(header.nsymbt))
        self._note("EXTTYP", bytes(header.exttyp).decode("ascii", "replace").strip("\x00 "))
        labels = [
            bytes(lab).decode("ascii", "replace").strip("\x00 ")
            for lab in header.label[: int(header.nlabl)]
        ]
        self._note("LABELS", labels)
        offset = 1024 + int(header.nsymbt)
        compression = _sniff_compression(self.path)
        if compression is None:
            need = offset + nx * ny * nz * dtype.itemsize
            size = self.path.stat().st_size
            if size < need:
                raise SourceError(
                    self.path,
                    f"file is truncated: {size} bytes, the header describes {need} "
                    f"({nx} x {ny} x {nz} mode {mode} after {offset} header bytes)",
                )
        self._note("compression", compression or "none")
        self._stream = _Stream(self.path, offset, dtype, (ny, nx), compression)
        self._depth = 1 if compression is None else max(1, (8 << 20) // (nx * ny * dtype.itemsize))
        self._set_info((nz, ny, nx), dtype, physical, origin)
        self.file_shape = (nz, ny, nx)

    def _read_block(self, z0: int, z1: int) -> np.ndarray:
        return self._stream.read(z0, z1)


# --------------------------------------------------------------------------- NRRD


class NRRDSource(ContainerSource):
    """An NRRD image (``.nrrd`` attached, ``.nhdr`` detached), 2D or 3D, one scalar
    per voxel, as ``(z, y, x)`` (NRRD lists axes fastest first: ``sizes`` is
    ``x y z``).

    Sizes from ``spacings`` (units from ``units``) or a diagonal ``space directions``
    matrix (units from ``space units``); the magnitude is the size, a negative
    direction is kept in the metadata. No unit in the file: no physical size (the spec
    must give one). ``space origin`` is the origin.

    Raises:
        SourceError: unreadable header, more than 3 axes, an oblique direction
            matrix, an unknown unit, a data file shorter than the header says, a
            detached data file outside the header's folder or missing.
    """

    format = "nrrd"

    def __init__(self, path: Path, **_: Any):
        self._init(path)
        _regular_file(self.path)
        import nrrd
        from nrrd.reader import _determine_datatype

        try:
            with open(self.path, "rb") as fh:
                header = nrrd.read_header(fh)
                data_offset = fh.tell()
        except Exception as exc:  # pynrrd raises NRRDError, UnicodeError ...
            raise SourceError(self.path, f"not a readable NRRD header ({exc})") from exc
        for key, value in header.items():
            self._note(key, value)
        sizes = [int(s) for s in header.get("sizes", [])]
        if len(sizes) not in (2, 3) or min(sizes, default=0) < 1:
            raise SourceError(
                self.path,
                f"NRRD sizes {sizes} are not a 2D or 3D scalar image",
                hint="one channel per file (a vector/RGB axis is not supported)",
            )
        if len(sizes) == 2:
            sizes = [*sizes, 1]
        nx, ny, nz = sizes
        try:
            dtype = np.dtype(_determine_datatype(header))
        except Exception as exc:
            raise SourceError(self.path, f"NRRD type unsupported ({exc})") from exc
        encoding = str(header.get("encoding", "raw")).lower()
        data_file = header.get("data file") or header.get("datafile")
        self._data_path = self.path
        if data_file:
            if isinstance(data_file, list | tuple) or " " in str(data_file).strip():
                raise SourceError(self.path, f"multiple detached data files {data_file!r}")
            target = (self.path.parent / str(data_file)).resolve()
            from bidspack.safety import is_within

            if not is_within(target, self.path.parent.resolve()):
                raise SourceError(
                    self.path, f"detached data file {data_file!r} lies outside its folder"
                )
            if not target.is_file():
                raise SourceError(self.path, f"detached data file {data_file!r} not found")
            self._data_path = target
            self.files = (self.path, target)
            data_offset = 0
        line_skip = int(header.get("line skip", header.get("lineskip", 0)))
        byte_skip = int(header.get("byte skip", header.get("byteskip", 0)))
        nbytes = nx * ny * nz * dtype.itemsize
        if line_skip:
            with open(self._data_path, "rb") as data_fh:
                data_fh.seek(data_offset)
                for _line in range(line_skip):
                    data_fh.readline()
                data_offset = data_fh.tell()
        self._ascii: np.ndarray | None = None
        compression = {"raw": None, "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}
        if encoding in compression:
            comp = compression[encoding]
            if comp is None:
                if byte_skip == -1:
                    byte_skip = self._data_path.stat().st_size - data_offset - nbytes
                size = self._data_path.stat().st_size
                if size < data_offset + byte_skip + nbytes:
                    raise SourceError(
                        self._data_path,
                        f"data is truncated: {size} bytes, the header {self.path.name} "
                        f"describes {data_offset + byte_skip + nbytes}",
                    )
                self._stream = _Stream(
                    self._data_path, byte_skip, dtype, (ny, nx), None, file_offset=data_offset
                )
            else:
                if byte_skip < 0:
                    raise SourceError(self.path, "byte skip -1 is only valid for raw encoding")
                self._stream = _Stream(
                    self._data_path, byte_skip, dtype, (ny, nx), comp, file_offset=data_offset
                )
                self._depth = max(1, (8 << 20) // (nx * ny * dtype.itemsize))
        elif encoding in ("ascii", "text", "txt", "hex"):
            self._stream = None  # type: ignore[assignment]
        else:
            raise SourceError(self.path, f"NRRD encoding {encoding!r} is not supported")
        self._encoding = encoding
        self._header = header
        physical, self.unit = self._spacing(header, len(header["sizes"]))
        origin: tuple[float, float, float] | None = None
        if "space origin" in header and self.unit is not None:
            so = [float(v) for v in np.asarray(header["space origin"], float).ravel()]
            if len(so) == len(header["sizes"]) and all(math.isfinite(v) for v in so):
                so = [*so, 0.0] if len(so) == 2 else so
                o = [to_um(repr(v), self.unit, self.path, "space origin") for v in so]
                origin = (o[2], o[1], o[0])
        self._set_info((nz, ny, nx), dtype, physical, origin)
        self.file_shape = (nz, ny, nx)

    def _spacing(self, header: Mapping[str, Any], ndim: int) -> tuple[Any, str | None]:
        spacings: list[Any] | None = None
        units: list[str] = []
        if "space directions" in header:
            m = np.asarray(header["space directions"], dtype=float)
            if m.shape != (ndim, ndim) or not np.all(np.isfinite(m)):
                raise SourceError(
                    self.path, f"space directions {m.tolist()} are not a {ndim}x{ndim} matrix"
                )
            off = m - np.diag(np.diag(m))
            if np.any(off != 0):
                raise SourceError(
                    self.path,
                    f"space directions {m.tolist()} are oblique (not diagonal); "
                    "a rotated grid cannot be written as a BIDS voxel size",
                    hint="resample the image onto the axes first",
                )
            spacings = [repr(abs(float(v))) for v in np.diag(m)]
            units = [str(u) for u in header.get("space units", [])]
        elif "spacings" in header:
            spacings = [repr(float(v)) for v in header["spacings"]]
            units = [str(u) for u in header.get("units", [])]
        if spacings is None:
            return None, None
        if not units or all(not u for u in units):
            return None, None  # no unit in the file: the spec must give the size
        if len(units) != ndim:
            raise SourceError(self.path, f"units {units} do not match {ndim} axes")
        factors = {unit_factor(u, self.path, "NRRD") for u in units}
        unit = units[0]
        sizes_um = [
            to_um(s, u, self.path, "NRRD spacing") for s, u in zip(spacings, units, strict=True)
        ]
        if len(factors) > 1:
            unit = "µm"  # mixed units: converted per axis
        if ndim == 2:
            sizes_um = [*sizes_um, 1.0]
        return _positive([sizes_um[2], sizes_um[1], sizes_um[0]], self.path, "NRRD spacing"), unit

    def _read_block(self, z0: int, z1: int) -> np.ndarray:
        if self._stream is not None:
            return self._stream.read(z0, z1)
        if self._ascii is None:
            import nrrd

            check_plane_budget(
                self.path, (self.shape[0] * self.shape[1], self.shape[2]), self.dtype
            )
            data, _ = nrrd.read(str(self.path), index_order="C")
            self._ascii = np.asarray(data, dtype=self.dtype).reshape(self.shape)
        return self._ascii[z0:z1]


# --------------------------------------------------------------------------- HDF5

#: HDF5 attribute names read for the voxel size, in the dataset's axis order (z, y, x).
HDF5_VOXEL_ATTRS = ("element_size_um", "resolution", "voxel_size", "pixelResolution")
#: Attribute names read for the unit of the sizes and offsets.
HDF5_UNIT_ATTRS = ("unit", "units")
#: Attribute names read for the position of the first voxel (z, y, x).
HDF5_OFFSET_ATTRS = ("offset", "translation")


def split_dataset_path(path: Path | str) -> tuple[Path, str | None]:
    """``"a.h5:/g/d"`` -> ``(Path("a.h5"), "/g/d")``; a plain path -> ``(path, None)``."""
    text = str(path)
    m = re.match(r"^(.*\.(?:h5|hdf5|hdf|he5|ims|n5|zarr))(?::|:/)(/?.*)$", text, re.I)
    if m and not Path(text).exists():
        return Path(m.group(1)), "/" + m.group(2).lstrip("/")
    return Path(path), None


def _hdf5_file(path: Path) -> Any:
    import h5py

    _regular_file(path)
    try:
        return h5py.File(path, "r")
    except Exception as exc:  # OSError with HDF5's own text
        raise SourceError(path, f"not a readable HDF5 file ({exc})") from exc


def hdf5_datasets(h5: Any) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """``(path, shape, dtype)`` of every 2D-5D numeric dataset of an open h5py file."""
    import h5py

    found: list[tuple[str, tuple[int, ...], np.dtype]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and 2 <= obj.ndim <= 5 and obj.dtype.kind in "uifb":
            found.append(("/" + name, tuple(obj.shape), obj.dtype))

    h5.visititems(visit)
    return sorted(found)


def _attr_sizes(
    attrs: Mapping[str, Any], names: Sequence[str], ndim: int
) -> tuple[str, list[Any], str | None] | None:
    """First of *names* in *attrs*: ``(name, values in z,y,x order, unit or None)``.

    A ``pixelResolution`` given as N5 does (``{"dimensions": [x, y, z], "unit": u}``,
    as a dict or JSON text) is reversed to z, y, x; arrays are taken as stored.
    """
    for name in names:
        if name not in attrs:
            continue
        raw = attrs[name]
        unit = None
        if isinstance(raw, bytes | str | np.bytes_):
            try:
                raw = json.loads(_decode_text(raw))
            except ValueError:
                return name, [_decode_text(raw)], None
        if isinstance(raw, Mapping):
            unit = raw.get("unit")
            vals = list(raw.get("dimensions", []))[::-1]
        else:
            arr = np.asarray(raw)
            vals = [v for v in arr.ravel().tolist()] if arr.dtype.kind != "f" else list(arr.ravel())
        if name == "element_size_um":
            unit = "um"
        return name, vals[-ndim:] if len(vals) > ndim else vals, unit
    return None


class HDF5Source(ContainerSource):
    """One dataset of an HDF5 file, ``(z, y, x)`` (a 2D dataset is one plane).

    Args:
        path: the file, or ``file.h5:/group/dataset``.
        dataset: the dataset path (default: the one from *path*, else the only 2D/3D
            numeric dataset of the file).
        voxel_attrs: attribute names for the voxel size, first found wins (default
            :data:`HDF5_VOXEL_ATTRS`: ilastik/Fiji ``element_size_um`` in µm,
            ``resolution``, ``voxel_size``, ``pixelResolution``), looked up on the
            dataset, then on its parent group; values in the dataset's axis order.
        unit_attrs: attribute names for their unit (default ``unit``, ``units``: one
            unit or one per axis); without one only ``element_size_um`` has a size.
        offset_attrs: attribute names for the first voxel's position (``offset``,
            ``translation``), in the same unit.

    Raises:
        SourceError: not an HDF5 file, no or several candidate datasets, a dataset
            that is not 2D/3D numeric, an unknown unit, two voxel-size attributes that
            contradict each other.
    """

    format = "hdf5"

    def __init__(
        self,
        path: Path,
        *,
        dataset: str | None = None,
        voxel_attrs: Sequence[str] = HDF5_VOXEL_ATTRS,
        unit_attrs: Sequence[str] = HDF5_UNIT_ATTRS,
        offset_attrs: Sequence[str] = HDF5_OFFSET_ATTRS,
        **_: Any,
    ):
        file, inner = split_dataset_path(path)
        self._init(file)
        dataset = dataset or inner
        h5 = _hdf5_file(self.path)
        try:
            if dataset is None:
                cands = [d for d in hdf5_datasets(h5) if len(d[1]) in (2, 3)]
                if len(cands) != 1:
                    names = ", ".join(d[0] for d in cands) or "none"
                    raise SourceError(
                        self.path,
                        f"{len(cands)} 2D/3D datasets ({names}); name one",
                        hint=f"use {self.path}:/path/to/dataset",
                    )
                dataset = cands[0][0]
            if dataset not in h5 or not hasattr(h5[dataset], "shape"):
                raise SourceError(self.path, f"no dataset {dataset!r} in the file")
            ds = h5[dataset]
            if ds.ndim not in (2, 3) or ds.dtype.kind not in "uifb":
                raise SourceError(
                    self.path,
                    f"dataset {dataset} has shape {ds.shape} {ds.dtype}, not 2D/3D numeric",
                )
            self.dataset = dataset
            self._note("dataset", dataset)
            self._note("shape", list(ds.shape))
            self._note("chunks", list(ds.chunks) if ds.chunks else None)
            self._note("compression", ds.compression)
            shape = (1, *ds.shape) if ds.ndim == 2 else tuple(ds.shape)
            self.file_shape = tuple(ds.shape)
            self.axes = "ZYX" if ds.ndim == 3 else "YX"
            self._depth = int(ds.chunks[0]) if ds.chunks and ds.ndim == 3 else 1
            physical, origin = self._geometry(ds, voxel_attrs, unit_attrs, offset_attrs)
            dtype = np.dtype(bool) if ds.dtype.kind == "b" else ds.dtype
            self._set_info(shape, dtype.newbyteorder("="), physical, origin)
        except SourceError:
            h5.close()
            raise
        except Exception as exc:
            h5.close()
            raise SourceError(self.path, f"unreadable HDF5 metadata ({exc})") from exc
        self._h5 = h5
        self._ds = ds

    def _geometry(
        self,
        ds: Any,
        voxel_attrs: Sequence[str],
        unit_attrs: Sequence[str],
        offset_attrs: Sequence[str],
    ) -> tuple[Any, Any]:
        ndim = ds.ndim
        physical = None
        origin = None
        for holder in (ds, ds.parent):
            attrs = dict(holder.attrs)
            found_unit = None
            for uname in unit_attrs:
                if uname in attrs:
                    u = attrs[uname]
                    units = (
                        [_decode_text(x) for x in u]
                        if isinstance(u, np.ndarray) and u.dtype.kind != "S" and u.ndim
                        else [_decode_text(u)]
                    )
                    units = [x for x in units if x]
                    self._note(f"{holder.name}@{uname}", units)
                    if len({unit_factor(x, self.path, f"attribute {uname}") for x in units}) > 1:
                        raise SourceError(
                            self.path, f"attribute {uname} {units} mixes units; not supported"
                        )
                    found_unit = units[0] if units else None
                    break
            sizes: list[tuple[str, tuple[float, float, float]]] = []
            for name in voxel_attrs:
                got = _attr_sizes(attrs, [name], ndim)
                if got is None:
                    continue
                aname, vals, aunit = got
                self._note(f"{holder.name}@{aname}", vals)
                unit = aunit or found_unit
                if unit is None:
                    continue  # no unit: recorded, no size
                self.unit = str(unit)
                try:
                    um = [to_um(v, unit, self.path, f"attribute {aname}") for v in vals]
                except SourceError:
                    raise
                if len(um) == 2:
                    um = [1.0, *um]
                sizes.append((aname, _positive(um, self.path, f"attribute {aname}")))
            if sizes:
                first = sizes[0]
                for other in sizes[1:]:
                    if not all(
                        math.isclose(a, b, rel_tol=1e-9)
                        for a, b in zip(first[1], other[1], strict=True)
                    ):
                        raise SourceError(
                            self.path,
                            f"voxel sizes contradict: {first[0]} = {list(first[1])} µm, "
                            f"{other[0]} = {list(other[1])} µm",
                        )
                physical = first[1]
                for oname in offset_attrs:
                    if oname in attrs:
                        vals = [float(v) for v in np.asarray(attrs[oname], float).ravel()]
                        self._note(f"{holder.name}@{oname}", vals)
                        o = [
                            to_um(repr(v), self.unit, self.path, f"attribute {oname}") for v in vals
                        ]
                        if len(o) == 2:
                            o = [0.0, *o]
                        if len(o) == 3:
                            origin = (o[0], o[1], o[2])
                        break
                break
        return physical, origin

    def _read_block(self, z0: int, z1: int) -> np.ndarray:
        if self._ds.ndim == 2:
            return np.asarray(self._ds[()])[None]
        return np.asarray(self._ds[z0:z1])


# --------------------------------------------------------------------------- Imaris


class ImarisSource(ContainerSource):
    """One channel and time point of an Imaris ``.ims`` file (HDF5), level 0,
    ``(z, y, x)``.

    Sizes ``X``/``Y``/``Z`` and extents ``ExtMin0..2``/``ExtMax0..2`` (X, Y, Z) with
    ``Unit`` come from ``DataSetInfo/Image`` (arrays of single-byte strings). The stored
    ``Data`` array is padded to whole chunks: the padding beyond the stated size is
    cropped. Voxel = (ExtMax - ExtMin) / size; the extents are the outer edges, so the
    origin (first voxel centre) is ExtMin + voxel / 2.

    Args:
        channel: channel index or name (``DataSetInfo/Channel c`` ``Name``); required
            when there are several.
        time: time point; required when there are several.
        level: resolution level (default 0).

    Raises:
        SourceError: not an Imaris file, missing groups or attributes, a channel or
            time point that does not exist, an unknown unit.
    """

    format = "imaris"

    def __init__(
        self,
        path: Path,
        *,
        channel: int | str | None = None,
        time: int | None = None,
        level: int = 0,
        **_: Any,
    ):
        self._init(path)
        h5 = _hdf5_file(self.path)
        try:
            self._open(h5, channel, time, level)
        except SourceError:
            h5.close()
            raise
        except Exception as exc:
            h5.close()
            raise SourceError(
                self.path, f"not a readable Imaris file ({type(exc).__name__}: {exc})"
            ) from exc
        self._h5 = h5

    def _open(self, h5: Any, channel: int | str | None, time: int | None, level: int) -> None:
        if "DataSet" not in h5 or "DataSetInfo/Image" not in h5:
            raise SourceError(self.path, "not an Imaris file (no DataSet or DataSetInfo/Image)")
        for k, v in h5.attrs.items():
            self._note(f"/@{k}", _decode_text(v))
        image = {k: _decode_text(v) for k, v in h5["DataSetInfo/Image"].attrs.items()}
        for k, v in image.items():
            self._note(f"DataSetInfo/Image@{k}", v)
        levels = sorted(
            (k for k in h5["DataSet"] if k.startswith("ResolutionLevel ")),
            key=lambda k: int(k.split()[-1]),
        )
        self.levels = len(levels)
        if not 0 <= level < len(levels):
            raise SourceError(self.path, f"resolution level {level} does not exist ({len(levels)})")
        lv = h5[f"DataSet/ResolutionLevel {level}"]
        times = [k for k in lv if k.startswith("TimePoint ")]
        tidx = _select(self.path, "time point", time, len(times))
        tp = lv[f"TimePoint {tidx}"]
        chans = sorted(
            (k for k in tp if k.startswith("Channel ")), key=lambda k: int(k.split()[-1])
        )
        names = []
        for i in range(len(chans)):
            info = h5.get(f"DataSetInfo/Channel {i}")
            name = (
                _decode_text(info.attrs["Name"])
                if info is not None and "Name" in info.attrs
                else ""
            )
            names.append("" if name == "(name not specified)" else name)
        self.channel_names = tuple(names)
        cidx = _select(self.path, "channel", channel, len(chans), [n for n in names])
        self.channel, self.time = cidx, tidx
        self.n_channels, self.n_times = len(chans), len(times)
        self.channel_name = names[cidx] or None
        ds = tp[f"Channel {cidx}/Data"]
        try:
            size_xyz = [int(image[k]) for k in ("X", "Y", "Z")]
        except (KeyError, ValueError) as exc:
            raise SourceError(self.path, f"DataSetInfo/Image lacks X/Y/Z sizes ({exc})") from exc
        if level:
            attrs = {k: _decode_text(v) for k, v in tp[f"Channel {cidx}"].attrs.items()}
            size_xyz = [
                int(attrs.get(f"ImageSize{a}", ds.shape[2 - i])) for i, a in enumerate("XYZ")
            ]
        if ds.ndim != 3 or any(s > d for s, d in zip(size_xyz[::-1], ds.shape, strict=True)):
            raise SourceError(
                self.path,
                f"Data {ds.shape} is smaller than the stated size {size_xyz[::-1]} (z, y, x)",
            )
        self._note("Data shape (padded)", list(ds.shape))
        self.file_shape = (len(times), len(chans), *ds.shape)
        self.axes = "TCZYX"
        self._depth = int(ds.chunks[0]) if ds.chunks else 1
        self._ds = ds
        self.unit = image.get("Unit") or None
        physical = origin = None
        if self.unit:
            try:
                emin = [exact_decimal(image[f"ExtMin{i}"]) for i in range(3)]
                emax = [exact_decimal(image[f"ExtMax{i}"]) for i in range(3)]
            except (KeyError, ValueError) as exc:
                raise SourceError(self.path, f"DataSetInfo/Image extents unusable ({exc})") from exc
            full = [int(image[k]) for k in ("X", "Y", "Z")]
            factor = unit_factor(self.unit, self.path, "DataSetInfo/Image Unit")
            with localcontext() as ctx:
                ctx.prec = 40
                vox = [(emax[i] - emin[i]) / full[i] for i in range(3)]
                phys = [round_sig(v * factor) for v in vox]
                org = [round_sig((emin[i] + vox[i] / 2) * factor) for i in range(3)]
            physical = _positive([phys[2], phys[1], phys[0]], self.path, "Imaris extents")
            if level:
                physical = _positive(
                    [physical[i] * full[2 - i] / size_xyz[2 - i] for i in range(3)],
                    self.path,
                    "Imaris extents",
                )
            origin = (org[2], org[1], org[0])
        self._crop = (size_xyz[2], size_xyz[1], size_xyz[0])
        self.file_shape = (len(times), len(chans), *self._crop)
        self._set_info(self._crop, ds.dtype.newbyteorder("="), physical, origin)

    def _read_block(self, z0: int, z1: int) -> np.ndarray:
        _, y, x = self._crop
        return np.asarray(self._ds[z0:z1, :y, :x])


# --------------------------------------------------------------------------- N5


class N5Array:
    """One N5 dataset read directly from its folder (the N5 file-system format).

    Attributes:
        shape: C order (z, y, x) — N5 ``dimensions`` reversed.
        chunks: C order block size.
        dtype: big-endian dtype as stored.
        attrs: the dataset's ``attributes.json``.
    """

    _TYPES = (
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "float32",
        "float64",
    )

    def __init__(self, path: Path, attrs: Mapping[str, Any]):
        self.path = path
        self.attrs = dict(attrs)
        try:
            dims = [int(d) for d in attrs["dimensions"]]
            block = [int(b) for b in attrs["blockSize"]]
            dtype = str(attrs["dataType"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(path / "attributes.json", f"not an N5 dataset ({exc})") from exc
        if dtype not in self._TYPES:
            raise SourceError(path / "attributes.json", f"N5 dataType {dtype!r} not supported")
        if len(dims) != len(block) or min(block, default=0) < 1 or min(dims, default=0) < 0:
            raise SourceError(
                path / "attributes.json", f"dimensions {dims} / blockSize {block} invalid"
            )
        comp = attrs.get("compression", {"type": attrs.get("compressionType", "raw")})
        self.compression = dict(comp) if isinstance(comp, Mapping) else {"type": str(comp)}
        if self.compression.get("type") not in (
            "raw",
            "gzip",
            "bzip2",
            "xz",
            "zstd",
            "blosc",
            "lz4",
        ):
            raise SourceError(
                path / "attributes.json", f"N5 compression {self.compression} not supported"
            )
        self.shape = tuple(dims[::-1])
        self.chunks = tuple(block[::-1])
        self.dtype = np.dtype(dtype).newbyteorder(">")
        self.ndim = len(dims)

    def _decompress(self, data: bytes) -> bytes:
        kind = self.compression.get("type")
        if kind == "raw":
            return data
        if kind == "gzip":
            return zlib.decompress(data, 47)  # gzip or zlib header
        if kind == "bzip2":
            return bz2.decompress(data)
        if kind == "xz":
            return lzma.decompress(data)
        import numcodecs

        codec = {"zstd": numcodecs.Zstd, "blosc": numcodecs.Blosc, "lz4": numcodecs.LZ4}[
            str(kind)
        ]()
        return bytes(codec.decode(data))

    def read_block(self, index: Sequence[int]) -> np.ndarray | None:
        """The block at C-order grid *index*, C order, or ``None`` if absent."""
        file = self.path.joinpath(*(str(i) for i in index[::-1]))
        try:
            raw = file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SourceError(file, f"cannot read N5 block ({exc})") from exc
        if len(raw) < 4:
            raise SourceError(file, "N5 block is truncated (no header)")
        mode, nd = np.frombuffer(raw[:4], ">u2")
        if mode not in (0, 1) or nd != self.ndim:
            raise SourceError(file, f"N5 block header mode {mode} with {nd} dimensions is invalid")
        hdr = 4 + 4 * int(nd)
        if len(raw) < hdr:
            raise SourceError(file, "N5 block is truncated (header)")
        bshape = [int(v) for v in np.frombuffer(raw[4:hdr], ">u4")][::-1]
        if mode == 1:
            hdr += 4
        try:
            data = self._decompress(raw[hdr:])
        except Exception as exc:
            raise SourceError(file, f"N5 block does not decompress ({exc})") from exc
        n = int(np.prod(bshape)) * self.dtype.itemsize
        if len(data) < n:
            raise SourceError(file, f"N5 block is truncated: {len(data)} bytes, {n} expected")
        return np.frombuffer(data[:n], self.dtype).reshape(bshape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """A box given as C-order slices (steps of 1) for every axis."""
        starts = [k.start or 0 for k in key]
        stops = [
            min(k.stop if k.stop is not None else s, s)
            for k, s in zip(key, self.shape, strict=True)
        ]
        out = np.zeros(
            [b - a for a, b in zip(starts, stops, strict=True)], self.dtype.newbyteorder("=")
        )
        ranges = [
            range(a // c, (b - 1) // c + 1) if b > a else range(0)
            for a, b, c in zip(starts, stops, self.chunks, strict=True)
        ]
        import itertools

        for idx in itertools.product(*ranges):
            block = self.read_block(idx)
            if block is None:
                continue
            lo = [i * c for i, c in zip(idx, self.chunks, strict=True)]
            src, dst = [], []
            for d in range(self.ndim):
                a = max(starts[d], lo[d])
                b = min(stops[d], lo[d] + block.shape[d])
                if b <= a:
                    break
                src.append(slice(a - lo[d], b - lo[d]))
                dst.append(slice(a - starts[d], b - starts[d]))
            else:
                out[tuple(dst)] = block[tuple(src)]
        return out


def _read_json(file: Path) -> dict[str, Any]:
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(file, f"unreadable JSON metadata ({exc})") from exc
    if not isinstance(doc, dict):
        raise SourceError(file, "metadata is not a JSON object")
    return doc


def is_n5(path: Path) -> bool:
    """True if *path* is a folder inside or at the root of an N5 container (an
    ``attributes.json``, or a ``.n5`` suffix on it or a parent)."""
    p = Path(path)
    if (p / "attributes.json").is_file():
        return True
    return any(part.lower().endswith(".n5") for part in p.parts)


def is_zarr(path: Path) -> bool:
    """True if *path* is a Zarr v2/v3 group or array folder."""
    p = Path(path)
    return any((p / f).is_file() for f in ("zarr.json", ".zarray", ".zgroup", ".zattrs"))


# --------------------------------------------------------------------------- N5 / Zarr


def _cellmap_geometry(
    attrs: Mapping[str, Any], path: Path, ndim: int
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None, str | None, dict[str, Any]]:
    """Sizes and origin (C order, µm) from N5/CellMap ``pixelResolution`` (fastest axis
    first) and ``transform`` (``axes``, ``scale``, ``translate``, ``units`` in C order),
    and ``resolution`` (C order, nm when no unit: the CREMI/COSEM convention is not
    assumed: without a unit no size). They must agree when both are present."""
    noted: dict[str, Any] = {}
    found: list[tuple[str, list[float], list[float] | None]] = []
    unit_seen = None
    pr = attrs.get("pixelResolution")
    if isinstance(pr, Mapping) and "dimensions" in pr:
        noted["pixelResolution"] = pr
        unit = pr.get("unit")
        if unit:
            dims = list(pr["dimensions"])[::-1]
            found.append(
                ("pixelResolution", [to_um(v, unit, path, "pixelResolution") for v in dims], None)
            )
            unit_seen = str(unit)
    tr = attrs.get("transform")
    if isinstance(tr, Mapping) and "scale" in tr:
        noted["transform"] = tr
        units = tr.get("units") or []
        if units:
            scale = [
                to_um(v, u, path, "transform.scale")
                for v, u in zip(tr["scale"], units, strict=False)
            ]
            trans = tr.get("translate")
            off = (
                [
                    to_um(v, u, path, "transform.translate")
                    for v, u in zip(trans, units, strict=False)
                ]
                if trans is not None
                else None
            )
            axes = [str(a).lower() for a in tr.get("axes", [])]
            if axes and set("zyx") <= set(axes) and len(axes) == len(scale):
                order = [axes.index(a) for a in "zyx"[3 - min(3, ndim) :]]
                scale = [scale[i] for i in order]
                off = [off[i] for i in order] if off else None
            found.append(("transform", scale, off))
            unit_seen = str(units[0])
    if len(found) == 2:
        a, b = found
        if len(a[1]) == len(b[1]) and not all(
            math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a[1], b[1], strict=True)
        ):
            raise SourceError(
                path,
                f"voxel sizes contradict: pixelResolution = {a[1]} µm, transform.scale = {b[1]} µm",
            )
    if not found:
        return None, None, None, noted
    sizes = found[-1][1]
    offset = next((f[2] for f in found if f[2] is not None), None)
    return tuple(sizes), tuple(offset) if offset else None, unit_seen, noted


class ChunkedStoreSource(ContainerSource):
    """One image of an N5 container or a Zarr store (v2 or v3), ``(z, y, x)``.

    *path* is the container, a multiscale group in it, or an array. A multiscale group
    (OME-Zarr 0.4/0.5 ``multiscales``, or an N5 group with ``multiscales`` /
    ``scales`` or ``s0``, ``s1`` ... arrays) is read at *level* (default 0) or at the
    array path *scale* (``"s1"``). Sizes and origin:

    - OME-Zarr: the level's ``scale`` and ``translation`` times the multiscale-wide
      transformations, each axis's unit converted; ``t`` and ``c`` axes need a
      ``time`` / ``channel`` (channel names from ``omero.channels``).
    - N5 / CellMap: ``pixelResolution`` ``{dimensions (x, y, z), unit}`` and
      ``transform`` ``{axes, scale, translate, units}`` (C order) of the array, or the
      multiscale entry's ``transform``; both present must agree.

    Raises:
        SourceError: no image found, an array that is not 2D/3D after selection,
            unknown units, contradictory sizes, unreadable metadata.
    """

    def __init__(
        self,
        path: Path,
        *,
        dataset: str | None = None,
        level: int | None = None,
        scale: str | None = None,
        channel: int | str | None = None,
        time: int | None = None,
        **_: Any,
    ):
        root, inner = split_dataset_path(path)
        self._init(root)
        target = self.path / inner.strip("/") if inner else self.path
        if dataset:
            target = target / dataset.strip("/")
        if not target.is_dir():
            raise SourceError(target, "not a folder of an N5 or Zarr container")
        self.format = "n5" if is_n5(target) and not is_zarr(target) else "zarr"
        self._target = target
        self.dataset = str(target.relative_to(self.path)) if target != self.path else None
        if self.format == "n5":
            self._open_n5(target, level, scale)
        else:
            self._open_zarr(target, level, scale, channel, time)

    # ----- N5
    def _open_n5(self, target: Path, level: int | None, scale: str | None) -> None:
        attrs = (
            _read_json(target / "attributes.json") if (target / "attributes.json").is_file() else {}
        )
        ms_entry: Mapping[str, Any] = {}
        if "dimensions" not in attrs:
            paths = _n5_levels(target, attrs)
            if not paths:
                raise SourceError(target, "no N5 dataset or multiscale group here")
            self.levels = len(paths)
            if scale is not None:
                if scale not in [p for p, _ in paths]:
                    raise SourceError(target, f"no scale level {scale!r} ({[p for p, _ in paths]})")
                sub, ms_entry = next(x for x in paths if x[0] == scale)
            else:
                li = level or 0
                if not 0 <= li < len(paths):
                    raise SourceError(target, f"level {li} does not exist ({len(paths)} levels)")
                sub, ms_entry = paths[li]
            target = target / sub
            self._note("level path", sub)
            attrs = _read_json(target / "attributes.json")
        arr = N5Array(target, attrs)
        for k, v in attrs.items():
            self._note(f"{target.name}@{k}", v)
        self._prepare(arr, attrs, dict(ms_entry), target)

    def _prepare(
        self, arr: Any, attrs: Mapping[str, Any], ms_entry: Mapping[str, Any], where: Path
    ) -> None:
        if arr.ndim not in (2, 3):
            raise SourceError(where, f"array shape {arr.shape} is not 2D or 3D")
        self.file_shape = tuple(arr.shape)
        self.axes = "ZYX"[3 - arr.ndim :]
        self._arr = arr
        self._index: tuple[int, ...] = ()
        sizes, offset, unit, _ = _cellmap_geometry(attrs, where, arr.ndim)
        if sizes is None and ms_entry:
            sizes, offset, unit, _ = _cellmap_geometry(ms_entry, where, arr.ndim)
        self.unit = unit
        physical = origin = None
        if sizes is not None:
            s = list(sizes)
            s = [1.0] * (3 - len(s)) + s
            physical = _positive(s, where, "voxel size")
            if offset is not None:
                o = [0.0] * (3 - len(offset)) + list(offset)
                origin = (o[0], o[1], o[2])
        shape = (1,) * (3 - arr.ndim) + tuple(arr.shape)
        self._depth = int(arr.chunks[0]) if arr.ndim == 3 else 1
        self._set_info(shape, np.dtype(arr.dtype).newbyteorder("="), physical, origin)

    # ----- Zarr
    def _open_zarr(
        self,
        target: Path,
        level: int | None,
        scale: str | None,
        channel: int | str | None,
        time: int | None,
    ) -> None:
        import zarr

        try:
            node = zarr.open(store=str(target), mode="r")
        except Exception as exc:
            raise SourceError(
                target, f"not a readable Zarr store ({type(exc).__name__}: {exc})"
            ) from exc
        attrs = dict(node.attrs)
        ome = attrs.get("ome") if isinstance(attrs.get("ome"), Mapping) else attrs
        ms = ome.get("multiscales") if isinstance(ome, Mapping) else None
        if isinstance(node, zarr.Array):
            for k, v in attrs.items():
                self._note(f"{target.name}@{k}", v)
            self._prepare(node, attrs, {}, target)
            return
        if not (isinstance(ms, list) and ms and isinstance(ms[0], Mapping)):
            arrays = sorted(k for k, _ in node.arrays())
            groups = sorted(k for k, _ in node.groups())
            raise SourceError(
                target,
                "a Zarr group without multiscales metadata: name an array or image inside it"
                + (f" (arrays: {', '.join(arrays)})" if arrays else "")
                + (f" (groups: {', '.join(groups[:10])})" if groups else ""),
            )
        self.format = "ome-zarr"
        m = ms[0]
        self._note("multiscales[0]", m)
        if isinstance(ome, Mapping) and "version" in ome:
            self._note("ome.version", ome["version"])
        datasets = m.get("datasets") or []
        self.levels = len(datasets)
        if scale is not None:
            idx = next((i for i, d in enumerate(datasets) if d.get("path") == scale), None)
            if idx is None:
                raise SourceError(target, f"no scale level {scale!r}")
        else:
            idx = level or 0
            if not 0 <= idx < len(datasets):
                raise SourceError(target, f"level {idx} does not exist ({len(datasets)} levels)")
        dpath = str(datasets[idx].get("path", ""))
        try:
            arr = zarr.open_array(store=str(target / dpath), mode="r")
        except Exception as exc:
            raise SourceError(target / dpath, f"not a readable Zarr array ({exc})") from exc
        axes_meta = m.get("axes") or [{"name": n} for n in "tczyx"[5 - arr.ndim :]]
        names = [str(a["name"] if isinstance(a, Mapping) else a).lower() for a in axes_meta]
        if len(names) != arr.ndim:
            raise SourceError(
                target, f"multiscales axes {names} do not match array shape {arr.shape}"
            )
        self.axes = "".join(n.upper() for n in names)
        self.file_shape = tuple(arr.shape)
        omero: Any = ome.get("omero") if isinstance(ome, Mapping) else None
        if isinstance(omero, Mapping):
            self.channel_names = tuple(str(c.get("label", "")) for c in omero.get("channels", []))
        index: list[Any] = []
        for n, size in zip(names, arr.shape, strict=True):
            if n == "c":
                self.channel = _select(target, "channel", channel, size, self.channel_names)
                self.n_channels = int(size)
                self.channel_name = (
                    self.channel_names[self.channel]
                    if self.channel < len(self.channel_names)
                    else None
                )
                index.append(self.channel)
            elif n == "t":
                self.time = _select(target, "time point", time, size)
                self.n_times = int(size)
                index.append(self.time)
            elif n in ("z", "y", "x"):
                index.append(slice(None))
            else:
                if size != 1:
                    raise SourceError(target, f"axis {n!r} of size {size} is not supported")
                index.append(0)
        space = [n for n in names if n in "zyx"]
        if space not in (["z", "y", "x"], ["y", "x"]):
            raise SourceError(target, f"space axes {space} are not (z,) y, x")
        scale_v, trans_v = _ngff_transforms(datasets[idx], m, arr.ndim, target)
        physical = origin = None
        sp_idx = [names.index(a) for a in space]
        units = []
        for i in sp_idx:
            a = axes_meta[i]
            units.append(a.get("unit") if isinstance(a, Mapping) else None)
        if scale_v is not None and all(units):
            um = [
                to_um(scale_v[i], u, target, f"axis {names[i]} scale")
                for i, u in zip(sp_idx, units, strict=True)
            ]
            physical = _positive([1.0] * (3 - len(um)) + um, target, "multiscales scale")
            self.unit = str(units[-1])
            if trans_v is not None:
                o = [
                    to_um(trans_v[i], u, target, "translation")
                    for i, u in zip(sp_idx, units, strict=True)
                ]
                o = [0.0] * (3 - len(o)) + o
                origin = (o[0], o[1], o[2])
        elif scale_v is not None and any(units):
            raise SourceError(target, f"axes {space} have units {units}: some are missing")
        self._arr = arr
        self._index = tuple(index)
        self._space_ndim = len(space)
        shape = [arr.shape[i] for i in sp_idx]
        shape = [1] * (3 - len(shape)) + shape
        self._depth = int(arr.chunks[sp_idx[0]]) if len(space) == 3 else 1
        self._note("level path", dpath)
        self._set_info(shape, np.dtype(arr.dtype).newbyteorder("="), physical, origin)

    def _read_block(self, z0: int, z1: int) -> np.ndarray:
        arr = self._arr
        if not self._index:
            if arr.ndim == 2:
                return np.asarray(arr[:, :])[None]
            return np.asarray(arr[z0:z1, :, :])
        key: list[Any] = list(self._index)
        if self._space_ndim == 3:
            zi = next(i for i, k in enumerate(key) if isinstance(k, slice))
            key[zi] = slice(z0, z1)
            return np.asarray(arr[tuple(key)])
        return np.asarray(arr[tuple(key)])[None]


def _ngff_transforms(
    dataset: Mapping[str, Any], ms: Mapping[str, Any], ndim: int, path: Path
) -> tuple[list[Decimal] | None, list[Decimal] | None]:
    """Scale and translation of one NGFF level, combined with the multiscale-wide ones
    (exact decimals)."""

    def parts(ts: Any) -> tuple[list[Decimal] | None, list[Decimal] | None]:
        sc = tr = None
        for t in ts or []:
            if not isinstance(t, Mapping):
                continue
            try:
                if t.get("type") == "scale" and "scale" in t:
                    sc = [exact_decimal(v) for v in t["scale"]]
                elif t.get("type") == "translation" and "translation" in t:
                    tr = [exact_decimal(v) for v in t["translation"]]
            except ValueError as exc:
                raise SourceError(path, f"coordinateTransformations unusable ({exc})") from exc
        return sc, tr

    sc, tr = parts(dataset.get("coordinateTransformations"))
    gsc, gtr = parts(ms.get("coordinateTransformations"))
    with localcontext() as ctx:
        ctx.prec = 40
        if sc is not None and gsc is not None:
            sc = [a * b for a, b in zip(sc, gsc, strict=True)]
            if tr is not None:
                tr = [a * b for a, b in zip(tr, gsc, strict=True)]
        if gtr is not None:
            tr = [a + b for a, b in zip(tr or [Decimal(0)] * len(gtr), gtr, strict=True)]
    for v in (sc, tr):
        if v is not None and len(v) != ndim:
            raise SourceError(
                path, f"coordinateTransformations have {len(v)} values for {ndim} axes"
            )
    return sc, tr


def _n5_levels(group: Path, attrs: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The level arrays of an N5 multiscale group: ``(path, entry)`` in order, from
    ``multiscales[0].datasets`` (CellMap), else the child folders ``s0``, ``s1`` ..."""
    ms = attrs.get("multiscales")
    if isinstance(ms, list) and ms and isinstance(ms[0], Mapping):
        out = []
        for d in ms[0].get("datasets", []):
            if isinstance(d, Mapping) and "path" in d:
                out.append((str(d["path"]), dict(d)))
        if out:
            return out
    levels = []
    for child in group.iterdir() if group.is_dir() else []:
        m = re.fullmatch(r"s(\d+)", child.name)
        if m and (child / "attributes.json").is_file():
            levels.append((int(m.group(1)), child.name))
    return [(name, {}) for _, name in sorted(levels)]


# --------------------------------------------------------------------------- video


class VideoSource(ContainerSource):
    """A video file (AVI, MP4, MOV, MKV ...) as a ``(t, y, x)`` stack read as
    ``(z, y, x)``, decoded with PyAV (FFmpeg bundled in its wheels).

    Grey frames (``gray``, ``gray16le`` ...) are read as they are. Colour frames are
    refused unless *channel* picks one: ``0``/``"R"``, ``1``/``"G"``, ``2``/``"B"``
    (converted to RGB by FFmpeg) or ``"Y"`` (the luma plane of a YUV video: the grey
    image of a grey video stored as YUV). A video has no physical size: the spec must
    give one. The frame count is the stream's, or counted by demuxing packets (no
    decoding) when the container does not state it.

    Reading is sequential: planes are decoded in order through one open container;
    an earlier plane restarts decoding from the first frame.

    Raises:
        SourceError: not a video PyAV can open, no video stream, colour without a
            channel, a frame count that does not match the decoded frames.
    """

    format = "video"
    _RGB: ClassVar[dict[str, int]] = {"R": 0, "G": 1, "B": 2, "r": 0, "g": 1, "b": 2}

    def __init__(self, path: Path, *, channel: int | str | None = None, **_: Any):
        self._init(path)
        _regular_file(self.path)
        import av

        try:
            with av.open(str(self.path)) as cont:
                if not cont.streams.video:
                    raise SourceError(self.path, "the file has no video stream")
                st = cont.streams.video[0]
                ctx = st.codec_context
                pix = str(ctx.pix_fmt or ctx.format.name if ctx.format else ctx.pix_fmt)
                width, height = int(ctx.width), int(ctx.height)
                frames = int(st.frames or 0)
                self._note("codec", ctx.name)
                self._note("pix_fmt", pix)
                self._note("width, height", [width, height])
                self._note("frames (stream header)", frames)
                if st.average_rate:
                    self._note("average_rate (fps)", float(st.average_rate))
                if not frames:
                    frames = sum(1 for p in cont.demux(st) if p.size)
        except SourceError:
            raise
        except Exception as exc:  # av.error.* for corrupt or non-video files
            raise SourceError(
                self.path, f"not a readable video ({type(exc).__name__}: {exc})"
            ) from exc
        if frames < 1 or width < 1 or height < 1:
            raise SourceError(self.path, f"video has {frames} frames of {width} x {height}")
        self.file_shape = (frames, height, width)
        self.axes = "TYX"
        grey = pix.startswith("gray") or pix in ("y8", "y16")
        self._pix = pix
        self._luma = False
        if grey:
            self.channel_names = ("gray",)
            dtype = (
                np.dtype(np.uint16)
                if "16" in pix or "10" in pix or "12" in pix
                else np.dtype(np.uint8)
            )
            self._fmt = "gray16le" if dtype.itemsize == 2 else "gray"
            self._plane = -1
        else:
            self.channel_names = ("R", "G", "B") + (("Y",) if pix.startswith(("yuv", "nv")) else ())
            if channel is None:
                raise SourceError(
                    self.path,
                    f"colour video ({pix}); choose a channel (--channel R, G, B"
                    + (" or Y for the luma of a YUV video)" if "Y" in self.channel_names else ")"),
                )
            if str(channel) in ("Y", "y") and "Y" in self.channel_names:
                self._luma = True
                self._fmt = pix
                self._plane = 0
                self.channel = 3
            else:
                key = self._RGB.get(str(channel), None)
                if key is None and str(channel).isdigit() and int(channel) < 3:
                    key = int(channel)
                if key is None:
                    raise SourceError(
                        self.path, f"no channel {channel!r} ({list(self.channel_names)})"
                    )
                self.channel = key
                self._fmt = "rgb24"
                self._plane = key
            self.channel_name = self.channel_names[self.channel]
            dtype = np.dtype(np.uint8)
        self._set_info((frames, height, width), dtype, None, None)
        self._cont: Any = None
        self._frames: Any = None
        self._next = 0

    def _restart(self) -> None:
        import av

        self.close()
        self._cont = av.open(str(self.path))
        self._frames = self._cont.decode(self._cont.streams.video[0])
        self._next = 0

    def close(self) -> None:
        """Close the open container (reopened on the next read)."""
        if self._cont is not None:
            self._cont.close()
        self._cont = self._frames = None

    def _frame(self, frame: Any) -> np.ndarray:
        if self._luma:
            p = frame.planes[0]
            buf = np.frombuffer(bytes(p), np.uint8).reshape(-1, p.line_size)
            return buf[: frame.height, : frame.width].copy()
        arr = frame.to_ndarray(format=self._fmt)
        if self._plane >= 0:
            arr = arr[..., self._plane]
        return np.ascontiguousarray(arr)

    def _read_block(self, z0: int, z1: int) -> np.ndarray:
        if self._frames is None or z0 < self._next:
            self._restart()
        out = []
        try:
            while self._next < z1:
                frame = next(self._frames)
                if self._next >= z0:
                    out.append(self._frame(frame))
                self._next += 1
        except StopIteration:
            raise SourceError(
                self.path, f"video ends after {self._next} frames; {self.shape[0]} stated"
            ) from None
        return np.stack(out)


# --------------------------------------------------------------------------- dispatch


def container_kind(path: Path) -> str | None:
    """Which reader of this module opens *path* (``"mrc"``, ``"nrrd"``, ``"hdf5"``,
    ``"imaris"``, ``"store"`` (N5/Zarr), ``"video"``), or ``None``."""
    p, inner = split_dataset_path(path)
    name = p.name.lower()
    if p.is_dir():
        if name.endswith(FOLDER_SUFFIXES) or is_zarr(p) or (p / "attributes.json").is_file():
            return "store"
        if inner is None and any(part.lower().endswith(FOLDER_SUFFIXES) for part in p.parts):
            return "store"
        return None
    for suffixes, kind in (
        (
            (
                ".mrc",
                ".mrcs",
                ".map",
                ".rec",
                ".st",
                ".ali",
                ".mrc.gz",
                ".mrc.bz2",
                ".map.gz",
                ".map.bz2",
            ),
            "mrc",
        ),
        ((".nrrd", ".nhdr"), "nrrd"),
        ((".ims",), "imaris"),
        ((".h5", ".hdf5", ".hdf", ".he5"), "hdf5"),
        ((".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v"), "video"),
    ):
        if name.endswith(suffixes):
            return kind
    return None


def open_container(path: Path, **selection: Any) -> ContainerSource:
    """Open *path* with the reader :func:`container_kind` names.

    *selection*: ``channel``, ``time`` (Imaris, OME-Zarr, video), ``scene`` (the
    dataset path inside an HDF5 file or N5/Zarr store, or a level number/``sN`` path
    of a multiscale), ``dataset``, ``level``, ``scale`` and the HDF5 attribute-name
    overrides (:class:`HDF5Source`).

    Raises:
        SourceError: no reader of this module for *path*, or the reader's error.
    """
    kind = container_kind(path)
    sel = {k: v for k, v in selection.items() if v is not None}
    scene = sel.pop("scene", None)
    if scene is not None:
        text = str(scene)
        if kind == "store" and (text.isdigit() or re.fullmatch(r"s\d+", text)):
            sel.setdefault(
                "level" if text.isdigit() else "scale", int(text) if text.isdigit() else text
            )
        elif kind == "imaris" and text.isdigit():
            sel.setdefault("level", int(text))
        else:
            sel.setdefault("dataset", text)
    if kind == "mrc":
        _refuse(path, sel, ())
        return MRCSource(path)
    if kind == "nrrd":
        _refuse(path, sel, ())
        return NRRDSource(path)
    if kind == "imaris":
        _refuse(path, sel, ("channel", "time", "level"))
        return ImarisSource(path, **sel)
    if kind == "hdf5":
        _refuse(path, sel, ("dataset", "voxel_attrs", "unit_attrs", "offset_attrs"))
        return HDF5Source(path, **sel)
    if kind == "store":
        _refuse(path, sel, ("dataset", "level", "scale", "channel", "time"))
        return ChunkedStoreSource(path, **sel)
    if kind == "video":
        _refuse(path, sel, ("channel",))
        return VideoSource(path, **sel)
    raise SourceError(path, "not an MRC, NRRD, HDF5, Imaris, N5/Zarr or video source")


def _refuse(path: Path, sel: Mapping[str, Any], allowed: Sequence[str]) -> None:
    extra = sorted(set(sel) - set(allowed))
    if extra:
        raise SourceError(
            path,
            f"{', '.join(extra)} cannot be chosen for this format"
            + (f" (only {', '.join(allowed)})" if allowed else ""),
        )
