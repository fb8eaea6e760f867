"""The hashdiff HTML report in a real browser: headless Debian chromium loads it offline,
its embedded PNG images decode, and a screenshot shows the tables and difference maps.

Chromium is required (``.ci/run`` installs it); without it these tests fail, not skip.
"""

from __future__ import annotations

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
