"""``bidspack derive patches --datalad``: the YODA layout with real DataLad and git-annex.

A real volume (``downsampled.tiff``, OME-Zarr) is packaged with ``--datalad``; the patch
dataset is derived with ``--datalad``: the source is a subdataset at
``sourcedata/ds`` pinned at the source's commit, each step is saved with a run record,
the dataset validates. A ``datalad clone`` of it, with one step's outputs removed,
``datalad rerun`` of that step's commit reproduces the manifest rows and the index
byte for byte. A source outside git (or dirty) is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_derive_patches import ISO_SPEC

ARGS = ("--planes", "xy", "--size", "64", "--slice-step", "8", "--no-tsv")


@pytest.fixture
def no_git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME without ~/.gitconfig and no system config: git has no user (as on CI)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var, raising=False)
    return home


def user_env() -> dict[str, str]:
    """The environment of a user who runs datalad/git themselves (with an identity)."""
    from bidspack.provenance.datalad import IDENTITY

    return {**os.environ, **{k: v.replace("bidspack", "curator") for k, v in IDENTITY.items()}}


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, check=False, env=env or user_env()
    )


def bidspack(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """bidspack without a git identity in its environment."""
    return run(sys.executable, "-m", "bidspack", *args, cwd=cwd, env=dict(os.environ))


def git(*args: str, cwd: Path) -> str:
    proc = run("git", *args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def manifest_rows(ds: Path) -> list[tuple[str, str]]:
    """(path, sha256) of every data row of the manifest."""
    lines = (ds / "code/bidspack/manifest.tsv").read_text(encoding="utf-8").splitlines()
    head = lines[0].split("\t")
    i, j = head.index("path"), head.index("sha256")
    return [(r.split("\t")[i], r.split("\t")[j]) for r in lines[1:]]


def test_derive_patches_datalad_yoda_clone_rerun(
    realdata: Path, no_git_identity: Path, tmp_path: Path
) -> None:
    (tmp_path / "iso.toml").write_text(ISO_SPEC, encoding="utf-8")
    pk = bidspack(
        "package", str(realdata), "ds", "--spec", "iso.toml", "--datalad", "--no-validate",
        cwd=tmp_path,
    )  # fmt: skip
    assert pk.returncode == 0, pk.stderr + pk.stdout
    ds, out = tmp_path / "ds", tmp_path / "out"
    src_commit = git("rev-parse", "HEAD", cwd=ds).strip()

    # a source outside git, and a dirty one: clean errors, nothing written
    plain = tmp_path / "plain"
    shutil.copytree(ds, plain, ignore=shutil.ignore_patterns(".git", ".datalad", ".bidspack"))
    bad = bidspack("derive", "patches", "plain", "out", "--datalad", *ARGS, cwd=tmp_path)
    assert bad.returncode == 1 and "is not a DataLad (or git) dataset" in bad.stderr, bad.stderr
    assert not out.exists()
    (ds / "stray.txt").write_text("x", encoding="utf-8")
    dirty = bidspack("derive", "patches", "ds", "out", "--datalad", *ARGS, cwd=tmp_path)
    assert dirty.returncode == 1 and "uncommitted changes" in dirty.stderr, dirty.stderr
    assert not out.exists()
    (ds / "stray.txt").unlink()

    proc = bidspack("derive", "patches", "ds", "out", "--datalad", *ARGS, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    recs = [json.loads(x) for x in proc.stdout.splitlines()]
    assert not [r for r in recs if r["status"] == "error"]
    # YODA: the source is a subdataset pinned at the commit used; everything is saved
    assert git("status", "--porcelain", cwd=out) == ""
    tree = git("ls-tree", "HEAD", "sourcedata/ds", cwd=out).split()
    assert tree[:3] == ["160000", "commit", src_commit]
    assert "path = sourcedata/ds" in (out / ".gitmodules").read_text(encoding="utf-8")
    desc = json.loads((out / "dataset_description.json").read_text(encoding="utf-8"))
    assert desc["SourceDatasets"] == [{"URL": "sourcedata/ds", "Version": src_commit}]
    command = desc["GeneratedBy"][0]["Description"]
    assert command.startswith("bidspack derive patches sourcedata/ds . ")
    # the run validated OUT (validate_dataset(OUT, recursive=False)): 0 errors, and the
    # validators did not descend into sourcedata/ds
    assert [r for r in recs if r["action"] == "validate"]
    assert not [r for r in recs if r["action"] == "validate" and "sourcedata/" in r["path"]]
    # text in git, arrays and tables annexed; one run record per step
    assert (out / "index.parquet").is_symlink() and not (out / "README.md").is_symlink()
    log = git("log", "--format=%s", cwd=out).splitlines()
    steps = [s for s in log if s.startswith("[DATALAD RUNCMD] bidspack derive patches: ")]
    assert len(steps) == 2, log  # one image, then the index
    stem = "sub-stpmousebrain_sample-brain_2PE"
    step = f"patches/{stem}"
    commit = git("log", "--format=%H", f"--grep=derive patches: {step}$", cwd=out).split()[0]
    body = git("log", "-1", "--format=%B", commit, cwd=out)
    record = json.loads(body.split("=== Do not change lines below ===")[1].split("^^^")[0])
    assert record["cmd"] == command
    assert record["inputs"] == [f"sourcedata/ds/sub-stpmousebrain/micr/{stem}.ome.zarr"]
    assert record["outputs"] == [f"{step}/plane-xy.zarr", f"{step}/plane-xy.parquet"]

    # a clone: remove one step's outputs, rerun its commit -> the same bytes
    cl = run("datalad", "clone", str(out), "clone", cwd=tmp_path)
    assert cl.returncode == 0, cl.stderr
    clone = tmp_path / "clone"
    git("rm", "-r", "-q", step, cwd=clone)
    git("commit", "-q", "-m", "drop one step's outputs", cwd=clone)
    rr = run("datalad", "rerun", commit, cwd=clone)
    assert rr.returncode == 0, rr.stderr + rr.stdout
    assert git("status", "--porcelain", cwd=clone) == ""
    assert manifest_rows(clone) == manifest_rows(out)
    assert run("datalad", "get", "index.parquet", cwd=clone).returncode == 0
    assert (clone / "index.parquet").read_bytes() == (out / "index.parquet").read_bytes()
    # the rerun ends with its run record; against OUT's history only new provenance
    # records differ: every other file, annexed ones by their SHA256E key, is identical
    assert git("log", "-1", "--format=%s", cwd=clone).strip() == (
        f"[DATALAD RUNCMD] bidspack derive patches: {step}"
    )
    assert (clone / step / "plane-xy.zarr/zarr.json").is_file()
    head = git("rev-parse", "HEAD", cwd=out).strip()
    changed = git("diff", "--name-only", head, "HEAD", cwd=clone).split()
    assert changed and all(p.startswith("code/bidspack/provenance/") for p in changed), changed
    assert (clone / "sourcedata/ds/.git").exists()  # installed by the rerun (its input)


def test_derive_crops_datalad_from_annexed_ome_tiff(
    realdata: Path, no_git_identity: Path, tmp_path: Path
) -> None:
    """`derive crops --datalad` on a DataLad source whose OME-TIFFs are annexed (links
    into .git/annex/objects): the source is a pinned subdataset, each crop step has a
    run record, the crops validate, and a clone's rerun of a crop step gives the same
    manifest rows."""
    from test_derive_crops import HEMI_SPEC

    (tmp_path / "hemi.toml").write_text(HEMI_SPEC, encoding="utf-8")
    pk = bidspack(
        "package", str(realdata), "ds", "--spec", "hemi.toml", "--datalad", "--no-validate",
        cwd=tmp_path,
    )  # fmt: skip
    assert pk.returncode == 0, pk.stderr + pk.stdout
    ds, out = tmp_path / "ds", tmp_path / "out"
    assert next(ds.glob("sub-*/micr/*.ome.tif")).is_symlink()  # annexed
    src_commit = git("rev-parse", "HEAD", cwd=ds).strip()
    args = ("--suffix", "2PE", "--mask-desc", "hemispheres", "--mask-pipeline", "brainreg")
    proc = bidspack("derive", "crops", "ds", "out", "--datalad", *args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    recs = [json.loads(x) for x in proc.stdout.splitlines()]
    assert not [r for r in recs if r["status"] == "error"]
    assert git("status", "--porcelain", cwd=out) == ""
    assert git("ls-tree", "HEAD", "sourcedata/ds", cwd=out).split()[:3] == [
        "160000",
        "commit",
        src_commit,
    ]
    desc = json.loads((out / "dataset_description.json").read_text(encoding="utf-8"))
    assert desc["SourceDatasets"] == [{"URL": "sourcedata/ds", "Version": src_commit}]
    log = git("log", "--format=%s", cwd=out).splitlines()
    crop_steps = [s for s in log if s.startswith("[DATALAD RUNCMD] bidspack derive crops: crops/")]
    assert crop_steps, log
    step = crop_steps[-1].split(": ", 1)[1]
    commit = git("log", "--format=%H", f"--grep=derive crops: {step}$", cwd=out).split()[0]
    cl = run("datalad", "clone", str(out), "clone", cwd=tmp_path)
    assert cl.returncode == 0, cl.stderr
    clone = tmp_path / "clone"
    rr = run("datalad", "rerun", commit, cwd=clone)
    assert rr.returncode == 0, rr.stderr + rr.stdout
    assert git("status", "--porcelain", cwd=clone) == ""
    assert manifest_rows(clone) == manifest_rows(out)
