"""`bidspack validate`: the official validator plus the checks it does not make."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

from bidspack.io.omexml import build_omexml
from bidspack.ops.validate import validate_dataset
from test_package import validator_errors

IMG = "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM"


def errors(ds: Path) -> list[str]:
    return [f"{r.path}: {r.message}" for r in validate_dataset(ds) if r.status == "error"]


def test_clean_dataset(dataset: Path) -> None:
    assert errors(dataset) == []
    proc = subprocess.run(
        [sys.executable, "-m", "bidspack", "validate", str(dataset), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert lines and {x["status"] for x in lines} <= {"ok", "notneeded"}


def test_missing_samples_tsv_is_caught_where_the_validator_is_silent(dataset: Path) -> None:
    (dataset / "samples.tsv").unlink()
    (dataset / "samples.json").unlink()
    assert validator_errors(dataset) == []  # measured: the official validator misses it
    assert errors(dataset) == [
        "samples.tsv: samples.tsv is missing but files use the sample entity"
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "bidspack", "validate", str(dataset)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1


def test_inconsistent_samples_tsv(dataset: Path) -> None:
    tsv = dataset / "samples.tsv"
    tsv.write_text(
        tsv.read_text().replace("sample-brainRH\tsub-45671floxed", "sample-brainRH\tsub-9")
    )
    errs = errors(dataset)
    assert "samples.tsv: no row for sample-brainRH of sub-45671floxed" in errs
    assert "samples.tsv: sub-9 is not listed in participants.tsv" in errs


def _rewrite(path: Path, *, bigtiff: bool, pad_xml: int, size_zyx=(4.0, 1.8, 1.8)) -> None:
    with tifffile.TiffFile(path) as tif:
        data = tif.series[0].asarray()
    xml = build_omexml(
        name="x" * pad_xml, shape_zyx=data.shape, dtype=data.dtype, physical_size_zyx_um=size_zyx
    )
    path.unlink()
    tifffile.imwrite(
        path,
        data,
        bigtiff=bigtiff,
        description=xml.encode(),
        metadata=None,
        photometric="minisblack",
    )


@pytest.mark.parametrize(
    ("bigtiff", "pad"), [(True, 1), (False, 5000)], ids=["bigtiff", "xml-after-4k"]
)
def test_pixelsize_mismatch_the_validator_cannot_see(
    dataset: Path, bigtiff: bool, pad: int
) -> None:
    img = dataset / f"{IMG}.ome.tif"
    _rewrite(img, bigtiff=bigtiff, pad_xml=pad, size_zyx=(4.0, 1.8, 2.0))
    sidecar = json.loads((dataset / f"{IMG}.json").read_text())
    assert sidecar["PixelSize"] == [1.8, 1.8, 4]  # x (1.8) differs from the OME-XML's 2.0
    official = [e["code"] for e in validator_errors(dataset)]
    assert "PIXEL_SIZE_INCONSISTENT" not in official  # measured: the validator misses it
    errs = [e for e in errors(dataset) if "PixelSize" in e]
    assert len(errs) == 1 and errs[0].startswith(f"{IMG}.ome.tif: sidecar PixelSize")


def test_pixelsize_match_in_bigtiff_is_ok(dataset: Path) -> None:
    _rewrite(dataset / f"{IMG}.ome.tif", bigtiff=True, pad_xml=1)
    assert errors(dataset) == []


def test_not_a_dataset(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bidspack", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "not a BIDS dataset" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validator_errors_become_records(dataset: Path) -> None:
    (dataset / "sub-45670ko/micr/notes.txt").write_text("x")
    errs = errors(dataset)
    assert any(e.startswith("sub-45670ko/micr/notes.txt: NOT_INCLUDED") for e in errs)
    assert len(errs) == 1
