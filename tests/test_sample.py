"""``bidspack sample``: random cubes from a real OME-Zarr (the STP stack written by
bidspack, NGFF 0.5 and 0.4) served over HTTP on the loopback interface, with faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from bidspack.cli.main import cli
from bidspack.io.omezarr import write_ome_zarr
from bidspack.io.remote import RemoteOptions, open_remote
from bidspack.io.sources import open_source
from bidspack.ops.sample import KILL_ENV, plan_cubes, plan_sample, sample

STP = Path(__file__).resolve().parents[2] / "shared/realdata/stp_mouse_brain/downsampled.tiff"
if not STP.is_file():
    STP = Path("/work/shared/realdata/stp_mouse_brain/downsampled.tiff")
pytestmark = pytest.mark.skipif(not STP.is_file(), reason="the STP stack is not available")

CHUNK = (16, 32, 32)
SIZE = 32
CUBE_BYTES = SIZE**3 * 2
BUDGET = 6 * CUBE_BYTES + 1000  # six cubes per source


class Served:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) serving *root* with ``Range``
    support, a request log, a concurrency meter and injectable faults per path:
    ``("404",)``, ``("delay", seconds)``, ``("html",)``, ``("503", n)`` (n times, then
    served; -1: always)."""

    def __init__(self, root: Path):
        self.root = root
        self.log: list[tuple[str, str]] = []
        self.faults: dict[str, list[Any]] = {}
        self.delay_all = 0.0
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        served = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with served.lock:
                    served.log.append((self.path, self.headers.get("Range", "")))
                    served.active += 1
                    served.max_active = max(served.max_active, served.active)
                try:
                    self._get()
                finally:
                    with served.lock:
                        served.active -= 1

            def _get(self) -> None:
                if served.delay_all:
                    time.sleep(served.delay_all)
                fault = served.faults.get(self.path)
                if fault is not None:
                    kind = fault[0]
                    if kind == "404":
                        return self.send_error(404)
                    if kind == "delay":
                        time.sleep(fault[1])
                    if kind == "html":
                        body = b"<!DOCTYPE html><html><body>Sign in</body></html>"
                        return self._send(200, body, "text/html; charset=utf-8")
                    if kind == "503" and fault[1] != 0:
                        fault[1] -= 1
                        return self._send(503, b"busy", "text/plain")
                file = Path(self.translate_path(self.path))
                if not file.is_file():
                    return self.send_error(404)
                data = file.read_bytes()
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    data = data[-int(b) :] if not a else data[int(a) : int(b) + 1 if b else None]
                    return self._send(206, data, "application/octet-stream")
                ctype = (
                    "application/json"
                    if file.suffix == ".json" or file.name.startswith(".z")
                    else "application/octet-stream"
                )
                return self._send(200, data, ctype)

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout tests)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.log.clear()
            self.faults.clear()
            self.delay_all = 0.0
            self.max_active = 0

    def chunk_requests(self, prefix: str) -> set[str]:
        return {
            p
            for p, _ in self.log
            if p.startswith(prefix) and not p.rsplit("/", 1)[-1].startswith((".z", "zarr.json"))
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return tifffile.imread(STP)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("served")
    src = open_source(STP)
    for version in ("0.5", "0.4"):
        write_ome_zarr(
            root / f"stp{version}.ome.zarr",
            src,
            physical_size_zyx_um=(100.0, 100.0, 100.0),
            name="stp",
            version=version,
            chunk=CHUNK,
            workers=1,
            scheduler="synchronous",
        )
    srv = Served(root)
    yield srv
    srv.close()


@pytest.fixture
def srv(server: Served) -> Served:
    server.reset()
    return server


def _run(urls: list[str], out: Path, **kw: Any) -> list[Any]:
    plan = plan_sample(
        urls, out, budget=kw.pop("budget", BUDGET), size=SIZE, seed=kw.pop("seed", 7), **kw
    )
    return list(sample(plan))


def _rows(out: Path) -> list[dict[str, Any]]:
    import pandas as pd

    return pd.read_csv(out / "manifest.tsv", sep="\t").to_dict("records")


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in path.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_cubes_equal_the_source(
    srv: Served, stack: np.ndarray, tmp_path: Path, version: str
) -> None:
    url = f"{srv.url}/stp{version}.ome.zarr"
    im = open_remote(url)
    assert im.shape == (135, 77, 108) and im.dtype == np.uint16
    assert im.voxel_um == (100.0, 100.0, 100.0) and im.chunks == CHUNK
    im.close()
    out = tmp_path / "out"
    recs = _run([url], out)
    assert [r.status for r in recs if r.path.startswith("cubes/")] == ["ok"] * 6
    rows = _rows(out)
    assert len(rows) == 6
    total = sum(r["bytes"] for r in rows)
    assert total <= BUDGET < total + CUBE_BYTES  # one more cube would exceed the budget
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["sources"][0]["cubes"]) == 6
    for r in rows:
        z0, z1, y0, y1, x0, x1 = (r[k] for k in ("z0", "z1", "y0", "y1", "x0", "x1"))
        assert (z1 - z0, y1 - y0, x1 - x0) == (SIZE, SIZE, SIZE)
        assert z0 >= 0 and z1 <= 135 and y1 <= 77 and x1 <= 108
        assert (r["z0_um"], r["y1_um"], r["x1_um"]) == (z0 * 100.0, y1 * 100.0, x1 * 100.0)
        assert r["url"] == url and r["level"] == 0 and r["seed"] == 7
        cube_path = out / r["path"]
        written = np.asarray(zarr.open_array(str(cube_path / "0"), mode="r"))
        assert np.array_equal(written, stack[z0:z1, y0:y1, x0:x1])  # pixel by pixel
        attrs = json.loads((cube_path / "zarr.json").read_text())["attributes"]["ome"]
        tf = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
        assert tf[1]["translation"] == [z0 * 100.0, y0 * 100.0, x0 * 100.0]
    # the same seed gives the same cubes; another seed other positions
    out2 = tmp_path / "again"
    _run([url], out2)
    assert [(r["z0"], r["y0"], r["x0"], r["pixel_hash"]) for r in _rows(out2)] == [
        (r["z0"], r["y0"], r["x0"], r["pixel_hash"]) for r in rows
    ]
    other = plan_cubes((135, 77, 108), 2, size=SIZE, budget=BUDGET, seed=8, url=url)
    assert [c.start for c in other] != [(r["z0"], r["y0"], r["x0"]) for r in rows]


def test_2d_and_clipped_plan() -> None:
    cubes = plan_cubes((1, 50, 40), 1, size=64, budget=10_000, seed=1, url="http://x/a")
    assert {c.shape for c in cubes} == {(1, 50, 40)} and len(cubes) == 5
    cubes = plan_cubes((10, 500, 400), 2, size=64, budget=10 * 64 * 64 * 2 * 3, seed=1, url="u")
    assert {c.shape for c in cubes} == {(10, 64, 64)} and len(cubes) == 3
    assert all(0 <= c.start[1] <= 500 - 64 for c in cubes)


def test_killed_run_resumes(srv: Served, tmp_path: Path) -> None:
    url = f"{srv.url}/stp0.4.ome.zarr"
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "bidspack",
        "sample",
        url,
        str(out),
        "--budget",
        str(BUDGET),
        "--size",
        str(SIZE),
        "--seed",
        "3",
        "--json",
    ]
    env = {**os.environ, KILL_ENV: "2"}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    done = [json.loads(line) for line in (out / "cubes.jsonl").read_text().splitlines()]
    assert len(done) == 2
    plan = json.loads((out / "plan.json").read_text())
    cubes = plan["sources"][0]["cubes"]

    def chunks_of(start: list[int]) -> set[str]:
        ranges = [range(s // c, (s + SIZE - 1) // c + 1) for s, c in zip(start, CHUNK, strict=True)]
        return {
            f"/stp0.4.ome.zarr/0/{z}/{y}/{x}"
            for z in ranges[0]
            for y in ranges[1]
            for x in ranges[2]
        }

    rest = set().union(*(chunks_of(c) for c in cubes[2:]))
    finished_only = set().union(*(chunks_of(c) for c in cubes[:2])) - rest
    srv.reset()
    proc = subprocess.run(args, env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    statuses = [json.loads(line)["status"] for line in proc.stdout.splitlines()]
    assert statuses.count("notneeded") == 2 and "error" not in statuses
    got = srv.chunk_requests("/stp0.4.ome.zarr/0/")
    assert got <= rest and not (got & finished_only)
    # the resumed result equals an uninterrupted run
    whole = tmp_path / "whole"
    assert CliRunner().invoke(cli, [*args[3:4], url, str(whole), *args[6:]]).exit_code == 0
    key = ("index", "z0", "y0", "x0", "bytes", "pixel_hash", "sha256", "path")
    assert [[r[k] for k in key] for r in _rows(out)] == [[r[k] for k in key] for r in _rows(whole)]
    assert (out / "plan.json").read_text() == (whole / "plan.json").read_text()
    # a third run downloads nothing; other arguments are refused, OUT unchanged
    srv.reset()
    before = _tree(out)
    res = CliRunner().invoke(
        cli, ["sample", url, str(out), "--budget", str(BUDGET), "--size", "16", "--seed", "3"]
    )
    assert res.exit_code == 1 and "other arguments" in res.output and "size" in res.output
    assert "Traceback" not in res.output and _tree(out) == before


@pytest.mark.parametrize(
    ("fault", "path", "message"),
    [
        (("404",), "/stp0.5.ome.zarr/zarr.json", "not an OME-Zarr or N5 multiscale"),
        (("html",), "/stp0.5.ome.zarr/zarr.json", "an HTML page"),
        (("delay", 3.0), "/stp0.5.ome.zarr/zarr.json", "timeout"),
        (("503", -1), "/stp0.5.ome.zarr/zarr.json", "HTTP 503; gave up after 2 attempts"),
        (("503", -1), "/stp0.5.ome.zarr/0/zarr.json", "HTTP 503"),
    ],
)
def test_remote_errors(srv: Served, tmp_path: Path, fault: tuple, path: str, message: str) -> None:
    srv.faults[path] = list(fault)
    out = tmp_path / "out"
    url = f"{srv.url}/stp0.5.ome.zarr"
    res = CliRunner().invoke(
        cli,
        [
            "sample",
            url,
            str(out),
            "--budget",
            "1MB",
            "--size",
            "32",
            "--retries",
            "1",
            "--timeout",
            "0.5",
        ],
    )
    assert res.exit_code == 1, res.output
    assert "Error:" in res.output and url in res.output and message in res.output
    assert "Traceback" not in res.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_transient_503_recovered_and_existing_out_unchanged(srv: Served, tmp_path: Path) -> None:
    url = f"{srv.url}/stp0.5.ome.zarr"
    srv.faults["/stp0.5.ome.zarr/zarr.json"] = ["503", 2]
    srv.faults["/stp0.5.ome.zarr/0/zarr.json"] = ["503", 1]
    out = tmp_path / "out"
    recs = _run([url], out, options=RemoteOptions(retries=3, backoff_s=0.01))
    assert all(r.status == "ok" for r in recs)
    assert sum(1 for p, _ in srv.log if p == "/stp0.5.ome.zarr/zarr.json") == 3
    before = _tree(out)
    srv.faults["/stp0.5.ome.zarr/zarr.json"] = ["503", -1]
    res = CliRunner().invoke(
        cli,
        [
            "sample",
            url,
            str(out),
            "--budget",
            str(BUDGET),
            "--size",
            "32",
            "--seed",
            "7",
            "--retries",
            "2",
        ],
    )
    assert res.exit_code == 1 and url in res.output and "gave up after 3 attempts" in res.output
    assert _tree(out) == before


def test_chunk_failure_is_an_error_record_and_resumable(srv: Served, tmp_path: Path) -> None:
    url = f"{srv.url}/stp0.4.ome.zarr"
    plan = plan_sample(
        [url], tmp_path / "out", budget=BUDGET, size=SIZE, seed=5, options=RemoteOptions(retries=0)
    )
    first = plan.sources[0].cubes[0]
    bad = "/stp0.4.ome.zarr/0/" + "/".join(
        str(s // c) for s, c in zip(first.start, CHUNK, strict=True)
    )
    srv.faults[bad] = ["503", -1]
    recs = list(sample(plan))
    err = [r for r in recs if r.status == "error"]
    assert err and f"{srv.url}{bad}" in err[0].message
    srv.faults.clear()
    recs = _run([url], tmp_path / "out", seed=5)
    assert [r.status for r in recs if r.path.startswith("cubes/")] == ["ok"] * 6


def test_connection_limit(srv: Served, tmp_path: Path) -> None:
    srv.delay_all = 0.02
    url = f"{srv.url}/stp0.4.ome.zarr"
    _run([url], tmp_path / "out", budget=2 * CUBE_BYTES, options=RemoteOptions(max_connections=3))
    assert 1 <= srv.max_active <= 3
    assert len(srv.chunk_requests("/stp0.4.ome.zarr/0/")) >= 8  # enough parallel work to matter


def test_bad_arguments(srv: Served, tmp_path: Path) -> None:
    url = f"{srv.url}/stp0.5.ome.zarr"
    runner = CliRunner()
    res = runner.invoke(cli, ["sample", url, str(tmp_path / "o"), "--budget", "10", "--size", "32"])
    assert res.exit_code == 1 and "smaller than one cube" in res.output
    res = runner.invoke(cli, ["sample", url, str(tmp_path / "o"), "--budget", "lots"])
    assert res.exit_code == 1 and "--budget" in res.output
    res = runner.invoke(cli, ["sample", "ftp://x/y", str(tmp_path / "o"), "--budget", "1MB"])
    assert res.exit_code == 1 and "not a remote URL" in res.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    res = runner.invoke(cli, ["sample", url, str(tmp_path / "full"), "--budget", "1MB"])
    assert res.exit_code == 1 and "without plan.json" in res.output
    assert not (tmp_path / "o").exists()


def test_n5_multiscale(srv: Served, stack: np.ndarray, tmp_path: Path) -> None:
    """A small N5 multiscale (gzip blocks, big-endian, x-first block paths) written here
    by hand as the N5 spec describes, served and sampled."""
    import gzip
    import struct

    root = srv.root / "stp.n5"
    level = root / "s0"
    level.mkdir(parents=True, exist_ok=True)
    vol = stack[:40, :50, :60]
    block = (16, 16, 16)  # z, y, x
    (root / "attributes.json").write_text(
        json.dumps(
            {
                "n5": "2.5.0",
                "scales": [[1, 1, 1]],
                "pixelResolution": {"dimensions": [0.1, 0.1, 0.1], "unit": "mm"},
            }
        )
    )
    (level / "attributes.json").write_text(
        json.dumps(
            {
                "dimensions": [60, 50, 40],
                "blockSize": [16, 16, 16],
                "dataType": "uint16",
                "compression": {"type": "gzip"},
            }
        )
    )
    for bz in range(-(-40 // 16)):
        for by in range(-(-50 // 16)):
            for bx in range(-(-60 // 16)):
                part = vol[
                    bz * 16 : (bz + 1) * 16, by * 16 : (by + 1) * 16, bx * 16 : (bx + 1) * 16
                ]
                head = struct.pack(">HH3I", 0, 3, part.shape[2], part.shape[1], part.shape[0])
                f = level / str(bx) / str(by) / str(bz)
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(head + gzip.compress(part.astype(">u2").tobytes()))
    url = f"{srv.url}/stp.n5"
    im = open_remote(url)
    assert im.format == "n5" and im.shape == (40, 50, 60) and im.chunks == block
    assert im.voxel_um == (100.0, 100.0, 100.0)
    assert np.array_equal(im.read((3, 5, 7), (35, 45, 55)), vol[3:35, 5:45, 7:55])
    im.close()
    out = tmp_path / "out"
    _run([url], out, budget=2 * CUBE_BYTES)
    for r in _rows(out):
        got = np.asarray(zarr.open_array(str(out / r["path"] / "0"), mode="r"))
        assert np.array_equal(got, vol[r["z0"] : r["z1"], r["y0"] : r["y1"], r["x0"] : r["x1"]])
