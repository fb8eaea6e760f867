"""``bidspack report``: the HTML QC report, rendered offline in real headless chromium.

- the packaged demo and a dataset with NGFF labels: no console errors, one section per
  image, every image decodes (checked in the page), a screenshot kept as an artefact;
- a dataset with a validation error shows it;
- qc.tsv written, then read back with a filled rating shown;
- the pyramid level read is never level 0 of a large image (OME-Zarr and OME-TIFF);
- the report's size per image keeps a 100-image report well under 20 MB.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile

from bidspack.io.sources import ImageSource, StackInfo
from bidspack.report import dataset_report
from bidspack.report.dataset_report import choose_level, find_images, write_report

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
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]
RAW = "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM"


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium not found on PATH (apt-get install chromium; .ci/run does this)")
    profile.mkdir(parents=True, exist_ok=False)
    proc = subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def _console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if ":CONSOLE" in line and re.search(r"Uncaught|Error|Failed to load", line)
    ]


def _body_attrs(dom: str) -> dict[str, str]:
    m = re.search(r"<body([^>]*)>", dom)
    assert m, dom[:500]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))


def _load(report: Path, tmp_path: Path, name: str) -> tuple[str, dict[str, str]]:
    """Dump the DOM and take a screenshot (kept as ``tmp_path/<name>.png``)."""
    proc = _chromium(["--dump-dom", report.as_uri()], tmp_path / f"profile-{name}-dom")
    assert _console_errors(proc.stderr) == [], _console_errors(proc.stderr)
    dom = proc.stdout
    html_tag = re.search(r"<html[^>]*>", dom)
    assert html_tag and "data-js-error" not in html_tag.group(0), "a script error was caught"
    png = tmp_path / f"{name}.png"
    shot = _chromium(
        ["--window-size=1400,2200", f"--screenshot={png}", report.as_uri()],
        tmp_path / f"profile-{name}-shot",
    )
    assert _console_errors(shot.stderr) == []
    rgb = np.asarray(imagecodecs.png_decode(png.read_bytes()))[..., :3].astype(np.int32)
    assert (rgb < 245).any(axis=-1).mean() > 0.05, f"{png} looks blank"
    return dom, _body_attrs(dom)


def _view_image(dom: str, key: str, view: str) -> np.ndarray:
    """Decode one view of one image section from the dumped DOM."""
    marker = f'alt="{key} {view}" src="data:image/'
    start = dom.index(marker) + len(marker)
    kind, _, rest = dom[start:].partition(";base64,")
    data = base64.b64decode(rest[: rest.index('"')])
    decode = imagecodecs.jpeg8_decode if kind == "jpeg" else imagecodecs.png_decode
    return np.asarray(decode(data))


def test_report_of_packaged_demo(packaged: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = write_report(packaged, out)
    assert result.validation == "run"
    images = find_images(packaged)
    assert result.images == len(images) == 12  # 3 subjects x (N4, atlas, cells, density)
    dom, body = _load(out, tmp_path, "report")
    assert body["data-sections"] == "12", body
    assert int(body["data-images"]) >= 12 * 6, body
    assert body["data-images-loaded"] == body["data-images"], body
    assert 'id="validate-summary">0 error(s)' in dom
    assert 'id="verify-summary">0 error(s)' in dom
    assert "Provenance timeline" in dom and 'id="timeline"' in dom
    assert dom.count("package:sub-45670ko/640_N4") >= 1  # which step wrote the image
    for sub in ("sub-45670ko", "sub-45671floxed", "sub-45672ko"):
        assert f"<h3>{sub}</h3>" in dom  # participants and samples rows per subject
    # the OME-TIFF pyramid of the demo is one level (96 x 128): that level is read
    assert result.levels_read[RAW] == (f"{RAW}.ome.tif", 0, (24, 96, 128))
    # the atlas derivative (same subject, sample and shape) is outlined over the N4 image
    xy = _view_image(dom, RAW, "xy mid-slice").astype(int)
    assert xy.ndim == 3 and (np.abs(xy[..., 0] - xy[..., 1]) > 40).sum() > 50


@pytest.fixture(scope="module")
def labels_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example packaged to OME-TIFF and OME-Zarr 0.5, the atlas an NGFF label."""
    from bidspack.examples import write_submission
    from bidspack.ops.package import package
    from bidspack.spec import load_spec

    root = tmp_path_factory.mktemp("report_labels")
    spec = write_submission(root / "submission")
    text = spec.read_text().replace(
        "tile = 256", 'tile = 256\nformats = ["ome-tiff", "ome-zarr"]\nngff_version = "0.5"'
    )
    spec.write_text(text.replace('desc = "atlas"\n', 'desc = "atlas"\nlabels_of = "640_N4"\n'))
    ds = root / "ds"
    recs = list(package(root / "submission", ds, load_spec(spec), validate=False))
    assert not [r for r in recs if r.status == "error"]
    return ds


def test_report_with_ngff_labels_and_qc_ratings(labels_ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = write_report(labels_ds, out, validate=False)
    assert result.qc_written and result.qc == tmp_path / "qc.tsv"
    assert result.levels_read[RAW][0] == f"{RAW}.ome.zarr"  # the OME-Zarr is read
    dom, body = _load(out, tmp_path, "report")
    assert body["data-sections"] == "12" and body["data-images-loaded"] == body["data-images"]
    assert "skipped (--no-validate)" in dom
    assert "NGFF label atlas" in dom  # outlines listed in the N4 image's section
    xy = _view_image(dom, RAW, "xy mid-slice").astype(int)
    coloured = (np.abs(xy[..., 0] - xy[..., 1]) > 40) | (np.abs(xy[..., 1] - xy[..., 2]) > 40)
    assert coloured.sum() > 50, "no coloured label outlines over the intensity image"
    # qc.tsv: one row per image, ratings n/a; fill one in, the report shows it
    rows = (tmp_path / "qc.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["image", "subject", "sample", "rating", "notes"]
    assert len(rows) == 13 and all(r.split("\t")[3] == "n/a" for r in rows[1:])
    edited = [
        r.replace("\tn/a\tn/a", "\tgood\tstriping at z 3") if r.startswith(RAW + "\t") else r
        for r in rows
    ]
    (tmp_path / "qc.tsv").write_text("\n".join(edited) + "\n")
    with pytest.raises(Exception, match="exists"):
        write_report(labels_ds, out, validate=False)
    again = write_report(labels_ds, out, validate=False, force=True)
    assert not again.qc_written
    assert (tmp_path / "qc.tsv").read_text() == "\n".join(edited) + "\n"  # never rewritten
    dom2 = _chromium(["--dump-dom", out.as_uri()], tmp_path / "profile-qc").stdout
    section = dom2[dom2.index(f'id="img-{RAW}"') :]
    section = section[: section.index("</section>")]
    assert re.search(r'class="rating">good \(striping at z 3\)<', section), section[-800:]


def test_report_shows_validation_error(dataset: Path, tmp_path: Path) -> None:
    (dataset / "samples.tsv").unlink()
    out = tmp_path / "report.html"
    write_report(dataset, out)
    dom, body = _load(out, tmp_path, "report-error")
    assert body["data-images-loaded"] == body["data-images"]
    m = re.search(r'id="validate-summary">(\d+) error\(s\)', dom)
    assert m and int(m.group(1)) >= 1, dom[:3000]
    assert "samples.tsv is missing but files use the sample entity" in dom
    assert 'id="verify-summary">2 error(s)' in dom  # samples.tsv missing + the summary
    assert "missing: listed in the manifest" in dom


# -- the level read ---------------------------------------------------------------------------


class _ArraySource(ImageSource):
    def __init__(self, data: np.ndarray, voxel: tuple[float, float, float]):
        self.path = Path("generated")
        self.files = ()
        self.data = data
        self.info = StackInfo(data.shape, data.dtype, voxel)  # type: ignore[arg-type]

    def read_plane(self, z: int) -> np.ndarray:
        return self.data[z]


def _mini_dataset(root: Path) -> Path:
    ds = root / "mini"
    (ds / "sub-01" / "micr").mkdir(parents=True)
    desc = {"Name": "mini", "BIDSVersion": "1.11.1", "DatasetType": "raw"}
    (ds / "dataset_description.json").write_text(json.dumps(desc))
    return ds


def test_choose_level_rule() -> None:
    assert choose_level([(8, 1100, 1100), (4, 550, 550), (2, 275, 275), (1, 138, 138)]) == 2
    assert choose_level([(8, 96, 128)]) == 0
    assert choose_level([(8, 200, 100), (4, 100, 50)]) == 1  # none >= 256: the coarsest
    assert choose_level([(8, 4000, 300), (8, 2000, 150)]) == 1  # the longer side counts


def test_report_never_reads_level_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bidspack.io.ometiff import write_ome_tiff
    from bidspack.io.omezarr import write_ome_zarr

    ds = _mini_dataset(tmp_path)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (8, 1100, 1100), dtype=np.uint8)
    write_ome_zarr(
        ds / "sub-01/micr/sub-01_SPIM.ome.zarr",
        _ArraySource(data, (2.0, 0.5, 0.5)),
        physical_size_zyx_um=(2.0, 0.5, 0.5),
        name="sub-01_SPIM",
        chunk=(8, 128, 128),
        workers=2,
        verify=False,
    )
    write_ome_tiff(
        ds / "sub-01/micr/sub-01_acq-t_SPIM.ome.tif",
        _ArraySource(data[:2], (2.0, 0.5, 0.5)),
        physical_size_zyx_um=(2.0, 0.5, 0.5),
        name="sub-01_acq-t_SPIM",
        workdir=tmp_path,
        verify=False,
    )
    opened: list[tuple[str, int]] = []
    real = dataset_report.open_level

    def spy(path: Path, level: int) -> Any:
        opened.append((Path(path).name, level))
        return real(path, level)

    monkeypatch.setattr(dataset_report, "open_level", spy)
    with tifffile.TiffFile(ds / "sub-01/micr/sub-01_acq-t_SPIM.ome.tif") as tif:
        tiff_shapes = [lv.shape for lv in tif.series[0].levels]
    assert tiff_shapes == [(2, 1100, 1100), (2, 550, 550), (2, 275, 275)]
    out = tmp_path / "r.html"
    result = write_report(ds, out, validate=False)
    zkey, tkey = "sub-01/micr/sub-01_SPIM", "sub-01/micr/sub-01_acq-t_SPIM"
    _, zlevel, zshape = result.levels_read[zkey]
    assert zlevel > 0 and max(zshape[-2:]) >= 256 and max(zshape[-2:]) < 550, result.levels_read
    assert opened == [("sub-01_SPIM.ome.zarr", zlevel)]  # one level opened, never 0
    assert result.levels_read[tkey] == ("sub-01/micr/sub-01_acq-t_SPIM.ome.tif", 2, (2, 275, 275))
    # size: noise is the worst case for the views' compression; per image well under
    # 200 KB, so 100 images stay well under 20 MB
    text = out.read_text()
    per_image = (len(text) - len(re.sub(r'src="data:[^"]*"', "", text))) / 2
    assert per_image < 200_000, per_image
    assert result.size < 500_000


def test_report_cli_refuses_existing_output(labels_ds: Path, tmp_path: Path) -> None:
    from conftest import run_bidspack

    out = tmp_path / "r.html"
    out.write_text("keep")
    proc = run_bidspack("report", str(labels_ds), "-o", str(out), "--no-validate")
    assert proc.returncode != 0 and "exists" in proc.stderr and out.read_text() == "keep"
    proc = run_bidspack("report", str(labels_ds), "-o", str(out), "--no-validate", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "12 image(s)" in proc.stdout and out.read_text().startswith("<!DOCTYPE html>")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.html.part")]


def test_report_of_a_derived_patches_dataset(packaged: Path, tmp_path: Path) -> None:
    """A training set made by `derive patches` gets its own report: patch, kept and
    duplicate counts per source and plane, and a grid of sample patches that decode."""
    import pandas as pd

    from bidspack.ops.derive.patches import PatchParams, derive_patches

    train = tmp_path / "train"
    recs = list(
        derive_patches(
            packaged, train, PatchParams(size=32, seed=7), suffix="SPIM", entities={"stain": "N4"}
        )
    )
    assert not [r for r in recs if r.status == "error"]
    index = pd.read_parquet(train / "index.parquet")
    out = tmp_path / "train-report.html"
    write_report(train, out, validate=False)
    dom, body = _load(out, tmp_path, "train-report")
    kept, total = int(index["kept"].sum()), len(index)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert f"{total} patches, {kept} kept, {total - kept} duplicates" in text
    assert "Sample patches (kept)" in dom
    assert int(body["data-images"]) >= 12, body
    assert body["data-images-loaded"] == body["data-images"], body
