"""``bidspack view``: the read-only dataset server and the bundled Neuroglancer client in
real headless chromium (SwiftShader WebGL): the page loads, the image layer's chunks are
requested (server log) and a screenshot is kept; paths outside the dataset are refused.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from bidspack.ops.view import ViewServer, neuroglancer_state

RAW = "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM.ome.zarr"


@pytest.fixture(scope="module")
def zarr_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example packaged to OME-Zarr NGFF 0.4 (Zarr v2), the atlas an NGFF label."""
    from bidspack.examples import write_submission
    from bidspack.ops.package import package
    from bidspack.spec import load_spec

    root = tmp_path_factory.mktemp("view")
    spec = write_submission(root / "submission")
    text = spec.read_text().replace(
        "tile = 256", 'tile = 256\nformats = ["ome-zarr"]\nngff_version = "0.4"'
    )
    spec.write_text(text.replace('desc = "atlas"\n', 'desc = "atlas"\nlabels_of = "640_N4"\n'))
    ds = root / "ds"
    recs = list(package(root / "submission", ds, load_spec(spec), validate=False))
    assert not [r for r in recs if r.status == "error"]
    (root / "secret.txt").write_text("outside")
    os.symlink(root / "secret.txt", ds / "sub-45670ko" / "escape.txt")
    return ds


def _get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_state_has_image_and_label_layers(zarr_ds: Path) -> None:
    state = neuroglancer_state("http://127.0.0.1:1", zarr_ds)
    layers = {lay["name"]: lay for lay in state["layers"]}
    raw = layers["sub-45670ko_sample-brainLH_stain-N4_SPIM"]
    assert raw["type"] == "image"
    assert raw["source"] == f"zarr2://http://127.0.0.1:1/data/{RAW}/"
    label = layers["sub-45670ko_sample-brainLH_stain-N4_SPIM atlas"]
    assert label["type"] == "segmentation" and label["source"].endswith("/labels/atlas/")
    assert state["dimensions"]["x"] == [pytest.approx(1.8e-6), "m"]
    assert state["dimensions"]["z"] == [pytest.approx(4e-6), "m"]
    kinds = [lay["type"] for lay in state["layers"]]
    assert kinds.count("image") >= 3 and kinds.count("segmentation") >= 6


def test_server_refuses_paths_outside_and_serves_ranges(zarr_ds: Path) -> None:
    with ViewServer(zarr_ds) as server:
        port = server.port
        resp, body = _get(port, f"/data/{RAW}/.zattrs")
        assert resp.status == 200 and b"multiscales" in body
        assert resp.getheader("Access-Control-Allow-Origin") == "*"
        resp, body = _get(port, f"/data/{RAW}/.zattrs", headers={"Range": "bytes=0-9"})
        assert resp.status == 206 and len(body) == 10
        assert resp.getheader("Content-Range", "").startswith("bytes 0-9/")
        resp, body = _get(port, f"/data/{RAW}/.zattrs", headers={"Range": "bytes=-5"})
        assert resp.status == 206 and len(body) == 5
        resp, _ = _get(port, f"/data/{RAW}/.zattrs", headers={"Range": "bytes=999999-"})
        assert resp.status == 416
        resp, body = _get(port, f"/data/{RAW}/.zattrs", method="HEAD")
        assert resp.status == 200 and body == b""
        for bad in (
            "/data/../etc/passwd",
            "/data/%2e%2e/%2e%2e/etc/passwd",
            "/data/sub-45670ko/%2E%2E/%2e%2e/secret.txt",
            "/data/sub-45670ko/..%2f..%2fsecret.txt",
            "/data/sub-45670ko/escape.txt",  # a symlink leading out of the dataset
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/data/.bidspack/lock",
            "/data/sub-45670ko",  # a folder: no listing
            "/neuroglancer/..%2f..%2f__init__.py",
        ):
            resp, body = _get(port, bad)
            assert resp.status in (403, 404), (bad, resp.status)
            assert b"outside" not in body and b"root:" not in body
        resp, _ = _get(port, f"/data/{RAW}/.zattrs", method="PUT")
        assert resp.status == 405
        resp, _ = _get(port, f"/data/{RAW}/.zattrs", method="DELETE")
        assert resp.status == 405
        resp, body = _get(port, "/neuroglancer/v/bidspack/")
        assert resp.status == 200 and b"<script" in body
    assert (zarr_ds / RAW / ".zattrs").is_file()  # nothing changed


def test_neuroglancer_loads_chunks_in_chromium(zarr_ds: Path, tmp_path: Path) -> None:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium not found on PATH (apt-get install chromium; .ci/run does this)")
    png = tmp_path / "neuroglancer.png"  # kept as the test's artefact
    with ViewServer(zarr_ds) as server:
        state = neuroglancer_state(server.base, zarr_ds)
        url = server.url.split("#", 1)[0] + "#!" + urllib.parse.quote(json.dumps(state), safe="")
        proc = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--use-gl=angle",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--ignore-gpu-blocklist",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-background-networking",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=1200,900",
                "--virtual-time-budget=60000",  # virtual time: ~8 s of real time here
                "--run-all-compositor-stages-before-draw",
                f"--screenshot={png}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        log = server.log
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = [p for _, p, status in log if status in (200, 206)]
    assert any(p.startswith("/neuroglancer/v/bidspack/main.") for p in paths), log[:20]
    assert f"/data/{RAW}/.zattrs" in paths, log
    chunks = [p for p in paths if p.startswith(f"/data/{RAW}/0/") and not p.endswith(".zarray")]
    assert chunks, f"no chunk of the image layer was requested: {log}"
    assert any(p.startswith(f"/data/{RAW}/labels/atlas/0/") for p in paths), log
    assert not [entry for entry in log if entry[2] in (403, 500)], log
    rgb = np.asarray(imagecodecs.png_decode(png.read_bytes()))[..., :3].astype(np.int32)
    # the panels show the image under its atlas label colours, not only the grey
    # "not loaded" background and the yellow bounding boxes
    panel = rgb[200:880]
    r, g, b = panel[..., 0], panel[..., 1], panel[..., 2]
    yellow = (r > 200) & (g > 200) & (b < 80)
    saturated = (panel.max(axis=-1) - panel.min(axis=-1) > 40) & ~yellow
    assert saturated.sum() > 20_000, f"no data drawn in {png}: {int(saturated.sum())} px"
