"""What the CLI prints: plans that name every input, runs that say what they wrote and
how validation went, statuses that mean what they say, user data never read as rich
markup, no wrapping inside paths when piped, and help in workflow order.

Every command runs in a child process (stdout and stderr are pipes, as in a script).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath

from click.testing import CliRunner
from tests.conftest import REPO, run_bidspack

from bidspack.cli.main import WORKFLOW_ORDER, cli
from bidspack.records import STATUSES, Record, count_statuses

#: A subject folder of the example submission, and its label.
SUBJECT = "210810_45670_ko_female_LH_14-48-50_decon_2021-10-28_12-39-11"
LABEL = "45670ko"


def _inputs(sub: Path) -> list[str]:
    return sorted(p.relative_to(sub).as_posix() for p in sub.rglob("*") if p.is_file())


def _dry_run(sub: Path, spec: Path, out: Path, *extra: str) -> str:
    res = run_bidspack("package", str(sub), str(out), "--spec", str(spec), "--dry-run", *extra)
    assert res.returncode == 0, res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    assert not out.exists()
    return res.stdout


# -- statuses ---------------------------------------------------------------------------


def test_new_statuses_are_counted() -> None:
    assert {"planned", "excluded", "ok", "notneeded", "impossible", "error"} <= set(STATUSES)
    counts = count_statuses([Record("convert", "a", "planned"), Record("exclude", "b", "excluded")])
    assert counts["planned"] == 1 and counts["excluded"] == 1 and counts["error"] == 0
    assert json.loads(Record("exclude", "b", "excluded").to_json())["status"] == "excluded"


def test_dry_run_json_says_planned_and_excluded(example, tmp_path: Path) -> None:
    sub, spec = example
    res = run_bidspack(
        "package", str(sub), str(tmp_path / "ds"), "--spec", str(spec), "--dry-run", "--json"
    )
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    by_status = {r["status"] for r in recs}
    assert by_status == {"planned", "excluded"}
    assert all(r["status"] == "excluded" for r in recs if r["action"] == "exclude")
    assert all(
        r["status"] == "planned" for r in recs if r["action"] in ("convert", "copy", "write")
    )
    converts = [r for r in recs if r["action"] == "convert"]
    assert converts and all(r["details"]["inputs"]["z"] == [0, 23] for r in converts)


# -- the dry run's text ---------------------------------------------------------------


def test_dry_run_text_names_every_input_file_or_folder(example, tmp_path: Path) -> None:
    sub, spec = example
    text = _dry_run(sub, spec, tmp_path / "ds")
    assert "notneeded" not in text
    assert "planned" in text and "excluded" in text
    for rel in _inputs(sub):
        folder = str(PurePosixPath(rel).parent) + "/"
        assert rel in text or folder in text, f"{rel} is not named in the dry run"
    # per output: the folder it reads, the file count and the Z index range
    n4 = f"sub-{LABEL}/micr/sub-{LABEL}_sample-brainLH_stain-N4_SPIM.ome.tif"
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.rstrip().endswith(n4))
    assert f"24 files in {SUBJECT}/640_N4/, Z 0-23" in lines[at + 1]
    # each excluded folder with its file count, its reason and its first and last file
    masked = f"{SUBJECT}/atlaslabel_def_origspace_masked/ (24 files)"
    at = next(i for i, line in enumerate(lines) if line.rstrip().endswith(masked))
    assert "excluded" in lines[at]
    assert lines[at + 1].strip().startswith("reason: near-copy of atlaslabel_def_origspace")
    assert "Z00000.tif ... Z00023.tif" in lines[at + 2]
    assert re.search(r"369 input files accounted for", text)
    assert text.rstrip().endswith("Nothing was written (dry run).")


def test_dry_run_verbose_lists_every_file(example, tmp_path: Path) -> None:
    sub, spec = example
    text = _dry_run(sub, spec, tmp_path / "ds", "--verbose")
    names = {line.strip() for line in text.splitlines()}
    for rel in _inputs(sub):
        p = PurePosixPath(rel)
        assert rel in names or f"from {rel}" in names or p.name in names, rel


# -- the run's text -------------------------------------------------------------------


def test_run_prints_what_it_wrote_and_a_plain_summary(example, tmp_path: Path) -> None:
    sub, spec = example
    ds = tmp_path / "ds"
    res = run_bidspack("package", str(sub), str(ds), "--spec", str(spec))
    assert res.returncode == 0, res.stderr + res.stdout
    text = res.stdout
    for tif in ds.rglob("*.ome.tif"):
        rel = tif.relative_to(ds).as_posix()
        line = next(x for x in text.splitlines() if rel in x)
        assert line.split()[0] == "ok" and re.search(r"\(\d+\.\d kB\)", line), line
    assert "excluded" in text and "notneeded" not in text
    done = next(x for x in text.splitlines() if x.startswith("done:"))
    assert re.fullmatch(
        r"done: wrote 47 files \(\d+\.\d MB\) in 16 committed steps; 72 input files "
        r"excluded; took \d+\.\d s\.",
        done,
    ), done
    assert "validation: 0 errors, " in text and "the dataset is valid" in text
    assert re.search(r"warnings by code: \w+ \d+", text)
    assert "{" not in text  # no raw Python dicts
    # a re-run keeps every step: "notneeded" now means what it says
    again = run_bidspack("package", str(sub), str(ds), "--spec", str(spec))
    assert again.returncode == 0, again.stderr
    assert "done: wrote 0 files (0 bytes) in 0 committed steps, 16 steps unchanged" in again.stdout
    assert "notneeded" in again.stdout and "excluded" in again.stdout


def test_demo_ends_with_a_plain_summary(tmp_path: Path) -> None:
    res = run_bidspack("demo", str(tmp_path / "demo"))
    assert res.returncode == 0, res.stderr + res.stdout
    tail = res.stdout.strip().splitlines()[-5:]
    assert any(x.startswith("done: wrote 47 files") for x in tail), tail
    assert any(x.startswith("validation: 0 errors") for x in tail), tail
    assert "{" not in res.stdout and "'ok'" not in res.stdout


def test_validate_shows_warnings_by_code_without_show_ok(packaged: Path) -> None:
    res = run_bidspack("validate", str(packaged))
    assert res.returncode == 0, res.stderr + res.stdout
    assert "warning" in res.stdout and "SIDECAR_KEY_RECOMMENDED" in res.stdout
    assert "validation: 0 errors" in res.stdout
    assert re.search(r"warnings by code: .*SIDECAR_KEY_RECOMMENDED\[\w+\] \d+", res.stdout)
    assert "PixelSize matches" not in res.stdout  # passing checks only with --show-ok


# -- markup and wrapping --------------------------------------------------------------


def test_markup_in_file_names_and_hints_prints_literally(example, tmp_path: Path) -> None:
    sub, spec = example
    seg = sub / SUBJECT / "640_FRST_seg"
    (seg / "notes[").mkdir()
    (seg / "notes[" / "b]x[red].csv").write_text("a\n")
    (seg / "[bold]cells2.csv").write_text("a\n")
    text = _dry_run(sub, spec, tmp_path / "ds")
    assert f"sourcedata/sub-{LABEL}/640_FRST_seg/[bold]cells2.csv" in text
    assert f"from {SUBJECT}/640_FRST_seg/notes[/b]x[red].csv" in text
    # a table (render) with such a path: validate's listing of the copied file
    ds = tmp_path / "ds2"
    run = run_bidspack("package", str(sub), str(ds), "--spec", str(spec), "--no-validate")
    assert run.returncode == 0, run.stderr + run.stdout
    assert "sourcedata/sub-45670ko/640_FRST_seg/notes[/b]x[red].csv" in run.stdout
    # the error line and its hint: nothing eaten, no crash
    (sub / "[red]stray[").mkdir()
    (sub / "[red]stray[" / "b]").write_text("x")
    res = run_bidspack("package", str(sub), str(tmp_path / "ds3"), "--spec", str(spec))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "MarkupError" not in res.stderr
    assert "'[red]stray['" in res.stderr
    assert "(add an [[exclude]] entry with a reason, or fix the pattern)" in res.stderr


def test_piped_output_never_wraps_a_long_file_name(example, tmp_path: Path) -> None:
    sub, spec = example
    name = "cells_" + "x" * 140 + ".csv"
    assert len(name) == 150
    shutil.copy(sub / SUBJECT / "640_FRST_seg" / "cells.csv", sub / SUBJECT / "640_FRST_seg" / name)
    env = dict(os.environ, COLUMNS="80")
    res = run_bidspack(
        "package", str(sub), str(tmp_path / "ds"), "--spec", str(spec), "--dry-run", env=env
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.strip() == f"from {SUBJECT}/640_FRST_seg/{name}" for line in lines)
    assert any(line.endswith(f"sourcedata/sub-{LABEL}/640_FRST_seg/{name}") for line in lines)
    # a table (validate --show-ok): every path on one line, never folded
    ds = tmp_path / "ds"
    assert (
        run_bidspack("package", str(sub), str(ds), "--spec", str(spec), "--no-validate").returncode
        == 0
    )
    table = run_bidspack("validate", str(ds), "--show-ok", env=env)
    recs = run_bidspack("validate", str(ds), "--json")
    paths = {json.loads(x)["path"] for x in recs.stdout.splitlines()}
    long_paths = [p for p in paths if len(p) > 60]
    assert long_paths
    for p in long_paths:
        assert p in table.stdout, f"{p} folded in the piped table"


# -- help -----------------------------------------------------------------------------


def _commands_section(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index("Commands:") + 1
    return [line for line in lines[start:] if line.strip()]


def test_help_lists_verbs_in_workflow_order_with_whole_descriptions() -> None:
    """After dandi-cli's test_helptext: the order of verbs, and no cut description."""
    res = CliRunner().invoke(cli, ["--help"], terminal_width=80)
    assert res.exit_code == 0
    rows = _commands_section(res.output)
    names = [row.split()[0] for row in rows]
    assert sorted(names) == sorted(cli.commands)  # one line per verb: nothing wrapped
    known = [n for n in WORKFLOW_ORDER if n in cli.commands]
    assert names[: len(known)] == known
    assert names.index("demo") < names.index("package") < names.index("validate")
    for row in rows:
        assert "..." not in row, f"cut description: {row}"
        assert row.rstrip().endswith((".", ")")), f"cut description: {row}"
        assert len(row) <= 80
    for word in ("demo", "draft-spec", "--dry-run", "validate", "release"):
        assert word in res.output.split("Options:")[0]
    assert "examples/lightsheet-spec.toml" in res.output


def test_draft_spec_goes_after_demo_when_present() -> None:
    order = list(WORKFLOW_ORDER)
    assert order.index("demo") < order.index("draft-spec") < order.index("package")
    assert order.index("validate") < order.index("release")


def test_package_help_points_at_demo_and_example_spec() -> None:
    res = CliRunner().invoke(cli, ["package", "--help"], terminal_width=100)
    assert res.exit_code == 0
    flat = " ".join(res.output.split())
    assert "bidspack demo" in flat and "examples/lightsheet-spec.toml" in flat
    assert "schema.json" not in flat


def test_examples_readme_exists_and_is_referenced() -> None:
    readme = REPO / "examples" / "README.md"
    assert readme.is_file()
    text = readme.read_text(encoding="utf-8")
    assert "bidspack demo" in text and "--dry-run" in text
    assert "examples/README.md" in (REPO / "examples" / "lightsheet-spec.toml").read_text()
