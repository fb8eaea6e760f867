"""``bidspack draft-spec``: draft a commented packaging spec from a submission.

The job of BIDScoin's bidsmapper or dcm2bids_helper, for microscopy. The submission is
scanned read-only and for metadata only: TIFF headers through tifffile (every slice's
header, as packaging checks them: gaps, duplicate indices, mixed shapes), vendor files
as packaging reads them (:class:`bidspack.io.vendor.VendorImage`: bioio, or pylibCZIrw
for the CZIs bioio fails on), container and instrument files (MRC, NRRD, HDF5, Imaris,
video) through :mod:`bidspack.io.containers`. Pixels are decoded only for up to three
sampled planes of a TIFF channel, to tell label images (few distinct integer values)
from intensity images; never a whole stack.

The draft is TOML text that follows ``specs/packaging.schema.json``:

- ``[subjects]``: a pattern with named groups inferred from the subject folder names
  (split on ``_``: dates, ids, sex, hemisphere, genotype recognised; generic names
  otherwise), a ``label`` template that gives every folder its own participant label,
  a ``sample`` template, and participants/samples columns from the groups;
- one ``[[channels]]`` per channel folder, TIFF stack file, or vendor / container file
  channel (``select``), with a comment giving file count, shape, dtype and voxel size;
- ``voxel_size`` only for the axes the files do not carry (``info.found_sizes()``, as
  packaging reads them: a spec value is only for a missing axis, and one contradicting
  the file is an error), with a comment naming the axes the file carries; no Z for a
  2D image (one plane, no Z size), which stays 2D, and then ``[output] formats =
  ["ome-zarr"]`` (an OME-TIFF without PhysicalSizeZ fails the BIDS validator);
- label-looking folders as ``image = "label"`` derivatives, non-image files noted as
  ``extras``, near-copy folders flagged with a ``bidspack hashdiff`` command, OS junk
  listed, other loose files as ``[[exclude]]`` entries.

Values the files cannot answer are ``TODO`` placeholders that the schema rejects on
purpose (the string ``"TODO"`` where a number is required, ``["TODO"]`` where a
sentence is required), so :func:`bidspack.spec.load_spec` refuses the draft, naming the
line, until they are filled. Guesses a curator should confirm are marked ``CHECK``.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tifffile

from bidspack.bids.schema import micr_rule, sanitize_label
from bidspack.errors import BidspackError, PlanError
from bidspack.io.containers import container_kind
from bidspack.io.sources import UNIT_TO_UM, ImageSource, is_tiff, open_files, open_source
from bidspack.io.tree import JUNK, scan  # JUNK: listed in the draft, never a channel
from bidspack.records import Record
from bidspack.safety import entry_kind

#: File suffixes read through bioio as vendor images (with the matching plugin).
VENDOR_SUFFIXES = (
    ".czi",
    ".lif",
    ".nd2",
    ".ims",
    ".oib",
    ".oif",
    ".vsi",
    ".lsm",
    ".sld",
    ".zvi",
    ".dv",
    ".svs",
    ".scn",
)
#: Folder names that suggest label images (segmentations, masks, atlases).
LABEL_HINTS = ("mask", "label", "seg", "atlas", "annot", "dseg")
#: Folder names that suggest derivatives (anything computed from the raw images).
DERIVATIVE_HINTS = (
    *LABEL_HINTS,
    "heatmap",
    "density",
    "registered",
    "space",
    "corr",
    "prob",
    "deriv",
    "processed",
    "result",
    "analysis",
)
#: Sampled planes with at most this many distinct integer values look like labels.
LABEL_MAX_VALUES = 64

_SEX = {"male": "M", "female": "F", "m": "M", "f": "F"}
_HEMISPHERE = {"lh", "rh", "left", "right", "l", "r", "both", "bilateral"}
_GENOTYPE = {
    "ko",
    "wt",
    "het",
    "hom",
    "floxed",
    "flox",
    "cre",
    "cre+",
    "cre-",
    "ctrl",
    "control",
    "kd",
    "ki",
    "tg",
    "ntg",
    "mut",
    "wildtype",
    "knockout",
    "transgenic",
}
#: OME acquisition modes (bioio's OME metadata of a vendor file) -> BIDS micr suffix.
_MODE_SUFFIX = {
    "LaserScanningConfocalMicroscopy": "CONF",
    "SpinningDiskConfocal": "CONF",
    "SlitScanConfocal": "CONF",
    "SweptFieldConfocal": "CONF",
    "MultiPhotonMicroscopy": "MPE",
    "SecondHarmonicGenerationImaging": "NLO",
    "SPIM": "SPIM",
    "BrightField": "BF",
    "StructuredIllumination": "SR",
    "STED": "SR",
    "PALM": "SR",
    "STORM": "SR",
    "SingleMoleculeImaging": "SR",
}


@dataclass
class _Entry:
    """One proposed ``[[channels]]`` entry (or a problem found where one was expected)."""

    folder: str
    subjects: list[str] = field(default_factory=list)
    kind: str = "folder"  # folder | stack | vendor | container | none
    image: str = "intensity"
    type: str = "raw"
    pipeline: str | None = None
    desc: str | None = None
    suffix: str = "SPIM"
    suffix_known: bool = False
    entities: dict[str, str] = field(default_factory=dict)
    select: dict[str, Any] = field(default_factory=dict)
    voxel: list[float | None] | None = None  # (z, y, x) um for the spec, None per unknown axis
    #: (z, y, x) um the file carries as packaging reads it (``info.found_sizes()``),
    #: ``None`` per axis it lacks: never repeated in the spec's voxel_size
    carried: tuple[float | None, float | None, float | None] = (None, None, None)
    notes: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)
    problem: str | None = None
    files: int = 0
    shape: tuple[int, int, int] | None = None
    dtype: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Group:
    """A named group of the subject pattern: its regex and kind."""

    name: str
    regex: str
    kind: str  # date | time | id | sex | hemisphere | genotype | generic | rest
    values: list[str]


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def _regex_literal(pattern: str) -> str:
    """The pattern as a TOML literal string when possible (no escaping of backslashes)."""
    if "'" not in pattern and "\n" not in pattern:
        return f"'{pattern}'"
    return _toml_str(pattern)


def _num(v: float) -> float | int:
    """A voxel size for the draft: rounded to 6 significant digits, int when whole."""
    r = float(f"{v:.6g}")
    return int(r) if r.is_integer() else r


def _label(raw: str, fallback: str) -> str:
    """A BIDS label (alphanumerics) made from *raw*, or *fallback* if nothing remains."""
    try:
        return sanitize_label(raw)
    except BidspackError:
        return fallback


def _pipeline_name(folder: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(folder).name).lstrip("._-")
    return name or "derivative"


# --------------------------------------------------------------------------- subjects


def _classify(values: Sequence[str]) -> tuple[str, str]:
    """(kind, regex) of one ``_``-separated token position across subject folders."""
    low = [v.lower() for v in values]
    if all(re.fullmatch(r"\d{8}", v) and v[:2] in ("19", "20") for v in values):
        return "date", r"\d{8}"
    if all(re.fullmatch(r"\d{6}", v) for v in values):
        return "date", r"\d{6}"
    if all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) for v in values):
        return "date", r"\d{4}-\d{2}-\d{2}"
    if all(re.fullmatch(r"\d{2}-\d{2}-\d{2}", v) for v in values):
        return "time", r"\d{2}-\d{2}-\d{2}"
    if all(v.isdigit() for v in values):
        return "id", r"\d+"
    if all(v in _SEX for v in low):
        return "sex", "[^_]+"
    if all(v in _HEMISPHERE for v in low):
        return "hemisphere", "[^_]+"
    if all(v in _GENOTYPE for v in low):
        return "genotype", "[^_]+"
    return "generic", "[^_]+"


def _infer_groups(names: Sequence[str]) -> list[_Group | str]:
    """The pattern's parts: groups, or literal tokens (constant over >= 2 folders)."""
    tokens = [n.split("_") for n in names]
    n = min(len(t) for t in tokens)
    ragged = any(len(t) != n for t in tokens)
    fixed = n - 1 if ragged else n
    parts: list[_Group | str] = []
    used: dict[str, int] = {}
    for i in range(fixed):
        values = [t[i] for t in tokens]
        kind, regex = _classify(values)
        if kind == "generic" and len(names) > 1 and len(set(values)) == 1:
            parts.append(re.escape(values[0]))
            continue
        base = {"generic": f"part{i + 1}"}.get(kind, kind)
        used[base] = used.get(base, 0) + 1
        name = base if used[base] == 1 else f"{base}{used[base]}"
        parts.append(_Group(name, regex, kind, values))
    if ragged:
        rest = ["_".join(t[fixed:]) for t in tokens]
        parts.append(_Group("rest", ".+", "rest", rest))
    return parts


def _pattern_of(parts: Sequence[_Group | str]) -> str:
    return "_".join(f"(?P<{p.name}>{p.regex})" if isinstance(p, _Group) else p for p in parts)


def _label_template(groups: Sequence[_Group], n: int) -> tuple[str, list[str]]:
    """A participant label template giving *n* folders distinct, valid labels."""
    by_kind = {g.kind: g for g in reversed(groups)}
    preferred = [g for k in ("id", "genotype") if (g := by_kind.get(k)) is not None]
    order = preferred + [g for g in groups if g not in preferred and g.kind != "rest"]
    order += [g for g in groups if g.kind == "rest"]
    chosen: list[_Group] = []
    for g in order:
        chosen.append(g)
        if g.kind == "genotype" and len(chosen) == 1 and "id" in by_kind:
            continue
        labels = [_label("".join(c.values[i] for c in chosen), "") for i in range(n)]
        if all(labels) and len(set(labels)) == n and (len(chosen) >= len(preferred)):
            return "".join(f"{{{c.name}}}" for c in chosen), labels
    labels = [_label("".join(c.values[i] for c in chosen), "") for i in range(n)]
    return "".join(f"{{{c.name}}}" for c in chosen), labels


@dataclass
class _Subjects:
    pattern: str
    groups: list[_Group]
    label: str
    labels: list[str]
    sample: str


def _subjects(names: Sequence[str]) -> _Subjects:
    parts = _infer_groups(names)
    pattern = _pattern_of(parts)
    groups = [p for p in parts if isinstance(p, _Group)]
    if not groups or not all(re.fullmatch(pattern, n) for n in names):
        groups = [_Group("name", ".+", "rest", list(names))]
        pattern = _pattern_of(groups)
    label, labels = _label_template(groups, len(names))
    if not all(labels) or len(set(labels)) != len(names):
        groups = [_Group("name", ".+", "rest", list(names))]
        pattern = _pattern_of(groups)
        label, labels = "{name}", [_label(n, "") for n in names]
    hemi = next((g for g in groups if g.kind == "hemisphere"), None)
    sample = f"brain{{{hemi.name}}}" if hemi else "brain"
    return _Subjects(pattern, groups, label, labels, sample)


# --------------------------------------------------------------------------- images


def _tiff_voxel(path: Path) -> tuple[list[float | None] | None, str]:
    """(z, y, x) micrometres a single TIFF slice carries (ImageJ spacing/unit, TIFF
    resolution in centimetres or microns), each axis or ``None``; and where it was found."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            ij = tif.imagej_metadata or {}
            tags = page.tags  # type: ignore[union-attr]
            xres = tags.get("XResolution")
            yres = tags.get("YResolution")
            unit_tag = tags.get("ResolutionUnit")
            unit = str(ij.get("unit", "")).replace("\\u00B5", "µ")
            factor = UNIT_TO_UM.get(unit)
            where = "ImageJ metadata"
            if factor is None and unit_tag is not None and int(unit_tag.value) == 3:
                factor, where = 1e4, "TIFF resolution (pixels per cm)"
            if factor is None:
                return None, ""

            def size(tag: Any) -> float | None:
                if tag is None:
                    return None
                num, den = tag.value
                return factor * den / num if num and den else None

            z = ij.get("spacing")
            zum = float(z) * factor if isinstance(z, int | float) and z > 0 else None
            found = [zum, size(yres), size(xres)]
            return (found if any(v is not None for v in found) else None), where
    except Exception:  # metadata only: a broken file is reported by open_files
        return None, ""


def _distinct_values(src: ImageSource) -> int | None:
    """Distinct values over up to three sampled planes (25/50/75 % of Z), for integer
    images; ``None`` for float images or when the planes are blank."""
    if src.dtype.kind not in "iub":
        return None
    nz = src.shape[0]
    zs = sorted({nz // 4, nz // 2, (3 * nz) // 4})
    values: set[int] = set()
    for z in zs:
        plane = src.read_plane(z)
        values.update(np.unique(plane).tolist())
        if len(values) > LABEL_MAX_VALUES:
            break
    return len(values) if len(values) > 1 else None


def _describe_image(entry: _Entry, src: ImageSource, where: str) -> None:
    """Fill shape, dtype, voxel size and the label guess of *entry* from *src*."""
    entry.shape = tuple(int(v) for v in src.shape)  # type: ignore[assignment]
    entry.dtype = src.dtype.name
    entry.files = len(src.files)
    entry.carried = src.info.found_sizes()
    if any(v is not None for v in entry.carried):
        entry.notes.append(f"voxel size from {where}")
    if None in entry.carried and entry.kind in ("folder", "stack") and src.files:
        # metadata packaging does not read (ImageJ, TIFF resolution): proposed as spec
        # values, for the axes the file does not carry
        voxel, found = _tiff_voxel(src.files[0])
        if voxel is not None:
            voxel = [v if c is None else None for v, c in zip(voxel, entry.carried, strict=True)]
        if voxel is not None and any(v is not None for v in voxel):
            entry.voxel = voxel
            entry.notes.append(f"voxel size from {found} of {src.files[0].name}")
    name = entry.folder.lower()
    hinted = any(h in name for h in LABEL_HINTS)
    distinct = _distinct_values(src) if entry.kind != "vendor" else None
    if distinct is not None and distinct <= LABEL_MAX_VALUES:
        entry.image = "label"
        entry.notes.append(f"{distinct} distinct values in sampled planes: looks like labels")
    elif hinted and src.dtype.kind in "iub":
        entry.image = "label"
        entry.notes.append("name suggests labels")
    if entry.image == "label" or any(h in name for h in DERIVATIVE_HINTS):
        entry.type = "derivative"


def _scan_folder(sub: Path, folder: str, entry: _Entry, junk: list[str], root: Path) -> None:
    """Describe a channel folder: its TIFF image (if any) and its other files."""
    base = sub / folder
    tiffs: list[Path] = []
    # by lstat (bidspack.io.tree): links, FIFOs and sockets are not followed or read
    for rel in scan(root, base.relative_to(root).as_posix()).files:
        p = root / rel
        if JUNK.match(p.name):
            junk.append(rel)
        elif p.parent == base and is_tiff(p):
            tiffs.append(p)
        else:
            entry.extras.append(p.relative_to(base).as_posix())
    if not tiffs:
        entry.kind = "none"
        entry.image = "none"
        entry.files = len(entry.extras)
        if any(h in folder.lower() for h in DERIVATIVE_HINTS):
            entry.type = "derivative"
        return
    try:
        src = open_files(base, tiffs)
        _describe_image(entry, src, "the OME-XML")
    except BidspackError as exc:
        entry.problem = exc.message
        entry.files = len(tiffs)


def _scan_stack(path: Path, entry: _Entry) -> None:
    entry.kind = "stack"
    try:
        src = open_source(path)
        _describe_image(entry, src, "the OME-XML")
    except BidspackError as exc:
        entry.problem = exc.message


@dataclass
class _Layout:
    """What a vendor file holds beyond one selection: its scenes, and per scene the
    number of time points and each channel's (acquisition mode, illumination type)."""

    scenes: list[str]
    times: list[int]
    modes: list[list[tuple[str, str | None] | None]]


def _czi_modes(root: Any) -> list[tuple[str, str | None] | None]:
    """(acquisition mode, illumination type) per channel from a CZI's XML
    (``Information/Image/Dimensions/Channels/Channel``; ZEN writes OME's vocabulary)."""
    out: list[tuple[str, str | None] | None] = []
    for ch in root.findall("Metadata/Information/Image/Dimensions/Channels/Channel"):
        mode = (ch.findtext("AcquisitionMode") or "").strip()
        illum = (ch.findtext("IlluminationType") or "").strip() or None
        out.append((mode, illum) if mode else None)
    return out


def _vendor_layout(path: Path) -> _Layout:
    """The scenes, time points and acquisition modes of a vendor file: a CZI through
    pylibCZIrw (:class:`~bidspack.io.vendor.CziFile`, which reads the CZIs bioio fails
    on), other formats through ``bioio.BioImage``. One scene of one time point when
    neither tells more (the entries then say less, never something wrong)."""
    from bidspack.io.vendor import CziFile, is_czi

    if is_czi(path):
        try:
            czi = CziFile(path)
            czi_times = []
            for i in range(len(czi.scenes)):
                czi.set_scene(i)
                czi_times.append(czi.dims.T)
            per_channel = _czi_modes(czi.metadata)
            return _Layout(list(czi.scenes), czi_times, [per_channel] * len(czi_times))
        except Exception:  # bioio read it (VendorImage opened it): ask bioio below
            pass
    try:
        from bioio import BioImage

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = BioImage(path)
            scenes = [str(sc) for sc in img.scenes]
            times: list[int] = []
            modes: list[list[tuple[str, str | None] | None]] = []
            for i, sc in enumerate(scenes):
                img.set_scene(sc)
                times.append(int(img.dims.T))
                modes.append(_acquisition_modes(img, i))
        return _Layout(scenes, times, modes)
    except Exception:
        return _Layout(["Image:0"], [1], [[]])


def _vendor_entries(path: Path, folder: str) -> list[_Entry]:
    """One entry per scene and channel of a vendor file (time point 0), described as
    packaging reads it (:class:`~bidspack.io.vendor.VendorImage`: its channel names,
    shape, dtype and the voxel size axis by axis from the file, e.g. a CZI's XML
    scaling, exact)."""
    from bidspack.io.vendor import VendorImage

    try:
        first = VendorImage(path)
    except BidspackError as exc:
        return [_Entry(folder, kind="vendor", problem=exc.message)]
    layout = _vendor_layout(path)
    out: list[_Entry] = []
    for s_index, scene in enumerate(layout.scenes):
        try:
            src = first if s_index == 0 else VendorImage(path, scene=s_index)
        except BidspackError as exc:
            out.append(_Entry(folder, kind="vendor", problem=exc.message))
            continue
        names = list(src.channel_names)
        n_channels = max(1, len(names))
        n_times = layout.times[s_index]
        modes = layout.modes[s_index]
        unique_names = len(set(names)) == len(names) == n_channels
        for c in range(n_channels):
            e = _Entry(folder, kind="vendor")
            _describe_image(e, src, f"the file's metadata ({src.reader})")
            sel: dict[str, Any] = {}
            if len(layout.scenes) > 1:
                sel["scene"] = s_index
            sel["channel"] = names[c] if unique_names else c
            sel["time"] = 0
            e.select = sel
            stain = _label(names[c], f"c{c}") if c < len(names) else f"c{c}"
            e.entities = {"stain": stain}
            if len(layout.scenes) > 1:
                e.entities["chunk"] = str(s_index)
            mode = modes[c] if c < len(modes) else None
            if mode is not None:
                suffix = _suffix_of(*mode)
                if suffix:
                    e.suffix, e.suffix_known = suffix, True
                    e.notes.append(f"acquisition mode {mode[0]} ({mode[1] or 'n/a'}): {suffix}")
            if n_times > 1:
                e.notes.append(
                    f"{n_times} time points; this entry packages time point 0 (BIDS microscopy "
                    "has no time entity: add entries with select.time and another acq to keep more)"
                )
            e.notes.insert(
                0,
                f"scene {scene!r}, channel {names[c] if c < len(names) else c!r} "
                f"of {n_channels}, T={n_times}",
            )
            out.append(e)
    return out


def _container_entries(path: Path, folder: str) -> list[_Entry]:
    """One entry per channel of a container or instrument file that packaging reads
    with :mod:`bidspack.io.containers` (MRC, NRRD, HDF5, Imaris, video), described as
    packaging reads it; time point 0 of a file with several."""
    try:
        src = open_source(path)
        needs_select = False
    except BidspackError as exc:
        try:  # several channels / time points (Imaris): the first, to learn how many
            src = open_source(path, channel=0, time=0)
            needs_select = True
        except BidspackError:
            return [_Entry(folder, kind="container", problem=exc.message)]
    n_channels = int(getattr(src, "n_channels", 1) or 1) if needs_select else 1
    n_times = int(getattr(src, "n_times", 1) or 1) if needs_select else 1
    names = [str(n) for n in src.channel_names]
    unique_names = all(names) and len(set(names)) == len(names) == n_channels
    out: list[_Entry] = []
    for c in range(n_channels):
        e = _Entry(folder, kind="container", files=1)
        try:
            one = src if c == 0 else open_source(path, channel=c, time=0)
            _describe_image(e, one, f"the {getattr(one, 'format', 'file')} header")
        except BidspackError as exc:
            e.problem = exc.message
        if needs_select:
            e.select = {"channel": names[c] if unique_names else c}
            if n_times > 1:
                e.select["time"] = 0
                e.notes.append(
                    f"{n_times} time points; this entry packages time point 0 (add entries "
                    "with select.time and another acq to keep more)"
                )
            e.entities = {"stain": _label(names[c], f"c{c}") if unique_names else f"c{c}"}
        out.append(e)
    return out


def _acquisition_modes(img: Any, scene: int) -> list[tuple[str, str | None] | None]:
    """(acquisition mode, illumination type) per channel from bioio's OME metadata."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ome = img.ome_metadata
        channels = ome.images[scene].pixels.channels
    except Exception:  # plugins without OME metadata: the suffix stays a CHECK
        return []
    out: list[tuple[str, str | None] | None] = []
    for ch in channels:
        mode = getattr(ch.acquisition_mode, "value", None)
        illum = getattr(ch.illumination_type, "value", None)
        out.append((str(mode), None if illum is None else str(illum)) if mode else None)
    return out


def _suffix_of(mode: str, illumination: str | None) -> str | None:
    if mode == "WideField":
        if illumination == "Epifluorescence":
            return "FLUO"
        if illumination == "Transmitted":
            return "BF"
        return None
    suffix = _MODE_SUFFIX.get(mode)
    return suffix if suffix in micr_rule()["suffixes"] else None


# --------------------------------------------------------------------------- near copies


def _norm_digits(name: str) -> str:
    return re.sub(r"\d+", lambda m: str(int(m.group())), name)


_COPY_MARKERS = re.compile(
    r"[ _.-]*(\(\d+\)|copy|kopie|old|new|backup|bak|masked|v\d+|final|orig)$", re.I
)


def _near_copies(entries: Sequence[_Entry]) -> list[tuple[_Entry, _Entry, str]]:
    """Pairs of channel folders that look like copies of each other, with the reason."""
    out: list[tuple[_Entry, _Entry, str]] = []
    folders = [e for e in entries if e.kind in ("folder", "stack")]
    for i, a in enumerate(folders):
        for b in folders[i + 1 :]:
            if a.folder != b.folder and _norm_digits(a.folder) == _norm_digits(b.folder):
                out.append((a, b, "names differ only in the zero padding of their digits"))
                continue
            same = (
                a.shape is not None
                and (a.files, a.shape, a.dtype) == (b.files, b.shape, b.dtype)
                and set(a.subjects) & set(b.subjects)
            )
            if not same:
                continue
            na, nb = a.folder.lower(), b.folder.lower()
            similar = (
                na.startswith(nb)
                or nb.startswith(na)
                or _COPY_MARKERS.sub("", na) == _COPY_MARKERS.sub("", nb)
                or difflib.SequenceMatcher(None, na, nb).ratio() >= 0.9
            )
            if similar:
                out.append(
                    (
                        a,
                        b,
                        f"same file count, shape and dtype ({a.files} files, {a.shape} {a.dtype})",
                    )
                )
    return out


# --------------------------------------------------------------------------- the draft


@dataclass
class _Lines:
    """The draft's lines, with the TODOs (key path, explanation) found on each."""

    lines: list[str] = field(default_factory=list)
    todos: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def todo(self, line: str, key: str, why: str) -> None:
        self.todos.append((len(self.lines), key, why))
        self.lines.append(line)


def _comment_block(text: Iterable[str]) -> list[str]:
    return [f"# {t}" if t else "#" for t in text]


def draft_spec(submission: Path) -> tuple[str, list[Record]]:
    """Scan *submission* (read-only, metadata only) and draft a packaging spec.

    Args:
        submission: the submission folder: one folder per subject at the top level,
            channel folders (TIFF slices), TIFF stacks or vendor files inside.

    Returns:
        ``(text, records)``: the commented TOML spec, and one :class:`Record` per
        finding: ``subject`` and ``channel`` proposals (``ok``), ``todo`` (``impossible``:
        a value the files cannot answer, ``details["line"]`` its line in *text*),
        ``near-copy``, ``junk`` and ``exclude`` suggestions, and ``error`` records for
        channel folders or files that bidspack cannot read (their message is the
        :class:`~bidspack.errors.SourceError`'s). Voxel sizes in the text are
        micrometres, ordered ``z, y, x``; shapes are ``(z, y, x)`` pixels.

    Raises:
        PlanError: *submission* is missing, not a folder, or holds no subject folder.
        OSError: a folder cannot be listed (permissions).
    """
    submission = Path(submission)
    if not submission.is_dir():
        raise PlanError(submission, "submission folder does not exist or is not a folder")
    records: list[Record] = []
    junk: list[str] = []
    loose: list[str] = []
    subject_dirs: list[Path] = []
    for p in sorted(submission.iterdir(), key=lambda p: p.name):
        if JUNK.match(p.name):
            junk.extend([p.name] if not p.is_dir() else scan(submission, p.name).files)
        elif p.is_dir() and not p.is_symlink() and not p.name.startswith("."):
            subject_dirs.append(p)
        else:
            loose.append(p.name)
    if not subject_dirs:
        raise PlanError(
            submission,
            "no subject folder found (bidspack expects one folder per subject at the top level)",
        )
    subj = _subjects([d.name for d in subject_dirs])
    for d, label in zip(subject_dirs, subj.labels, strict=True):
        records.append(Record("subject", d.name, "ok", f"participant label {label}"))

    entries: dict[str, list[_Entry]] = {}
    order: list[str] = []
    for d in subject_dirs:
        for p in sorted(d.iterdir(), key=lambda p: p.name):
            rel = p.relative_to(submission).as_posix()
            if JUNK.match(p.name):
                junk.extend([rel] if p.is_file() else scan(submission, rel).files)
                continue
            name = p.name
            container = p.is_file() and not p.is_symlink() and container_kind(p) is not None
            is_image = p.is_dir() or is_tiff(p) or p.suffix.lower() in VENDOR_SUFFIXES or container
            if p.is_symlink() or not is_image:
                loose.append(rel)
                continue
            if name in entries:
                for e in entries[name]:
                    e.subjects.append(d.name)
                    e.counts[d.name] = _count(p)
                continue
            if p.is_dir():
                e = _Entry(name, [d.name])
                _scan_folder(d, name, e, junk, submission)
                found = [e]
            elif is_tiff(p):
                e = _Entry(name, [d.name], files=1)
                _scan_stack(p, e)
                found = [e]
            else:
                found = (_container_entries if container else _vendor_entries)(p, name)
                for e in found:
                    e.subjects = [d.name]
            for e in found:
                e.counts[d.name] = _count(p)
            entries[name] = found
            order.append(name)
        # junk deeper inside folders already scanned for another subject
        for rel in scan(submission, d.name).files:
            if JUNK.match(rel.rsplit("/", 1)[-1]) and rel not in junk:
                junk.append(rel)
    channels = [e for name in order for e in entries[name]]
    _name_entries(channels)
    copies = _near_copies(channels)

    body = _Lines()
    _render_dataset(body, submission)
    _render_subjects(body, subj)
    _render_sidecar(body)
    for e in channels:
        _render_channel(body, e, len(subject_dirs), copies, submission)
    _render_output(body, channels)
    _render_excludes(body, loose, junk)
    text, header_len = _assemble(body, submission, subject_dirs, channels, copies, junk)
    for index, key, why in body.todos:
        records.append(
            Record(
                "todo",
                key,
                "impossible",
                why,
                {"line": header_len + index + 1},
            )
        )
    for e in channels:
        records.append(_channel_record(e))
    for a, b, why in copies:
        sa = next((s for s in a.subjects if s in b.subjects), a.subjects[0])
        records.append(
            Record(
                "near-copy",
                f"{sa}/{a.folder}",
                "ok",
                f"near-copy of {b.folder}: {why}; compare with bidspack hashdiff",
                {"other": f"{sa}/{b.folder}"},
            )
        )
    for j in sorted(set(junk)):
        records.append(Record("junk", j, "ok", "OS junk file: excluded by default"))
    for f in loose:
        records.append(
            Record("exclude", f, "impossible", "belongs to no channel: exclude it with a reason")
        )
    return text, records


def _count(p: Path) -> int:
    if p.is_file():
        return 1
    return sum(
        1 for f in p.iterdir() if entry_kind(f) == "file" and is_tiff(f) and not JUNK.match(f.name)
    )


def _channel_record(e: _Entry) -> Record:
    where = e.folder + (f" {json.dumps(e.select)}" if e.select else "")
    if e.problem:
        return Record("channel", where, "error", e.problem)
    what = (
        f"{e.files} non-image file(s)"
        if e.image == "none"
        else f"{e.image} {e.type}, {e.shape} {e.dtype}"
    )
    details: dict[str, Any] = {
        "image": e.image,
        "type": e.type,
        "files": e.files,
        "subjects": list(e.subjects),
    }
    if e.shape is not None:
        details.update(shape_zyx=list(e.shape), dtype=e.dtype)
    sizes = _sizes(e)
    if all(v is not None for v in sizes[1:]) and (sizes[0] is not None or _is_2d(e)):
        details["voxel_size_zyx_um"] = sizes  # z None: a 2D image
        details["voxel_size_from_file"] = [
            a for a, c in zip("zyx", e.carried, strict=True) if c is not None
        ]
    return Record("channel", where, "ok", what, details)


def _name_entries(channels: Sequence[_Entry]) -> None:
    """Entities, pipelines and descs that give every output its own file name."""
    seen_raw: set[tuple[tuple[str, str], ...]] = set()
    seen_desc: set[tuple[str, str]] = set()
    for e in channels:
        if e.type == "derivative":
            e.pipeline = _pipeline_name(e.folder)
            if e.image != "none":
                desc = _label(Path(e.folder).stem.split(".")[0], "derived")
                while (e.pipeline, desc) in seen_desc:
                    desc += "2"
                seen_desc.add((e.pipeline, desc))
                e.desc = desc
            continue
        if e.image == "none":
            continue
        if not e.entities:
            stem = PurePosixPath(e.folder).name.split(".")[0]
            short = re.sub(r"^\d+[_-]", "", stem)  # 640_N4 -> N4 (drop the wavelength)
            e.entities = {"stain": _label(short, _label(stem, "image"))}
        key = tuple(sorted(e.entities.items()))
        if key in seen_raw:
            e.entities["acq"] = _label(PurePosixPath(e.folder).name, "copy")
            key = tuple(sorted(e.entities.items()))
        seen_raw.add(key)


def _render_dataset(body: _Lines, submission: Path) -> None:
    body.add(
        "[dataset]",
        "# dataset_description.json; bidspack adds BIDSVersion, DatasetType and GeneratedBy.",
        f"Name = {_toml_str(submission.name)}  # CHECK: a title for the dataset",
        'Authors = ["Unknown"]  # CHECK: who made the data, one string per author',
        'License = "CC-BY-4.0"  # CHECK: the licence the data are released under',
        "",
    )


def _render_sidecar(body: _Lines) -> None:
    body.add(
        "# Fields for every JSON sidecar (BIDS microscopy metadata) can go in a [sidecar]",
        '# table, e.g. SampleEnvironment = "ex vivo", BodyPart = "BRAIN"; a channel\'s own',
        "# sidecar = { ... } wins.",
        "",
    )


def _render_subjects(body: _Lines, subj: _Subjects) -> None:
    names = ", ".join(g.name for g in subj.groups)
    body.add(
        "[subjects]",
        f"# one group per '_'-separated part of the folder names: {names}",
        "# CHECK: group names and how strict each part is (a folder that does not match",
        "# stops packaging at planning, before anything is written)",
        f"pattern = {_regex_literal(subj.pattern)}",
        f"label = {_toml_str(subj.label)}  # -> {', '.join(subj.labels[:4])}"
        + (" ..." if len(subj.labels) > 4 else ""),
        f"sample = {_toml_str(subj.sample)}  # CHECK: the BIDS sample label",
        'sample_type = "tissue"  # CHECK: a BIDS sample_type',
        "",
    )
    participants = [g for g in subj.groups if g.kind in ("sex", "genotype", "generic")]
    samples = [g for g in subj.groups if g.kind in ("hemisphere", "date", "time")]
    for section, groups in (("participants", participants), ("samples", samples)):
        for g in groups:
            body.add(f"[subjects.{section}.{_toml_key(g.name)}]", f"group = {_toml_str(g.name)}")
            if g.kind == "sex":
                mapping = {v: _SEX[v.lower()] for v in sorted(set(g.values))}
                body.add(
                    f"map = {_toml_value(mapping)}",
                    'Description = "Sex of the participant"',
                    'Levels = { F = "female", M = "male" }',
                )
            elif g.kind == "genotype":
                body.add('Description = "Genotype"  # CHECK: and add Levels')
            elif g.kind == "hemisphere":
                body.add('Description = "Imaged hemisphere"')
            elif g.kind == "date":
                body.add('Description = "Date from the folder name"  # CHECK: which date')
            elif g.kind == "time":
                body.add('Description = "Time from the folder name"')
            else:
                values = ", ".join(sorted(set(g.values))[:5])
                body.add(
                    f"Description = {_toml_str(g.name)}  # CHECK: what it is (values: {values})"
                )
            body.add("")


def _fmt_voxel(v: Sequence[float | None]) -> str:
    return ", ".join("?" if x is None else f"{_num(x)}" for x in v)


def _sizes(e: _Entry) -> list[float | None]:
    """(z, y, x) um of *e*: the file's axes, else the spec values proposed."""
    proposed = e.voxel or [None, None, None]
    return [c if c is not None else v for c, v in zip(e.carried, proposed, strict=True)]


def _is_2d(e: _Entry) -> bool:
    """One plane and no Z size from the file or the draft: a 2D image, which stays 2D
    (PixelSize x, y; no PhysicalSizeZ; OME-Zarr output only)."""
    return e.shape is not None and e.shape[0] == 1 and _sizes(e)[0] is None


def _spec_axes(e: _Entry) -> list[str]:
    """The axes the spec's voxel_size must give: those the file does not carry, less
    Z of a 2D image."""
    return [
        a
        for a, c in zip("zyx", e.carried, strict=True)
        if c is None and not (a == "z" and _is_2d(e))
    ]


def _render_channel(
    body: _Lines,
    e: _Entry,
    n_subjects: int,
    copies: Sequence[tuple[_Entry, _Entry, str]],
    submission: Path,
) -> None:
    i = sum(1 for line in body.lines if line == "[[channels]]")
    body.add("[[channels]]")
    if e.kind == "none":
        body.add(f"# {e.files} file(s), no TIFF image: {', '.join(e.extras[:5])}")
    elif e.shape is not None:
        kind = {
            "folder": "TIFF file(s)",
            "stack": "TIFF stack",
            "vendor": "vendor file",
            "container": "container file",
        }[e.kind]
        sizes = _sizes(e)
        vox = (
            f"voxel size (z, y, x) {_fmt_voxel(sizes)} um"
            if any(v is not None for v in sizes)
            else "no voxel size"
        )
        count = f"{e.files} {kind}" if e.kind == "folder" else kind
        body.add(f"# {count}, shape (z, y, x) {e.shape}, {e.dtype}, {vox}")
    for note in e.notes:
        body.add(f"# {note}")
    if len(set(e.counts.values())) > 1:
        per = ", ".join(f"{s}: {n}" for s, n in e.counts.items())
        body.add(f"# CHECK: image file counts differ between subjects ({per})")
    for a, b, why in copies:
        if e in (a, b):
            other = b if e is a else a
            s = next((x for x in a.subjects if x in b.subjects), a.subjects[0])
            body.add(
                f"# NEAR-COPY of {other.folder}: {why}. Compare them, then keep one",
                "# (exclude the other with the hashdiff summary as evidence):",
                f"#   bidspack hashdiff {shlex.quote(str(submission / s / a.folder))} "
                f"{shlex.quote(str(submission / s / b.folder))}",
            )
    if e.problem:
        body.add(
            "# PROBLEM: bidspack cannot read this as an image; packaging stops here until",
            f"# the files are fixed or excluded: {e.problem}",
        )
    body.add(f"folder = {_toml_str(e.folder)}")
    if e.select:
        body.add(f"select = {_toml_value(e.select)}")
    body.add(f'type = "{e.type}"')
    if e.type == "derivative":
        body.add(f"pipeline = {_toml_str(str(e.pipeline))}  # CHECK: the pipeline that made it")
        if e.desc:
            body.add(f"desc = {_toml_str(e.desc)}")
    if e.image != "none":
        check = "" if e.suffix_known else "  # CHECK: SPIM light-sheet, CONF confocal, 2PE ..."
        body.add(f"suffix = {_toml_str(e.suffix)}{check}")
        if e.entities:
            body.add(f"entities = {_toml_value(e.entities)}")
    body.add(f'image = "{e.image}"')
    if e.image != "none" and not e.problem:
        _render_voxel_size(body, e, i)
    if n_subjects > len(e.subjects):
        body.add(
            f"required = false  # present in {len(e.subjects)} of {n_subjects} subject folders"
        )
    if e.extras:
        shown = ", ".join(e.extras[:5]) + (" ..." if len(e.extras) > 5 else "")
        body.add(
            f"# {len(e.extras)} non-image file(s) copied as they are: {shown}",
            'extras = "sourcedata"  # or "derivative" (derivatives/<pipeline>/)',
        )
    body.add("")


def _render_voxel_size(body: _Lines, e: _Entry, i: int) -> None:
    """The channel's ``voxel_size``: only the axes the file does not carry (packaging
    takes the file's own values and refuses a spec value that contradicts one), with a
    comment naming the axes the file carries; none for Z of a 2D image."""
    carried = ", ".join(a for a, c in zip("zyx", e.carried, strict=True) if c is not None)
    if carried:
        lead = "not repeated in voxel_size" if _spec_axes(e) else "so no voxel_size"
        body.add(
            f"# the file carries the voxel size of {carried}: {lead} (spec values are",
            "# only for axes a file lacks; packaging takes the file's own values)",
        )
    if _is_2d(e):
        body.add(
            "# 2D image (one plane, no Z size): it stays 2D (PixelSize x, y), written as",
            "# OME-Zarr only (see [output]); give voxel_size.z to make it a one-plane stack",
        )
    axes_needed = _spec_axes(e)
    if not axes_needed:
        return
    proposed = dict(zip("zyx", e.voxel or [None, None, None], strict=True))
    if all(proposed[a] is not None for a in axes_needed):
        body.add(
            "voxel_size = { "
            + ", ".join(f"{a} = {proposed[a]!r}" for a in axes_needed)
            + " }  # from the files",
            'voxel_unit = "um"',
        )
        return
    parts = ", ".join(
        f"{a} = " + ('"TODO"' if proposed[a] is None else repr(proposed[a])) for a in axes_needed
    )
    missing = ", ".join(a for a in axes_needed if proposed[a] is None)
    body.todo(
        f"voxel_size = {{ {parts} }}  # TODO: micrometres per voxel",
        f"channels[{i}].voxel_size",
        f"{e.folder}: the files carry no voxel size for {missing}; give it in micrometres",
    )
    body.add('voxel_unit = "um"')


def _render_output(body: _Lines, channels: Sequence[_Entry]) -> None:
    """An ``[output]`` table when an image is 2D (no Z size): OME-Zarr only, since the
    BIDS validator rejects an OME-TIFF without PhysicalSizeZ."""
    flat = [e.folder for e in channels if e.image != "none" and not e.problem and _is_2d(e)]
    if not flat:
        return
    body.add(
        "[output]",
        f"# 2D image(s) with no Z size ({', '.join(sorted(set(flat)))}): an OME-TIFF of one",
        "# would fail the BIDS validator (PixelSize and PhysicalSizeZ), so OME-Zarr only.",
        '# CHECK: or give those channels voxel_size.z and add "ome-tiff"',
        'formats = ["ome-zarr"]',
        "",
    )


def _render_excludes(body: _Lines, loose: Sequence[str], junk: Sequence[str]) -> None:
    if junk:
        body.add(
            *_comment_block(
                [
                    f"OS junk ({len(set(junk))} file(s)), excluded by bidspack by default:",
                    *[f"  {j}" for j in sorted(set(junk))[:20]],
                    *(["  ..."] if len(set(junk)) > 20 else []),
                ]
            ),
            "",
        )
    by_name: dict[str, list[str]] = {}
    for f in loose:
        parts = PurePosixPath(f).parts
        key = f"*/{parts[-1]}" if len(parts) == 2 else f
        by_name.setdefault(key, []).append(f)
    for i, (glob, files) in enumerate(by_name.items()):
        path = glob if len(files) > 1 else files[0]
        body.add(
            "[[exclude]]",
            f"# not an image bidspack reads: {', '.join(files[:3])}"
            + (" ..." if len(files) > 3 else ""),
            f"path = {_toml_str(path)}",
        )
        body.todo(
            'reason = ["TODO"]  # TODO: say in a sentence why it is left out',
            f"exclude[{i}].reason",
            f"{path}: belongs to no channel; say why it is left out (or make it a channel)",
        )
        body.add("")


def _assemble(
    body: _Lines,
    submission: Path,
    subject_dirs: Sequence[Path],
    channels: Sequence[_Entry],
    copies: Sequence[Any],
    junk: Sequence[str],
) -> tuple[str, int]:
    """The draft: a header (what was scanned, the TODOs left with their lines, what to
    do next), ``spec_version``, then *body*; and the header's length in lines."""

    def header(offset: int) -> list[str]:
        todo_lines = [
            f"  line {offset + idx + 1}: {key}: {why}" for idx, key, why in body.todos
        ] or ["  none"]
        problems = [e for e in channels if e.problem]
        lines = [
            "bidspack packaging spec, drafted by `bidspack draft-spec` from",
            f"  {submission}",
            f"  ({len(subject_dirs)} subject folder(s), {len(channels)} channel entr"
            f"{'y' if len(channels) == 1 else 'ies'}; see specs/packaging.schema.json)",
            "",
            "TODO   a value the files cannot answer. It is left invalid on purpose: bidspack",
            "       refuses this spec, naming the line, until you replace it.",
            "CHECK  a guess from names and metadata: confirm or correct it.",
            "",
            f"TODOs left ({len(body.todos)}):",
            *todo_lines,
        ]
        if copies:
            lines.append(f"near-copy folders: {len(copies)} pair(s), see NEAR-COPY below")
        if problems:
            lines.append(f"unreadable channels: {len(problems)}, see PROBLEM below")
        if junk:
            lines.append(f"OS junk files: {len(set(junk))} (excluded by default)")
        lines += [
            "",
            "Then: bidspack package "
            + shlex.quote(str(submission))
            + " DATASET --spec THIS_FILE --dry-run",
        ]
        return [*_comment_block(lines), "spec_version = 1", ""]

    n = len(header(0))
    head = header(n)
    return "\n".join([*head, *body.lines]).rstrip("\n") + "\n", n
