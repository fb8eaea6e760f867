"""The hashdiff HTML report in a real browser: headless Debian chromium loads it offline,
its embedded PNG images decode, and a screenshot shows the tables and difference maps;
a one-voxel change shows its absolute count and a yellow box that a screenshot shows.

Chromium is required (``.ci/run`` installs it); without it these tests fail, not skip.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from bidspack.examples import write_submission
from bidspack.ops.hashdiff import hashdiff
from bidspack.report.hashdiff_report import write_outputs

SUBJECT = "210810_45670_ko_female_LH_14-48-50_decon_2021-10-28_12-39-11"
TIMEOUT_S = 120
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # Let the page's load handler run before the DOM is dumped / the screenshot taken.
    "--virtual-time-budget=5000",
]


def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "chromium not found on PATH: the hashdiff report browser test needs Debian's "
            "chromium (apt-get install -y --no-install-recommends chromium; .ci/run does this)"
        )
    return exe


def _run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    profile.mkdir(parents=True, exist_ok=False)
    proc = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html of hashdiff(atlaslabel_def_origspace, ..._masked) of the example."""
    root = tmp_path_factory.mktemp("hashdiff_browser")
    write_submission(root / "submission")
    subject = root / "submission" / SUBJECT
    diff = hashdiff(
        subject / "atlaslabel_def_origspace", subject / "atlaslabel_def_origspace_masked"
    )
    assert len(diff.results) == 24 and len(diff.different()) == 2
    paths = write_outputs(diff, root / "out")
    return paths["report"]


class _Dom(HTMLParser):
    """Collect what the assertions need from chromium's dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.stack: list[str] = []
        self.verdict = ""
        self.in_verdict = False
        self.different_rows = 0
        self.different_imgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "p" and a.get("id") == "verdict":
            self.in_verdict = True
        if tag == "table":
            self.stack.append(a.get("id") or "")
        in_different = bool(self.stack) and self.stack[-1] == "different"
        if in_different and tag == "tr":
            self.different_rows += 1
        if in_different and tag == "img":
            self.different_imgs += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self.in_verdict = False
        if tag == "table" and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.in_verdict:
            self.verdict += data


def test_report_dom_images_load_in_chromium(report: Path, tmp_path: Path) -> None:
    proc = _run_chromium(["--dump-dom", report.as_uri()], tmp_path / "profile")
    dom = _Dom()
    dom.feed(proc.stdout)  # stdout only: chromium's log noise goes to stderr
    assert "data-images" in dom.body, f"load handler did not run; body attrs: {dom.body}"
    assert dom.body["data-images"] == "6", dom.body
    assert dom.body["data-images-loaded"] == dom.body["data-images"], dom.body
    assert dom.body["data-rows"] == "24", dom.body
    assert "Verdict: different (24 pairs)" in dom.verdict, dom.verdict
    # Header row + 2 differing pairs, each with A, B and the difference map.
    assert dom.different_rows == 3
    assert dom.different_imgs == 6


def test_report_screenshot_is_not_blank(report: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    _run_chromium(
        ["--window-size=1400,2000", f"--screenshot={png}", report.as_uri()],
        tmp_path / "profile",
    )
    assert png.is_file() and png.stat().st_size > 0, "chromium wrote no screenshot"
    img = imagecodecs.png_decode(png.read_bytes())
    assert img.ndim == 3 and img.shape[2] in (3, 4), img.shape
    assert img.shape[:2] == (2000, 1400), img.shape
    rgb = img[..., :3].astype(np.int32)
    nonwhite = (rgb < 245).any(axis=-1).mean()
    assert nonwhite > 0.05, f"screenshot looks blank: {nonwhite:.1%} non-white pixels"
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours = len(np.unique(packed))
    assert colours > 50, f"only {colours} distinct colours in the screenshot"
    # The difference maps paint labels lost in B as red (230, 40, 40); allow for scaling.
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = int(((r > 180) & (g < 90) & (b < 90)).sum())
    assert red > 1000, f"no difference-map red in the screenshot ({red} red pixels)"
    # The label thumbnails of A and B sit on black backgrounds.
    dark = int((rgb < 30).all(axis=-1).sum())
    assert dark > 1000, f"no image thumbnails visible ({dark} near-black pixels)"


# -- one changed voxel (issue 12): an absolute count and a visible mark ---------------------

#: The changed voxel: not on the preview's sampling grid (every 5th pixel of 1280), so a
#: subsampled difference map would drop it.
VOXEL = (503, 702)
YELLOW = (255, 214, 0)


def _one_voxel_labels() -> tuple[np.ndarray, np.ndarray]:
    """A 1024 x 1280 label plane with exactly 8,021 labelled pixels, and a copy in which
    one labelled voxel is 0."""
    a = np.zeros((1024, 1280), np.uint8)
    a[460:540, 650:750] = 1  # 8,000
    a[540, 650:671] = 2  # 21 more
    assert int(np.count_nonzero(a)) == 8021 and a[VOXEL] == 1
    b = a.copy()
    b[VOXEL] = 0
    return a, b


@pytest.fixture(scope="module")
def one_voxel_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html of two slice folders that differ in one voxel of Z0001."""
    import tifffile

    root = tmp_path_factory.mktemp("hashdiff_one_voxel")
    a, b = _one_voxel_labels()
    for side, plane in (("A", a), ("B", b)):
        (root / side).mkdir()
        tifffile.imwrite(root / side / "Z0000.tif", a, compression="zlib")
        tifffile.imwrite(root / side / "Z0001.tif", plane, compression="zlib")
    diff = hashdiff(root / "A", root / "B")
    assert [r.status for r in diff.results] == ["identical_bytes", "different_pixels"]
    return write_outputs(diff, root / "out")["report"]


def _yellow(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r > 230) & (g > 180) & (b < 60)


def _red(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r > 180) & (g < 90) & (b < 90)


def _assert_boxed_voxel(rgb: np.ndarray, where: str) -> None:
    """One small yellow box, with the red changed voxel inside it and not covered."""
    ys, xs = np.nonzero(_yellow(rgb))
    assert len(ys) >= 20, f"{where}: no yellow box ({len(ys)} yellow pixels)"
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    assert y1 - y0 < 30 and x1 - x0 < 30, f"{where}: yellow spans {y0}-{y1} x {x0}-{x1}"
    inner = _red(rgb[y0 + 1 : y1, x0 + 1 : x1])
    assert inner.any(), f"{where}: no red (changed) pixel inside the box"
    # every side of the box is drawn
    box = _yellow(rgb[y0 : y1 + 1, x0 : x1 + 1])
    assert box[0].mean() > 0.8 and box[-1].mean() > 0.8, f"{where}: top/bottom incomplete"
    assert box[:, 0].mean() > 0.8 and box[:, -1].mean() > 0.8, f"{where}: sides incomplete"


def test_one_voxel_count_and_mark_in_dom(one_voxel_report: Path, tmp_path: Path) -> None:
    proc = _run_chromium(["--dump-dom", one_voxel_report.as_uri()], tmp_path / "profile")
    dom = proc.stdout
    assert 'data-images-loaded="3"' in dom and 'data-images="3"' in dom, dom[:600]
    verdict = "B lost 1 of 8,021 labelled pixels (0.012%); 8,020 remain labelled"
    assert verdict in dom, "absolute count missing from the rendered report"
    assert "0.0%" not in dom and "(0%)" not in dom
    # the difference map the browser decoded: the voxel is red, a yellow box around it
    marker = 'alt="difference z1" src="data:image/png;base64,'
    start = dom.index(marker) + len(marker)
    png = base64.b64decode(dom[start : dom.index('"', start)])
    img = np.asarray(imagecodecs.png_decode(png))
    assert img.shape == (205, 256, 3), img.shape  # 1024 x 1280 in 5 x 5 blocks
    cell = (VOXEL[0] // 5, VOXEL[1] // 5)
    assert tuple(img[cell]) == (230, 40, 40), img[cell]
    assert int(_red(img).sum()) == 1
    _assert_boxed_voxel(img, "decoded difference map")


def test_one_voxel_mark_visible_in_screenshot(one_voxel_report: Path, tmp_path: Path) -> None:
    png = tmp_path / "one_voxel_report.png"  # kept as the test's artefact
    _run_chromium(
        ["--window-size=1400,1200", f"--screenshot={png}", one_voxel_report.as_uri()],
        tmp_path / "profile",
    )
    assert png.is_file(), "chromium wrote no screenshot"
    rgb = np.asarray(imagecodecs.png_decode(png.read_bytes()))[..., :3].astype(np.int32)
    _assert_boxed_voxel(rgb, f"screenshot {png}")
