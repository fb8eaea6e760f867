"""Reading OME-Zarr images: version detection, attributes, physical scale, levels as
zarr-python arrays, pixel hashes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bidspack.errors import SourceError
from bidspack.io.omezarr.versions import NGFF_VERSIONS, NgffV04, NgffV05, NgffVersion, ngff_version
from bidspack.io.pixelhash import PixelHasher

#: NGFF space units (UDUNITS-2 names, #axes-md) in micrometres (the metric ones and inch/foot).
NGFF_UNIT_TO_UM = {
    "angstrom": 1e-4,
    "attometer": 1e-12,
    "centimeter": 1e4,
    "decimeter": 1e5,
    "femtometer": 1e-9,
    "foot": 304800.0,
    "inch": 25400.0,
    "kilometer": 1e9,
    "meter": 1e6,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "nanometer": 1e-3,
    "picometer": 1e-6,
}


def detect_version(path: Path) -> NgffVersion:
    """The NGFF version of the OME-Zarr image at *path* (``zarr.json`` with
    ``attributes.ome.version``, or ``.zattrs`` with ``multiscales[0].version``).

    Raises:
        SourceError: not a folder with OME-Zarr image metadata of a supported version.
    """
    path = Path(path)
    if (path / "zarr.json").is_file():
        ome = read_attributes(path, NgffV05()).get("ome")
        found = str(ome.get("version", "")) if isinstance(ome, dict) else ""
    elif (path / ".zattrs").is_file():
        ms = read_attributes(path, NgffV04()).get("multiscales")
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], dict) else {}
        found = str(first.get("version", ""))
    else:
        raise SourceError(path, "not an OME-Zarr image (no zarr.json or .zattrs)")
    if found not in NGFF_VERSIONS:
        raise SourceError(path, f"OME-NGFF version {found or 'missing'} is not supported")
    return ngff_version(found)


def read_attributes(path: Path, fmt: NgffVersion) -> dict[str, Any]:
    """The group attributes of *path* as stored (``.zattrs``, or ``zarr.json``'s
    ``attributes``): what the NGFF JSON schemas validate.

    Raises:
        SourceError: missing or unreadable metadata.
    """
    file = Path(path) / fmt.attributes_file
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(file, f"unreadable Zarr metadata ({exc})") from exc
    if not isinstance(doc, dict):
        raise SourceError(file, "Zarr metadata is not a JSON object")
    return dict(doc.get("attributes", {})) if fmt.zarr_format == 3 else doc


def multiscale_of(path: Path) -> tuple[NgffVersion, dict[str, Any]]:
    fmt = detect_version(path)
    meta = fmt.ome_metadata(read_attributes(path, fmt))
    multiscales = meta.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise SourceError(path, "no multiscales metadata")
    return fmt, multiscales[0]


def ome_zarr_scale_um(path: Path) -> tuple[float, float, float]:
    """Level-0 voxel size ``(z, y, x)`` in micrometres of an OME-Zarr image.

    From ``multiscales[0]``: the ``scale`` of ``datasets[0]`` times the multiscale-wide
    ``scale`` if any (#multiscale-md, #trafo-md), converted from each axis's unit
    (#axes-md) to micrometres.

    Raises:
        SourceError: no metadata, no ``z``/``y``/``x`` space axes, a missing or unknown
            unit, or no scale.
    """
    path = Path(path)
    _, ms = multiscale_of(path)
    try:
        axes = [a["name"] for a in ms["axes"]]
        scale = np.asarray(scale_of(ms["datasets"][0]["coordinateTransformations"]), float)
        if ms.get("coordinateTransformations"):
            scale = scale * np.asarray(scale_of(ms["coordinateTransformations"]), float)
        out = []
        for name in "zyx":
            axis = ms["axes"][axes.index(name)]
            unit = axis.get("unit")
            if unit not in NGFF_UNIT_TO_UM:
                raise SourceError(path, f"axis {name} has unit {unit!r}, not a known length unit")
            out.append(float(scale[axes.index(name)]) * NGFF_UNIT_TO_UM[unit])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SourceError(path, f"multiscales metadata lacks z/y/x axes or scales ({exc})") from exc
    return out[0], out[1], out[2]


def scale_of(transforms: list[dict[str, Any]]) -> list[float]:
    for t in transforms:
        if t.get("type") == "scale":
            return list(t["scale"])
    raise KeyError("no scale transformation")


def open_level(path: Path, level: int) -> Any:
    """The zarr-python array of *level* (``multiscales[0].datasets[level].path``)."""
    import zarr

    fmt, ms = multiscale_of(path)
    try:
        sub = ms["datasets"][level]["path"]
    except (KeyError, IndexError, TypeError) as exc:
        raise SourceError(path, f"no dataset for level {level}") from exc
    try:
        return zarr.open_array(store=str(Path(path) / sub), mode="r", zarr_format=fmt.zarr_format)
    except Exception as exc:  # zarr raises many types for broken metadata
        raise SourceError(Path(path) / sub, f"not a readable Zarr array ({exc})") from exc


def iter_slabs(arr: Any, max_bytes: int = 64 * 2**20) -> Iterator[np.ndarray]:
    """The array's planes in Z order, read in slabs of whole chunks (shards if they fit)."""
    z, y, x = arr.shape
    plane = max(1, y * x * arr.dtype.itemsize)
    cz = arr.chunks[0]
    sz = arr.shards[0] if getattr(arr, "shards", None) else cz
    depth = sz if sz * plane <= max_bytes else cz * max(1, max_bytes // (cz * plane))
    for z0 in range(0, z, depth):
        yield np.asarray(arr[z0 : z0 + depth])


def pixel_hash_of_zarr(path: Path, level: int = 0) -> str:
    """Pixel hash (``ZYX``) of one level of a 3D OME-Zarr image, read with zarr-python in
    slabs (bounded memory).

    Raises:
        SourceError: no such level, unreadable metadata or chunks, not 3D.
    """
    arr = open_level(path, level)
    if arr.ndim != 3:
        raise SourceError(path, f"level {level} has {arr.ndim} dimensions, expected 3 (z, y, x)")
    hasher = PixelHasher("ZYX", tuple(arr.shape), arr.dtype)
    try:
        for slab in iter_slabs(arr):
            hasher.update(slab)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(path, f"level {level} is unreadable ({exc})") from exc
    return hasher.hexdigest()
