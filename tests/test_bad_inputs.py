"""Every bad input: a clear message naming the file, a non-zero exit, no traceback,
the output folder exactly as before and the submission untouched."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import run_bidspack, snapshot

SUBJ = "210810_45670_ko_female_LH_14-48-50_decon_2021-10-28_12-39-11"
N4 = f"{SUBJ}/640_N4"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bidspack(*args)


def gap(sub: Path, spec: Path) -> str:
    (sub / N4 / "Z0007.tif").unlink()
    return "gap in slice indices"


def duplicate(sub: Path, spec: Path) -> str:
    shutil.copy(sub / N4 / "Z0003.tif", sub / N4 / "Z00003.tif")
    return "two files have Z index 3"


def mixed_shape(sub: Path, spec: Path) -> str:
    tifffile.imwrite(sub / N4 / "Z0004.tif", np.zeros((10, 10), np.uint16))
    return "Z0004.tif"


def mixed_dtype(sub: Path, spec: Path) -> str:
    tifffile.imwrite(sub / N4 / "Z0004.tif", np.zeros((96, 128), np.float32))
    return "Z0004.tif"


def unreadable(sub: Path, spec: Path) -> str:
    (sub / N4 / "Z0002.tif").write_bytes(b"\x00" * 100)
    return "Z0002.tif"


def truncated(sub: Path, spec: Path) -> str:
    p = sub / N4 / "Z0020.tif"
    p.write_bytes(p.read_bytes()[:5000])
    return "Z0020.tif"


def stray_file(sub: Path, spec: Path) -> str:
    (sub / SUBJ / "notes.txt").write_text("scanner notes")
    return "notes.txt"


def unmatched_folder(sub: Path, spec: Path) -> str:
    (sub / "misc_folder").mkdir()
    return "misc_folder"


def label_collision(sub: Path, spec: Path) -> str:
    shutil.copytree(sub / SUBJ, sub / SUBJ.replace("14-48-50", "15-00-00"))
    return "both map to participant label '45670ko'"


def missing_channel(sub: Path, spec: Path) -> str:
    shutil.rmtree(sub / f"{SUBJ}/heatmaps_atlasspace")
    return "heatmaps_atlasspace: channel folder is missing"


def spec_schema_error(sub: Path, spec: Path) -> str:
    spec.write_text(spec.read_text().replace("spec_version = 1", "spec_version = 2"))
    return "spec_version"


def spec_no_voxel_size(sub: Path, spec: Path) -> str:
    spec.write_text(spec.read_text().replace("voxel_size = { z = 4.0, y = 3.6, x = 3.6 }", ""))
    return "no physical voxel size"


def invalid_label(sub: Path, spec: Path) -> str:
    spec.write_text(
        spec.read_text().replace(
            'sample = "brain{hemisphere}"', 'sample = "brain{hemisphere}"\nsanitize = false'
        )
    )
    return "'45670-ko' is not a valid BIDS label"


CASES: list[Callable[[Path, Path], str]] = [
    gap,
    duplicate,
    mixed_shape,
    mixed_dtype,
    unreadable,
    truncated,
    stray_file,
    unmatched_folder,
    label_collision,
    missing_channel,
    spec_schema_error,
    spec_no_voxel_size,
    invalid_label,
]


CASES_EXISTING = [gap, truncated, stray_file]  # a pre-existing empty output folder


@pytest.mark.parametrize(
    ("case", "existing"),
    [(c, False) for c in CASES] + [(c, True) for c in CASES_EXISTING],
    ids=[f"{c.__name__}-new" for c in CASES] + [f"{c.__name__}-empty" for c in CASES_EXISTING],
)
def test_bad_input(case, existing: bool, example, tmp_path: Path) -> None:
    sub, spec = example
    expected = case(sub, spec)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    before_out, before_sub = snapshot(out), snapshot(sub)
    proc = run_cli("package", str(sub), str(out), "--spec", str(spec))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("Error:"), proc.stderr
    assert expected in " ".join(proc.stderr.split()), proc.stderr
    assert out.exists() == existing
    assert snapshot(out) == before_out
    assert snapshot(sub) == before_sub


def test_non_empty_output_is_refused(example, tmp_path: Path) -> None:
    sub, spec = example
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    before = snapshot(out)
    proc = run_cli("package", str(sub), str(out), "--spec", str(spec))
    assert proc.returncode == 1 and "is not empty and is not a bidspack dataset" in proc.stderr
    assert snapshot(out) == before


def test_debug_shows_traceback(example, tmp_path: Path) -> None:
    sub, spec = example
    gap(sub, spec)
    proc = run_cli("--debug", "package", str(sub), str(tmp_path / "o"), "--spec", str(spec))
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "SourceError" in proc.stderr


def test_missing_spec_file(example, tmp_path: Path) -> None:
    sub, _ = example
    proc = run_cli("package", str(sub), str(tmp_path / "o"), "--spec", str(tmp_path / "nope.toml"))
    assert proc.returncode == 1 and "nope.toml: cannot read the packaging spec" in proc.stderr
