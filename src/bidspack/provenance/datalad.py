"""DataLad integration: datasets, one save per committed step with a run record, tags.

A bidspack DataLad dataset (``datalad create -c text2git``) keeps JSON/TSV/text in git
and binary files (OME-TIFF, Parquet, Zarr chunks) in git-annex with the **SHA256E**
backend, so an annex key's hex part equals the manifest's ``sha256``. ``.bidspack/``
(transactions, locks, step records) is git-ignored: it is never part of a release.

Each committed step is saved by one ``datalad save`` (all files of the step in one
batch, never per file) whose commit message is a DataLad run record (the format of
``datalad run``: ``[DATALAD RUNCMD] ...`` + JSON with ``cmd``, ``dsid``, ``exit``,
``inputs``, ``outputs``, ``pwd``, ``chain``), so ``datalad rerun`` can replay it.
Where git has no user configured (CI), bidspack passes an identity through the
environment (``GIT_AUTHOR_NAME`` ...) and never writes the user's git config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bidspack.errors import ToolError

IDENTITY = {
    "GIT_AUTHOR_NAME": "bidspack",
    "GIT_AUTHOR_EMAIL": "bidspack@localhost",
    "GIT_COMMITTER_NAME": "bidspack",
    "GIT_COMMITTER_EMAIL": "bidspack@localhost",
}
IGNORED = ".bidspack/\n"


def is_datalad(dataset: Path) -> bool:
    """True if *dataset* is a DataLad dataset."""
    return (Path(dataset) / ".datalad").is_dir() and (Path(dataset) / ".git").exists()


def _env(cwd: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key, var in (("user.name", "GIT_AUTHOR_NAME"), ("user.email", "GIT_AUTHOR_EMAIL")):
        got = subprocess.run(
            ["git", "config", key], cwd=cwd, capture_output=True, text=True, check=False, env=env
        ).stdout.strip()
        if not got and var not in env:
            env[var] = IDENTITY[var]
            env[var.replace("AUTHOR", "COMMITTER")] = IDENTITY[var.replace("AUTHOR", "COMMITTER")]
    return env


def run(args: list[str], cwd: Path) -> str:
    """Run ``datalad``/``git`` in *cwd*; return stdout.

    Raises:
        ToolError: the tool is missing or failed (its message is included).
    """
    if shutil.which(args[0]) is None:
        raise ToolError(cwd, f"{args[0]} is not installed", hint="pip install datalad git-annex")
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=_env(cwd), check=False)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ToolError(cwd, f"{' '.join(args[:3])} failed: {' | '.join(tail)}")
    return proc.stdout


def create(dataset: Path) -> None:
    """Make *dataset* (existing folder, may hold files) a DataLad dataset with the
    SHA256E backend, text files in git and ``.bidspack/`` ignored; save what is there."""
    dataset = Path(dataset)
    dataset.mkdir(parents=True, exist_ok=True)
    run(["datalad", "create", "--force", "-c", "text2git", "."], dataset)
    attrs = dataset / ".gitattributes"
    text = attrs.read_text(encoding="utf-8").replace("annex.backend=MD5E", "annex.backend=SHA256E")
    if "annex.backend=SHA256E" not in text:
        text = "* annex.backend=SHA256E\n" + text
    attrs.write_text(text, encoding="utf-8")
    ignore = dataset / ".gitignore"
    old = ignore.read_text(encoding="utf-8") if ignore.exists() else ""
    if IGNORED not in old:
        ignore.write_text(old + IGNORED, encoding="utf-8")
    save(dataset, "bidspack: DataLad dataset (SHA256E annex backend, text in git)")


def dataset_id(dataset: Path) -> str:
    """The DataLad dataset id."""
    return run(["git", "config", "-f", ".datalad/config", "datalad.dataset.id"], dataset).strip()


def dirty(dataset: Path) -> list[str]:
    """Paths with uncommitted changes (``.bidspack/`` is ignored)."""
    out = run(["git", "status", "--porcelain", "--untracked-files=all"], dataset)
    return [line[3:] for line in out.splitlines() if line.strip()]


def run_message(
    summary: str, cmd: str, dataset: Path, outputs: list[str], *, inputs: list[str] | None = None
) -> str:
    """A commit message in the format of ``datalad run`` (parsed by ``datalad rerun``);
    *inputs* (dataset-relative paths) are fetched by ``datalad rerun`` before it runs."""
    info: dict[str, Any] = {
        "chain": [],
        "cmd": cmd,
        "dsid": dataset_id(dataset),
        "exit": 0,
        "extra_inputs": [],
        "inputs": list(inputs or []),
        "outputs": outputs,
        "pwd": ".",
    }
    record = json.dumps(info, indent=1, sort_keys=True, ensure_ascii=False)
    return (
        f"[DATALAD RUNCMD] {summary}\n\n=== Do not change lines below ===\n{record}\n"
        "^^^ Do not change lines above ^^^\n"
    )


def save(dataset: Path, message: str) -> None:
    """One ``datalad save`` of every change in *dataset* (a batch, not per file)."""
    run(["datalad", "save", "-d", ".", "-m", message], dataset)


def tags(dataset: Path) -> list[str]:
    """The git tags of *dataset*."""
    return run(["git", "tag", "--list"], dataset).split()


def tag(dataset: Path, version: str, message: str) -> None:
    """Create the annotated tag *version* at HEAD."""
    run(["git", "tag", "-a", version, "-m", message], dataset)
