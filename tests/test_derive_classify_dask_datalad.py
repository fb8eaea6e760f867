"""``derive classify`` on Dask and ``derive classify/select --datalad``: real patches of
the packaged STP mouse brain, real Dask (local threads and a ``distributed`` cluster
reached by its ``tcp://`` address), real DataLad/git-annex datasets; no mocks.

- Dask: the rules and sklearn kinds scored with 1 worker, 2 workers and on a
  ``distributed.LocalCluster`` given as ``--scheduler``: the classification tables
  and every data file (manifest included) are the same bytes as a run without Dask;
  the settings are in the scores steps' provenance only; a re-run with other settings
  is ``notneeded``. Torch with Dask settings, a scheduler that is not an address and an
  unreachable scheduler are clean errors at planning (nothing written).
- DataLad: package --datalad -> patches --datalad -> classify --datalad -> select
  --datalad. The classification has the patch dataset as a subdataset pinned at its
  commit; the selection has both parents (the classification and the patch dataset)
  pinned; every step is saved with a run record; in a ``datalad clone``, ``datalad
  rerun`` of a step commit (which installs and gets the inputs) reproduces the
  manifest rows and the tables byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from bidspack.cli.main import cli
from bidspack.ops.derive.classify import ClassifyParams, DaskSettings, derive_classify
from bidspack.ops.derive.models import FEATURE_NAMES, LINEAR_FORMAT, LINEAR_VERSION
from bidspack.ops.derive.patches import PatchParams, derive_patches
from test_derive_datalad import bidspack, git, manifest_rows, no_git_identity, run
from test_derive_patches import ISO_SPEC, STP_SPEC, _data_state, _package

__all__ = ["no_git_identity"]  # the fixture, imported for the DataLad test


def _errors(recs: list) -> list:
    return [r for r in recs if r.status == "error"]


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def p64(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 x 64 patches of every 30th slice of the STP stack: 108 patches, one array."""
    stp = _package(realdata, STP_SPEC, tmp_path_factory.mktemp("stp"), "ds")
    out = tmp_path_factory.mktemp("p64") / "patches"
    recs = list(derive_patches(stp, out, PatchParams(size=64, slice_step=30), validate=False))
    assert not _errors(recs), _errors(recs)
    return out


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bidspack linear classifier (kind sklearn) written out: contrast and entropy
    raise the score, emptiness lowers it."""
    path = tmp_path_factory.mktemp("model") / "linear.json"
    coef = [0.08, 0.9, -2.0, -3.0, 0.01, 0.0, 0.0, 0.0, 0.02, 0.02]
    doc = {
        "format": LINEAR_FORMAT,
        "version": LINEAR_VERSION,
        "features": list(FEATURE_NAMES),
        "feature_mean": [20.0, 4.0, 0.01, 0.3, 60.0, 20.0, 60.0, 120.0, 5.0, 5.0],
        "feature_scale": [15.0, 2.0, 0.05, 0.3, 40.0, 20.0, 40.0, 60.0, 4.0, 4.0],
        "coef": coef,
        "intercept": 0.1,
        "threshold": 0.5,
        "empty_level": 10,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _corrupted(p64: Path, dest: Path) -> Path:
    """A copy of the patch dataset whose last shard holds garbage."""
    import shutil

    shutil.copytree(p64, dest)
    shards = sorted(p for p in dest.glob("patches/**/plane-xy.zarr/c/**/*") if p.is_file())
    assert shards, list(dest.rglob("*"))[:20]
    shards[-1].write_bytes(b"\x00not a zstd shard" * 64)
    return dest


def _executions(out: Path) -> list[dict]:
    """``execution`` of every scores step in the provenance records."""
    found = []
    for p in sorted((out / "code/bidspack/provenance").glob("*.json")):
        text = p.read_text(encoding="utf-8")
        if '"execution"' not in text:
            continue

        def walk(node: object) -> None:
            if isinstance(node, dict):
                if "execution" in node and isinstance(node["execution"], dict):
                    found.append(node["execution"])
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(json.loads(text))
    return found


@pytest.mark.parametrize("kind", ["rules", "sklearn"])
def test_dask_workers_and_scheduler_give_identical_bytes(
    kind: str, p64: Path, linear_model: Path, tmp_path: Path
) -> None:
    """No Dask, 1 worker, 2 workers (CLI), a LocalCluster by address (CLI, a window of
    2 tasks over 14 batches): identical tables and data files; the settings recorded in
    the provenance; a re-run with other settings is notneeded."""
    from distributed import LocalCluster

    model = "rules" if kind == "rules" else str(linear_model)
    base = ClassifyParams(model=model, batch_size=8)
    ref = tmp_path / "ref"
    recs = list(derive_classify(p64, ref, base, validate=False))
    assert not _errors(recs), _errors(recs)
    want = _data_state(ref)
    table = (ref / "classification.parquet").read_bytes()
    rows = pq.read_table(ref / "classification.parquet").to_pylist()
    assert len(rows) == 108 and {r["decision"] for r in rows} == {"kept", "rejected"}
    assert _executions(ref) == [{"mode": "reader-thread", "workers": None, "scheduler": None}]

    one = tmp_path / "one"
    params = ClassifyParams(model=model, batch_size=8, dask=DaskSettings(workers=1))
    recs = list(derive_classify(p64, one, params, validate=False))
    assert not _errors(recs), _errors(recs)
    assert (one / "classification.parquet").read_bytes() == table
    assert _data_state(one) == want
    assert _executions(one) == [
        {"mode": "dask-threads", "workers": 1, "scheduler": None, "window": 2}
    ]

    two = tmp_path / "two"
    res = _cli("derive", "classify", str(p64), str(two), "--model", model, "--batch-size", "8",
               "--workers", "2", "--no-validate", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _data_state(two) == want
    assert _executions(two)[0]["workers"] == 2

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
        dashboard_address=":0",
    ) as cluster:  # fmt: skip
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        dist = tmp_path / "dist"
        res = _cli("derive", "classify", str(p64), str(dist), "--model", model,
                   "--batch-size", "8", "--scheduler", address, "--workers", "1",
                   "--no-validate", "--json")  # fmt: skip
        assert res.exit_code == 0, res.output
        assert (dist / "classification.parquet").read_bytes() == table
        assert _data_state(dist) == want
        assert _executions(dist) == [
            {"mode": "dask-distributed", "workers": 1, "scheduler": address, "window": 2}
        ]
        planned = json.loads(res.output.splitlines()[0])
        assert planned["details"]["execution"]["mode"] == "dask-distributed", planned
        if kind == "rules":  # a task's bidspack error comes back as itself
            bad = _corrupted(p64, tmp_path / "corrupt")
            res = _cli("derive", "classify", str(bad), str(tmp_path / "x"), "--scheduler",
                       address, "--batch-size", "8", "--no-validate")  # fmt: skip
            assert res.exit_code == 1 and "cannot decode patches" in res.stderr, res.stderr
            assert "plane-xy.zarr" in res.stderr and "Traceback" not in res.stderr
            assert not (tmp_path / "x").exists()
        # other settings change no byte and no fingerprint: notneeded
        again = list(
            derive_classify(
                p64,
                dist,
                ClassifyParams(model=model, batch_size=8, dask=DaskSettings(scheduler=address)),
                validate=False,
            )
        )
    steps = [r for r in again if r.action == "step"]
    assert steps and all(r.status == "notneeded" for r in steps), steps
    assert _data_state(dist) == want
    # the data files do not mention Dask
    desc = (dist / "dataset_description.json").read_text(encoding="utf-8")
    assert "workers" not in desc and "scheduler" not in desc and address not in desc


def test_dask_settings_errors_at_planning(
    p64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torch with Dask settings, a scheduler name instead of an address, an
    unreachable scheduler, --workers 0: clean errors, non-zero exit, nothing written."""
    from bidspack.io.omezarr.runner import TaskRunner

    monkeypatch.setattr(TaskRunner, "connect_timeout", 2)
    out = tmp_path / "out"
    cases = [
        (["--model", str(tmp_path / "w.pth"), "--workers", "2"], "apply to the rules and sklearn"),
        (["--kind", "torch", "--model", "x.bin", "--scheduler", "tcp://127.0.0.1:9"],
         "apply to the rules and sklearn"),
        (["--scheduler", "threads"], "is not an address"),
        (["--scheduler", "tcp://127.0.0.1:9"], "cannot connect to the Dask scheduler"),
        (["--workers", "0"], "--workers"),
    ]  # fmt: skip
    for args, msg in cases:
        res = _cli("derive", "classify", str(p64), str(out), *args)
        assert res.exit_code != 0 and msg in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
        assert not out.exists(), args
    # a patch array that cannot be decoded: the array named, nothing left behind
    bad = _corrupted(p64, tmp_path / "corrupt")
    res = _cli("derive", "classify", str(bad), str(out), "--workers", "2", "--batch-size", "8")
    assert res.exit_code == 1 and "cannot decode patches" in res.stderr, res.stderr
    assert "plane-xy.zarr" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
    # the dry run states the plan with its Dask settings
    res = _cli("derive", "classify", str(p64), str(out), "--dry-run", "--workers", "3")
    assert res.exit_code == 0 and "on Dask (3 local thread(s))" in res.stdout, res.output
    assert not out.exists()


# -- DataLad ------------------------------------------------------------------------------


def _run_record(ds: Path, grep: str) -> tuple[str, dict]:
    """(commit, run record) of the newest commit whose subject ends with *grep*."""
    commit = git("log", "--format=%H", f"--grep={grep}$", cwd=ds).split()[0]
    body = git("log", "-1", "--format=%B", commit, cwd=ds)
    return commit, json.loads(body.split("=== Do not change lines below ===")[1].split("^^^")[0])


def _only_provenance_changed(original: Path, clone: Path) -> None:
    head = git("rev-parse", "HEAD", cwd=original).strip()
    changed = git("diff", "--name-only", head, "HEAD", cwd=clone).split()
    assert changed and all(p.startswith("code/bidspack/provenance/") for p in changed), changed


def test_classify_and_select_datalad_yoda_clone_rerun(
    realdata: Path, no_git_identity: Path, tmp_path: Path
) -> None:
    (tmp_path / "iso.toml").write_text(ISO_SPEC, encoding="utf-8")
    pk = bidspack(
        "package", str(realdata), "ds", "--spec", "iso.toml", "--datalad", "--no-validate",
        cwd=tmp_path,
    )  # fmt: skip
    assert pk.returncode == 0, pk.stderr + pk.stdout
    pa = bidspack("derive", "patches", "ds", "patches", "--datalad", "--planes", "xy",
                  "--size", "64", "--slice-step", "8", "--no-validate", cwd=tmp_path)  # fmt: skip
    assert pa.returncode == 0, pa.stderr + pa.stdout
    patches, cls, sel = tmp_path / "patches", tmp_path / "cls", tmp_path / "sel"
    patches_commit = git("rev-parse", "HEAD", cwd=patches).strip()

    # a patch dataset outside git is refused before anything is written
    plain = tmp_path / "plain"
    recs = list(derive_patches(tmp_path / "ds", plain, PatchParams(size=64, slice_step=8),
                               validate=False))  # fmt: skip
    assert not _errors(recs)
    bad = bidspack("derive", "classify", "plain", "cls", "--datalad", cwd=tmp_path)
    assert bad.returncode == 1 and "is not a DataLad (or git) dataset" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not cls.exists()

    # classify --datalad (validated; Dask threads: not in the run record)
    proc = bidspack("derive", "classify", "patches", "cls", "--datalad", "--workers", "2",
                    "--json", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    recs = [json.loads(x) for x in proc.stdout.splitlines()]
    assert not [r for r in recs if r["status"] == "error"]
    assert [r for r in recs if r["action"] == "validate"]
    assert git("status", "--porcelain", cwd=cls) == ""
    tree = git("ls-tree", "HEAD", "sourcedata/patches", cwd=cls).split()
    assert tree[:3] == ["160000", "commit", patches_commit]
    desc = json.loads((cls / "dataset_description.json").read_text(encoding="utf-8"))
    assert desc["SourceDatasets"] == [{"URL": "sourcedata/patches", "Version": patches_commit}]
    command = desc["GeneratedBy"][0]["Description"]
    assert command.startswith("bidspack derive classify sourcedata/patches . --model rules ")
    assert "--workers" not in command
    assert (cls / "classification.parquet").is_symlink()  # annexed
    log = git("log", "--format=%s", cwd=cls).splitlines()
    steps = [s for s in log if s.startswith("[DATALAD RUNCMD] bidspack derive classify: ")]
    assert len(steps) == 2, log  # one patch array, then the index
    stem = "sub-stpmousebrain_sample-brain_2PE"
    step = f"scores/patches/{stem}/plane-xy"
    commit, record = _run_record(cls, f"derive classify: {step}")
    assert record["cmd"] == command
    assert record["inputs"] == [
        "sourcedata/patches/index.parquet",
        f"sourcedata/patches/patches/{stem}/plane-xy.zarr",
    ]
    assert record["outputs"] == [f"{step}.parquet"]

    # select --datalad from the classification: both parents installed and pinned
    query = "decision == 'kept' and slice_index >= 16"
    proc = bidspack("derive", "select", "cls", "sel", "--datalad", "--query", query,
                    "--no-validate", "--json", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert git("status", "--porcelain", cwd=sel) == ""
    cls_commit = git("rev-parse", "HEAD", cwd=cls).strip()
    assert git("ls-tree", "HEAD", "sourcedata/cls", cwd=sel).split()[:3] == [
        "160000", "commit", cls_commit,
    ]  # fmt: skip
    assert git("ls-tree", "HEAD", "sourcedata/patches", cwd=sel).split()[:3] == [
        "160000", "commit", patches_commit,
    ]  # fmt: skip
    sdesc = json.loads((sel / "dataset_description.json").read_text(encoding="utf-8"))
    assert sdesc["SourceDatasets"] == [
        {"URL": "sourcedata/cls", "Version": cls_commit},
        {"URL": "sourcedata/patches", "Version": patches_commit},
    ]
    scommand = sdesc["GeneratedBy"][0]["Description"]
    assert scommand.startswith(
        "bidspack derive select sourcedata/cls . --patches sourcedata/patches --query "
    )
    parents = sdesc["bidspack"]["parameters"]["parents"]
    assert [p["URL"] for p in parents] == ["sourcedata/cls", "sourcedata/patches"]
    rows = pq.read_table(sel / "index.parquet").to_pylist()
    crow = pq.read_table(cls / "classification.parquet").to_pylist()
    assert [r["patch_id"] for r in rows] == [
        r["patch_id"] for r in crow if r["decision"] == "kept" and r["slice_index"] >= 16
    ] and rows
    zattrs = json.loads((sel / f"patches/{stem}/plane-xy.zarr/zarr.json").read_text())
    assert zattrs["attributes"]["bidspack"]["parent"] == "sourcedata/patches"
    scommit, srecord = _run_record(sel, "derive select: index")
    assert srecord["cmd"] == scommand
    assert srecord["inputs"] == [
        "sourcedata/cls/classification.parquet",
        "sourcedata/patches/index.parquet",
        f"sourcedata/patches/patches/{stem}/plane-xy.zarr",
    ]

    # clones: remove one step's outputs, rerun its commit -> the same bytes
    for original, name, step_commit, removed, table in [
        (cls, "cls-clone", commit, "scores", "classification.parquet"),
        (sel, "sel-clone", scommit, "index.parquet", "index.parquet"),
    ]:
        cl = run("datalad", "clone", str(original), name, cwd=tmp_path)
        assert cl.returncode == 0, cl.stderr
        clone = tmp_path / name
        git("rm", "-r", "-q", removed, cwd=clone)
        git("commit", "-q", "-m", "drop one step's outputs", cwd=clone)
        rr = run("datalad", "rerun", step_commit, cwd=clone)
        assert rr.returncode == 0, rr.stderr + rr.stdout
        assert git("status", "--porcelain", cwd=clone) == ""
        assert manifest_rows(clone) == manifest_rows(original), name
        assert run("datalad", "get", table, cwd=clone).returncode == 0
        assert (clone / table).read_bytes() == (original / table).read_bytes(), name
        _only_provenance_changed(original, clone)
    # the selection's patches equal the parent's, read from the clone's subdataset
    import zarr

    clone = tmp_path / "sel-clone"
    assert run("datalad", "get", "patches", cwd=clone).returncode == 0
    mine = zarr.open_array(str(clone / f"patches/{stem}/plane-xy.zarr"), mode="r")[:]
    src = zarr.open_array(str(patches / f"patches/{stem}/plane-xy.zarr"), mode="r")[:]
    assert np.array_equal(mine, src[[r["parent_row"] for r in rows]])
    assert os.path.isdir(clone / "sourcedata/cls/.git")  # installed by the rerun
