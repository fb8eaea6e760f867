"""hashdiff and duplicates on hostile input (issue 11): FIFOs, sockets, devices and
symbolic links are listed as skipped and never opened or followed (no hang: every CLI
run is under a subprocess timeout), a huge non-TIFF is refused by its first bytes
without being read, names with rich markup print literally, and no output leaves its
folder (hostile summary.json names, planted symlinks, control characters)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import tifffile

from bidspack.errors import SourceError, UnsafeInputError
from bidspack.ops.duplicates import find_duplicates
from bidspack.ops.hashdiff import hashdiff
from bidspack.report.hashdiff_report import keep_in_dataset, load_summary, write_outputs
from bidspack.spec import load_schema

TIMEOUT_S = 120
#: A sparse file this large cannot be read within the timeout (and would not fit any
#: memory budget); only its first bytes may be read.
HUGE = 1 << 40


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m bidspack ARGS`` with a timeout (a hang fails the test) and a wide
    terminal (no folding inside names)."""
    env = {**os.environ, "COLUMNS": "400", "TERM": "dumb"}
    env.pop("BIDSPACK_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "bidspack", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        cwd=cwd,
        env=env,
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plane(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, (32, 48), dtype=np.uint16)


@pytest.fixture
def unix_socket() -> Iterator[Callable[[Path], None]]:
    """Bind AF_UNIX sockets at given paths (closed at the end)."""
    socks: list[socket.socket] = []

    def make(path: Path) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        socks.append(s)

    yield make
    for s in socks:
        s.close()


@pytest.fixture
def hostile_pair(tmp_path: Path, unix_socket: Callable[[Path], None]) -> tuple[Path, Path, Path]:
    """A/ and B/ with the same two real slices, plus in A: a FIFO with a Z index, a FIFO
    named like a stack, a FIFO that is no TIFF at all, a socket, a character device, a
    symlink to a TIFF outside, a symlink to a folder of TIFFs outside, a symlink loop and
    a dangling symlink. Returns (A, B, the outside folder)."""
    a, b, outside = tmp_path / "A", tmp_path / "B", tmp_path / "outside"
    for d in (a, b, outside):
        d.mkdir()
    for side in (a, b):
        tifffile.imwrite(side / "Z0000.tif", plane(0))
        tifffile.imwrite(side / "Z0001.tif", plane(1))
    tifffile.imwrite(b / "Z0002.tif", plane(2))
    tifffile.imwrite(b / "Z0003.tif", plane(3))
    tifffile.imwrite(outside / "Z0003.tif", plane(99))  # differs from B's Z0003
    tifffile.imwrite(outside / "Z0007.tif", plane(7))
    os.mkfifo(a / "Z0002.tif")
    os.mkfifo(a / "stack.tif")
    os.mkfifo(a / "pipe")
    unix_socket(a / "sock.tif")
    os.mknod(a / "null.tif", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    (a / "Z0003.tif").symlink_to(outside / "Z0003.tif")
    (a / "linked").symlink_to(outside, target_is_directory=True)
    (a / "loop.tif").symlink_to("loop.tif")
    (a / "dangling.tif").symlink_to(tmp_path / "nowhere.tif")
    return a, b, outside


def guard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the command in a child with a timeout first, so that a regression that
    hangs fails here instead of hanging the test process in the in-process call."""
    proc = run_cli(*args, cwd=cwd)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_hashdiff_skips_non_regular_entries(
    hostile_pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    a, b, outside = hostile_pair
    before = {p.name: sha(p) for p in outside.iterdir()}
    guard("hashdiff", str(a), str(b), "--out", "guard", "--json", cwd=tmp_path)
    t0 = time.monotonic()
    diff = hashdiff(a, b, workers=2)
    assert time.monotonic() - t0 < 60
    by_key = {r.key: r for r in diff.results}
    skipped = {k: r for k, r in by_key.items() if r.status == "skipped"}
    assert set(skipped) == {
        "z2",
        "z3",
        "stack.tif",
        "pipe",
        "sock.tif",
        "null.tif",
        "linked",
        "loop.tif",
        "dangling.tif",
    }, sorted(by_key)
    assert by_key["z0"].status == by_key["z1"].status == "identical_bytes"
    kinds = {k: r.a_kind for k, r in skipped.items()}
    assert kinds["z2"] == kinds["stack.tif"] == kinds["pipe"] == "fifo"
    assert kinds["sock.tif"] == "socket" and kinds["null.tif"] == "device"
    assert {kinds[k] for k in ("z3", "linked", "loop.tif", "dangling.tif")} == {"symlink"}
    assert skipped["z2"].b_kind == "file" and skipped["z2"].b_bytes_xxh3 is None  # B unread
    assert skipped["z2"].verdict == "A: Z0002.tif is a FIFO (named pipe): skipped, not opened"
    assert "is a socket" in skipped["sock.tif"].verdict
    assert "is a device file" in skipped["null.tif"].verdict
    assert f"is a symbolic link to {outside / 'Z0003.tif'}" in skipped["z3"].verdict
    assert f"A: linked is a symbolic link to {outside}" in skipped["linked"].verdict
    # the linked folder was not walked: its Z0007 is nowhere
    assert "z7" not in by_key and not any("Z0007" in (r.a_path or "") for r in diff.results)
    assert diff.verdict == "incomplete" and not diff.identical
    assert diff.counts()["skipped"] == 9
    assert {p.name: sha(p) for p in outside.iterdir()} == before


def test_hashdiff_cli_fifo_does_not_hang(
    hostile_pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    a, b, _ = hostile_pair
    proc = run_cli("hashdiff", str(a), str(b), "--out", "r", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "A: Z0002.tif is a FIFO (named pipe): skipped, not opened" in proc.stdout
    assert "skipped: 9" in proc.stdout and "verdict: incomplete" in proc.stdout
    summ = json.loads((tmp_path / "r" / "summary.json").read_text())
    jsonschema.validate(summ, load_schema("hashdiff"))
    assert summ["verdict"] == "incomplete" and summ["counts"]["skipped"] == 9
    rows = {p["key"]: p for p in summ["different"]}
    assert rows["z2"]["status"] == "skipped" and rows["z2"]["a_kind"] == "fifo"
    csv = (tmp_path / "r" / "comparison_results.csv").read_text()
    assert "skipped" in csv and "fifo" in csv and "socket" in csv


def test_hashdiff_cli_root_is_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p.tif")
    (tmp_path / "B").mkdir()
    proc = run_cli("hashdiff", "p.tif", "B", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "p.tif: is a FIFO (named pipe), not an image file or folder: not opened" in (
        proc.stderr.replace("\n", "")
    )
    assert not (tmp_path / "r").exists()


def test_duplicates_skip_non_regular_entries(
    hostile_pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    a = hostile_pair[0]
    os.mkfifo(a / "pipe.png")
    (a / "again.tif").symlink_to(a / "Z0000.tif")  # would duplicate Z0000 if followed
    proc = guard("duplicates", str(a), cwd=tmp_path)
    groups, hashes = find_duplicates(a, workers=2)
    assert groups == []
    skipped = {f.path: f.skipped for f in hashes if f.skipped}
    assert set(skipped) == {
        "Z0002.tif",
        "stack.tif",
        "pipe",
        "pipe.png",
        "sock.tif",
        "null.tif",
        "Z0003.tif",
        "linked",
        "loop.tif",
        "dangling.tif",
        "again.tif",
    }
    assert skipped["pipe.png"] == "a FIFO (named pipe): skipped, not opened"
    assert [f.path for f in hashes if not f.skipped] == ["Z0000.tif", "Z0001.tif"]
    assert proc.returncode == 0, proc.stderr
    assert "skipped pipe.png: a FIFO (named pipe): skipped, not opened" in proc.stdout
    assert f"skipped again.tif: a symbolic link to {a / 'Z0000.tif'}" in proc.stdout
    assert "2 images, 0 group(s) of pixel-identical images, 11 skipped" in proc.stdout
    js = run_cli("duplicates", str(a), "--json", cwd=tmp_path)
    lines = [json.loads(x) for x in js.stdout.splitlines()]
    assert {"path": "null.tif", "skipped": "a device file: skipped, not opened"} in lines


def _huge(path: Path, head: bytes = b"") -> None:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(HUGE)  # sparse: no disk used


def test_huge_non_tiff_refused_by_signature(tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    tifffile.imwrite(a / "Z0001.tif", plane(1))
    _huge(b / "Z0001.tif", b"\x00\x00\x00\x00garbage")
    _huge(tmp_path / "huge.tif", b"PK\x03\x04")  # a zip named .tif, as a stack argument
    _huge(b / "big.tif")  # no Z index: opened as a stack at collection time
    t0 = time.monotonic()
    proc = run_cli("hashdiff", "A", "B", "--out", "r", "--json", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    summ = json.loads(proc.stdout)
    rows = {p["key"]: p for p in summ["different"]}
    assert rows["z1"]["status"] == "unreadable"
    assert rows["z1"]["verdict"] == (
        "B is unreadable: not a TIFF file (starts with b'\\x00\\x00\\x00\\x00', "
        "not a TIFF signature); not read"
    )
    assert rows["big.tif"]["status"] == "unreadable"  # only in B, but read to describe it
    assert "B is unreadable: not a TIFF file" in rows["big.tif"]["verdict"]
    one = run_cli("hashdiff", "huge.tif", "A/Z0001.tif", "--out", "r2", "--json", cwd=tmp_path)
    assert one.returncode == 1 and "Traceback" not in one.stderr, one.stderr
    assert (
        "not a TIFF file (starts with b'PK\\x03\\x04'"
        in json.loads(one.stdout)["different"][0]["verdict"]
    )
    assert time.monotonic() - t0 < TIMEOUT_S  # reading 1 TiB would take far longer


def test_duplicates_huge_non_images_refused_by_signature(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _huge(root / "huge.tif", b"PK\x03\x04")
    _huge(root / "huge.png", b"GIF89a")
    # a real PNG signature and header promising 100000 x 100000 RGBA pixels
    ihdr = b"\x00\x00\x00\rIHDR" + (100000).to_bytes(4, "big") * 2 + b"\x08\x06\x00\x00\x00"
    _huge(root / "bomb.png", b"\x89PNG\r\n\x1a\n" + ihdr)
    proc = run_cli("duplicates", "root", "--json", cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = {x["path"]: x["error"] for x in map(json.loads, proc.stdout.splitlines())}
    assert errors["huge.tif"].startswith("not a TIFF file (starts with b'PK\\x03\\x04'")
    assert errors["huge.png"] == "not a PNG file (starts with b'GIF89a\\x00\\x00'); not read"
    assert "over the budget of 2,147,483,648 bytes; not read" in errors["bomb.png"]


def test_markup_in_names_prints_literally(tmp_path: Path) -> None:
    for side in ("A", "B"):
        d = tmp_path / side / "[" / "b]x"  # the path reads "[/b]x": a closing tag
        d.mkdir(parents=True)
        tifffile.imwrite(d / "[red]Z0001.tif", plane(1 if side == "A" else 2))
    os.mkfifo(tmp_path / "A" / "[" / "b]x" / "[bold]pipe")
    proc = run_cli("hashdiff", "A", "B", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "[/b]x/z1" in proc.stdout
    assert "A: [/b]x/[bold]pipe is a FIFO (named pipe): skipped, not opened" in proc.stdout
    for name in ("A", "B"):
        tifffile.imwrite(tmp_path / name / "[" / "b]x" / "[red]copy.tif", plane(5))
    dup = run_cli("duplicates", ".", cwd=tmp_path)
    assert dup.returncode == 1 and "Traceback" not in dup.stderr, dup.stderr
    assert "  A/[/b]x/[red]copy.tif\n  B/[/b]x/[red]copy.tif\n" in dup.stdout
    assert "skipped A/[/b]x/[bold]pipe: a FIFO (named pipe)" in dup.stdout


def _summary(tmp_path: Path) -> dict[str, Any]:
    for side in ("A", "B"):
        (tmp_path / side).mkdir()
        tifffile.imwrite(tmp_path / side / "Z1.tif", plane(1 if side == "A" else 2))
    paths = write_outputs(hashdiff(tmp_path / "A", tmp_path / "B"), tmp_path / "out")
    summ = json.loads(paths["summary"].read_text())
    jsonschema.validate(summ, load_schema("hashdiff"))
    return summ


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("a", "../../escaped"),
        ("b", "x/../../y"),
        ("a", "a\\..\\b"),
        ("b", "line\nbreak"),
        ("files", {"report": "../../outside.html"}),
        ("files", {"report": ".."}),
        ("different", [{"key": "z1", "status": "unreadable", "verdict": "", "a_path": "/etc/x"}]),
        ("different", [{"key": "../z1", "status": "unreadable", "verdict": ""}]),
    ],
)
def test_hostile_summary_refused(tmp_path: Path, field: str, value: object) -> None:
    summ = {**_summary(tmp_path), field: value}
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(summ))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(summ, load_schema("hashdiff"))
    with pytest.raises(UnsafeInputError, match="not a valid hashdiff summary"):
        load_summary(evil)


def test_hostile_summary_as_spec_evidence(example: tuple[Path, Path], tmp_path: Path) -> None:
    from bidspack.errors import SpecError
    from bidspack.spec import load_spec

    _, spec = example
    summ = {**_summary(tmp_path), "a": "../../../escaped"}
    (spec.parent / "hd").mkdir()
    (spec.parent / "hd" / "summary.json").write_text(json.dumps(summ))
    spec.write_text(
        spec.read_text().replace(
            'path = "*/atlaslabel_def_origspace_masked"',
            'path = "*/atlaslabel_def_origspace_masked"\nevidence = "hd/summary.json"',
        )
    )
    with pytest.raises(SpecError) as exc:
        load_spec(spec)
    assert exc.value.location == "exclude[0].evidence"


def test_output_symlink_replaced_not_followed(tmp_path: Path) -> None:
    _summary(tmp_path)
    sentinel = tmp_path / "sentinel.html"
    sentinel.write_text("keep me")
    out = tmp_path / "out"
    (out / "report.html").unlink()
    (out / "report.html").symlink_to(sentinel)
    write_outputs(hashdiff(tmp_path / "A", tmp_path / "B"), out)
    assert sentinel.read_text() == "keep me"
    assert not (out / "report.html").is_symlink() and "<html" in (out / "report.html").read_text()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_keep_in_dataset_refuses_control_characters(tmp_path: Path) -> None:
    from conftest import snapshot

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.11.1"}')
    for side in ("a\nb", "B"):
        (tmp_path / side).mkdir()
        tifffile.imwrite(tmp_path / side / "Z1.tif", plane(1))
    diff = hashdiff(tmp_path / "a\nb", tmp_path / "B")
    before = snapshot(ds)
    with pytest.raises(UnsafeInputError, match="control character"):
        keep_in_dataset(diff, ds)
    assert snapshot(ds) == before


def test_missing_and_symlinked_roots(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    tifffile.imwrite(tmp_path / "real" / "Z1.tif", plane(1))
    (tmp_path / "link").symlink_to(tmp_path / "real")  # named by the user: followed
    assert hashdiff(tmp_path / "link", tmp_path / "real").verdict == "identical"
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(SourceError, match=r"symbolic link to .*nowhere, which does not exist"):
        hashdiff(tmp_path / "gone", tmp_path / "real")
