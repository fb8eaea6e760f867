"""Shared fixtures: real data from ../shared/realdata, the example submission, tree snapshots."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bidspack.examples import write_submission
from bidspack.records import Record

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("BIDSPACK_REALDATA", REPO.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The read-only real microscopy data folder (copy before modifying)."""
    assert REALDATA.is_dir(), f"real data not found at {REALDATA} (set BIDSPACK_REALDATA)"
    return REALDATA


@pytest.fixture(scope="session")
def example_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(submission, spec) of the shipped example, written once per session (read-only)."""
    root = tmp_path_factory.mktemp("example")
    spec = write_submission(root / "submission")
    return root / "submission", spec


@pytest.fixture(scope="session")
def packaged_run(
    tmp_path_factory: pytest.TempPathFactory, example_source: tuple[Path, Path]
) -> tuple[Path, list[Record]]:
    """The example packaged (and validated) once per session: (dataset, records).
    Read-only: tests that change the dataset use :func:`dataset`."""
    from bidspack.ops.package import package
    from bidspack.spec import load_spec

    sub, spec = example_source
    ds = tmp_path_factory.mktemp("packaged") / "ds"
    recs = list(package(sub, ds, load_spec(spec)))
    assert not [r for r in recs if r.status == "error"]
    return ds, recs


@pytest.fixture
def packaged(packaged_run: tuple[Path, list[Record]]) -> Path:
    """The packaged example dataset (read-only, shared by the session)."""
    return packaged_run[0]


@pytest.fixture
def dataset(packaged: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the packaged example dataset."""
    shutil.copytree(packaged, tmp_path / "ds")
    return tmp_path / "ds"


@pytest.fixture
def example(tmp_path: Path, example_source: tuple[Path, Path]) -> tuple[Path, Path]:
    """A private, modifiable copy of the example submission and its spec."""
    sub, spec = example_source
    shutil.copytree(sub, tmp_path / "submission")
    shutil.copy(spec, tmp_path / spec.name)
    return tmp_path / "submission", tmp_path / spec.name


def run_bidspack(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m bidspack ARGS`` in a child process (output captured as text; no
    check of the exit code)."""
    return subprocess.run(
        [sys.executable, "-m", "bidspack", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
    )


def snapshot(root: Path) -> dict[str, str]:
    """Map every file (and empty dir) below *root* to its sha256; {} if root is absent."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir() and not any(p.iterdir()):
            out[rel + "/"] = "dir"
    return out


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Print the fault-injection matrix result (cases run, consistent, inconsistent),
    from the ``fault_matrix`` property of each case's report (works with pytest-xdist)."""
    reports = [
        r
        for key in ("passed", "failed", "error")
        for r in terminalreporter.stats.get(key, [])
        if getattr(r, "when", None) == "call" and "test_fault_matrix[" in r.nodeid
    ]
    if not reports:
        return
    outcomes = [v for r in reports for k, v in r.user_properties if k == "fault_matrix"]
    before, after = outcomes.count("before"), outcomes.count("after")
    terminalreporter.write_line(
        f"fault-injection matrix: {len(reports)} (fault point x mode x operation) cases run, "
        f"{before + after} consistent ({before} equal the snapshot before, {after} the "
        f"snapshot after), {len(reports) - before - after} inconsistent"
    )
