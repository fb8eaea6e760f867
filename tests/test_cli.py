"""CLI surface: help texts, version, JSON records; code quality gates (ruff, mypy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bidspack import __version__
from bidspack.cli.main import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("verb", sorted(cli.commands))
def test_help(verb: str) -> None:
    res = CliRunner().invoke(cli, [verb, "--help"])
    assert res.exit_code == 0 and "Usage:" in res.output
    assert res.output.count("--help") == 1


def test_top_level_help_lists_verbs_and_version() -> None:
    res = CliRunner().invoke(cli, ["--help"])
    for verb in cli.commands:
        assert verb in res.output
    assert "--debug" in res.output
    assert __version__ in CliRunner().invoke(cli, ["--version"]).output


def test_dry_run_json_lines_name_every_target(example, tmp_path: Path) -> None:
    sub, spec = example
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bidspack",
            "package",
            str(sub),
            str(tmp_path / "ds"),
            "--spec",
            str(spec),
            "--dry-run",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    kinds = {r["action"] for r in recs}
    assert kinds == {"write", "convert", "copy", "exclude"}
    assert any(r["path"].endswith("_stain-N4_SPIM.ome.tif") for r in recs)
    assert not (tmp_path / "ds").exists()


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is part of the test extras"
    proc = subprocess.run(
        [ruff, "check", "src", "tests", "benchmarks", "examples"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout


def test_mypy_clean() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout
