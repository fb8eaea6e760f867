"""The curator's first hour (issue 12): plan and apply decide alike, a stopped run leaves
a dataset bidspack recognises and finishes, junk is excluded by default, derivative
datasets are citable. Real files, the real CLI in child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from conftest import run_bidspack
from test_hostile_input import SPEC, Case, spec_with


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bidspack", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_single_2d_tiff_without_digits_fails_at_planning(tmp_path: Path) -> None:
    """A channel folder holding one 2D TIFF named without a digit is a slice folder
    without Z indices: refused at planning (dry run and run alike, nothing written);
    once the spec names the file itself, it is one plane, packaged as such."""
    c = Case(tmp_path, slices=0)
    overview = np.arange(16 * 20, dtype=np.uint16).reshape(16, 20)
    tifffile.imwrite(c.channel / "overview.tif", overview)
    c.freeze()
    for extra in (("--dry-run",), ()):
        c.assert_refused(c.run(*extra), "overview.tif", "no Z index")
    c.spec.write_text(spec_with(a='folder = "488_STP"|||folder = "488_STP/overview.tif"'))
    proc = c.run("--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "(1, 16, 20) uint16" in proc.stdout
    proc = c.run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 errors" in proc.stdout
    out = next(c.ds.glob("sub-45670ko/micr/*.ome.tif"))
    assert np.array_equal(tifffile.imread(out).reshape(16, 20), overview)
    c.assert_untouched()


def test_a_run_stopped_by_an_error_is_incomplete_and_resumable(
    example_source: tuple[Path, Path], tmp_path: Path
) -> None:
    """An I/O error injected into a late step: the dataset keeps its committed steps
    (dataset_description.json first), `validate` calls it incomplete and names the
    missing steps, a dry run says which steps are missing, and re-running finishes it
    to a valid dataset."""
    sub, spec = example_source
    ds = tmp_path / "ds"
    failed = _cli(
        "package", str(sub), str(ds), "--spec", str(spec), env={"BIDSPACK_FAULT": "staged@5:enospc"}
    )
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "No space left on device" in failed.stderr
    assert (ds / "dataset_description.json").is_file()
    committed = sorted(p.name for p in (ds / ".bidspack" / "steps").iterdir())
    assert len(committed) == 4, committed  # dataset + 3 channel steps before the fault
    val = run_bidspack("validate", str(ds))
    assert val.returncode != 0 and "Traceback" not in val.stderr
    assert "INCOMPLETE_PACKAGING" in val.stdout
    assert "not a BIDS dataset" not in val.stdout + val.stderr
    dry = run_bidspack("package", str(sub), str(ds), "--spec", str(spec), "--dry-run", "--json")
    steps = [json.loads(x) for x in dry.stdout.splitlines() if '"action": "step"' in x]
    missing = {r["path"] for r in steps if r["status"] == "planned"}
    done = {r["path"] for r in steps if r["status"] == "notneeded"}
    assert len(done) == 4 and missing and not missing & done
    incomplete = {
        line.split("step ", 1)[1].split(" ", 1)[0]
        for line in val.stdout.splitlines()
        if "INCOMPLETE_PACKAGING" in line and "step " in line
    }
    assert incomplete == missing
    again = run_bidspack("package", str(sub), str(ds), "--spec", str(spec), "--json")
    assert again.returncode == 0, again.stderr
    recs = [json.loads(x) for x in again.stdout.splitlines()]
    assert {r["path"] for r in recs if r["action"] == "step" and r["status"] == "ok"} == missing
    assert not [r for r in recs if r["status"] == "error"]
    assert run_bidspack("validate", str(ds)).returncode == 0


def test_junk_files_are_excluded_by_default(tmp_path: Path) -> None:
    c = Case(tmp_path)
    junk = [c.channel / ".DS_Store", c.sub / "Thumbs.db", c.channel / "._Z0000.tif"]
    for j in junk:
        j.write_bytes(b"\0junk")
    proc = c.run("--json", "--no-validate")
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(x) for x in proc.stdout.splitlines()]
    assert any(r["status"] == "excluded" and "OS junk" in r["message"] for r in recs)
    plan = json.loads((c.ds / "code/bidspack/plan.json").read_text())
    junk_excluded = {
        src
        for a in plan["actions"]
        if a["kind"] == "exclude" and "OS junk file" in a["reason"]
        for src in a["sources"]
    }
    assert junk_excluded == {j.relative_to(c.sub).as_posix() for j in junk}
    assert not any(p.name in (".DS_Store", "Thumbs.db", "._Z0000.tif") for p in c.ds.rglob("*"))
    # overridable: exclude_junk = false makes them ordinary files again
    c.spec.write_text("exclude_junk = false\n" + SPEC)
    proc = c.run("--dry-run", ds=tmp_path / "ds2")
    assert proc.returncode != 0 and "Thumbs.db" in proc.stderr


def test_derivative_datasets_have_readme_and_authors(packaged_run) -> None:  # type: ignore[no-untyped-def]
    ds, records = packaged_run
    for desc in ds.glob("derivatives/*/dataset_description.json"):
        doc = json.loads(desc.read_text())
        assert doc["Authors"] == ["Example Lab", "A. Curator"]
        assert (desc.parent / "README.md").is_file()
    codes = {r.details.get("code") for r in records if r.action == "validate"}
    assert not codes & {"README_FILE_MISSING", "TOO_FEW_AUTHORS"}, codes


def test_rename_then_repackage_keeps_the_new_label(
    example_source: tuple[Path, Path], tmp_path: Path
) -> None:
    """After `rename-subject 45670ko 45670KO`, packaging the same submission again maps
    its folder to 45670KO (the dataset remembers the rename): no sub-45670ko beside it,
    a valid dataset, and the plan records the mapping."""
    sub, spec = example_source
    ds = tmp_path / "ds"
    assert run_bidspack("package", str(sub), str(ds), "--spec", str(spec)).returncode == 0
    renamed = run_bidspack("rename-subject", str(ds), "45670ko", "45670KO")
    assert renamed.returncode == 0, renamed.stderr
    dry = run_bidspack("package", str(sub), str(ds), "--spec", str(spec), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert "sub-45670ko/" not in dry.stdout and "sub-45670KO/" in dry.stdout
    again = run_bidspack("package", str(sub), str(ds), "--spec", str(spec), "--json")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr
    assert not (ds / "sub-45670ko").exists() and (ds / "sub-45670KO").is_dir()
    recs = [json.loads(x) for x in again.stdout.splitlines()]
    assert not [r for r in recs if r["status"] == "error"]
    plan = json.loads((ds / "code/bidspack/plan.json").read_text())
    assert plan["parameters"]["renamed_subjects"] == {"45670ko": "45670KO"}
    log = run_bidspack("log", str(ds)).stdout
    assert "sub-45670ko -> sub-45670KO" in log


def test_every_unreadable_image_is_named_at_once(tmp_path: Path) -> None:
    """Two subjects, each with a broken image (a gap; a file that is not a TIFF):
    planning names both in one error, writes nothing."""
    c = Case(tmp_path)
    (c.channel / "Z0001.tif").unlink()  # a gap in the first subject
    other = c.sub / "210811_45671_wt_male_RH" / "488_STP"
    other.mkdir(parents=True)
    for z in range(2):
        tifffile.imwrite(other / f"Z{z:04d}.tif", np.zeros((16, 20), np.uint16))
    (other / "Z0002.tif").write_bytes(b"not a tiff at all")
    c.assert_refused(
        c.run("--dry-run"),
        "2 images cannot be read",
        "gap in slice indices",
        "Z0002.tif: not a readable TIFF file",
    )
