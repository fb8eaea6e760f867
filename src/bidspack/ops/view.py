"""``bidspack view``: serve a dataset read-only on the loopback interface, with the
Neuroglancer client of the ``neuroglancer`` Python package, and build a Neuroglancer
link that shows every OME-Zarr image (image layers) and its labels (segmentation
layers) in physical units.

**Server** (:class:`ViewServer`, ``http.server`` in a background thread):

- binds ``127.0.0.1`` only; ``GET`` and ``HEAD`` serve files, ``OPTIONS`` answers CORS
  preflights; every other method is ``405``. Every answer carries
  ``Access-Control-Allow-Origin: *``.
- ``/data/<path>``: files of the dataset. The path is percent-decoded once; a segment
  ``..`` or ``.``, a backslash or NUL is ``403``; the file is resolved (symbolic links
  followed) and must stay inside the dataset, else ``403``. Hidden names (``.bidspack``,
  ``.git``) are ``404`` except Zarr v2 metadata (``.zattrs``, ``.zarray``, ``.zgroup``,
  ``.zmetadata``). Folders are ``404`` (no listings).
- ``Range: bytes=a-b`` (one range; ``a-`` and ``-n`` too) gives ``206`` with
  ``Content-Range``; an unsatisfiable range ``416``.
- ``/neuroglancer/...``: the package's bundled static client
  (``neuroglancer/static/client/``); the page is ``/neuroglancer/v/bidspack/`` (the
  bundle is the Python-integration build, which wants a ``/v/<token>/`` path). Its
  state event stream (``/neuroglancer/events/...``) gets ``204`` (EventSource then stops
  reconnecting): the state comes from the URL fragment, no Python viewer runs.
- every request is logged (method, path, status) in :attr:`ViewServer.log`.

**Link** (:func:`neuroglancer_state`): data sources ``zarr2://http://127.0.0.1:P/data/...``
for NGFF 0.4 (Zarr v2) and ``zarr3://...`` for NGFF 0.5 (Zarr v3); Neuroglancer reads the
``multiscales`` metadata (scales and units) itself. Global dimensions are the first
image's level-0 voxel size in metres; the view starts at its centre. NGFF labels
(``labels/<name>``) and label derivatives (OME-Zarr with ``nearest`` downsampling or
``image-label``, same subject and sample) are segmentation layers.
"""

from __future__ import annotations

import importlib.util
import json
import mimetypes
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bidspack.errors import ToolError

TOKEN = "bidspack"
DATA_PREFIX = "/data/"
CLIENT_PREFIX = "/neuroglancer/"
ZARR_HIDDEN_OK = {".zattrs", ".zarray", ".zgroup", ".zmetadata"}
CHUNK = 1 << 16


def client_dir() -> Path:
    """The folder of the ``neuroglancer`` package's bundled static client.

    Raises:
        ToolError: the package (``pip install 'bidspack[view]'``) or its client is missing.
    """
    spec = importlib.util.find_spec("neuroglancer")
    if spec is None or not spec.submodule_search_locations:
        raise ToolError(
            None, "the neuroglancer package is not installed", hint="pip install neuroglancer"
        )
    for loc in spec.submodule_search_locations:
        client = Path(loc) / "static" / "client"
        if (client / "index.html").is_file():
            return client
    raise ToolError(None, "the neuroglancer package has no bundled client (static/client)")


@dataclass
class Layer:
    """One Neuroglancer layer: ``image`` or ``segmentation``."""

    name: str
    kind: str
    rel: str  # dataset-relative path of the OME-Zarr group
    zarr_format: int
    window: tuple[float, float] | None = None


def zarr_layers(dataset: Path) -> tuple[list[Layer], tuple[float, float, float] | None, Any]:
    """The layers of every OME-Zarr image of *dataset* (labels as segmentation layers),
    the first image's level-0 voxel size (µm, ``z, y, x``) and its level-0 shape."""
    from bidspack.io.omezarr.reader import read_attributes
    from bidspack.report.dataset_report import _label_images, find_images, open_pyramid

    dataset = Path(dataset)
    images = [i for i in find_images(dataset) if "ome-zarr" in i.files]
    _label_images(images, dataset)
    layers: list[Layer] = []
    voxel: tuple[float, float, float] | None = None
    shape: Any = None
    for img in images:
        path = img.files["ome-zarr"]
        try:
            pyr = open_pyramid(path)
        except Exception:  # not readable: left out of the view
            continue
        zf = 3 if pyr.extra.get("ngff") == "0.5" else 2
        rel = path.relative_to(dataset).as_posix()
        name = path.name.removesuffix(".ome.zarr")
        if img.label:
            layers.append(Layer(name, "segmentation", rel, zf))
            continue
        if voxel is None:
            voxel, shape = pyr.voxel0_um, pyr.shapes[0]
        from bidspack.io.omezarr.versions import ngff_version

        fmt = ngff_version(pyr.extra["ngff"])
        window = None
        try:
            w = fmt.ome_metadata(read_attributes(path, fmt))["omero"]["channels"][0]["window"]
            window = (float(w["start"]), float(w["end"]))
        except (KeyError, IndexError, TypeError, ValueError):
            pass
        names: list[str] = []
        if (path / "labels").is_dir():
            try:
                found = fmt.ome_metadata(read_attributes(path / "labels", fmt)).get("labels", [])
                names = [str(n) for n in found if "/" not in str(n) and str(n) not in ("..", ".")]
            except Exception:  # unreadable labels group: image only
                names = []
        layers.append(Layer(name, "image", rel, zf, window))
        for label in names:
            layers.append(Layer(f"{name} {label}", "segmentation", f"{rel}/labels/{label}", zf))
    return layers, voxel, shape


def neuroglancer_state(base: str, dataset: Path) -> dict[str, Any]:
    """The Neuroglancer state (JSON) for *dataset* served at *base* (``http://host:port``)."""
    layers, voxel, shape = zarr_layers(dataset)
    state: dict[str, Any] = {"layers": [], "layout": "4panel"}
    if voxel is not None:  # x, y, z: the xy panel shows x across, y down
        vz, vy, vx = voxel
        state["dimensions"] = {"x": [vx * 1e-6, "m"], "y": [vy * 1e-6, "m"], "z": [vz * 1e-6, "m"]}
        if shape is not None:
            nz, ny, nx = (1, *shape)[-3:] if len(shape) == 2 else shape[-3:]
            state["position"] = [nx / 2, ny / 2, nz / 2]
            # canonical voxels (x) per screen pixel: the image spans about 400 pixels
            state["crossSectionScale"] = max(nx, ny * vy / vx, 1) / 300
    first_image = next((i for i, lay in enumerate(layers) if lay.kind == "image"), 0)
    first_rel = layers[first_image].rel if layers else ""
    for lay in layers:
        scheme = "zarr3" if lay.zarr_format == 3 else "zarr2"
        entry: dict[str, Any] = {
            "type": lay.kind,
            "source": f"{scheme}://{base}{DATA_PREFIX}{urllib.parse.quote(lay.rel)}/",
            "name": lay.name,
        }
        if not (lay.rel == first_rel or lay.rel.startswith(first_rel + "/labels/")):
            entry["visible"] = False  # images overlap: the first one (and its labels) shown
        if lay.kind == "segmentation":
            entry["selectedAlpha"] = 0.35  # the image stays visible under its labels
        if lay.kind == "image" and lay.window is not None:
            entry["shaderControls"] = {"normalized": {"range": list(lay.window)}}
        state["layers"].append(entry)
    if state["layers"]:
        state["selectedLayer"] = {"layer": state["layers"][0]["name"]}
    return state


def neuroglancer_url(base: str, dataset: Path) -> str:
    """The link that opens the bundled client with :func:`neuroglancer_state`."""
    state = json.dumps(neuroglancer_state(base, dataset), separators=(",", ":"))
    return f"{base}{CLIENT_PREFIX}v/{TOKEN}/#!" + urllib.parse.quote(state, safe="")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Requests go to :attr:`ViewServer.log`, not stderr."""

    def _log(self, status: int) -> None:
        with self.server.lock:
            self.server.log.append((self.command, self.path, status))

    def _headers(
        self, status: int, length: int, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header(
            "Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges"
        )
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self._log(status)

    def _error(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self._headers(status, len(body), "text/plain; charset=utf-8")
        if self.command != "HEAD":
            self.wfile.write(body)

    def _resolve(self) -> Path | int:
        """The file to serve, or an HTTP status."""
        raw = urllib.parse.urlsplit(self.path).path
        if raw.startswith(CLIENT_PREFIX):
            rest = urllib.parse.unquote(raw[len(CLIENT_PREFIX) :])
            if rest.startswith("events/"):
                return 204
            name = rest.rsplit("/", 1)[-1] or "index.html"
            if "\\" in name or "\x00" in name or name in ("..", "."):
                return 403
            path = self.server.client / name
            return path if path.is_file() else 404
        if not raw.startswith(DATA_PREFIX):
            return 404
        rel = urllib.parse.unquote(raw[len(DATA_PREFIX) :])
        parts = rel.split("/")
        if any(p in ("..", ".") or "\\" in p or "\x00" in p for p in parts):
            return 403
        parts = [p for p in parts if p]
        if any(p.startswith(".") and p not in ZARR_HIDDEN_OK for p in parts):
            return 404
        candidate = self.server.root.joinpath(*parts)
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return 404
        if not real.is_relative_to(self.server.root):
            return 403
        return real if real.is_file() else 404

    def _serve(self) -> None:
        if not (
            self.path.startswith(DATA_PREFIX) or self.path.startswith(CLIENT_PREFIX)
        ) and self.path.split("?")[0] in ("/", ""):
            loc = self.server.url
            self._headers(302, 0, "text/plain", {"Location": loc})
            return
        target = self._resolve()
        if isinstance(target, int):
            if target == 204:
                self._headers(204, 0, "text/plain")
            else:
                self._error(target, "forbidden" if target == 403 else "not found")
            return
        size = target.stat().st_size
        ctype = (
            {
                ".js": "application/javascript",
                ".wasm": "application/wasm",
                ".css": "text/css",
                ".html": "text/html; charset=utf-8",
                ".json": "application/json",
            }.get(target.suffix)
            or mimetypes.guess_type(target.name)[0]
            or "application/octet-stream"
        )
        start, end, status, extra = 0, size - 1, 200, {}
        rng = self.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, size)
            if parsed is None:
                self._headers(416, 0, "text/plain", {"Content-Range": f"bytes */{size}"})
                return
            start, end = parsed
            status = 206
            extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        self._headers(status, length, ctype, extra)
        if self.command == "HEAD":
            return
        with open(target, "rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                buf = fh.read(min(CHUNK, left))
                if not buf:
                    break
                self.wfile.write(buf)
                left -= len(buf)

    def do_GET(self) -> None:
        """Serve a file (or a range of it)."""
        self._serve()

    def do_HEAD(self) -> None:
        """Headers only."""
        self._serve()

    def do_OPTIONS(self) -> None:
        """CORS preflight: GET/HEAD with a Range header allowed."""
        self.send_response(204)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Range")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self._log(204)

    def _refuse(self) -> None:
        body = b"read-only\n"
        self._headers(405, len(body), "text/plain", {"Allow": "GET, HEAD, OPTIONS"})
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive of a single ``bytes=`` range, or ``None``."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    a, _, b = spec.strip().partition("-")
    try:
        if a == "":
            n = int(b)
            if n <= 0:
                return None
            return max(0, size - n), size - 1
        start = int(a)
        end = int(b) if b else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    root: Path
    client: Path
    log: list[tuple[str, str, int]]
    lock: threading.Lock
    url: str


class ViewServer:
    """The read-only dataset server (see the module docstring).

    Use as a context manager, or :meth:`start` then :meth:`stop`.
    """

    def __init__(self, dataset: Path, *, port: int = 0, host: str = "127.0.0.1"):
        dataset = Path(dataset)
        if not dataset.is_dir():
            raise ToolError(dataset, "not a folder")
        self.dataset = dataset
        self.httpd = _Server((host, port), _Handler)
        self.httpd.root = dataset.resolve()
        self.httpd.client = client_dir().resolve()
        self.httpd.log = []
        self.httpd.lock = threading.Lock()
        self.port = int(self.httpd.server_address[1])
        self.base = f"http://{host}:{self.port}"
        self.url = neuroglancer_url(self.base, dataset)
        self.httpd.url = self.url
        self._thread: threading.Thread | None = None

    @property
    def log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far (a copy)."""
        with self.httpd.lock:
            return list(self.httpd.log)

    def start(self) -> ViewServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` or Ctrl-C."""
        self.httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
        self.httpd.server_close()

    def __enter__(self) -> ViewServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def open_in_browser(url: str) -> bool:
    """Open *url* in the default browser (``webbrowser``); False if none."""
    import webbrowser

    try:
        return bool(webbrowser.open(url))
    except Exception:
        return False


__all__ = ["ViewServer", "client_dir", "neuroglancer_state", "neuroglancer_url"]
