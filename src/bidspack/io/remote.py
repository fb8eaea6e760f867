"""Remote image sources: an OME-Zarr (NGFF 0.4 on Zarr v2, NGFF 0.5 on Zarr v3) or N5
multiscale at an ``http(s)://`` or ``s3://`` URL, read region by region.

Zarr levels are read through zarr-python on an fsspec file system (only the chunks, or
shard byte ranges, a region needs); N5 blocks (``attributes.json``, big-endian blocks
with the N5 block header; raw, gzip, bzip2, xz, zstd or blosc compression) are fetched
and decoded here, through the same file system. ``s3://`` needs ``s3fs``.

Every HTTP request goes through :class:`RemoteHTTPFileSystem`:

- at most ``max_connections`` requests at once (an ``asyncio`` semaphore and the aiohttp
  connector's ``limit``);
- a per-request timeout (``timeout_s``, the whole request: connect, headers, body);
- retries with exponential backoff (``backoff_s * 2**attempt``, jittered) of transient
  failures: HTTP 408, 429 and 5xx, timeouts, refused or reset connections, truncated
  bodies; ``retries`` extra attempts, then :class:`~bidspack.errors.SourceError`;
- 404/410 is "missing" (``FileNotFoundError``: a Zarr key that does not exist, so a
  missing chunk reads as the array's fill value, as the Zarr specs say); any other
  status is a :class:`~bidspack.errors.SourceError` naming the URL.

Metadata that is not JSON (an HTML page, a proxy's login form) and metadata without an
NGFF ``multiscales`` (or N5 scale levels) are :class:`~bidspack.errors.SourceError`
naming the URL and the ``Content-Type`` received.

Shapes are ``(z, y, x)`` (a 2D image has ``z == 1``), sizes in micrometres. Sources:
OME-NGFF 0.4 and 0.5 (#multiscale-md, #trafo-md, #axes-md); N5 as written by
n5-zarr/saalfeld-lab tools and OpenOrganelle (``scales``/``downsamplingFactors``,
``pixelResolution``, ``transform``).
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import gzip
import json
import lzma
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from bidspack.errors import BidspackError, SourceError
from bidspack.io.omezarr.reader import NGFF_UNIT_TO_UM

#: URL schemes :func:`open_remote` accepts.
SCHEMES = ("http", "https", "s3")
#: HTTP statuses retried (with 5xx).
TRANSIENT_STATUS = frozenset({408, 425, 429})
#: N5 units (``pixelResolution.unit``, ``transform.units``) in micrometres, beside the
#: NGFF names.
N5_UNIT_TO_UM = {
    **NGFF_UNIT_TO_UM,
    "nm": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "mm": 1e3,
    "m": 1e6,
    "A": 1e-4,
    "Å": 1e-4,
}
#: Largest metadata document read (bytes): metadata larger than this is refused.
MAX_METADATA_BYTES = 16 * 2**20


@dataclass(frozen=True)
class RemoteOptions:
    """How remote stores are read.

    Attributes:
        max_connections: most requests in flight at once (per source).
        retries: extra attempts for a transient failure (0: none).
        timeout_s: seconds one request may take (connect, headers and body).
        backoff_s: first wait before a retry; doubled for each further one.
        anonymous: ``s3://`` only: unsigned requests (public buckets).
    """

    max_connections: int = 8
    retries: int = 3
    timeout_s: float = 60.0
    backoff_s: float = 0.5
    anonymous: bool = True

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, not {self.max_connections}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, not {self.retries}")
        if not self.timeout_s > 0 or self.backoff_s < 0:
            raise ValueError("timeout_s must be > 0 and backoff_s >= 0")


def _range_header(start: int | None, end: int | None) -> str | None:
    """``Range`` for fsspec's ``start``/``end`` (end exclusive; a negative start with no
    end is a suffix)."""
    if start is None and end is None:
        return None
    if start is not None and start < 0 and end is None:
        return f"bytes={start}"
    if end is None:
        return f"bytes={start or 0}-"
    return f"bytes={start or 0}-{end - 1}"


def _slice_full(body: bytes, start: int | None, end: int | None) -> bytes:
    """The requested range of a full body (a server that ignored ``Range``)."""
    if start is not None and start < 0 and end is None:
        return body[start:]
    return body[(start or 0) : end]


def _http_class() -> type:
    """:class:`RemoteHTTPFileSystem`, built on first use (aiohttp and fsspec's HTTP
    file system are imported only when a remote source is opened)."""
    global RemoteHTTPFileSystem
    if RemoteHTTPFileSystem is not None:
        return RemoteHTTPFileSystem
    import aiohttp
    from fsspec.implementations.http import HTTPFileSystem

    class _RemoteHTTP(HTTPFileSystem):
        """fsspec's HTTP file system with bounded connections, a per-request timeout
        and retries (see the module docstring). Always asynchronous: zarr-python runs
        it on its own event loop."""

        def __init__(self, options: RemoteOptions):
            self.options = options
            self._sem: asyncio.Semaphore | None = None
            self.requests = 0
            super().__init__(
                asynchronous=True,
                get_client=self._client,
                skip_instance_cache=True,
            )

        async def _client(self, **kwargs: Any) -> Any:
            kwargs.pop("loop", None)
            connector = aiohttp.TCPConnector(limit=self.options.max_connections)
            return aiohttp.ClientSession(connector=connector, **kwargs)

        async def fetch(
            self, url: str, start: int | None = None, end: int | None = None
        ) -> tuple[bytes, str]:
            """``(body, Content-Type)`` of a GET of *url* (a byte range when *start* or
            *end* is given), retried as the options say.

            Raises:
                FileNotFoundError: HTTP 404 or 410.
                SourceError: any other failure, after the retries.
            """
            opts = self.options
            if self._sem is None:
                self._sem = asyncio.Semaphore(opts.max_connections)
            rng = _range_header(start, end)
            headers = {"Range": rng} if rng else {}
            attempt = 0
            while True:
                try:
                    async with self._sem:
                        self.requests += 1
                        session = await self.set_session()
                        async with asyncio.timeout(opts.timeout_s):
                            async with session.get(url, headers=headers) as r:
                                body = await r.read()
                                status, ctype = r.status, r.headers.get("Content-Type", "")
                except TimeoutError:
                    reason = f"no complete answer within {opts.timeout_s:g} s (timeout)"
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                    reason = f"connection failed ({type(exc).__name__}: {exc})"
                else:
                    if status in (404, 410):
                        raise FileNotFoundError(url)
                    if status == 206 or (status == 200 and not rng):
                        return body, ctype
                    if status == 200:
                        return _slice_full(body, start, end), ctype
                    if status == 416:  # range beyond the object: empty
                        return b"", ctype
                    reason = f"HTTP {status}"
                    if status < 500 and status not in TRANSIENT_STATUS:
                        raise SourceError(url, f"the server answered {reason}")
                attempt += 1
                if attempt > opts.retries:
                    tries = f"{attempt} attempt" + ("" if attempt == 1 else "s")
                    raise SourceError(url, f"{reason}; gave up after {tries}")
                await asyncio.sleep(opts.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1))

        async def _cat_file(
            self, url: str, start: int | None = None, end: int | None = None, **kwargs: Any
        ) -> bytes:
            if start is not None and start == end:
                return b""
            return (await self.fetch(url, start, end))[0]

        async def close(self) -> None:
            session: Any = getattr(self, "_session", None)
            if session is not None:
                await session.close()
                self._session = None

    RemoteHTTPFileSystem = _RemoteHTTP
    return _RemoteHTTP


#: The HTTP file system class (created lazily by :func:`_http_class`).
RemoteHTTPFileSystem: Any = None


def make_filesystem(url: str, options: RemoteOptions) -> Any:
    """An asynchronous fsspec file system for *url*'s scheme.

    Raises:
        SourceError: an unsupported scheme, or ``s3://`` without ``s3fs`` installed.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return _http_class()(options)
    if scheme == "s3":
        try:
            import s3fs
        except ImportError:
            raise SourceError(
                url, "s3:// URLs need the s3fs package", hint="pip install s3fs"
            ) from None
        return s3fs.S3FileSystem(
            anon=options.anonymous,
            asynchronous=True,
            skip_instance_cache=True,
            max_concurrency=options.max_connections,
            config_kwargs={
                "max_pool_connections": options.max_connections,
                "connect_timeout": options.timeout_s,
                "read_timeout": options.timeout_s,
                "retries": {"max_attempts": options.retries + 1, "mode": "standard"},
            },
        )
    raise SourceError(
        url, f"unsupported URL scheme {scheme or 'none'!r} (use {', '.join(SCHEMES)})"
    )


def _run(coro: Any) -> Any:
    """Run a coroutine on zarr-python's event loop (where the file system's session
    lives)."""
    from zarr.core.sync import sync

    return sync(coro)


async def _get(fs: Any, url: str, start: int | None = None, end: int | None = None) -> bytes:
    """Bytes of *url* (``FileNotFoundError`` when missing), any failure a SourceError."""
    if hasattr(fs, "fetch"):
        return (await fs.fetch(url, start, end))[0]
    try:
        return bytes(await fs._cat_file(url, start=start, end=end))
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise SourceError(url, f"cannot be read ({type(exc).__name__}: {exc})") from exc


async def _get_json(fs: Any, url: str) -> dict[str, Any]:
    """The JSON object at *url*.

    Raises:
        FileNotFoundError: missing.
        SourceError: not JSON (an HTML page ...), not an object, or too large.
    """
    if hasattr(fs, "fetch"):
        body, ctype = await fs.fetch(url)
    else:
        body, ctype = await _get(fs, url), ""
    if len(body) > MAX_METADATA_BYTES:
        raise SourceError(url, f"metadata larger than {MAX_METADATA_BYTES} bytes")
    try:
        doc = json.loads(body)
    except ValueError:
        kind = ctype.split(";")[0].strip() or "unknown"
        head = body[:200].lstrip().lower()
        page = (
            " (an HTML page)" if "html" in kind or head.startswith((b"<!doctype", b"<html")) else ""
        )
        raise SourceError(
            url, f"is not Zarr/N5 metadata: not JSON, Content-Type {kind}{page}"
        ) from None
    if not isinstance(doc, dict):
        raise SourceError(url, "Zarr/N5 metadata is not a JSON object")
    return doc


@dataclass
class RemoteImage:
    """One level of a remote multiscale image, as a ``(z, y, x)`` volume.

    Attributes:
        url: the multiscale group's URL (no trailing ``/``).
        format: ``"ome-zarr-0.4"``, ``"ome-zarr-0.5"`` or ``"n5"``.
        level: the level read (0: full resolution).
        levels: number of levels in the multiscale.
        level_path: the level's array path below *url*.
        shape: ``(z, y, x)`` of the level (``z == 1`` for a 2D image).
        dtype: pixel type.
        chunks: ``(z, y, x)`` chunk (or N5 block) shape of the level.
        voxel_um: ``(z, y, x)`` voxel size of the level in micrometres (``z`` 1.0 for a
            2D image).
        origin_um: ``(z, y, x)`` position of the level's first voxel in micrometres (the
            NGFF ``translation``; N5 ``transform.translate``), zeros if none.
        axes: the stored array's axis names, in storage order.
        selection: fixed indices of non-space axes (``{"c": 0, "t": 2}``).
    """

    url: str
    format: str
    level: int
    levels: int
    level_path: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    chunks: tuple[int, int, int]
    voxel_um: tuple[float, float, float]
    origin_um: tuple[float, float, float]
    axes: tuple[str, ...]
    selection: dict[str, int] = field(default_factory=dict)
    fs: Any = None
    _reader: Any = None

    @property
    def is_2d(self) -> bool:
        return self.shape[0] == 1 and "z" not in self.axes

    def describe(self) -> dict[str, Any]:
        """JSON-able metadata (what a resumed run compares)."""
        return {
            "url": self.url,
            "format": self.format,
            "level": self.level,
            "levels": self.levels,
            "level_path": self.level_path,
            "axes": list(self.axes),
            "selection": dict(self.selection),
            "shape_zyx": list(self.shape),
            "dtype": self.dtype.str,
            "chunks_zyx": list(self.chunks),
            "voxel_size_zyx_um": list(self.voxel_um),
            "origin_zyx_um": list(self.origin_um),
        }

    def read(self, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        """The region ``[start, stop)`` (``(z, y, x)`` voxel indices of the level) as a
        ``(z, y, x)`` array; only the chunks it overlaps are fetched.

        Raises:
            SourceError: outside the volume, or a chunk cannot be fetched or decoded
                (naming its URL).
        """
        lo, hi = tuple(int(v) for v in start), tuple(int(v) for v in stop)
        if not all(0 <= a < b <= n for a, b, n in zip(lo, hi, self.shape, strict=True)):
            raise SourceError(self.url, f"region {lo}-{hi} is outside the volume {self.shape}")
        try:
            out = self._reader(lo, hi)
        except BidspackError:
            raise
        except Exception as exc:  # zarr and codecs raise many types
            where = f"{self.url}/{self.level_path}"
            raise SourceError(
                where, f"chunk data unreadable ({type(exc).__name__}: {exc})"
            ) from exc
        return np.asarray(out).reshape(tuple(b - a for a, b in zip(lo, hi, strict=True)))

    def close(self) -> None:
        """Close the file system's HTTP session (idempotent)."""
        closer = getattr(self.fs, "close", None)
        if closer is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                _run(closer())


def open_remote(
    url: str,
    *,
    level: int = 0,
    channel: int | None = None,
    time: int | None = None,
    options: RemoteOptions | None = None,
) -> RemoteImage:
    """Open level *level* of the OME-Zarr or N5 multiscale at *url*.

    The group metadata is looked for as ``zarr.json`` (NGFF 0.5), ``.zattrs`` (0.4), then
    ``attributes.json`` (N5). Non-space axes (NGFF ``channel``/``time`` types, or axes
    named ``c``/``t``) are fixed to *channel* / *time*, or to 0 when they have one
    element.

    Raises:
        SourceError: bad URL or scheme, unreachable or failing server (after retries),
            no Zarr/N5 metadata, metadata that is not JSON (an HTML page), no
            multiscales, unknown units, no such level, a channel or time axis with
            several elements and no choice, or an index outside it.
    """
    opts = options or RemoteOptions()
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.netloc:
        raise SourceError(url, f"not a remote URL ({', '.join(s + '://' for s in SCHEMES)})")
    if level < 0:
        raise SourceError(url, f"level must be >= 0, not {level}")
    fs = make_filesystem(url, opts)
    try:
        image = _run(_open(fs, url, level, channel, time))
    except BaseException:
        closer = getattr(fs, "close", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                _run(closer())
        raise
    image.fs = fs
    return image


async def _open(
    fs: Any, url: str, level: int, channel: int | None, time: int | None
) -> RemoteImage:
    tried: list[str] = []
    for name, kind in (("zarr.json", "v3"), (".zattrs", "v2"), ("attributes.json", "n5")):
        try:
            doc = await _get_json(fs, f"{url}/{name}")
        except FileNotFoundError:
            tried.append(f"{name}: not found")
            continue
        except SourceError as exc:
            tried.append(f"{name}: {exc.reason}")
            if "not JSON" in exc.reason:
                continue
            raise SourceError(url, "; ".join(tried)) from exc
        if kind == "n5" and (
            "n5" in doc or "scales" in doc or "multiscales" in doc or "dimensions" in doc
        ):
            return await _open_n5(fs, url, doc, level, channel, time)
        if kind == "v3":
            ome = (
                doc.get("attributes", {}).get("ome")
                if isinstance(doc.get("attributes"), dict)
                else None
            )
            if not isinstance(ome, dict):
                raise SourceError(
                    f"{url}/zarr.json", "no attributes.ome: not an OME-Zarr 0.5 image"
                )
            return await _open_zarr(
                fs, url, ome, 3, f"ome-zarr-{ome.get('version', '0.5')}", level, channel, time
            )
        if kind == "v2":
            ms = doc.get("multiscales")
            version = (
                ms[0].get("version", "0.4")
                if isinstance(ms, list) and ms and isinstance(ms[0], dict)
                else "0.4"
            )
            return await _open_zarr(fs, url, doc, 2, f"ome-zarr-{version}", level, channel, time)
        tried.append(f"{name}: not N5 attributes")
    raise SourceError(url, "not an OME-Zarr or N5 multiscale (" + "; ".join(tried) + ")")


def _unit_um(url: str, axis: str, unit: Any, table: dict[str, float]) -> float:
    if not isinstance(unit, str) or unit not in table:
        raise SourceError(url, f"axis {axis} has unit {unit!r}, not a known length unit")
    return table[unit]


def _transforms(items: Any) -> tuple[list[float] | None, list[float] | None]:
    scale = trans = None
    for t in items or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]]
        elif isinstance(t, dict) and t.get("type") == "translation":
            trans = [float(v) for v in t["translation"]]
    return scale, trans


def _select(
    url: str,
    axes: list[str],
    types: list[str],
    shape: tuple[int, ...],
    channel: int | None,
    time: int | None,
) -> tuple[dict[str, int], list[int]]:
    """Fixed indices of non-space axes, and the storage positions of z (or -1), y, x."""
    selection: dict[str, int] = {}
    for i, (name, kind) in enumerate(zip(axes, types, strict=True)):
        if kind == "space":
            continue
        want = (
            channel
            if kind == "channel" or name == "c"
            else time
            if kind == "time" or name == "t"
            else None
        )
        what = "--channel" if kind == "channel" or name == "c" else "--time"
        if want is None:
            if shape[i] != 1:
                raise SourceError(
                    url, f"axis {name!r} has {shape[i]} elements; choose one with {what}"
                )
            want = 0
        if not 0 <= want < shape[i]:
            raise SourceError(url, f"{what} {want} is outside axis {name!r} (0..{shape[i] - 1})")
        selection[name] = want
    space = [n for n, k in zip(axes, types, strict=True) if k == "space"]
    if "y" not in space or "x" not in space or not set(space) <= {"z", "y", "x"}:
        raise SourceError(url, f"space axes {space} are not z/y/x or y/x")
    pos = [axes.index("z") if "z" in space else -1, axes.index("y"), axes.index("x")]
    return selection, pos


async def _open_zarr(
    fs: Any,
    url: str,
    attrs: dict[str, Any],
    zarr_format: Literal[2, 3],
    fmt_name: str,
    level: int,
    channel: int | None,
    time: int | None,
) -> RemoteImage:
    import zarr
    from zarr.storage import FsspecStore

    meta_url = f"{url}/{'zarr.json' if zarr_format == 3 else '.zattrs'}"
    ms_list = attrs.get("multiscales")
    if not isinstance(ms_list, list) or not ms_list or not isinstance(ms_list[0], dict):
        raise SourceError(meta_url, "no multiscales metadata: not an OME-Zarr image")
    ms = ms_list[0]
    try:
        raw_axes = ms["axes"]
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in raw_axes]
        types = [
            (a.get("type") if isinstance(a, dict) else None)
            or ("space" if n in "zyx" else "channel" if n == "c" else "time")
            for a, n in zip(raw_axes, axes, strict=True)
        ]
        datasets = ms["datasets"]
        if not 0 <= level < len(datasets):
            raise SourceError(url, f"no level {level} (the multiscale has {len(datasets)})")
        sub = str(datasets[level]["path"])
        scale, trans = _transforms(datasets[level].get("coordinateTransformations"))
        gscale, gtrans = _transforms(ms.get("coordinateTransformations"))
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(meta_url, f"malformed multiscales metadata ({exc})") from exc
    n = len(axes)
    scale = scale or [1.0] * n
    trans = trans or [0.0] * n
    if gscale:
        trans = [t * g for t, g in zip(trans, gscale, strict=True)]
        scale = [s * g for s, g in zip(scale, gscale, strict=True)]
    if gtrans:
        trans = [t + g for t, g in zip(trans, gtrans, strict=True)]
    if len(scale) != n or len(trans) != n:
        raise SourceError(meta_url, f"scale/translation lengths differ from the {n} axes")
    store = FsspecStore(fs, path=f"{url}/{sub}", read_only=True)
    try:
        arr = await zarr.api.asynchronous.open_array(store=store, mode="r", zarr_format=zarr_format)
    except BidspackError:
        raise
    except FileNotFoundError as exc:
        raise SourceError(f"{url}/{sub}", "level array metadata not found (HTTP 404)") from exc
    except Exception as exc:
        raise SourceError(
            f"{url}/{sub}", f"not a readable Zarr array ({type(exc).__name__}: {exc})"
        ) from exc
    shape = tuple(int(s) for s in arr.shape)
    if len(shape) != n:
        raise SourceError(f"{url}/{sub}", f"has {len(shape)} dimensions, the axes {n}")
    selection, pos = _select(url, axes, types, shape, channel, time)
    units = [
        _unit_um(
            url,
            axes[p],
            raw_axes[p].get("unit") if isinstance(raw_axes[p], dict) else None,
            NGFF_UNIT_TO_UM,
        )
        if p >= 0
        else 1.0
        for p in pos
    ]
    voxel = tuple(scale[p] * u if p >= 0 else 1.0 for p, u in zip(pos, units, strict=True))
    origin = tuple(trans[p] * u if p >= 0 else 0.0 for p, u in zip(pos, units, strict=True))
    chunks = tuple(int(arr.chunks[p]) if p >= 0 else 1 for p in pos)
    zyx_shape = tuple(shape[p] if p >= 0 else 1 for p in pos)
    sync_arr = zarr.Array(arr)

    def reader(lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
        index: list[Any] = [0] * n
        for name, i in selection.items():
            index[axes.index(name)] = i
        for k, p in enumerate(pos):
            if p >= 0:
                index[p] = slice(lo[k], hi[k])
        data = np.asarray(sync_arr[tuple(index)])
        kept = [p for p in range(n) if isinstance(index[p], slice)]
        order = [kept.index(p) for p in pos if p >= 0]
        return np.transpose(data, order)

    return RemoteImage(
        url=url,
        format=fmt_name,
        level=level,
        levels=len(datasets),
        level_path=sub,
        shape=(zyx_shape[0], zyx_shape[1], zyx_shape[2]),
        dtype=np.dtype(arr.dtype),
        chunks=(chunks[0], chunks[1], chunks[2]),
        voxel_um=(float(voxel[0]), float(voxel[1]), float(voxel[2])),
        origin_um=(float(origin[0]), float(origin[1]), float(origin[2])),
        axes=tuple(axes),
        selection=selection,
        _reader=reader,
    )


# --- N5 -------------------------------------------------------------------------------

N5_DTYPES = {
    t: np.dtype(t).newbyteorder(">")
    for t in (
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
}


def _n5_decompress(url: str, compression: dict[str, Any], data: bytes) -> bytes:
    kind = compression.get("type", "raw")
    try:
        if kind == "raw":
            return data
        if kind == "gzip":
            return (
                gzip.decompress(data)
                if data[:2] == b"\x1f\x8b"
                else __import__("zlib").decompress(data)
            )
        if kind == "bzip2":
            return bz2.decompress(data)
        if kind == "xz":
            return lzma.decompress(data)
        if kind in ("blosc", "zstd"):
            import numcodecs

            codec = numcodecs.Blosc() if kind == "blosc" else numcodecs.Zstd()
            return bytes(codec.decode(data))
    except Exception as exc:
        raise SourceError(url, f"N5 block cannot be decompressed ({kind}: {exc})") from exc
    raise SourceError(url, f"N5 compression {kind!r} is not supported")


def _n5_level_paths(url: str, root: dict[str, Any]) -> list[str]:
    """Level paths below the group: ``multiscales[0].datasets`` (OpenOrganelle) or
    ``s0``, ``s1`` ... counted from ``scales``/``downsamplingFactors``."""
    ms = root.get("multiscales")
    if (
        isinstance(ms, list)
        and ms
        and isinstance(ms[0], dict)
        and isinstance(ms[0].get("datasets"), list)
    ):
        return [str(d["path"]) for d in ms[0]["datasets"]]
    scales = root.get("scales") or root.get("downsamplingFactors")
    if isinstance(scales, list) and scales:
        return [f"s{i}" for i in range(len(scales))]
    raise SourceError(f"{url}/attributes.json", "no N5 multiscale (no scales or multiscales)")


async def _open_n5(
    fs: Any,
    url: str,
    root: dict[str, Any],
    level: int,
    channel: int | None,
    time: int | None,
) -> RemoteImage:
    if "dimensions" in root and "dataType" in root:  # a single N5 dataset, no multiscale
        paths, meta = [""], root
    else:
        paths = _n5_level_paths(url, root)
        if not 0 <= level < len(paths):
            raise SourceError(url, f"no level {level} (the multiscale has {len(paths)})")
        try:
            meta = await _get_json(fs, f"{url}/{paths[level]}/attributes.json")
        except FileNotFoundError:
            raise SourceError(
                f"{url}/{paths[level]}", "N5 level attributes.json not found (HTTP 404)"
            ) from None
    base = f"{url}/{paths[level]}".rstrip("/")
    meta_url = f"{base}/attributes.json"
    try:
        dims_x = [int(d) for d in meta["dimensions"]]
        block_x = [int(b) for b in meta["blockSize"]]
        dtype = N5_DTYPES[meta["dataType"]]
        compression = meta.get("compression") or {"type": meta.get("compressionType", "raw")}
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(meta_url, f"malformed N5 dataset attributes ({exc})") from exc
    n = len(dims_x)
    if n not in (2, 3):
        raise SourceError(meta_url, f"N5 dataset has {n} dimensions; 2 or 3 (x, y[, z]) supported")
    voxel_x, origin_x = _n5_geometry(meta_url, root, meta, level, n)
    shape_zyx = tuple(dims_x[::-1]) if n == 3 else (1, dims_x[1], dims_x[0])
    block_zyx = tuple(block_x[::-1]) if n == 3 else (1, block_x[1], block_x[0])
    voxel = tuple(voxel_x[::-1]) if n == 3 else (1.0, voxel_x[1], voxel_x[0])
    origin = tuple(origin_x[::-1]) if n == 3 else (0.0, origin_x[1], origin_x[0])

    async def fetch_block(
        idx_zyx: tuple[int, int, int],
    ) -> tuple[tuple[int, int, int], np.ndarray | None]:
        grid = idx_zyx[::-1] if n == 3 else (idx_zyx[2], idx_zyx[1])
        block_url = f"{base}/" + "/".join(str(i) for i in grid)
        try:
            data = await _get(fs, block_url)
        except FileNotFoundError:
            return idx_zyx, None
        if len(data) < 4:
            raise SourceError(block_url, "truncated N5 block header")
        mode, ndim = struct.unpack(">HH", data[:4])
        off = 4 + 4 * ndim
        bdims = struct.unpack(f">{ndim}I", data[4:off]) if len(data) >= off else ()
        if mode == 1:
            off += 4
        if mode not in (0, 1) or len(bdims) != ndim or ndim != n:
            raise SourceError(block_url, f"unsupported or damaged N5 block header (mode {mode})")
        raw = _n5_decompress(block_url, compression, data[off:])
        count = int(np.prod(bdims))
        if len(raw) < count * dtype.itemsize:
            raise SourceError(block_url, "N5 block holds fewer bytes than its header says")
        arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(tuple(bdims[::-1]))
        return idx_zyx, arr if n == 3 else arr.reshape((1, *arr.shape))

    def reader(lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
        out = np.zeros(
            tuple(b - a for a, b in zip(lo, hi, strict=True)), dtype=dtype.newbyteorder("=")
        )
        ranges = [range(a // c, -(-b // c)) for a, b, c in zip(lo, hi, block_zyx, strict=True)]
        wanted = [(z, y, x) for z in ranges[0] for y in ranges[1] for x in ranges[2]]

        async def all_blocks() -> list[tuple[tuple[int, int, int], np.ndarray | None]]:
            return list(await asyncio.gather(*(fetch_block(i) for i in wanted)))

        for idx, block in _run(all_blocks()):
            if block is None:
                continue
            b0 = [i * c for i, c in zip(idx, block_zyx, strict=True)]
            src = tuple(
                slice(max(a, s) - s, min(b, s + e) - s)
                for a, b, s, e in zip(lo, hi, b0, block.shape, strict=True)
            )
            dst = tuple(
                slice(max(a, s) - a, min(b, s + e) - a)
                for a, b, s, e in zip(lo, hi, b0, block.shape, strict=True)
            )
            out[dst] = block[src]
        return out

    return RemoteImage(
        url=url,
        format="n5",
        level=level,
        levels=len(paths),
        level_path=paths[level],
        shape=(int(shape_zyx[0]), int(shape_zyx[1]), int(shape_zyx[2])),
        dtype=dtype.newbyteorder("="),
        chunks=(int(block_zyx[0]), int(block_zyx[1]), int(block_zyx[2])),
        voxel_um=(float(voxel[0]), float(voxel[1]), float(voxel[2])),
        origin_um=(float(origin[0]), float(origin[1]), float(origin[2])),
        axes=("z", "y", "x") if n == 3 else ("y", "x"),
        _reader=reader,
    )


def _n5_geometry(
    meta_url: str, root: dict[str, Any], meta: dict[str, Any], level: int, n: int
) -> tuple[list[float], list[float]]:
    """Voxel size and origin (µm) in N5 axis order (x first): the dataset's
    ``transform`` (``axes``, ``scale``, ``translate``, ``units``: OpenOrganelle), or its
    ``pixelResolution`` (``dimensions``, ``unit``), or the group's ``pixelResolution``
    times the level's ``downsamplingFactors``/``scales``."""
    tf = meta.get("transform")
    try:
        if isinstance(tf, dict) and "scale" in tf:
            axes = [str(a) for a in tf.get("axes", ["z", "y", "x"][-n:])]
            order = [axes.index(a) for a in ["x", "y", "z"][:n]]
            units = tf.get("units") or ["nm"] * n
            f = [_unit_um(meta_url, axes[i], units[i], N5_UNIT_TO_UM) for i in order]
            scale = [float(tf["scale"][i]) * u for i, u in zip(order, f, strict=True)]
            trans = [
                float((tf.get("translate") or [0.0] * n)[i]) * u
                for i, u in zip(order, f, strict=True)
            ]
            return scale, trans
        res = meta.get("pixelResolution") or root.get("pixelResolution")
        if isinstance(res, list):  # older writers: a bare list, no unit
            raise SourceError(meta_url, "pixelResolution has no unit")
        if isinstance(res, dict):
            u = _unit_um(meta_url, "x", res.get("unit"), N5_UNIT_TO_UM)
            dims = [float(d) * u for d in res["dimensions"]][:n]
            if "pixelResolution" not in meta:
                factors = (
                    meta.get("downsamplingFactors")
                    or ((root.get("scales") or root.get("downsamplingFactors") or [[1] * n])[level])
                )
                dims = [d * float(fct) for d, fct in zip(dims, factors, strict=False)]
            return dims, [0.0] * n
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SourceError(meta_url, f"malformed N5 transform/pixelResolution ({exc})") from exc
    raise SourceError(meta_url, "no voxel size (no transform or pixelResolution with a unit)")
