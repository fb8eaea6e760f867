"""Transaction engine and crash safety: the full matrix of fault points x operations.

For every (operation, fault point, fault mode) the operation runs in a child process
with ``BIDSPACK_FAULT`` set; then ``bidspack recover`` runs. The dataset's whole tree
and file contents must equal the snapshot before or the snapshot after the step,
never a mix; no staging leftovers; the submission untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import tifffile

from bidspack.errors import OutputError
from bidspack.ops.package import package
from bidspack.spec import load_spec
from bidspack.txn import Transaction, dataset_lock, pending, recover
from conftest import run_bidspack, snapshot
from txn_harness import make_dataset

HERE = Path(__file__).resolve().parent
SUBJ = "210810_45670_ko_female_LH_14-48-50_decon_2021-10-28_12-39-11"

POINTS = ["stage@1", "stage@2", "staged", "journal", "committed", "apply@1", "apply@2"]
MODES = ["kill", "enospc", "eacces"]


def state(root: Path) -> dict[str, str]:
    """Snapshot without bidspack's own state (lock file, step records, txn folder).

    Provenance records are named by transaction id and carry times, so they differ
    between two runs of one step: they are represented by their number only.
    """
    snap = {k: v for k, v in snapshot(root).items() if not k.startswith(".bidspack")}
    prov = [k for k in snap if k.startswith("code/bidspack/provenance/")]
    for k in prov:
        del snap[k]
    snap["<provenance records>"] = str(len(prov))
    return snap


def cli(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("BIDSPACK_FAULT", None)
    if fault:
        env["BIDSPACK_FAULT"] = fault
    return run_bidspack(*args, env=env)


# -- operations: each returns (setup, run) over a scratch folder ------------------------------


class TxnMixed:
    """put/replace/delete/rename of files and directories, one transaction."""

    name = "txn-mixed"

    def setup(self, tmp: Path) -> Path:
        ds = tmp / "ds"
        make_dataset(ds)
        return ds

    def run(self, ds: Path, fault: str | None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.pop("BIDSPACK_FAULT", None)
        if fault:
            env["BIDSPACK_FAULT"] = fault
        return subprocess.run(
            [sys.executable, str(HERE / "txn_harness.py"), str(ds)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )


class PackageStep:
    """Re-running `bidspack package` after one input slice changed: one step re-runs."""

    name = "package-step"

    def __init__(self, example_source: tuple[Path, Path]):
        self.source = example_source

    _packaged: ClassVar[dict[Path, Path]] = {}  # example submission -> packaged dataset

    def setup(self, tmp: Path) -> Path:
        sub, spec = self.source
        shutil.copytree(sub, tmp / "submission")
        shutil.copy(spec, tmp / spec.name)
        ds = tmp / "ds"
        if sub not in self._packaged:
            cached = sub.parent / "packaged-for-txn-tests"
            recs = list(package(sub, cached, load_spec(spec), validate=False))
            assert not [r for r in recs if r.status == "error"]
            self._packaged[sub] = cached
        shutil.copytree(self._packaged[sub], ds)
        plane = tifffile.imread(tmp / "submission" / SUBJ / "640_N4" / "Z0003.tif")
        tifffile.imwrite(tmp / "submission" / SUBJ / "640_N4" / "Z0003.tif", plane + 1)
        return ds

    def run(self, ds: Path, fault: str | None) -> subprocess.CompletedProcess[str]:
        tmp = ds.parent
        return cli(
            "package",
            str(tmp / "submission"),
            str(ds),
            "--spec",
            str(tmp / self.source[1].name),
            "--no-validate",
            fault=fault,
        )


class RenameSubject(PackageStep):
    """`bidspack rename-subject` on the packaged example (names, tables, OME-XML)."""

    name = "rename-subject"

    def setup(self, tmp: Path) -> Path:
        ds = super().setup(tmp)
        shutil.rmtree(tmp / "submission")  # only the dataset matters here
        shutil.copytree(self.source[0], tmp / "submission")
        return ds

    def run(self, ds: Path, fault: str | None) -> subprocess.CompletedProcess[str]:
        return cli("rename-subject", str(ds), "45670ko", "m1", "--no-validate", fault=fault)


class HashdiffKeep(PackageStep):
    """`bidspack hashdiff A B --dataset DS`: a report kept in the dataset (6 files)."""

    name = "hashdiff-keep"

    def setup(self, tmp: Path) -> Path:
        ds = super().setup(tmp)
        shutil.rmtree(tmp / "submission")
        shutil.copytree(self.source[0], tmp / "submission")
        return ds

    def run(self, ds: Path, fault: str | None) -> subprocess.CompletedProcess[str]:
        subj = ds.parent / "submission" / SUBJ
        return cli(
            "hashdiff",
            str(subj / "atlaslabel_def_origspace"),
            str(subj / "atlaslabel_def_origspace_masked"),
            "--dataset",
            str(ds),
            fault=fault,
        )


OPERATIONS = {
    "txn-mixed": TxnMixed,
    "package-step": PackageStep,
    "rename-subject": RenameSubject,
    "hashdiff-keep": HashdiffKeep,
}


@pytest.fixture(params=list(OPERATIONS))
def operation(request, example_source):
    cls = OPERATIONS[request.param]
    return cls() if cls is TxnMixed else cls(example_source)


def _before_after(operation, tmp: Path) -> tuple[dict[str, str], dict[str, str]]:
    ds = operation.setup(tmp / "ref")
    before = state(ds)
    proc = operation.run(ds, None)
    assert proc.returncode in ((1,) if operation.name == "hashdiff-keep" else (0,)), proc.stderr
    after = state(ds)
    assert before != after
    return before, after


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("point", POINTS)
def test_fault_matrix(operation, point: str, mode: str, tmp_path: Path, record_property) -> None:
    """Each case ends in the state before or after the operation; the outcome is
    recorded as the report property ``fault_matrix`` and tallied in the terminal
    summary (conftest.py), also across pytest-xdist workers."""
    before, after = _before_after(operation, tmp_path)
    ds = operation.setup(tmp_path / "run")
    sub_before = snapshot(ds.parent / "submission")
    proc = operation.run(ds, f"{point}:{mode}")
    fired = proc.returncode not in ((0, 1) if operation.name == "hashdiff-keep" else (0,))
    assert fired, f"fault {point}:{mode} did not fire"
    if mode == "kill":
        assert proc.returncode == -9
    elif operation.name != "txn-mixed":  # the CLI operations: a clean message
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("Error:")
    rec = cli("recover", str(ds))
    assert rec.returncode == 0, rec.stderr
    got = state(ds)
    assert got in (before, after), f"inconsistent state after {point}:{mode}"
    pre_commit = point.split("@")[0] in ("stage", "staged", "journal")
    assert got == (before if pre_commit else after)
    assert pending(ds) == []
    assert not list((ds / ".bidspack" / "txn").glob("*"))
    assert snapshot(ds.parent / "submission") == sub_before
    record_property("fault_matrix", "before" if got == before else "after")


@pytest.mark.parametrize("mode", MODES)
def test_fault_during_recovery(operation, mode: str, tmp_path: Path) -> None:
    _, after = _before_after(operation, tmp_path)
    ds = operation.setup(tmp_path / "run")
    assert operation.run(ds, "committed:kill").returncode == -9
    crashed = cli("recover", str(ds), fault=f"recover@1:{mode}")
    assert crashed.returncode != 0
    assert pending(ds)  # still unfinished
    again = cli("recover", str(ds))
    assert again.returncode == 0 and "rolled forward" in again.stdout
    assert state(ds) == after and pending(ds) == []


def test_any_command_recovers_first(example_source, tmp_path: Path) -> None:
    op = PackageStep(example_source)
    ds = op.setup(tmp_path)
    assert op.run(ds, "apply@1:kill").returncode == -9
    assert pending(ds)
    refused = cli(
        "package",
        str(tmp_path / "submission"),
        str(ds),
        "--spec",
        str(tmp_path / example_source[1].name),
        "--no-validate",
        "--no-recover",
    )
    assert refused.returncode == 1 and "unfinished transaction" in refused.stderr
    ok = op.run(ds, None)
    assert ok.returncode == 0 and pending(ds) == []


def test_kill_mid_run_then_resume_is_byte_identical(example_source, tmp_path: Path) -> None:
    sub, spec = example_source
    ref = tmp_path / "ref"
    assert not [
        r for r in package(sub, ref, load_spec(spec), validate=False) if r.status == "error"
    ]
    ds = tmp_path / "ds"
    args = ("package", str(sub), str(ds), "--spec", str(spec), "--no-validate", "--json")
    killed = cli(*args, fault="committed@4:kill")  # 3 steps done, the 4th past its commit point
    assert killed.returncode == -9
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    recs = [json.loads(line) for line in resumed.stdout.splitlines()]
    steps = [r for r in recs if r["action"] == "step"]
    assert [r["status"] for r in steps[:4]] == ["notneeded"] * 4
    assert all(r["status"] == "ok" for r in steps[4:]) and len(steps) > 4
    assert any(r["action"] == "recover" and r["message"] == "rolled forward" for r in recs)
    assert state(ds) == state(ref)
    # and a third run does nothing
    third = [json.loads(line) for line in cli(*args).stdout.splitlines()]
    assert {r["status"] for r in third if r["action"] == "step"} == {"notneeded"}


def test_two_processes_cannot_both_write(example_source, tmp_path: Path) -> None:
    sub, spec = example_source
    ds = tmp_path / "ds"
    ds.mkdir()
    with dataset_lock(ds):  # this test process holds the dataset
        proc = cli("package", str(sub), str(ds), "--spec", str(spec))
        assert proc.returncode == 1
        assert f"another bidspack process (pid {os.getpid()})" in proc.stderr
        assert state(ds) == {"<provenance records>": "0"}
        with pytest.raises(OutputError, match="another bidspack process"), dataset_lock(ds):
            pass


def test_changed_input_replaces_only_that_step(example_source, tmp_path: Path) -> None:
    op = PackageStep(example_source)
    ds = op.setup(tmp_path)
    before = state(ds)
    proc = op.run(ds, None)
    assert proc.returncode == 0
    changed = {k for k in set(before) | set(state(ds)) if before.get(k) != state(ds).get(k)}
    assert changed == {
        "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM.ome.tif",
        "code/bidspack/manifest.tsv",  # its row for that file
        "code/bidspack/manifest.parquet",
        "<provenance records>",  # one more
    }


def test_engine_rollback_and_idempotent_roll_forward(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    make_dataset(ds)
    before = state(ds)
    txn = Transaction(ds)
    txn.stage_path("x.txt").write_text("x")
    txn.delete("old.txt")
    txn.abort()
    assert state(ds) == before and pending(ds) == []
    assert recover(ds) == []
    # a committed transaction is finished by recover(), and a second recover() is a no-op
    txn = Transaction(ds)
    txn.rename("olddir", "newdir")
    txn.stage_path("newdir/z.txt").write_text("z")
    ops = txn.journal()
    assert [o["op"] for o in ops] == ["rename", "put"]
    (txn.root / "journal.json").write_text(json.dumps({"version": 1, "ops": ops}))
    (txn.root / "COMMITTED").write_text(txn.id)
    assert recover(ds) == [(txn.id, "rolled forward")]
    assert (ds / "newdir/x/y.txt").read_text() == "y\n" and (ds / "newdir/z.txt").exists()
    assert not (ds / "olddir").exists() and recover(ds) == []


# -- tampered transaction folders (issue 11): recover refuses, nothing is touched -------


def _tamper_outside_path(ds: Path, root: Path, outside: Path) -> str:
    (root / "journal.json").write_text(
        json.dumps({"version": 1, "ops": [{"op": "delete", "path": "../outside/file"}]})
    )
    return "'..' component"


def _tamper_unknown_op(ds: Path, root: Path, outside: Path) -> str:
    (root / "journal.json").write_text(
        json.dumps({"version": 1, "ops": [{"op": "truncate", "path": "participants.tsv"}]})
    )
    return "ops[0].op"


def _tamper_journal_symlink(ds: Path, root: Path, outside: Path) -> str:
    evil = outside / "journal.json"
    evil.write_text(json.dumps({"version": 1, "ops": [{"op": "delete", "path": "old.txt"}]}))
    (root / "journal.json").unlink()
    (root / "journal.json").symlink_to(evil)
    return "symbolic link"


def _tamper_tree_symlink(ds: Path, root: Path, outside: Path) -> str:
    (root / "journal.json").write_text(
        json.dumps({"version": 1, "ops": [{"op": "put", "path": "loot.txt"}]})
    )
    (root / "tree" / "loot.txt").symlink_to(outside / "file")
    return "symbolic link"


TAMPERED = {
    "outside-path": _tamper_outside_path,
    "unknown-op": _tamper_unknown_op,
    "journal-symlink": _tamper_journal_symlink,
    "tree-symlink-outside": _tamper_tree_symlink,
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_journal(case: str, tmp_path: Path) -> None:
    """A committed transaction left by a crash (``committed:kill``) whose folder was
    then changed: ``recover`` refuses it with a clean error naming the file, the
    sentinel outside is unchanged, the dataset is unchanged and the transaction stays
    pending (nothing applied, nothing deleted)."""
    ds = tmp_path / "ds"
    make_dataset(ds)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_text("sentinel\n")
    sentinel = snapshot(outside)
    killed = TxnMixed().run(ds, "committed:kill")
    assert killed.returncode == -9
    (txn_id,) = pending(ds)
    needle = TAMPERED[case](ds, ds / ".bidspack" / "txn" / txn_id, outside)

    def unlocked() -> dict[str, str]:  # the lock file holds the last holder's pid
        return {k: v for k, v in snapshot(ds).items() if k != ".bidspack/lock"}

    before = unlocked()
    proc = cli("recover", str(ds))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = proc.stderr.replace("\n", "")
    assert err.startswith("Error:") and needle in err and f".bidspack/txn/{txn_id}/" in err
    assert snapshot(outside) == sentinel | (
        {"journal.json": snapshot(outside)["journal.json"]} if case == "journal-symlink" else {}
    )
    assert unlocked() == before and pending(ds) == [txn_id]
