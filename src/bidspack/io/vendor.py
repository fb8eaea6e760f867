"""Vendor microscopy files (Zeiss CZI, and whatever other bioio plugin is installed:
Leica LIF with ``bioio-lif``, Nikon ND2 with ``bioio-nd2`` ...) as ``(z, y, x)`` image
sources, read through `bioio <https://github.com/bioio-devs/bioio>`_ rather than a parser
of our own, and CZI files that bioio-czi cannot read through Zeiss's own reader
`pylibCZIrw <https://pypi.org/project/pylibCZIrw/>`_ (libCZI).

A vendor file can hold several scenes, channels and time points; a
:class:`VendorImage` is one 3D grayscale image of it: one scene, one channel, one time
point, all Z planes (a 2D image is one plane, ``(1, y, x)``).

Readers, in order:

1. **bioio** (its installed plugins; bidspack installs ``bioio-czi``). The file is
   opened with ``chunk_dims=["Y", "X"]`` (one Dask chunk per plane; bioio's default
   chunk is a whole Z stack) and planes are read in blocks of :data:`BLOCK_BYTES` from
   the lazy ``get_image_dask_data("ZYX", C=..., T=...)`` array, so memory stays bounded
   whatever the file size (``benchmarks/bench_vendor.py``).
2. **pylibCZIrw**, for a CZI file (one starting with the ``ZISRAWFILE`` signature) when
   bioio fails on it: bioio-czi 3.0 cannot read some single-channel 2D CZIs (the Zeiss
   Crossbeam SEM image ``Al2O3_SE_020_sp.czi`` fails with ``CoordinateValidationError:
   coordinate C has dimensions ('C',), but these are not a subset of the DataArray
   dimensions ('T', 'Y', 'X')``). Planes are read one at a time with
   ``read(plane={"C": c, "Z": z, "T": t}, roi=<layer-0 bounding rectangle>)``.
   Dimensions pylibCZIrw does not select here (Airyscan phases ``H``, illuminations
   ``I``, rotations ``R``, views ``V``, blocks ``B``) are read at their first index and
   named in ``left_out``.

When no reader takes the file, the :class:`~bidspack.errors.SourceError` names the file,
every reader tried with its own failure message, and the bioio plugins installed
(:func:`installed_plugins`).

Physical sizes, ``(z, y, x)`` micrometres:

- CZI: from the file's ``ImageDocument/Metadata/Scaling/Items/Distance[@Id='X'|'Y'|'Z']
  /Value`` (always metres), converted exactly to the printed precision (decimal text x
  10^6, rounded to 12 significant digits: ``2.791E-08`` m is ``0.02791`` µm, not
  ``0.027909999999999997``), whichever reader reads the pixels, axis by axis in
  ``info.physical_axes`` (``None`` for an axis without a distance, or with a zero one:
  an uncalibrated image) and in ``info.physical_size`` when all three are there. A 2D
  image (the SEM file: X and Y, no Z) has ``physical_axes`` ``(None, y, x)`` and
  ``physical_size`` ``None``: packaging keeps it 2D (``bidspack.io.voxels``). A
  distance that is not a number is a ``SourceError``.
- other formats: bioio's ``physical_pixel_sizes`` (micrometres), axis by axis.

:attr:`VendorImage.instrument` holds what the CZI XML says about the instrument, under
BIDS microscopy sidecar names (see :func:`czi_instrument`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bidspack.errors import SourceError
from bidspack.io.sources import ImageSource, StackInfo, check_plane_budget

#: Bytes of planes read in one go by :meth:`VendorImage.iter_planes` (memory bound).
BLOCK_BYTES = 32 * 2**20
#: The plugins bidspack installs (its tests use real CZI files); others can be added.
PLUGINS = ("bioio-czi",)
#: The first bytes of every CZI file (the ``ZISRAWFILE`` segment id).
CZI_MAGIC = b"ZISRAWFILE"
#: The plugin a file suffix needs, named in "no reader" errors when it is missing.
SUFFIX_PLUGINS = {
    ".czi": "bioio-czi",
    ".lif": "bioio-lif",
    ".nd2": "bioio-nd2",
    ".dv": "bioio-dv",
    ".r3d": "bioio-dv",
    ".sldy": "bioio-sldy",
}
#: Longest reader failure message quoted in an error (the rest is cut with "...").
MAX_FAILURE_CHARS = 400
#: CZI pixel types pylibCZIrw reads as grayscale, and their dtypes.
CZI_GRAY_TYPES = {"Gray8": "uint8", "Gray16": "uint16", "Gray32Float": "float32"}
_LOGGERS = ("bioio", "bioio_base", "bioio_czi")
NOT_TRIED = "not tried: "


def installed_plugins() -> list[str]:
    """The installed bioio reader plugins as ``"name version"`` (``bioio.readers``
    entry points, else the installed distributions named ``bioio-*``), sorted."""
    import importlib.metadata as md

    found: dict[str, str] = {}
    try:
        for ep in md.entry_points(group="bioio.readers"):
            dist = getattr(ep, "dist", None)
            name = dist.metadata["Name"] if dist is not None else ep.name
            found[str(name)] = dist.version if dist is not None else ""
    except Exception:  # a broken distribution's metadata: use the names below
        pass
    if not found:
        for dist in md.distributions():
            name = str(dist.metadata["Name"] or "")
            if name.lower().startswith("bioio-") and name.lower() != "bioio-base":
                found[name] = dist.version
    return [f"{name} {version}".strip() for name, version in sorted(found.items())]


def is_czi(path: Path) -> bool:
    """True if *path* starts with the CZI signature (whatever its suffix)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(CZI_MAGIC)) == CZI_MAGIC
    except OSError:
        return False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings, and no log lines from bioio and its plugins: they log each reader
    failure themselves ("Attempted file ... load with reader ..."), which the
    :class:`SourceError` here says once, cleanly."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:  # their child loggers (level NOTSET) inherit the level
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, before, strict=True):
            lg.setLevel(level)


class _ReaderFailed(Exception):
    """A reader cannot read the file: ``failures`` is ``[(reader, why), ...]``."""

    def __init__(self, failures: list[tuple[str, str]]):
        self.failures = failures
        super().__init__("; ".join(f"{r}: {m}" for r, m in failures))


def _clean(message: str, path: Path) -> str:
    """A reader's failure message, shortened: bioio's "X does not support the image:
    '<path>'." becomes "X:", whitespace is collapsed, long messages are cut."""
    text = re.sub(r"\s*does not support the image: '[^']*'\.?", ":", str(message))
    text = text.replace(str(path), Path(path).name)
    text = " ".join(text.split()).strip(" :,")
    if len(text) > MAX_FAILURE_CHARS:
        text = text[: MAX_FAILURE_CHARS - 3].rstrip() + "..."
    return text or "no message"


def _exc_text(exc: BaseException, path: Path) -> str:
    return _clean(f"{type(exc).__name__}: {exc}", path)


def no_reader_error(path: Path, failures: list[tuple[str, str]]) -> SourceError:
    """The error for a file no reader takes: each reader tried and why it failed, the
    installed bioio plugins, and the plugin the file's suffix needs when it is missing."""
    plugins = installed_plugins()
    tried = "; ".join(
        f"{reader} not tried ({why.removeprefix(NOT_TRIED)})"
        if why.startswith(NOT_TRIED)
        else f"{reader} failed ({why})"
        for reader, why in failures
    )
    reason = f"no reader for this file: {tried}; installed bioio plugins: " + (
        ", ".join(plugins) or "none"
    )
    needed = SUFFIX_PLUGINS.get(Path(path).suffix.lower())
    names = {p.split()[0].lower() for p in plugins}
    if needed and needed not in names:
        reason += f"; a {Path(path).suffix.lower()} file needs {needed}, not installed"
        hint = f"pip install {needed}"
    elif needed:
        hint = "the file looks damaged or truncated: check it against the original"
    else:
        hint = "install the bioio plugin of its format (bioio-lif, bioio-nd2, bioio-bioformats ...)"
    return SourceError(path, reason, hint=hint)


def _bioimage(path: Path) -> Any:
    """``bioio.BioImage(path)``.

    Raises:
        SourceError: the file does not exist.
        _ReaderFailed: bioio (each plugin it tried) cannot open the file.
    """
    try:
        from bioio import BioImage
        from bioio_base.exceptions import UnsupportedFileFormatError
    except ImportError as exc:  # pragma: no cover - bioio is a dependency
        raise _ReaderFailed([("bioio", f"not installed ({exc})")]) from exc
    try:
        with _quiet():
            try:
                # one Dask chunk per (y, x) plane: reading plane z then reads that plane,
                # not the whole Z stack of its channel (the default chunking)
                return BioImage(path, chunk_dims=["Y", "X"])
            except TypeError:  # a plugin without chunk_dims
                return BioImage(path)
    except UnsupportedFileFormatError as exc:
        raise _ReaderFailed(_plugin_failures(path, exc)) from exc
    except FileNotFoundError as exc:
        raise SourceError(path, "file not found") from exc
    except Exception as exc:  # a plugin failing on this file: its message says why
        raise _ReaderFailed([("bioio", _exc_text(exc, path))]) from exc


def _plugin_failures(path: Path, exc: Exception) -> list[tuple[str, str]]:
    """Why each installed bioio plugin refused *path* (bioio's feasibility report; its
    built-in in-memory ``ArrayLike`` reader is left out)."""
    out: list[tuple[str, str]] = []
    try:
        from bioio import plugin_feasibility_report

        with _quiet():
            report = plugin_feasibility_report(path)
        for name, support in report.items():
            if name != "ArrayLike" and not getattr(support, "supported", False):
                why = _clean(getattr(support, "error", "") or "", path)
                out.append((str(name), why.removeprefix(f"{name}:").strip() or why))
    except Exception:  # the report is a courtesy: bioio's own message stands
        pass
    return out or [("bioio", _clean(str(exc), path))]


def _plugin_name(img: Any) -> str:
    """The distribution name of the bioio plugin that opened *img* (``bioio-czi``)."""
    module = type(getattr(img, "reader", img)).__module__.split(".")[0]
    return module.replace("_", "-") if module.startswith("bioio_") else "bioio"


#: CZI dimensions that bioio does not expose (it reads one index of each): what each is.
_HIDDEN_CZI_DIMS = {
    "H": "detector phases (Airyscan)",
    "I": "illuminations",
    "R": "rotations",
    "V": "views",
    "B": "acquisition blocks",
}


def _hidden_dims(img: Any) -> list[str]:
    """Dimensions of the file that the bioio image does not expose, from the CZI
    metadata's ``Information/Image/Size*`` (``[]`` for other formats)."""
    try:
        md = img.metadata
        image = md.find(".//Information/Image") if hasattr(md, "find") else None
    except Exception:  # metadata of other plugins: nothing to report
        return []
    out = []
    for dim, what in _HIDDEN_CZI_DIMS.items():
        el = None if image is None else image.find(f"Size{dim}")
        size = int(el.text) if el is not None and (el.text or "").strip().isdigit() else 1
        if size > 1:
            out.append(f"{size} {what} (CZI dimension {dim}; bioio reads one, not selectable)")
    return out


def _indices(values: list[int]) -> str:
    """``1, 2`` or ``1-29`` for a run of indices."""
    if len(values) > 3 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


# --------------------------------------------------------------------------- CZI XML


def _um_from_m(text: str) -> float:
    """Metres as decimal text -> micrometres, rounded to 12 significant digits.

    Raises:
        ValueError: not a finite number.
    """
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not d.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    return _round12(d * Decimal(1000000))


def _round12(d: Decimal) -> float:
    return 0.0 if d == 0 else float(format(d, ".12g"))


def _number(text: str | None) -> float | None:
    """Decimal text as a float rounded to 12 significant digits (``1.4000000000000001``
    -> ``1.4``), or ``None`` when absent or not a finite number."""
    if text is None or not text.strip():
        return None
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        return None
    return _round12(d) if d.is_finite() else None


def _text(el: ET.Element | None, path: str = ".") -> str | None:
    """Stripped text at *path* under *el*, or ``None`` when absent or empty."""
    if el is None:
        return None
    found = el.find(path)
    text = (found.text or "").strip() if found is not None else ""
    return text or None


@dataclass(frozen=True)
class CziScaling:
    """Voxel size of a CZI from its ``Metadata/Scaling/Items`` distances.

    Attributes:
        axes: ``(z, y, x)`` micrometres, ``None`` for an axis without a positive
            distance.
        values: the ``Value`` text (metres) of each distance found, by axis.
    """

    axes: tuple[float | None, float | None, float | None]
    values: dict[str, str]

    @property
    def physical_size(self) -> tuple[float, float, float] | None:
        """``(z, y, x)`` micrometres when all three axes have a size, else ``None``."""
        z, y, x = self.axes
        return None if z is None or y is None or x is None else (z, y, x)


def czi_scaling(root: ET.Element, path: Path) -> CziScaling:
    """The ``(z, y, x)`` voxel size in µm of the CZI whose XML root
    (``ImageDocument``) is *root* (see the module docstring).

    Raises:
        SourceError: a distance value that is not a number (naming the file and value).
    """
    values: dict[str, str] = {}
    for axis in "XYZ":
        els = root.findall(f"Metadata/Scaling/Items/Distance[@Id='{axis}']")
        text = _text(els[0], "Value") if len(els) == 1 else None
        if text is not None:
            values[axis] = text
    um: dict[str, float] = {}
    for axis, text in values.items():
        try:
            um[axis] = _um_from_m(text)
        except ValueError as exc:
            raise SourceError(
                path, f"CZI scaling Distance {axis} Value {exc} (expected metres)"
            ) from None
    usable = {a: v for a, v in um.items() if math.isfinite(v) and v > 0}
    return CziScaling((usable.get("Z"), usable.get("Y"), usable.get("X")), values)


def czi_instrument(root: ET.Element) -> dict[str, object]:
    """What a CZI's XML (root ``ImageDocument``) says about the instrument, under the
    BIDS microscopy sidecar names; only keys the file gives a value for:

    - ``Manufacturer``: the microscope's ``Manufacturer/Manufacturer``, else ``"Zeiss"``
      when the file was written by ZEN (``Information/Application/Name``), Zeiss's
      acquisition software;
    - ``ManufacturersModelName``: the microscope's ``System`` (``"LSM 880,
      AxioObserver"``), else ``Manufacturer/Model``, else its ``Name`` attribute;
    - ``SoftwareVersions``: ``Information/Application`` ``Name`` and ``Version``
      (``"ZEN (blue edition) 3.6.095.00000"``);
    - ``NumericalAperture``, ``Magnification`` (``NominalMagnification``), ``Immersion``:
      of the objective ``Information/Image/ObjectiveSettings/ObjectiveRef`` names (else
      the only objective); ``Immersion`` falls back to ``ObjectiveSettings/Medium``;
    - ``ChannelNames``, ``ExcitationWavelengths``, ``EmissionWavelengths`` (nm): one
      entry per ``Information/Image/Dimensions/Channels/Channel``, ``None`` where that
      channel has none (present when at least one channel has one);
    - ``ChannelColors``: each channel's display ``Color`` (``#AARRGGBB`` in the file) as
      ``#RRGGBB``, ``None`` where absent;
    - ``AcquisitionDateTime``: ``Information/Image/AcquisitionDateAndTime`` as written.

    Numbers are rounded to 12 significant digits (``1.4000000000000001`` -> ``1.4``);
    an integral magnification is an ``int`` (as :func:`bidspack.io.omexml.instrument_of`
    gives it).
    """
    out: dict[str, object] = {}
    info = root.find("Metadata/Information")
    if info is None:
        return out
    microscopes = info.findall("Instrument/Microscopes/Microscope")
    maker = next((t for m in microscopes if (t := _text(m, "Manufacturer/Manufacturer"))), None)
    app = _text(info, "Application/Name") or ""
    if maker is None and re.match(r"ZEN\b", app):
        maker = "Zeiss"
    if maker:
        out["Manufacturer"] = maker
    for m in microscopes:
        model = _text(m, "System") or _text(m, "Manufacturer/Model") or m.get("Name", "").strip()
        if model:
            out["ManufacturersModelName"] = model
            break
    software = " ".join(t for t in (app, _text(info, "Application/Version")) if t)
    if software:
        out["SoftwareVersions"] = software
    image = info.find("Image")
    settings = image.find("ObjectiveSettings") if image is not None else None
    objectives = info.findall("Instrument/Objectives/Objective")
    ref = settings.find("ObjectiveRef") if settings is not None else None
    objective = None
    if ref is not None and ref.get("Id"):
        objective = next((o for o in objectives if o.get("Id") == ref.get("Id")), None)
    if objective is None and len(objectives) == 1:
        objective = objectives[0]
    na = _number(_text(objective, "LensNA"))
    if na is not None:
        out["NumericalAperture"] = na
    mag = _number(_text(objective, "NominalMagnification"))
    if mag is not None:
        out["Magnification"] = int(mag) if mag.is_integer() else mag
    immersion = _text(objective, "Immersion") or _text(settings, "Medium")
    if immersion:
        out["Immersion"] = immersion
    channels = image.findall("Dimensions/Channels/Channel") if image is not None else []
    names = [c.get("Name") or None for c in channels]
    if any(names):
        out["ChannelNames"] = names
    for key, tag in (
        ("ExcitationWavelengths", "ExcitationWavelength"),
        ("EmissionWavelengths", "EmissionWavelength"),
    ):
        waves = [_number(_text(c, tag)) for c in channels]
        if any(w is not None for w in waves):
            out[key] = waves
    colors = [_czi_color(_text(c, "Color")) for c in channels]
    if any(colors):
        out["ChannelColors"] = colors
    when = _text(image, "AcquisitionDateAndTime")
    if when:
        out["AcquisitionDateTime"] = when
    return out


def _czi_color(text: str | None) -> str | None:
    """A CZI ``Color`` (``#AARRGGBB`` or ``#RRGGBB``) as ``#RRGGBB``; else ``None``."""
    if text and re.fullmatch(r"#([0-9A-Fa-f]{2})?[0-9A-Fa-f]{6}", text.strip()):
        return "#" + text.strip()[-6:].upper()
    return None


def _parse_xml(text: str, path: Path) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise SourceError(path, f"CZI metadata is not valid XML ({exc})") from None


def _czi_root(path: Path, img: Any = None) -> ET.Element | None:
    """The CZI XML root: bioio-czi's parsed ``metadata`` when *img* has it, else the
    file's raw metadata through pylibCZIrw; ``None`` when neither can be had."""
    md = None
    if img is not None:
        with contextlib.suppress(Exception), _quiet():
            md = img.metadata
    if isinstance(md, ET.Element) and md.tag == "ImageDocument":
        return md
    try:
        from pylibCZIrw import czi as pyczi

        with pyczi.open_czi(str(path)) as f:
            raw = f.raw_metadata
    except Exception:
        return None
    return _parse_xml(raw, path)


#: Per-channel lists of :func:`czi_instrument` and the key of one channel's value.
CHANNEL_KEYS = {
    "ChannelNames": "ChannelName",
    "ExcitationWavelengths": "ExcitationWavelength",
    "EmissionWavelengths": "EmissionWavelength",
    "ChannelColors": "ChannelColor",
}


def for_channel(instrument: dict[str, object], channel: int) -> dict[str, object]:
    """*instrument* plus the selected *channel*'s ``ChannelName``,
    ``ExcitationWavelength`` and ``EmissionWavelength`` (where the file gives them):
    the single values :func:`bidspack.bids.metadata.omexml_metadata` writes for a
    one-channel image."""
    out = dict(instrument)
    for plural, single in CHANNEL_KEYS.items():
        values = instrument.get(plural)
        if isinstance(values, list) and channel < len(values) and values[channel] is not None:
            out[single] = values[channel]
    return out


# --------------------------------------------------------------------------- pylibCZIrw


class _Sizes(NamedTuple):
    Z: float | None
    Y: float | None
    X: float | None


@dataclass
class _CziDims:
    T: int
    C: int
    Z: int
    Y: int
    X: int
    S: int = 1


@dataclass
class CziFile:
    """A CZI file as pylibCZIrw sees it, with the attributes of a ``bioio.BioImage``
    that bidspack uses (``scenes``, ``set_scene``, ``current_scene``, ``dims``,
    ``channel_names``, ``physical_pixel_sizes``, ``dtype``, ``metadata``), so that code
    written for bioio images (``draft-spec``) reads it too.

    Raises:
        _ReaderFailed: pylibCZIrw cannot open the file.
        SourceError: its metadata is unusable (not XML, a scaling that is no number).
    """

    path: Path
    metadata: ET.Element = field(init=False)
    bbox: dict[str, tuple[int, int]] = field(init=False)
    pixel_types: dict[int, str] = field(init=False)
    scene_rects: list[tuple[int, tuple[int, int, int, int]]] = field(init=False)
    rect: tuple[int, int, int, int] = field(init=False)
    scenes: tuple[str, ...] = field(init=False)
    current_scene: str = field(init=False)
    scene_index: int | None = field(init=False, default=None)
    version: str = field(init=False, default="")

    def __post_init__(self) -> None:
        import importlib.metadata as md

        try:
            from pylibCZIrw import czi as pyczi
        except ImportError as exc:  # pragma: no cover - a dependency
            raise _ReaderFailed([("pylibCZIrw", f"not installed ({exc})")]) from exc
        with contextlib.suppress(Exception):
            self.version = md.version("pylibCZIrw")
        try:
            with pyczi.open_czi(str(self.path)) as f:
                raw = f.raw_metadata
                self.bbox = dict(f.total_bounding_box_no_pyramid)
                self.pixel_types = dict(f.pixel_types)
                r = f.total_bounding_rectangle_no_pyramid
                self.rect = (int(r.x), int(r.y), int(r.w), int(r.h))
                scenes = f.scenes_bounding_rectangle_no_pyramid
                self.scene_rects = [
                    (int(k), (int(v.x), int(v.y), int(v.w), int(v.h)))
                    for k, v in sorted(scenes.items())
                ]
        except Exception as exc:
            raise _ReaderFailed([(self.reader, _exc_text(exc, self.path))]) from exc
        self.metadata = _parse_xml(raw, self.path)
        names = [
            s.get("Name") or f"Image:{i}"
            for i, s in enumerate(
                self.metadata.findall("Metadata/Information/Image/Dimensions/S/Scenes/Scene")
            )
        ]
        n = max(1, len(self.scene_rects))
        names = (names + [f"Image:{i}" for i in range(len(names), n)])[:n]
        self.scenes = tuple(names)
        self.current_scene = self.scenes[0]

    @property
    def reader(self) -> str:
        """``pylibCZIrw <version>``."""
        return f"pylibCZIrw {self.version}".strip()

    def set_scene(self, scene: int | str) -> None:
        """Select a scene by index or name (``scenes``).

        Raises:
            SourceError: no such scene.
        """
        if isinstance(scene, str):
            if scene not in self.scenes:
                raise SourceError(
                    self.path, f"scene {scene!r} does not exist (scenes: {list(self.scenes)})"
                )
            scene = self.scenes.index(scene)
        if not 0 <= scene < len(self.scenes):
            raise SourceError(
                self.path, f"scene {scene} does not exist (scenes: {list(self.scenes)})"
            )
        self.current_scene = self.scenes[scene]
        self.scene_index = scene if self.scene_rects else None

    def _size(self, dim: str) -> int:
        lo, hi = self.bbox.get(dim, (0, 1))
        return max(1, int(hi) - int(lo))

    @property
    def roi(self) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` of the current scene at layer 0 (pixel coordinates)."""
        if self.scene_index is not None:
            return self.scene_rects[self.scene_index][1]
        if len(self.scene_rects) == 1:
            return self.scene_rects[0][1]
        return self.rect

    @property
    def scene_id(self) -> int | None:
        """The CZI ``S`` index of the current scene (``None``: no scenes)."""
        if self.scene_index is not None:
            return self.scene_rects[self.scene_index][0]
        return self.scene_rects[0][0] if len(self.scene_rects) == 1 else None

    @property
    def dims(self) -> _CziDims:
        """``T C Z Y X`` sizes of the current scene (``S`` 3 for BGR pixels)."""
        _, _, w, h = self.roi
        rgb = any(t.startswith("Bgr") for t in self.pixel_types.values())
        return _CziDims(
            T=self._size("T"), C=self._size("C"), Z=self._size("Z"), Y=h, X=w, S=3 if rgb else 1
        )

    @property
    def channel_names(self) -> list[str]:
        """Per channel its ``Name``, else its ``Id`` (as bioio-czi names them)."""
        chans = self.metadata.findall("Metadata/Information/Image/Dimensions/Channels/Channel")
        out = []
        for c in range(self._size("C")):
            el = chans[c] if c < len(chans) else None
            out.append(
                (el.get("Name") or el.get("Id") if el is not None else None) or f"Channel:{c}"
            )
        return out

    @property
    def dtype(self) -> np.dtype:
        """The pixel dtype of channel 0 (see :meth:`channel_dtype`)."""
        return self.channel_dtype(0)

    def channel_dtype(self, c: int) -> np.dtype:
        """The pixel dtype of channel *c*.

        Raises:
            SourceError: a colour (BGR) or unknown pixel type.
        """
        kind = self.pixel_types.get(c, self.pixel_types.get(0, "Gray8"))
        if kind.startswith("Bgr"):
            raise SourceError(
                self.path, f"RGB images are not supported; expected grayscale ({kind} pixels)"
            )
        if kind not in CZI_GRAY_TYPES:
            raise SourceError(self.path, f"CZI pixel type {kind} is not supported")
        return np.dtype(CZI_GRAY_TYPES[kind])

    @property
    def physical_pixel_sizes(self) -> _Sizes:
        """``(Z, Y, X)`` µm from the XML scaling (see :func:`czi_scaling`)."""
        return _Sizes(*czi_scaling(self.metadata, self.path).axes)

    def hidden_dims(self) -> list[str]:
        """The dimensions read at their first index (Airyscan phases ...), described."""
        return [
            f"{self._size(d)} {what} (CZI dimension {d}; pylibCZIrw reads the first, "
            "not selectable)"
            for d, what in _HIDDEN_CZI_DIMS.items()
            if self._size(d) > 1
        ]

    def read(self, f: Any, c: int, z: int, t: int) -> np.ndarray:
        """Plane ``(C, Z, T) = (c, z, t)`` of the current scene from the open reader *f*,
        ``(y, x)``."""
        arr = f.read(
            plane={"C": c, "Z": z, "T": t},
            roi=self.roi,
            scene=self.scene_id,
            pixel_type=self.pixel_types.get(c, self.pixel_types.get(0)),
        )
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- the source


class VendorImage(ImageSource):
    """One scene / channel / time point of a vendor file, ``(z, y, x)``.

    Args:
        path: the file.
        scene: scene index or name (default: the first scene).
        channel: channel index or name (``Channel`` names as the reader reports them).
        time: time-point index.

    Raises:
        SourceError: no reader reads the file (naming each reader tried and why it
            failed, and the bioio plugins installed), the scene / channel / time point
            does not exist, the image has RGB samples, or its CZI scaling is not a
            number.
        ResourceLimitError: one plane exceeds the decoded-plane budget (pylibCZIrw).

    Attributes:
        reader: ``"bioio-czi"`` (the bioio plugin that read it) or ``"pylibCZIrw
            <version>"``.
        format: the file suffix without the dot (``"czi"``).
        channel_names: every channel's name, in channel order.
        unit: ``"m"`` for a CZI (its scaling's unit), else ``None``.
        instrument: :func:`czi_instrument` of a CZI, with the selected channel's
            values (:func:`for_channel`); ``{}`` for other formats.
        left_out: what the file holds beyond the selection (other channels, time
            points and scenes; dimensions the reader does not expose, such as Airyscan
            phases), so that nothing is dropped without a word.
        fallback_reason: why bioio did not read it when pylibCZIrw did, else ``None``.
    """

    instrument: dict[str, object]
    reader: str
    channel_names: tuple[str, ...]

    def __init__(
        self, path: Path, *, scene: int | str | None = None, channel: int | str = 0, time: int = 0
    ):
        self.path = Path(path)
        self.files = (self.path,)
        self.format = self.path.suffix.lower().lstrip(".")
        self.unit: str | None = None
        self.instrument = {}
        self.fallback_reason: str | None = None
        self._meta: dict[str, dict[str, Any]] = {}
        self._czi: CziFile | None = None
        self._stack: Any = None
        if not self.path.exists():
            raise SourceError(self.path, "file not found")
        try:
            img = _bioimage(self.path)
            self._open_bioio(img, scene, channel, time)
        except _ReaderFailed as exc:
            failures = list(exc.failures)
            if not is_czi(self.path):
                failures.append(
                    ("pylibCZIrw", f"{NOT_TRIED}not a CZI file, no ZISRAWFILE signature")
                )
                raise no_reader_error(self.path, failures) from None
            try:
                self._open_czi(scene, channel, time)
            except _ReaderFailed as exc2:
                raise no_reader_error(self.path, failures + exc2.failures) from None
            self.fallback_reason = "; ".join(f"{r}: {m}" for r, m in failures)
        if self._czi is not None or is_czi(self.path):
            self._czi_metadata(img=None if self._czi is not None else self._img)

    # -- bioio ---------------------------------------------------------------------

    def _open_bioio(self, img: Any, scene: int | str | None, channel: int | str, time: int) -> None:
        """Select in a bioio image. Selection errors are ``SourceError``s; the plugin
        failing on the file is ``_ReaderFailed`` (then pylibCZIrw may read it)."""
        plugin = _plugin_name(img)
        try:
            with _quiet():
                scenes = [str(s) for s in img.scenes]
                if scene is not None:
                    if isinstance(scene, int) and not 0 <= scene < len(scenes):
                        raise SourceError(
                            self.path, f"scene {scene} does not exist (scenes: {scenes})"
                        )
                    if isinstance(scene, str) and scene not in scenes:
                        raise SourceError(
                            self.path, f"scene {scene!r} does not exist (scenes: {scenes})"
                        )
                    img.set_scene(scene)
                dims = img.dims
                names = [str(c) for c in (img.channel_names or [])]
                sizes = img.physical_pixel_sizes
                dtype = np.dtype(img.dtype)
        except SourceError:
            raise
        except Exception as exc:
            raise _ReaderFailed([(plugin, _exc_text(exc, self.path))]) from exc
        if getattr(dims, "S", 1) > 1:
            raise SourceError(self.path, "RGB images are not supported; expected grayscale")
        channel = self._select(names, int(dims.C), int(dims.T), channel, time)
        left = self._left(names, int(dims.C), int(dims.T), channel, time, len(scenes))
        self.left_out = (*left, *_hidden_dims(img))
        try:
            with _quiet():
                # lazy (z, y, x) Dask array of the selection, one chunk per plane
                self._stack = img.get_image_dask_data("ZYX", C=channel, T=time)
        except Exception as exc:
            raise _ReaderFailed([(plugin, _exc_text(exc, self.path))]) from exc
        self.reader = plugin
        self.scene = str(img.current_scene)
        self.channel = channel
        self.channel_names = tuple(names)
        self.channel_name = names[channel] if channel < len(names) else None
        self.time = time
        self._img = img
        axes = tuple(
            float(v) if v is not None and math.isfinite(v) and v > 0 else None
            for v in (sizes.Z, sizes.Y, sizes.X)
        )
        z, y, x = axes
        physical = None if z is None or y is None or x is None else (z, y, x)
        self.info = StackInfo(
            shape=(int(dims.Z), int(dims.Y), int(dims.X)),
            dtype=dtype,
            physical_size=physical,
            physical_axes=(z, y, x),
        )
        if any(v is not None for v in axes):
            self._note("physical_size_zyx_um", list(axes), origin="file (bioio)")

    # -- pylibCZIrw ----------------------------------------------------------------

    def _open_czi(self, scene: int | str | None, channel: int | str, time: int) -> None:
        """Select in the CZI through pylibCZIrw (bioio failed on it)."""
        czi = CziFile(self.path)
        if scene is not None:
            czi.set_scene(scene)
        dims = czi.dims
        names = czi.channel_names
        channel = self._select(names, dims.C, dims.T, channel, time)
        dtype = czi.channel_dtype(channel)
        check_plane_budget(self.path, (dims.Y, dims.X), dtype)
        left = self._left(names, dims.C, dims.T, channel, time, len(czi.scenes))
        self.left_out = (*left, *czi.hidden_dims())
        self.reader = czi.reader
        self.scene = czi.current_scene
        self.channel = channel
        self.channel_names = tuple(names)
        self.channel_name = names[channel]
        self.time = time
        self._czi = czi
        self._img = czi
        self.info = StackInfo(shape=(dims.Z, dims.Y, dims.X), dtype=dtype, physical_size=None)

    # -- shared --------------------------------------------------------------------

    def _select(self, names: list[str], nc: int, nt: int, channel: int | str, time: int) -> int:
        """The channel index of *channel*, after checking it and *time* exist.

        Raises:
            SourceError: no such channel (index or name) or time point.
        """
        if isinstance(channel, str):
            if channel not in names:
                raise SourceError(self.path, f"no channel named {channel!r} (channels: {names})")
            channel = names.index(channel)
        if not 0 <= channel < nc:
            raise SourceError(self.path, f"channel {channel} does not exist ({nc} channel(s))")
        if not 0 <= time < nt:
            raise SourceError(self.path, f"time point {time} does not exist ({nt})")
        self.n_channels, self.n_times = int(nc), int(nt)
        return channel

    @staticmethod
    def _left(
        names: list[str], nc: int, nt: int, channel: int, time: int, nscenes: int
    ) -> list[str]:
        left: list[str] = []
        if nc > 1:
            others = [names[i] if i < len(names) else str(i) for i in range(nc) if i != channel]
            left.append("channel(s) " + ", ".join(others))
        if nt > 1:
            left.append("time point(s) " + _indices([t for t in range(nt) if t != time]))
        if nscenes > 1:
            left.append(f"{nscenes - 1} other scene(s)")
        return left

    def _note(self, name: str, value: Any, *, origin: str = "file") -> None:
        self._meta[name] = {"value": value, "origin": origin}

    def _czi_metadata(self, img: Any) -> None:
        """Voxel size (exact, from the XML scaling) and instrument of a CZI."""
        root = self._czi.metadata if self._czi is not None else _czi_root(self.path, img)
        if root is None:
            return
        scaling = czi_scaling(root, self.path)
        for axis, text in scaling.values.items():
            self._note(f"Metadata/Scaling/Items/Distance[@Id='{axis}']/Value (m)", text)
        if any(v is not None for v in scaling.axes):
            self.unit = "m"
            self.info = StackInfo(
                shape=self.shape,
                dtype=self.dtype,
                physical_size=scaling.physical_size,
                origin=self.info.origin,
                physical_axes=scaling.axes,
            )
            self._note("physical_size_zyx_um", list(scaling.axes))
        self.instrument = for_channel(czi_instrument(root), self.channel)
        for key, value in self.instrument.items():
            self._note(f"instrument.{key}", value)

    def metadata(self) -> dict[str, Any]:
        """Every value taken from the file, ``{name: {"value": v, "origin": "file"}}``
        (the CZI scaling text in metres, ``physical_size_zyx_um``, each ``instrument``
        entry), plus ``reader``, ``shape_zyx``, ``dtype`` and, when pylibCZIrw read the
        file, ``fallback_reason`` (origin ``"derived"``)."""
        out = dict(self._meta)
        derived: dict[str, Any] = {
            "reader": self.reader,
            "format": self.format,
            "shape_zyx": list(self.shape),
            "dtype": self.dtype.name,
        }
        if self.fallback_reason:
            derived["fallback_reason"] = self.fallback_reason
        for k, v in derived.items():
            out[k] = {"value": v, "origin": "derived"}
        return out

    # -- pixels --------------------------------------------------------------------

    def read_plane(self, z: int) -> np.ndarray:
        """Plane *z* of the selected scene, channel and time point, ``(y, x)``.

        Raises:
            SourceError: *z* out of range, or the plane cannot be decoded.
        """
        if not 0 <= z < self.shape[0]:
            raise SourceError(self.path, f"plane {z} does not exist ({self.shape[0]} planes)")
        if self._czi is not None:
            return next(self._czi_planes(z, z + 1))
        return self._check_plane(self._read(z, z + 1)[0], self.path)

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Planes ``start:stop`` as a ``(z, y, x)`` array (Dask's synchronous scheduler:
        vendor readers are not assumed to be safe to call from several threads)."""
        try:
            with _quiet():
                return np.asarray(self._stack[start:stop].compute(scheduler="synchronous"))
        except Exception as exc:
            raise SourceError(
                self.path, f"cannot decode planes {start}-{stop - 1} ({exc})"
            ) from exc

    def _czi_planes(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Planes ``start:stop`` through pylibCZIrw, one at a time from one open reader."""
        from pylibCZIrw import czi as pyczi

        assert self._czi is not None
        z = start
        try:
            with pyczi.open_czi(str(self.path)) as f:
                for z in range(start, stop):
                    plane = self._czi.read(f, self.channel, z, self.time)
                    yield self._check_plane(plane, self.path)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(
                self.path, f"cannot decode plane {z} with pylibCZIrw ({_exc_text(exc, self.path)})"
            ) from exc

    def iter_planes(self, *, prefetch: int = 4, workers: int = 2) -> Iterator[np.ndarray]:
        """The planes in Z order: through bioio in blocks of about :data:`BLOCK_BYTES`
        (at least one plane; one Dask computation per block), through pylibCZIrw one
        plane at a time from one open reader."""
        nz, ny, nx = self.shape
        if self._czi is not None:
            yield from self._czi_planes(0, nz)
            return
        step = max(1, BLOCK_BYTES // max(1, ny * nx * self.dtype.itemsize))
        for z0 in range(0, nz, step):
            block = self._read(z0, min(z0 + step, nz))
            for plane in block:
                yield self._check_plane(plane, self.path)
