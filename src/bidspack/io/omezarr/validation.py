"""Validation of OME-Zarr images: official NGFF JSON schemas, ome-zarr-models, and
bidspack's own array checks."""

from __future__ import annotations

import json
import math
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bidspack.errors import SourceError, ToolError
from bidspack.io.omezarr.reader import (
    detect_version,
    iter_slabs,
    multiscale_of,
    open_level,
    read_attributes,
    scale_of,
)
from bidspack.io.omezarr.versions import NgffVersion


def _schema_dirs() -> list[Path]:
    """Where the official NGFF JSON schemas (``<dir>/0.4/*.schema``, ``0.5``) are looked
    for: ``$BIDSPACK_NGFF_SCHEMAS``, then ``bidspack/specs/ngff`` in the package, then
    ``shared/ngff-schemas`` beside the source checkout."""
    dirs = []
    if os.environ.get("BIDSPACK_NGFF_SCHEMAS"):
        dirs.append(Path(os.environ["BIDSPACK_NGFF_SCHEMAS"]))
    here = Path(__file__).resolve()
    dirs.append(here.parents[2] / "specs" / "ngff")
    if len(here.parents) > 5:
        dirs.append(here.parents[5] / "shared" / "ngff-schemas")
    return dirs


#: The official schemas an image group's attributes must pass, and a label image's.
SCHEMAS = {
    "image": ("image.schema", "strict_image.schema"),
    "label": ("image.schema", "strict_image.schema", "label.schema", "strict_label.schema"),
}


@lru_cache(maxsize=8)
def ngff_schema_validators(version: str, kind: str = "image") -> dict[str, Any]:
    """Schema file name -> validator for *version*: ``image.schema`` and
    ``strict_image.schema``, plus ``label.schema`` and ``strict_label.schema`` for
    *kind* ``"label"`` (a label image under ``labels/``), from the official OME-NGFF
    JSON Schemas (draft 2020-12), with a ``referencing.Registry`` of every schema of
    that version (they refer to each other by ``$id``).

    Raises:
        ToolError: the schemas are not found (see :func:`_schema_dirs`).
    """
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    folder = next((d / version for d in _schema_dirs() if (d / version).is_dir()), None)
    if folder is None:
        raise ToolError(
            None,
            f"the OME-NGFF {version} JSON schemas were not found",
            hint="set BIDSPACK_NGFF_SCHEMAS to a folder with 0.4/ and 0.5/ schemas",
        )
    resources = []
    schemas = {}
    for file in sorted(folder.glob("*.schema")):
        contents = json.loads(file.read_text(encoding="utf-8"))
        schemas[file.name] = contents
        resource = Resource.from_contents(contents, default_specification=DRAFT202012)
        resources.append((contents["$id"], resource))
    registry: Registry = Registry().with_resources(resources)
    return {name: Draft202012Validator(schemas[name], registry=registry) for name in SCHEMAS[kind]}


def validate_ome_zarr(path: Path, *, full: bool = False) -> list[str]:
    """Problems of the OME-Zarr image at *path* and of its NGFF labels (empty list: none
    found).

    Checks: the root attributes against the official OME-NGFF JSON schemas of its version
    (``image.schema`` and ``strict_image.schema``); the group with ome-zarr-models
    (metadata model, arrays present with matching dimensionality, 0.5 dimension names,
    label images' levels and types; its validation warnings count as problems); every
    level opens with zarr-python as a 3D array of one dtype, each level's size on each
    axis is its predecessor's or half of it (rounded either way) with a matching scale
    (twice the predecessor's, or the exact size ratio), and its first and last planes
    decode (every chunk with ``full=True``). If the image has a ``labels`` group
    (#labels-md): every listed label image exists, passes ``label.schema`` and
    ``strict_label.schema`` as well, has integer pixels, the same number of levels as
    the image with the same shape at each level, a ``source.image`` (if given) that
    leads back to the image, and passes the same array checks.

    Raises:
        ToolError: the NGFF JSON schemas are not found.
    """
    path = Path(path)
    try:
        fmt = detect_version(path)
        attributes = read_attributes(path, fmt)
    except SourceError as exc:
        return [exc.message]
    problems = _schema_problems(attributes, fmt, "image")
    problems += _ome_zarr_models_problems(path, fmt)
    try:
        problems += _array_problems(path, full=full)
        problems += _labels_problems(path, fmt, full=full)
    except SourceError as exc:
        problems.append(exc.message)
    return problems


def _schema_problems(attributes: dict[str, Any], fmt: NgffVersion, kind: str) -> list[str]:
    problems = []
    for schema, validator in ngff_schema_validators(fmt.version, kind).items():
        for err in sorted(validator.iter_errors(attributes), key=lambda e: e.json_path):
            problems.append(f"{schema}: {err.json_path}: {err.message}")
    return problems


def _labels_problems(path: Path, fmt: NgffVersion, *, full: bool) -> list[str]:
    """Problems of the ``labels`` group of the image at *path* (none if it has none).

    Raises:
        SourceError: unreadable metadata or arrays.
    """
    group = path / "labels"
    if not (group / fmt.attributes_file).is_file():
        return [] if not group.exists() else [f"labels: no {fmt.attributes_file}"]
    names = fmt.ome_metadata(read_attributes(group, fmt)).get("labels")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return ["labels: the labels group does not list label images (#labels-md)"]
    image_levels = [open_level(path, i) for i in range(len(multiscale_of(path)[1]["datasets"]))]
    problems = []
    for name in names:
        label = group / name
        where = f"labels/{name}"
        if not (label / fmt.attributes_file).is_file():
            problems.append(f"{where}: listed in the labels group but missing")
            continue
        attributes = read_attributes(label, fmt)
        problems += [f"{where}: {p}" for p in _schema_problems(attributes, fmt, "label")]
        meta = fmt.ome_metadata(attributes)
        source = (meta.get("image-label") or {}).get("source", {}).get("image")
        if isinstance(source, str) and (label / source).resolve() != path.resolve():
            problems.append(f"{where}: image-label source.image {source!r} is not the image")
        datasets = multiscale_of(label)[1].get("datasets", [])
        if len(datasets) != len(image_levels):
            problems.append(
                f"{where}: {len(datasets)} levels, the image has {len(image_levels)} "
                "(NGFF labels must have as many)"
            )
        for i, image_level in enumerate(image_levels[: len(datasets)]):
            arr = open_level(label, i)
            if arr.dtype.kind not in "ui":
                problems.append(f"{where}: level {i} has pixel type {arr.dtype}, not integers")
            if tuple(arr.shape) != tuple(image_level.shape):
                problems.append(
                    f"{where}: level {i} has shape {tuple(arr.shape)}, the image "
                    f"{tuple(image_level.shape)}"
                )
        problems += [f"{where}: {p}" for p in _array_problems(label, full=full)]
    return problems


def _ome_zarr_models_problems(path: Path, fmt: NgffVersion) -> list[str]:
    import zarr
    from ome_zarr_models.v04.image import Image as ImageV04
    from ome_zarr_models.v05.image import Image as ImageV05

    model = ImageV05 if fmt.version == "0.5" else ImageV04
    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            group = zarr.open_group(str(path), mode="r", zarr_format=fmt.zarr_format)
            model.from_zarr(group)
        except Exception as exc:  # pydantic / zarr errors
            problems.append(f"ome-zarr-models: {type(exc).__name__}: {exc}")
    for w in caught:
        if w.category.__module__.startswith("ome_zarr_models"):
            problems.append(f"ome-zarr-models warning: {w.message}")
    return problems


def _array_problems(path: Path, *, full: bool) -> list[str]:
    _, ms = multiscale_of(path)
    problems: list[str] = []
    prev: Any = None
    prev_scale: list[float] | None = None
    for i, ds in enumerate(ms.get("datasets", [])):
        where = f"level {i} ({ds.get('path')})"
        arr = open_level(path, i)
        try:
            scale = scale_of(ds.get("coordinateTransformations", []))
        except KeyError:
            problems.append(f"{where}: no scale transformation")
            scale = None
        if arr.ndim != 3:
            problems.append(f"{where}: {arr.ndim} dimensions, expected 3 (z, y, x)")
            continue
        if prev is not None:
            if arr.dtype != prev.dtype:
                problems.append(f"{where}: dtype {arr.dtype} differs from level 0's")
            for axis, (n, m) in enumerate(zip(prev.shape, arr.shape, strict=True)):
                if m not in (n, n // 2, -(-n // 2)):
                    problems.append(f"{where}: size {m} on axis {axis} is not {n} or half of it")
                elif scale is not None and prev_scale is not None and n > 1:
                    # 2x (block downsampling) or the exact size ratio (resampling writers)
                    wants = {prev_scale[axis] * f for f in ((1.0,) if m == n else (2.0, n / m))}
                    if not any(math.isclose(scale[axis], w, rel_tol=1e-6) for w in wants):
                        problems.append(
                            f"{where}: scale {scale[axis]} on axis {axis} does not match its "
                            f"size {m} (expected {' or '.join(f'{w:g}' for w in sorted(wants))})"
                        )
        try:
            if full:
                for _ in iter_slabs(arr):
                    pass
            else:
                np.asarray(arr[:1])
                np.asarray(arr[-1:])
        except Exception as exc:
            problems.append(f"{where}: unreadable chunks ({type(exc).__name__}: {exc})")
        prev, prev_scale = arr, scale
    return problems
