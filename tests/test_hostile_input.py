"""Hostile and broken input to `bidspack package` (issue 11): specs, submissions, roots.

Every case runs the real CLI in a child process and checks: a non-zero exit (or the
documented clean success), an ``Error:`` line naming the file or key, no traceback,
nothing written outside the output folder (a sentinel file compared by sha256), the
submission unchanged (tree snapshot) and no output folder left behind. Memory cases run
under ``resource.setrlimit(RLIMIT_AS)`` and every child under a time limit. The table of
cases is ``docs/hostile-input.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import snapshot

SPEC = r"""spec_version = 1

[dataset]
Name = "hostile input"
Authors = ["A. Curator"]
License = "CC0"

[subjects]
pattern = '(?P<date>\d{6})_(?P<id>\d+)_(?P<geno>[A-Za-z]+)_(?P<sex>female|male)_(?P<hemi>LH|RH)'
label = "{id}{geno}"
sample = "brain{hemi}"

[subjects.participants.sex]
group = "sex"
Description = "sex"

[[channels]]
folder = "488_STP"
suffix = "SPIM"
entities = { stain = "STP" }
voxel_size = { z = 50, y = 40, x = 40 }
"""
SUBJECT = "210810_45670_ko_female_LH"

#: virtual memory of a child for the memory cases (planning needs < 1 GiB)
MEMORY_LIMIT = 1536 << 20


class Case:
    """A small real submission (tifffile-written slices), its spec, an output path and
    a sentinel file outside both, with snapshots to compare after a run."""

    def __init__(self, root: Path, spec: str = SPEC, slices: int = 3):
        self.root = root
        self.sub = root / "submission"
        self.channel = self.sub / SUBJECT / "488_STP"
        self.channel.mkdir(parents=True)
        for z in range(slices):
            tifffile.imwrite(self.channel / f"Z{z:04d}.tif", np.full((16, 20), z, np.uint16))
        self.spec = root / "spec.toml"
        self.spec.write_text(spec, encoding="utf-8")
        self.ds = root / "out" / "ds"
        outside = root / "outside"
        outside.mkdir()
        self.sentinel = outside / "sentinel.txt"
        self.sentinel.write_text("do not touch\n")
        self.before: dict[str, str] = {}

    def freeze(self) -> None:
        """Snapshot the submission and the sentinel (call after the hostile edit)."""
        self.before = tree(self.sub)
        self.sentinel_sha = hashlib.sha256(self.sentinel.read_bytes()).hexdigest()

    def run(
        self,
        *args: str,
        ds: Path | None = None,
        memory: int | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """``bidspack package SUB DS --spec SPEC ARGS`` in a child process."""
        if not self.before:
            self.freeze()

        def limit() -> None:
            if memory:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        cmd = [sys.executable, "-m", "bidspack", "package", str(self.sub), str(ds or self.ds)]
        return subprocess.run(
            [*cmd, "--spec", str(self.spec), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            preexec_fn=limit,
        )

    def assert_untouched(self) -> None:
        """The submission and the sentinel are as before."""
        assert tree(self.sub) == self.before
        assert hashlib.sha256(self.sentinel.read_bytes()).hexdigest() == self.sentinel_sha
        assert sorted(p.name for p in self.sentinel.parent.iterdir()) == ["sentinel.txt"]

    def assert_refused(self, proc: subprocess.CompletedProcess[str], *needles: str) -> None:
        """A clean error naming *needles*; nothing written anywhere."""
        assert proc.returncode != 0, proc.stdout
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "Error:" in proc.stderr, proc.stderr
        for needle in needles:
            assert needle in proc.stderr, (needle, proc.stderr)
        assert not self.ds.exists(), sorted(p.name for p in self.ds.rglob("*"))
        self.assert_untouched()


def tree(root: Path) -> dict[str, str]:
    """Every entry below *root* (lstat: links, FIFOs and sockets not followed or opened)
    with its sha256 (regular files up to 64 MiB), its size and mtime (larger files), its
    link target or its kind."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        st = p.lstat()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file() and st.st_size <= 64 << 20:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_file():
            out[rel] = f"{st.st_size} bytes, mtime {st.st_mtime_ns}"
        else:
            out[rel] = oct(st.st_mode)
    return out


def spec_with(**replace: str) -> str:
    """The case spec with lines replaced (``old=new`` pairs given as keyword values of
    the form ``"old|||new"``)."""
    text = SPEC
    for pair in replace.values():
        old, new = pair.split("|||")
        assert old in text, old
        text = text.replace(old, new)
    return text


# -- spec cases -----------------------------------------------------------------------

SPEC_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "folder-dotdot": (
        spec_with(a='folder = "488_STP"|||folder = "../../outside"'),
        ("channels[0].folder", "'..' component"),
    ),
    "folder-absolute": (
        spec_with(a='folder = "488_STP"|||folder = "/etc"'),
        ("channels[0].folder", "absolute path"),
    ),
    "template-unclosed": (
        spec_with(a='label = "{id}{geno}"|||label = "{id"'),
        ("subjects.label", "expected '}'"),
    ),
    "template-positional": (
        spec_with(a='label = "{id}{geno}"|||label = "{}"'),
        ("subjects.label", "not a group name"),
    ),
    "template-format-spec": (
        spec_with(a='label = "{id}{geno}"|||label = "{id:>9999}"'),
        ("subjects.label", "format spec"),
    ),
    "template-attribute": (
        spec_with(a='label = "{id}{geno}"|||label = "{id.upper}"'),
        ("subjects.label", "not a group name"),
    ),
    "template-index": (
        spec_with(a='sample = "brain{hemi}"|||sample = "{hemi[0]}"'),
        ("subjects.sample", "not a group name"),
    ),
    "pattern-backreference": (
        spec_with(a="(?P<hemi>LH|RH)'|||(?P<hemi>LH|RH)(?P=hemi)'"),
        ("subjects.pattern", "RE2"),
    ),
    "voxel-inf": (
        spec_with(a="z = 50,|||z = inf,"),
        ("channels[0].voxel_size.z", "not a finite number"),
    ),
    "voxel-nan": (
        spec_with(a="y = 40,|||y = nan,"),
        ("channels[0].voxel_size.y", "not a finite number"),
    ),
    "tile-huge": (
        SPEC + "\n[output]\ntile = 1048576\n",
        ("output.tile", "greater than the maximum of 4096"),
    ),
    "column-name": (
        SPEC + '\n[subjects.samples."bad name"]\nvalue = "x"\n',
        ("subjects.samples.bad name", "column name"),
    ),
    "column-value-tab": (
        SPEC + '\n[subjects.samples.site]\nvalue = "a\\tb"\n',
        ("subjects.samples.site.value", "control character"),
    ),
    "deep-nesting": (
        SPEC.replace(
            "voxel_size = { z",
            "sidecar = " + "{ a = " * 40 + "1" + " }" * 40 + "\nvoxel_size = { z",
        ),
        ("nested deeper than 32",),
    ),
    "two-typos-listed": (
        spec_with(
            a='suffix = "SPIM"|||sufix = "SPIM"', b='License = "CC0"|||License = "CC0"\nNmae = "x"'
        ),
        (
            "2 problems",
            "line 7: dataset.Nmae: unknown key 'Nmae'",
            "line 20: channels[0].sufix: unknown key 'sufix'",
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_spec_case(case: str, tmp_path: Path) -> None:
    text, needles = SPEC_CASES[case]
    c = Case(tmp_path, spec=text)
    proc = c.run("--dry-run", timeout=60)
    c.assert_refused(proc, str(c.spec), *needles)
    proc = c.run(timeout=60)
    c.assert_refused(proc, *needles)


def test_spec_invalid_utf8(tmp_path: Path) -> None:
    c = Case(tmp_path)
    c.spec.write_bytes(SPEC.encode() + b"# caf\xe9\n")
    c.assert_refused(c.run(), "not valid UTF-8", f"{c.spec}:{SPEC.count(chr(10)) + 1}")


def test_spec_too_large(tmp_path: Path) -> None:
    c = Case(tmp_path)
    c.spec.write_text(SPEC + "#" * (2 << 20) + "\n")
    c.assert_refused(c.run(memory=MEMORY_LIMIT), "larger than 1048576 bytes")


YAML_SPEC_HEAD = """spec_version: 1
dataset: {Name: hostile, Authors: [A. Curator], License: CC0}
subjects: {pattern: '(?P<id>.*)', label: '{id}'}
channels: [{folder: 488_STP, voxel_size: {z: 1, y: 1, x: 1}}]
"""


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    c = Case(tmp_path)
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        bomb.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    c.spec = tmp_path / "spec.yaml"
    c.spec.write_text(YAML_SPEC_HEAD + "sidecar_bomb:\n  " + "\n  ".join(bomb) + "\n")
    start = time.monotonic()
    c.assert_refused(c.run(memory=MEMORY_LIMIT, timeout=60), "aliases are expanded")
    assert time.monotonic() - start < 30


def test_yaml_recursive_alias(tmp_path: Path) -> None:
    c = Case(tmp_path)
    c.spec = tmp_path / "spec.yaml"
    c.spec.write_text(YAML_SPEC_HEAD + "loop: &l [*l]\n")
    c.assert_refused(c.run(memory=MEMORY_LIMIT, timeout=60), str(c.spec))


def test_backtracking_pattern_and_glob_are_linear(tmp_path: Path) -> None:
    """Patterns that take exponential time with a backtracking engine ((a+)+$ on a long
    run of a's) finish at once with RE2: the folder simply does not match."""
    text = spec_with(
        a="pattern = '(?P<date>\\d{6})|||pattern = '(?P<x>(a+)+)b|(?P<date>\\d{6})",
    )
    text += (
        '\n[[exclude]]\npath = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b"\nreason = "backtracking glob"\n'
    )
    c = Case(tmp_path, spec=text)
    (c.sub / ("a" * 250)).mkdir()
    start = time.monotonic()
    proc = c.run("--dry-run", timeout=60)
    assert time.monotonic() - start < 30
    c.assert_refused(proc, "match neither subjects.pattern nor an exclude", "aaaa")


def test_evidence_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "summary.json"
    os.mkfifo(fifo)
    text = SPEC + '\n[[exclude]]\npath = "*/x"\nreason = "evidence"\nevidence = "summary.json"\n'
    c = Case(tmp_path, spec=text)
    c.assert_refused(c.run(timeout=60), "exclude[0].evidence", "not a regular file")


def test_dates_in_sidecar_become_iso_strings(tmp_path: Path) -> None:
    """TOML dates are not JSON: they are written as ISO 8601 strings (a clean success)."""
    text = spec_with(
        a="voxel_size = {|||sidecar = { DateProcessed = 2021-08-10T12:30:00 }\n" + "voxel_size = {"
    )
    c = Case(tmp_path, spec=text)
    proc = c.run("--no-validate")
    assert proc.returncode == 0, proc.stderr
    sidecar = next(c.ds.glob("sub-*/micr/*.json"))
    assert json.loads(sidecar.read_text())["DateProcessed"] == "2021-08-10T12:30:00"
    c.assert_untouched()


# -- submission cases -----------------------------------------------------------------


def test_symlink_to_a_file_outside_is_refused_not_copied(tmp_path: Path) -> None:
    c = Case(tmp_path)
    (c.channel / "loot.txt").symlink_to(c.sentinel)
    proc = c.run("--json", "--no-validate")
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    refused = [r for r in recs if r["action"] == "refuse"]
    assert [r["path"] for r in refused] == [f"{SUBJECT}/488_STP/loot.txt"]
    assert refused[0]["status"] == "impossible" and "not followed" in refused[0]["message"]
    assert not any("loot" in p.name for p in c.ds.rglob("*"))
    plan = json.loads((c.ds / "code/bidspack/plan.json").read_text())
    assert any(a["kind"] == "refuse" for a in plan["actions"])
    # --follow-symlinks follows only links that stay inside the submission
    proc = c.run("--json", "--no-validate", "--follow-symlinks", ds=tmp_path / "ds2")
    assert proc.returncode == 0, proc.stderr
    assert "leads outside the submission" in proc.stdout
    assert not any("loot" in p.name for p in (tmp_path / "ds2").rglob("*"))
    c.assert_untouched()


def test_follow_symlinks_inside_the_submission(tmp_path: Path) -> None:
    text = SPEC + '\n[[exclude]]\npath = "notes"\nreason = "shared notes, linked per subject"\n'
    c = Case(tmp_path, spec=text)
    (c.sub / "notes").mkdir()
    (c.sub / "notes" / "protocol.txt").write_text("protocol\n")
    (c.channel / "protocol.txt").symlink_to("../../notes/protocol.txt")
    proc = c.run("--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "not followed" in proc.stdout and "--follow-symlinks" in proc.stdout
    proc = c.run("--no-validate", "--follow-symlinks")
    assert proc.returncode == 0, proc.stderr
    copied = c.ds / "sourcedata/sub-45670ko/488_STP/protocol.txt"
    assert copied.read_text() == "protocol\n" and not copied.is_symlink()
    plan = json.loads((c.ds / "code/bidspack/plan.json").read_text())
    assert plan["parameters"]["followed_symlinks"] == [
        [f"{SUBJECT}/488_STP/protocol.txt", "notes/protocol.txt"]
    ]
    c.assert_untouched()


def test_symlinked_subject_folder_and_loop(tmp_path: Path) -> None:
    c = Case(tmp_path)
    elsewhere = tmp_path / "outside" / "210811_45671_wt_male_RH"
    (elsewhere / "488_STP").mkdir(parents=True)
    tifffile.imwrite(elsewhere / "488_STP" / "Z0000.tif", np.zeros((16, 20), np.uint16))
    (c.sub / elsewhere.name).symlink_to(elsewhere)
    (c.channel / "loop").symlink_to(".")
    c.sentinel = elsewhere / "488_STP" / "Z0000.tif"  # must stay unread and unchanged
    for extra in ((), ("--follow-symlinks",)):
        proc = c.run("--dry-run", "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        recs = {json.loads(line)["path"]: json.loads(line) for line in proc.stdout.splitlines()}
        assert recs[elsewhere.name]["action"] == "refuse"
        assert recs[f"{SUBJECT}/488_STP/loop"]["action"] == "refuse"
        assert not any("45671" in p for p in recs if p.startswith("sub-"))
    assert tree(c.sub) == c.before


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_fifo_and_socket_are_refused_without_hanging(kind: str, tmp_path: Path) -> None:
    c = Case(tmp_path)
    special = c.channel / f"special.{kind}"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        cwd = os.getcwd()
        os.chdir(c.channel)  # AF_UNIX paths are short: bind a relative name
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(special.name)
            sock.close()
        finally:
            os.chdir(cwd)
    proc = c.run("--json", "--no-validate", timeout=60)
    assert proc.returncode == 0, proc.stderr
    refused = [json.loads(x) for x in proc.stdout.splitlines() if '"refuse"' in x]
    assert len(refused) == 1 and refused[0]["path"].endswith(special.name)
    assert ("FIFO" if kind == "fifo" else "socket") in refused[0]["message"]
    c.assert_untouched()


@pytest.mark.parametrize("char", ["\t", "\n", "\r"])
def test_control_character_in_a_file_name(char: str, tmp_path: Path) -> None:
    c = Case(tmp_path)
    (c.channel / f"notes{char}x.txt").write_text("x\n")
    c.assert_refused(c.run(), "notes", "control character")


def test_label_too_long(tmp_path: Path) -> None:
    c = Case(tmp_path, spec=spec_with(a='label = "{id}{geno}"|||label = "' + "{id}" * 66 + '"'))
    c.assert_refused(c.run(), "has 330 characters", "at most 64")


def test_labels_differing_only_in_case(tmp_path: Path) -> None:
    c = Case(tmp_path)
    other = c.sub / SUBJECT.replace("_ko_", "_KO_") / "488_STP"
    other.mkdir(parents=True)
    tifffile.imwrite(other / "Z0000.tif", np.zeros((16, 20), np.uint16))
    c.assert_refused(c.run(), "differ only in case", "'45670KO' and '45670ko'")


def test_huge_slice_index_is_counted_not_materialised(tmp_path: Path) -> None:
    c = Case(tmp_path)
    tifffile.imwrite(c.channel / "Z99999999999.tif", np.zeros((16, 20), np.uint16))
    start = time.monotonic()
    c.assert_refused(
        c.run(memory=MEMORY_LIMIT, timeout=60),
        "99999999996 missing between 0 and 99999999999",
        "missing: 3, 4, 5",
    )
    assert time.monotonic() - start < 30


def _claim_size(path: Path, width: int, length: int) -> None:
    """Rewrite the ImageWidth/ImageLength of a classic little-endian TIFF's first IFD."""
    data = bytearray(path.read_bytes())
    ifd = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[ifd : ifd + 2], "little")
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag = int.from_bytes(data[entry : entry + 2], "little")
        typ = int.from_bytes(data[entry + 2 : entry + 4], "little")
        if tag in (256, 257):
            assert typ in (3, 4)
            value = width if tag == 256 else length
            data[entry + 8 : entry + 12] = (
                (value if typ == 4 else value & 0xFFFF)
                .to_bytes(4 if typ == 4 else 2, "little")
                .ljust(4, b"\0")
            )
    path.write_bytes(bytes(data))


def test_plane_header_over_the_budget_is_refused_before_decoding(tmp_path: Path) -> None:
    c = Case(tmp_path)
    for z in range(3):
        f = c.channel / f"Z{z:04d}.tif"
        tifffile.imwrite(f, np.zeros((256, 256), np.uint16), tile=(256, 256), compression="zlib")
        _claim_size(f, 30000, 30000)
    assert tifffile.TiffFile(c.channel / "Z0000.tif").pages[0].shape == (30000, 30000)
    c.assert_refused(
        c.run(memory=MEMORY_LIMIT, timeout=60),
        "Z0000.tif",
        "30000 x 30000 uint16",
        "budget of 1024 MiB",
        "BIDSPACK_MAX_PLANE_MB",
    )


def test_big_non_tiff_is_refused_by_signature(tmp_path: Path) -> None:
    """A 200 GB file named like a slice (sparse: no disk used) is refused from its
    first bytes, not read."""
    c = Case(tmp_path)
    with open(c.channel / "Z0003.tif", "wb") as fh:
        fh.truncate(200 * 10**9)
    start = time.monotonic()
    c.assert_refused(
        c.run(memory=MEMORY_LIMIT, timeout=60), "Z0003.tif", "not a readable TIFF file"
    )
    assert time.monotonic() - start < 30


def test_output_inside_the_submission_is_refused(tmp_path: Path) -> None:
    c = Case(tmp_path)
    c.assert_refused(c.run(ds=c.sub / "packaged"), "inside the submission")
    c.assert_refused(c.run("--dry-run", ds=c.sub / SUBJECT), "inside the submission")
    assert not (c.sub / "packaged").exists()


def test_submission_inside_the_output_is_refused(tmp_path: Path) -> None:
    c = Case(tmp_path)
    c.assert_refused(c.run(ds=tmp_path), "contains the submission")


def test_two_runs_into_one_new_folder_never_lose_data(tmp_path: Path) -> None:
    """Two `package` processes started together into one new folder: one may lose the
    lock (a clean error) but never removes or changes what the winner committed; the
    result equals a run alone, and a third run has nothing to do."""
    c = Case(tmp_path, slices=40)
    c.freeze()
    ref = tmp_path / "ref"
    assert c.run("--no-validate", ds=ref).returncode == 0
    for attempt in range(3):
        ds = tmp_path / f"race{attempt}"
        cmd = [
            sys.executable,
            "-m",
            "bidspack",
            "package",
            str(c.sub),
            str(ds),
            "--spec",
            str(c.spec),
            "--no-validate",
        ]
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
        assert any(rc == 0 for rc, _ in results), results
        for rc, err in results:
            assert "Traceback" not in err
            if rc != 0:
                assert "another bidspack process" in err, err
        assert _data(ds) == _data(ref)
        again = c.run("--json", "--no-validate", ds=ds)
        steps = [json.loads(x) for x in again.stdout.splitlines() if '"step"' in x]
        assert steps and all(s["status"] == "notneeded" for s in steps)
    c.assert_untouched()


def _data(ds: Path) -> dict[str, str]:
    """Snapshot of the data files (provenance records carry times and ids)."""
    return {
        k: v
        for k, v in snapshot(ds).items()
        if not k.startswith((".bidspack/", "code/bidspack/provenance")) and "manifest" not in k
    }


# -- property-based: every planned path stays inside and is a BIDS name ------------

import hypothesis  # noqa: E402  (a test dependency)
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

NAME = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=40
).filter(lambda s: s not in (".", ".."))
TEMPLATE = st.lists(
    st.one_of(
        st.sampled_from(["{a}", "{b}", "{a.x}", "{0}", "{}", "{a:>3}", "{a!r}", "{{", "}}", "{"]),
        st.text(alphabet="abc-_ .x/\\{}", max_size=4),
    ),
    min_size=1,
    max_size=4,
).map("".join)


def toml_str(value: str) -> str:
    """A TOML basic string (JSON escapes are TOML escapes; astral characters literal)."""
    return json.dumps(value, ensure_ascii=False)


def _plan_paths(
    root: Path, folders: list[str], label: str, sample: str, channel: str, stain: str
) -> list[str] | None:
    """Plan a submission of *folders* (each with a channel folder of 2 slices) with the
    given spec values; the plan's targets, or None when bidspack refuses the input."""
    from bidspack.errors import BidspackError
    from bidspack.ops.package import build_plan
    from bidspack.spec import load_spec

    sub = root / "sub"
    for name in folders:
        try:
            ch = sub / name / channel
            ch.mkdir(parents=True, exist_ok=True)
            for z in range(2):
                tifffile.imwrite(ch / f"z{z}.tif", np.zeros((4, 4), np.uint8))
        except (OSError, ValueError):
            return None  # not a name the file system takes
    spec = root / "spec.json.toml"
    doc = (
        'spec_version = 1\n[dataset]\nName = "p"\nAuthors = ["a"]\nLicense = "CC0"\n'
        f"[subjects]\npattern = '(?P<a>[^_]*)_?(?P<b>.*)'\nlabel = {toml_str(label)}\n"
        f"sample = {toml_str(sample)}\n[[channels]]\nfolder = {toml_str(channel)}\n"
        f"entities = {{ stain = {toml_str(stain)} }}\n"
        "voxel_size = { z = 1, y = 1, x = 1 }\n"
    )
    spec.write_text(doc, encoding="utf-8", errors="surrogateescape")
    try:
        plan = build_plan(sub, load_spec(spec))
    except BidspackError as exc:
        hypothesis.event(f"refused: {type(exc).__name__} {exc.reason[:50]}")
        return None
    return plan.targets()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    folders=st.lists(
        st.one_of(NAME, st.from_regex(r"[0-9]{1,6}[_-][A-Za-z ]{1,5}", fullmatch=True)),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    label=st.one_of(st.sampled_from(["{a}", "{a}{b}", "x{a}-{b}", "{b}_{a}"]), TEMPLATE),
    sample=st.one_of(st.sampled_from(["{b}", "brain", "{a}.{b}"]), TEMPLATE),
    channel=st.one_of(NAME, st.sampled_from(["../x", "/etc", "a/../../b", "ch", "a/b"])),
    stain=st.one_of(st.sampled_from(["N4", "Lectin488"]), st.text(max_size=6)),
)
@example(folders=["45670_ko"], label="{a}{b}", sample="{b}", channel="ch", stain="N4")
@example(folders=["4-5_k o"], label="{a}x{b}", sample="s{a}", channel="a/b", stain="N4")
def test_planned_paths_stay_inside_and_are_bids_names(
    tmp_path_factory: pytest.TempPathFactory,
    folders: list[str],
    label: str,
    sample: str,
    channel: str,
    stain: str,
) -> None:
    from bidsschematools import validator

    from bidspack.safety import check_relpath

    root = tmp_path_factory.mktemp("prop")
    targets = _plan_paths(root, folders, label, sample, channel, stain)
    if targets is None:
        assert folders not in (["45670_ko"], ["4-5_k o"]), "a valid submission was refused"
        return  # refused: a clean BidspackError
    ds = root / "dataset"
    micr = []
    for t in targets:
        assert check_relpath(t, what="target") == t
        assert (ds / t).resolve().is_relative_to(ds.resolve())
        if t.startswith("sub-"):
            micr.append(f"/ds/{t}")
    assert micr
    hypothesis.event("planned")
    result = validator.validate_bids(
        micr,
        dummy_paths=True,
        suppress_errors=True,
        bids_reference_root="/ds",
        accept_non_bids_dir=True,
    )
    assert result["path_tracking"] == [], result["path_tracking"]


def test_draft_spec_does_not_follow_links(tmp_path: Path) -> None:
    """draft-spec scans by lstat too: a slice-named link to a FIFO outside is never
    opened (it would block), and the channel is described from its 3 real slices."""
    c = Case(tmp_path)
    fifo = c.sentinel.parent / "pipe"
    os.mkfifo(fifo)
    (c.channel / "Z0003.tif").symlink_to(fifo)
    c.freeze()
    proc = subprocess.run(
        [sys.executable, "-m", "bidspack", "draft-spec", str(c.sub)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "# 3 TIFF file(s), shape (z, y, x) (3, 16, 20)" in proc.stdout, proc.stdout
    assert tree(c.sub) == c.before
    fifo.unlink()
