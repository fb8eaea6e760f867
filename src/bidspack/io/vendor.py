"""Vendor microscopy files (Zeiss CZI, and whatever other bioio plugin is installed:
Leica LIF with ``bioio-lif``, Nikon ND2 with ``bioio-nd2`` ...) as ``(z, y, x)`` image
sources, read through `bioio <https://github.com/bioio-devs/bioio>`_ rather than a parser
of our own.

A vendor file can hold several scenes, channels and time points; a
:class:`VendorImage` is one 3D grayscale image of it: one scene, one channel, one time
point, all Z planes. The file is opened with ``chunk_dims=["Y", "X"]`` (one Dask chunk
per plane; bioio's default chunk is a whole Z stack) and planes are read in blocks of
:data:`BLOCK_BYTES` from the lazy ``get_image_dask_data("ZYX", C=..., T=...)`` array,
so memory stays bounded whatever the file size (``benchmarks/bench_vendor.py``). Physical
pixel sizes are bioio's ``physical_pixel_sizes``, which its plugins report in
micrometres (bioio-czi converts the CZI's metres).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bidspack.errors import SourceError
from bidspack.io.sources import ImageSource, StackInfo

#: Bytes of planes read in one go by :meth:`VendorImage.iter_planes` (memory bound).
BLOCK_BYTES = 32 * 2**20
#: The plugins bidspack installs (its tests use real CZI files); others can be added.
PLUGINS = ("bioio-czi",)


def _bioimage(path: Path) -> Any:
    """``bioio.BioImage(path)``, with reader problems as :class:`SourceError`."""
    try:
        from bioio import BioImage
        from bioio_base.exceptions import UnsupportedFileFormatError
    except ImportError as exc:  # pragma: no cover - bioio is a dependency
        raise SourceError(
            path, "reading vendor formats needs bioio", hint="pip install bioio"
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plugins warn about metadata they skip
            try:
                # one Dask chunk per (y, x) plane: reading plane z then reads that plane,
                # not the whole Z stack of its channel (the default chunking)
                return BioImage(path, chunk_dims=["Y", "X"])
            except TypeError:  # a plugin without chunk_dims
                return BioImage(path)
    except UnsupportedFileFormatError as exc:
        raise SourceError(
            path,
            "no installed bioio reader plugin supports this file",
            hint=f"install the plugin for its format (installed: {', '.join(PLUGINS)}; "
            "others: bioio-lif, bioio-nd2, bioio-bioformats ...)",
        ) from exc
    except FileNotFoundError as exc:
        raise SourceError(path, "file not found") from exc
    except Exception as exc:  # a plugin failing on this file: its message says why
        raise SourceError(
            path, f"bioio cannot read this file ({type(exc).__name__}: {exc})"
        ) from exc


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


class VendorImage(ImageSource):
    """One scene / channel / time point of a vendor file, ``(z, y, x)``.

    Args:
        path: the file.
        scene: scene index or name (default: the first scene).
        channel: channel index or name (``Channel`` names as bioio reports them).
        time: time-point index.

    Raises:
        SourceError: no plugin reads the file, the plugin fails on it, the scene /
            channel / time point does not exist, or the image has RGB samples.

    ``left_out`` names what the file holds beyond the selection (other channels, time
    points and scenes; dimensions bioio does not expose, such as Airyscan phases), so
    that nothing is dropped without a word.
    """

    def __init__(
        self, path: Path, *, scene: int | str | None = None, channel: int | str = 0, time: int = 0
    ):
        self.path = Path(path)
        self.files = (self.path,)
        img = _bioimage(self.path)
        try:
            if scene is not None:
                if isinstance(scene, int) and not 0 <= scene < len(img.scenes):
                    raise SourceError(
                        self.path, f"scene {scene} does not exist (scenes: {list(img.scenes)})"
                    )
                img.set_scene(scene)
            dims = img.dims
            names = [str(c) for c in (img.channel_names or [])]
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(self.path, f"bioio cannot read this file ({exc})") from exc
        if getattr(dims, "S", 1) > 1:
            raise SourceError(self.path, "RGB images are not supported; expected grayscale")
        if isinstance(channel, str):
            if channel not in names:
                raise SourceError(self.path, f"no channel named {channel!r} (channels: {names})")
            channel = names.index(channel)
        if not 0 <= channel < dims.C:
            raise SourceError(self.path, f"channel {channel} does not exist ({dims.C} channel(s))")
        if not 0 <= time < dims.T:
            raise SourceError(self.path, f"time point {time} does not exist ({dims.T})")
        left: list[str] = []
        if dims.C > 1:
            others = [names[i] if i < len(names) else str(i) for i in range(dims.C) if i != channel]
            left.append("channel(s) " + ", ".join(others))
        if dims.T > 1:
            left.append("time point(s) " + _indices([t for t in range(dims.T) if t != time]))
        if len(img.scenes) > 1:
            left.append(f"{len(img.scenes) - 1} other scene(s)")
        self.left_out = (*left, *_hidden_dims(img))
        self.scene = str(img.current_scene)
        self.channel = channel
        self.channel_name = names[channel] if channel < len(names) else None
        self.time = time
        self._img = img
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # lazy (z, y, x) Dask array of the selection, one chunk per plane
            self._stack = img.get_image_dask_data("ZYX", C=channel, T=time)
        sizes = img.physical_pixel_sizes
        physical: tuple[float, float, float] | None = None
        if all(v is not None and math.isfinite(v) and v > 0 for v in sizes):
            physical = (float(sizes.Z), float(sizes.Y), float(sizes.X))
        self.info = StackInfo(
            shape=(int(dims.Z), int(dims.Y), int(dims.X)),
            dtype=np.dtype(img.dtype),
            physical_size=physical,
        )

    def read_plane(self, z: int) -> np.ndarray:
        """Plane *z* of the selected scene, channel and time point, ``(y, x)``."""
        return self._check_plane(self._read(z, z + 1)[0], self.path)

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Planes ``start:stop`` as a ``(z, y, x)`` array (Dask's synchronous scheduler:
        vendor readers are not assumed to be safe to call from several threads)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(self._stack[start:stop].compute(scheduler="synchronous"))
        except Exception as exc:
            raise SourceError(
                self.path, f"cannot decode planes {start}-{stop - 1} ({exc})"
            ) from exc

    def iter_planes(self, *, prefetch: int = 4, workers: int = 2) -> Iterator[np.ndarray]:
        """The planes in Z order, read in blocks of about :data:`BLOCK_BYTES` (at least
        one plane): one Dask computation per block instead of per plane."""
        nz, ny, nx = self.shape
        step = max(1, BLOCK_BYTES // max(1, ny * nx * self.dtype.itemsize))
        for z0 in range(0, nz, step):
            block = self._read(z0, min(z0 + step, nz))
            for plane in block:
                yield self._check_plane(plane, self.path)
