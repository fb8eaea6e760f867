"""DataLad with the real git-annex: package --datalad, release, clone, get, verify, rerun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

from bidspack.provenance.manifest import read_manifest

SUBJ = "210810_45670_ko_female_LH_14-48-50_decon_2021-10-28_12-39-11"


@pytest.fixture
def no_git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME without ~/.gitconfig and no system config: git has no user (as on CI)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in (
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "EMAIL",
    ):
        monkeypatch.delenv(var, raising=False)
    return home


def user_env() -> dict[str, str]:
    """The environment of a user who runs datalad/git themselves (with an identity)."""
    from bidspack.provenance.datalad import IDENTITY

    return {**os.environ, **{k: v.replace("bidspack", "curator") for k, v in IDENTITY.items()}}


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env=env if env is not None else user_env(),
    )


def bidspack(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """bidspack without any git identity in its environment (as on CI)."""
    return run(sys.executable, "-m", "bidspack", *args, cwd=cwd, env=env or dict(os.environ))


def git(*args: str, cwd: Path) -> str:
    proc = run("git", *args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_package_release_clone_get_verify_rerun(example, no_git_identity, tmp_path: Path) -> None:
    sub, spec = example  # tmp_path/submission and tmp_path/<spec>
    proc = bidspack("package", "submission", "ds", "--spec", spec.name, "--datalad", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    ds = tmp_path / "ds"
    assert git("status", "--porcelain", cwd=ds) == ""
    log = git("log", "--format=%an|%s", cwd=ds).splitlines()
    steps = [line for line in log if "[DATALAD RUNCMD] bidspack package:" in line]
    assert len(steps) == 16 and all(line.startswith("bidspack|") for line in steps)
    assert not (no_git_identity / ".gitconfig").exists()  # the user's config untouched
    # images are annexed under SHA256E keys equal to the manifest's sha256
    img = "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM.ome.tif"
    key = os.readlink(ds / img)
    assert f"SHA256E-s{read_manifest(ds)[img]['size']}--{read_manifest(ds)[img]['sha256']}" in key
    assert not (ds / "participants.tsv").is_symlink()  # text in git
    # release
    rel = bidspack("release", "ds", "1.0.0", "--note", "First release", cwd=tmp_path)
    assert rel.returncode == 0, rel.stderr + rel.stdout
    assert "1.0.0" in git("tag", cwd=ds).split()
    assert (ds / "CHANGES").read_text().startswith("1.0.0 ")
    again = bidspack("release", "ds", "1.0.0", cwd=tmp_path)
    assert again.returncode == 1 and "tag 1.0.0 exists already" in again.stderr
    (ds / "stray.txt").write_text("x")
    dirty = bidspack("release", "ds", "1.0.1", cwd=tmp_path)
    assert dirty.returncode == 1 and "uncommitted change" in dirty.stderr
    (ds / "stray.txt").unlink()
    # clone the release elsewhere, with the submission at the same relative place
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copytree(sub, other / "submission")
    shutil.copy(spec, other / spec.name)
    cl = run("datalad", "clone", str(ds), "ds", cwd=other)
    assert cl.returncode == 0, cl.stderr
    clone = other / "ds"
    assert git("describe", "--tags", cwd=clone).strip() == "1.0.0"
    assert run("datalad", "get", ".", cwd=clone).returncode == 0
    ver = bidspack("verify", ".", cwd=clone)
    assert ver.returncode == 0, ver.stdout
    manifest_before = (clone / "code/bidspack/manifest.tsv").read_bytes()
    commit = git("log", "--format=%H", "--grep=bidspack package: dataset", cwd=clone).split()[0]
    rr = run("datalad", "rerun", commit, cwd=clone)
    assert rr.returncode == 0, rr.stderr + rr.stdout
    assert (clone / "code/bidspack/manifest.tsv").read_bytes() == manifest_before
    changed = git("diff", "--name-only", "1.0.0", "HEAD", cwd=clone).split()
    assert changed and all(p.startswith("code/bidspack/provenance/") for p in changed)
    # the run record of the dataset step replays that step only: one provenance record
    assert len(changed) == 1, changed
    assert git("status", "--porcelain", cwd=clone) == ""
    assert bidspack("verify", ".", cwd=clone).returncode == 0
    # an image step's commit replays that image's conversion, byte for byte
    step = "sub-45670ko/640_N4"
    commit = git("log", "--format=%H", f"--grep=bidspack package: {step}$", cwd=clone).split()[0]
    assert f"--step {step}" in git("log", "-1", "--format=%B", commit, cwd=clone)
    head = git("rev-parse", "HEAD", cwd=clone).strip()
    rr = run("datalad", "rerun", commit, cwd=clone)
    assert rr.returncode == 0, rr.stderr + rr.stdout
    changed = git("diff", "--name-only", head, "HEAD", cwd=clone).split()
    assert len(changed) == 1 and changed[0].startswith("code/bidspack/provenance/"), changed
    assert (clone / "code/bidspack/manifest.tsv").read_bytes() == manifest_before
    assert git("status", "--porcelain", cwd=clone) == ""
    assert bidspack("verify", ".", cwd=clone).returncode == 0


def test_failed_step_leaves_datalad_dataset_clean(example, no_git_identity, tmp_path: Path) -> None:
    sub, spec = example
    args = ("package", "submission", "ds", "--spec", spec.name, "--datalad", "--no-validate")
    assert bidspack(*args, cwd=tmp_path).returncode == 0
    ds = tmp_path / "ds"
    head = git("rev-parse", "HEAD", cwd=ds)
    plane = tifffile.imread(sub / SUBJ / "640_N4" / "Z0001.tif")
    tifffile.imwrite(sub / SUBJ / "640_N4" / "Z0001.tif", plane + 1)
    env = dict(os.environ, BIDSPACK_FAULT="staged:enospc")
    failed = bidspack(*args, cwd=tmp_path, env=env)
    assert failed.returncode == 1 and "No space left on device" in failed.stderr
    assert git("status", "--porcelain", cwd=ds) == "" and git("rev-parse", "HEAD", cwd=ds) == head
    ok = bidspack(*args, "--json", cwd=tmp_path)
    assert ok.returncode == 0
    recs = [json.loads(x) for x in ok.stdout.splitlines()]
    assert [r["path"] for r in recs if r["action"] == "step" and r["status"] == "ok"] == [
        "sub-45670ko/640_N4"
    ]
    assert git("status", "--porcelain", cwd=ds) == ""


def test_init_datalad_on_existing_dataset(example, no_git_identity, tmp_path: Path) -> None:
    _, spec = example
    assert (
        bidspack(
            "package", "submission", "ds", "--spec", spec.name, "--no-validate", cwd=tmp_path
        ).returncode
        == 0
    )
    ds = tmp_path / "ds"
    first = bidspack("init", "ds", "--datalad", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert git("status", "--porcelain", cwd=ds) == ""
    assert (ds / ".gitignore").read_text().count(".bidspack/") == 1
    assert "notneeded" in bidspack("init", "ds", "--datalad", "--json", cwd=tmp_path).stdout
    assert bidspack("verify", "ds", cwd=tmp_path).returncode == 0
