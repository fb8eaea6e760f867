"""Hostile and broken input to recover (journals), release, rename-subject and export
(issue 11): every case is refused with a clean ``Error:`` naming the file or key, no
traceback, nothing outside the dataset changed (a sentinel compared by sha256) and the
dataset unchanged (tree snapshot), all through the real CLI in a child process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bidspack.errors import UnsafeInputError
from bidspack.ops.release import _VERSION, check_version
from bidspack.txn import Transaction, pending, recover
from bidspack.txn.transaction import MAX_JOURNAL_BYTES, check_transaction
from conftest import run_bidspack, snapshot

SUB = "sub-45670ko"
SIDECAR = f"{SUB}/micr/{SUB}_sample-brainLH_stain-N4_SPIM.json"
TXN = "20990101T000000-1-1"


# -- helpers --------------------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A file outside the dataset that nothing may read, change or delete."""
    out = tmp_path / "outside"
    out.mkdir()
    f = out / "file"
    f.write_text(f"{SUB} sentinel: must survive\n")
    return f


def state(ds: Path) -> dict[str, str]:
    """The dataset's snapshot without the lock file (its holder line) and ``.git``
    internals (git itself refreshes its index when asked for the status)."""
    return {
        k: v for k, v in snapshot(ds).items() if k != ".bidspack/lock" and not k.startswith(".git/")
    }


def refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert a clean refusal: non-zero exit, ``Error:``, each needle, no traceback."""
    err = proc.stderr.replace("\n", "")
    assert proc.returncode not in (0, None), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Error:" in err, proc.stderr
    for needle in needles:
        assert needle in err, f"{needle!r} not in {proc.stderr!r}"
    return err


def committed_txn(ds: Path, journal: object | str | bytes, txn_id: str = TXN) -> Path:
    """A transaction folder with COMMITTED and the given journal (object: JSON)."""
    root = ds / ".bidspack" / "txn" / txn_id
    (root / "tree").mkdir(parents=True)
    path = root / "journal.json"
    if isinstance(journal, bytes):
        path.write_bytes(journal)
    elif isinstance(journal, str):
        path.write_text(journal, encoding="utf-8")
    else:
        path.write_text(json.dumps(journal), encoding="utf-8")
    (root / "COMMITTED").write_text(txn_id + "\n")
    return root


def ops(*entries: dict[str, object]) -> dict[str, object]:
    return {"version": 1, "ops": list(entries)}


# -- 1. journals are untrusted input ---------------------------------------------------


JOURNALS = {
    "dotdot-delete": (ops({"op": "delete", "path": "../outside/file"}), "'..' component"),
    "absolute-delete": (ops({"op": "delete", "path": "/etc/hostname"}), "absolute path"),
    "rename-to-outside": (
        ops({"op": "rename", "path": "README.md", "to": "../outside/README.md"}),
        "ops[0].to",
    ),
    "unknown-op": (ops({"op": "chmod", "path": "README.md"}), "ops[0].op"),
    "path-not-string": (ops({"op": "delete", "path": 7}), "ops[0].path"),
    "ops-not-list": ({"version": 1, "ops": {"op": "delete"}}, "ops:"),
    "wrong-version": (ops({"op": "delete", "path": "README.md"}) | {"version": 99}, "version"),
    "extra-key": (ops({"op": "delete", "path": "README.md", "mode": "0777"}), "ops[0]"),
    "to-on-delete": (ops({"op": "delete", "path": "README.md", "to": "x"}), "'to' is only"),
    "rename-without-to": (ops({"op": "rename", "path": "README.md"}), "'to' is a required"),
    "control-char": (ops({"op": "delete", "path": "README.md\n"}), "control character"),
    "engine-state": (ops({"op": "delete", "path": ".bidspack/txn"}), "transaction state"),
    "malformed-json": ('{"version": 1, "ops": [', "not valid JSON"),
    "latin1": (b'{"version": 1, "ops": [{"op": "delete", "path": "M\xfcller"}]}', "not UTF-8"),
    "deep-nesting": ("[" * 100_000, "journal.json"),
}


@pytest.mark.parametrize("case", list(JOURNALS))
def test_tampered_journal_refused(case: str, dataset: Path, sentinel: Path) -> None:
    journal, needle = JOURNALS[case]
    committed_txn(dataset, journal)
    before, outside = state(dataset), sha(sentinel)
    proc = run_bidspack("recover", str(dataset))
    refused(proc, f".bidspack/txn/{TXN}/journal.json", needle, "nothing was applied")
    assert sha(sentinel) == outside and state(dataset) == before
    assert pending(dataset) == [TXN]


def test_journal_through_symlinked_folder(dataset: Path, sentinel: Path) -> None:
    """A path whose folder is a symbolic link leading outside (the link exists in
    the dataset) is refused, though its syntax is fine."""
    (dataset / "sourcedata" / "escape").symlink_to(sentinel.parent, target_is_directory=True)
    committed_txn(dataset, ops({"op": "delete", "path": "sourcedata/escape/file"}))
    before, outside = state(dataset), sha(sentinel)
    refused(run_bidspack("recover", str(dataset)), "ops[0].path", "sourcedata/escape")
    assert sentinel.exists() and sha(sentinel) == outside and state(dataset) == before


def test_huge_journal_refused(dataset: Path, sentinel: Path) -> None:
    root = committed_txn(dataset, "")
    with open(root / "journal.json", "wb") as fh:
        fh.truncate(MAX_JOURNAL_BYTES + 1)  # sparse: cheap to make, read only to the limit
    before = state(dataset)
    refused(
        run_bidspack("recover", str(dataset)), "journal.json", f"larger than {MAX_JOURNAL_BYTES}"
    )
    assert state(dataset) == before and sentinel.exists()


def test_journal_symlink_to_outside_journal(dataset: Path, tmp_path: Path) -> None:
    """journal.json is a link to a well-formed journal elsewhere that deletes a
    dataset file: refused, the file is kept."""
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(ops({"op": "delete", "path": "README.md"})))
    root = committed_txn(dataset, ops())
    (root / "journal.json").unlink()
    (root / "journal.json").symlink_to(evil)
    before = state(dataset)
    refused(run_bidspack("recover", str(dataset)), "journal.json", "symbolic link")
    assert (dataset / "README.md").is_file() and state(dataset) == before


def test_staged_tree_symlink_to_outside(dataset: Path, sentinel: Path) -> None:
    root = committed_txn(dataset, ops({"op": "put", "path": "stolen.txt"}))
    (root / "tree" / "stolen.txt").symlink_to(sentinel)
    before, outside = state(dataset), sha(sentinel)
    refused(run_bidspack("recover", str(dataset)), "tree/stolen.txt", "symbolic link")
    assert not (dataset / "stolen.txt").exists() and not (dataset / "stolen.txt").is_symlink()
    assert sha(sentinel) == outside and state(dataset) == before


def test_staged_tree_folder_is_symlink(dataset: Path, sentinel: Path) -> None:
    """tree/ itself is a link to an outside folder: applying would move the sentinel
    into the dataset."""
    root = committed_txn(dataset, ops({"op": "put", "path": "file"}))
    (root / "tree").rmdir()
    (root / "tree").symlink_to(sentinel.parent, target_is_directory=True)
    before, outside = state(dataset), sha(sentinel)
    refused(run_bidspack("recover", str(dataset)), f"{TXN}/tree", "symbolic link")
    assert sha(sentinel) == outside and state(dataset) == before


def test_backup_folder_is_symlink(dataset: Path, sentinel: Path) -> None:
    """backup/ is a link to an outside folder: a delete would move a dataset file out."""
    root = committed_txn(dataset, ops({"op": "delete", "path": "README.md"}))
    (root / "backup").symlink_to(sentinel.parent, target_is_directory=True)
    before, outside = state(dataset), snapshot(sentinel.parent)
    refused(run_bidspack("recover", str(dataset)), f"{TXN}/backup", "symbolic link")
    assert snapshot(sentinel.parent) == outside and state(dataset) == before


def test_transaction_folder_is_symlink(dataset: Path, sentinel: Path) -> None:
    """An uncommitted 'transaction' that is a link to an outside folder is not rolled
    back (that would delete the folder's content)."""
    (dataset / ".bidspack" / "txn").mkdir(parents=True, exist_ok=True)
    (dataset / ".bidspack" / "txn" / "evil").symlink_to(sentinel.parent, target_is_directory=True)
    before, outside = state(dataset), snapshot(sentinel.parent)
    refused(run_bidspack("recover", str(dataset)), ".bidspack/txn/evil", "symbolic link")
    assert snapshot(sentinel.parent) == outside and state(dataset) == before


def test_transaction_folder_name_with_newline(dataset: Path) -> None:
    (dataset / ".bidspack" / "txn" / "bad\nname").mkdir(parents=True)
    before = state(dataset)
    refused(run_bidspack("recover", str(dataset)), "transaction folder name", "control character")
    assert state(dataset) == before


def test_one_bad_journal_stops_all(dataset: Path, sentinel: Path) -> None:
    """A valid committed transaction is not applied either when another pending one is
    refused: every folder is checked before anything is applied or removed."""
    good = committed_txn(dataset, ops({"op": "put", "path": "good.txt"}), "20990101T000000-1-0")
    (good / "tree" / "good.txt").write_text("good\n")
    (dataset / ".bidspack" / "txn" / "20990101T000000-1-00").mkdir()  # to roll back
    committed_txn(dataset, ops({"op": "delete", "path": "../outside/file"}))
    before = state(dataset)
    refused(run_bidspack("recover", str(dataset)), "'..' component")
    assert state(dataset) == before and sentinel.exists()
    assert not (dataset / "good.txt").exists() and len(pending(dataset)) == 3


def test_any_command_refuses_a_tampered_journal(dataset: Path, sentinel: Path) -> None:
    """Commands recover first (rename-subject here): the journal is refused there too."""
    committed_txn(dataset, ops({"op": "delete", "path": "../outside/file"}))
    before = state(dataset)
    proc = run_bidspack("rename-subject", str(dataset), "45670ko", "m1", "--no-validate")
    refused(proc, "journal.json", "'..' component")
    assert state(dataset) == before and sentinel.exists()


def test_valid_journal_still_rolls_forward(dataset: Path) -> None:
    """The checks accept what the engine writes: put, replace, delete and rename."""
    root = committed_txn(
        dataset,
        ops(
            {"op": "rename", "path": "sourcedata/sub-45671floxed", "to": "sourcedata/moved"},
            {"op": "delete", "path": "README.md"},
            {"op": "put", "path": "new/file.txt"},
            {"op": "replace", "path": "participants.json"},
        ),
    )
    (root / "tree" / "new").mkdir()
    (root / "tree" / "new" / "file.txt").write_text("new\n")
    (root / "tree" / "participants.json").write_text("{}\n")
    assert check_transaction(dataset, TXN) is not None
    assert recover(dataset) == [(TXN, "rolled forward")]
    assert (dataset / "sourcedata/moved").is_dir() and not (dataset / "README.md").exists()
    assert (dataset / "participants.json").read_text() == "{}\n"


def test_transaction_methods_check_paths(dataset: Path, sentinel: Path) -> None:
    """Defence in depth: the engine refuses unsafe paths when they are registered, and
    an operation through a symlinked folder before the commit point."""
    with pytest.raises(UnsafeInputError, match="transaction folder name"):
        Transaction(dataset, "../escape")
    txn = Transaction(dataset)
    for call, needle in (
        (lambda: txn.stage_path("../outside/x"), "'..' component"),
        (lambda: txn.stage_dir("/abs"), "absolute path"),
        (lambda: txn.delete("a\tb"), "control character"),
        (lambda: txn.rename("README.md", "../x"), "'..' component"),
        (lambda: txn.rename("a\\b", "c"), "backslash"),
    ):
        with pytest.raises(UnsafeInputError, match=needle):
            call()
    assert txn.stage_path("a/./b.txt") == txn.tree / "a" / "b.txt"
    txn.abort()
    before = state(dataset)
    (dataset / "escape").symlink_to(sentinel.parent, target_is_directory=True)
    txn = Transaction(dataset)
    txn.delete("escape/file")
    with pytest.raises(UnsafeInputError, match="escape"):
        txn.commit()
    assert not (txn.root / "COMMITTED").exists()  # refused before the commit point
    txn.abort()
    (dataset / "escape").unlink()
    assert sentinel.exists() and state(dataset) == before and pending(dataset) == []


# -- 2. release versions ----------------------------------------------------------------


@pytest.fixture(scope="module")
def datalad_ds(packaged_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DataLad copy of the packaged example (clean, releasable), shared by the
    release cases: each must leave it unchanged."""
    assert shutil.which("datalad") and shutil.which("git-annex"), (
        "datalad and git-annex are dependencies of bidspack"
    )
    ds = tmp_path_factory.mktemp("release") / "ds"
    shutil.copytree(packaged_run[0], ds)
    proc = run_bidspack("init", str(ds), "--datalad")
    assert proc.returncode == 0, proc.stderr
    return ds


def git(ds: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ds, capture_output=True, text=True, check=True).stdout


RELEASES = {
    "trailing-newline": (("1.0.0\n",), "'1.0.0\\n'"),
    "leading-space": ((" 1.0.0",), "whitespace"),
    "tab": (("1.0.0\tx",), "whitespace"),
    "double-dot": (("1.0.0..x",), "git check-ref-format"),
    "dot-lock": (("1.0.0.lock",), "git check-ref-format"),
    "not-a-version": (("latest",), "is not a version"),
    "too-long": (("1.0.0-" + "a" * 200,), "longer than"),
    "note-with-newline": (("1.0.0", "--note", "fixed\n2.0.0 2020-01-01"), "--note"),
}


@pytest.mark.parametrize("case", list(RELEASES))
def test_bad_release_version_changes_nothing(case: str, datalad_ds: Path) -> None:
    args, needle = RELEASES[case]
    head, tags = git(datalad_ds, "rev-parse", "HEAD"), git(datalad_ds, "tag", "--list")
    before = state(datalad_ds)
    proc = run_bidspack("release", str(datalad_ds), *args)
    refused(proc, str(datalad_ds), needle)
    assert git(datalad_ds, "rev-parse", "HEAD") == head
    assert git(datalad_ds, "tag", "--list") == tags
    assert git(datalad_ds, "status", "--porcelain") == ""
    assert not (datalad_ds / "CHANGES").exists() and state(datalad_ds) == before


def test_version_check_uses_git(tmp_path: Path) -> None:
    """``1.0.0..x`` and ``1.0.0.lock`` pass the version pattern: only the real git
    refuses them; valid versions pass both."""
    for version in ("1.0.0..x", "1.0.0.lock"):
        assert _VERSION.fullmatch(version)
        with pytest.raises(Exception, match="git check-ref-format"):
            check_version(tmp_path, version)
    for version in ("1.0.0", "v2.10.3", "1.0.0-rc.1", "v1.2.3.post4"):
        assert check_version(tmp_path, version) == version


# -- 3. rename-subject reading malformed files -----------------------------------------


def _latin1_table(ds: Path, name: str) -> None:
    """The table saved as Latin-1 with a non-ASCII last cell (same width)."""
    lines = (ds / name).read_text(encoding="utf-8").splitlines()
    cells = lines[1].split("\t")
    cells[-1] = "Müller"
    lines[1] = "\t".join(cells)
    (ds / name).write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def _tab_in_value(ds: Path, name: str) -> None:
    lines = (ds / name).read_text(encoding="utf-8").splitlines()
    lines[1] += "\tleft\tover"  # a value written with tabs adds cells
    (ds / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


RENAMES = {
    "description-malformed": (
        lambda ds: (ds / "dataset_description.json").write_text('{"Name": "x",'),
        ("dataset_description.json", "not valid JSON (line 1"),
    ),
    "description-not-object": (
        lambda ds: (ds / "dataset_description.json").write_text("[1, 2]"),
        ("dataset_description.json", "not a JSON object"),
    ),
    "sidecar-malformed": (
        lambda ds: (ds / SIDECAR).write_text(
            '{"IntendedFor": "bids::sub-45670ko/micr/x.ome.tif",\n'
        ),
        (SIDECAR, "not valid JSON (line 2"),
    ),
    "sidecar-latin1": (
        lambda ds: (ds / SIDECAR).write_bytes(
            '{"IntendedFor": "bids::sub-45670ko/x", "Operator": "Müller"}'.encode("latin-1")
        ),
        (SIDECAR, "not UTF-8 text (byte 0xfc"),
    ),
    "participants-latin1": (
        lambda ds: _latin1_table(ds, "participants.tsv"),
        ("participants.tsv", "not UTF-8 text (byte 0xfc"),
    ),
    "samples-latin1": (
        lambda ds: _latin1_table(ds, "samples.tsv"),
        ("samples.tsv", "not UTF-8 text (byte 0xfc"),
    ),
    "participants-tab-in-value": (
        lambda ds: _tab_in_value(ds, "participants.tsv"),
        ("participants.tsv:2", "tab-separated cells"),
    ),
    "samples-tab-in-value": (
        lambda ds: _tab_in_value(ds, "samples.tsv"),
        ("samples.tsv:2", "tab-separated cells"),
    ),
}


@pytest.mark.parametrize("dry_run", [False, True], ids=["apply", "dry-run"])
@pytest.mark.parametrize("case", list(RENAMES))
def test_rename_malformed_file(case: str, dry_run: bool, dataset: Path, sentinel: Path) -> None:
    damage, needles = RENAMES[case]
    damage(dataset)
    before, outside = state(dataset), sha(sentinel)
    args = ["rename-subject", str(dataset), "45670ko", "m1", "--no-validate"]
    proc = run_bidspack(*args, *(["--dry-run"] if dry_run else []))
    refused(proc, *needles)
    assert state(dataset) == before and sha(sentinel) == outside and pending(dataset) == []


def test_rename_symlinked_sidecar_outside(dataset: Path, sentinel: Path) -> None:
    """A sidecar that is a link to a file outside is not read (nor replaced)."""
    (dataset / SIDECAR).unlink()
    (dataset / SIDECAR).symlink_to(sentinel)
    before, outside = state(dataset), sha(sentinel)
    proc = run_bidspack("rename-subject", str(dataset), "45670ko", "m1", "--no-validate")
    refused(proc, SIDECAR, "symbolic link", "outside the dataset")
    assert (dataset / SIDECAR).is_symlink() and state(dataset) == before
    assert sha(sentinel) == outside


# -- 4. export reading malformed files and links ---------------------------------------

RECORDS = "code/bidspack/provenance"


def _first_record(ds: Path) -> Path:
    return sorted((ds / RECORDS).glob("*.json"))[0]


def _link_record_outside(ds: Path, outside: Path) -> str:
    rec = _first_record(ds)
    shutil.copy(rec, outside / rec.name)  # a well-formed record, but outside
    rec.unlink()
    rec.symlink_to(outside / rec.name)
    return f"{RECORDS}/{rec.name}"


def _link_readme_outside(ds: Path, outside: Path) -> str:
    (ds / "README.md").unlink()
    (ds / "README.md").symlink_to(outside / "file")
    return "README.md"


def _link_folder_outside(ds: Path, outside: Path) -> str:
    (ds / "sourcedata" / "more").symlink_to(outside, target_is_directory=True)
    return "sourcedata/more"


def _truncate_record(ds: Path, outside: Path) -> str:
    rec = _first_record(ds)
    rec.write_text(rec.read_text()[:50])
    return f"{rec.name}"


def _latin1_record(ds: Path, outside: Path) -> str:
    rec = _first_record(ds)
    text = rec.read_text().replace('"BIDSProvVersion": "', '"BIDSProvVersion": "Müller ', 1)
    rec.write_bytes(text.encode("latin-1"))
    return rec.name


def _record_wrong_shape(ds: Path, outside: Path) -> str:
    rec = _first_record(ds)
    doc = json.loads(rec.read_text())
    doc["Records"]["Activities"] = "none"
    rec.write_text(json.dumps(doc))
    return rec.name


def _description_malformed(ds: Path, outside: Path) -> str:
    (ds / "dataset_description.json").write_text('{"Name": ')
    return "dataset_description.json"


def _participants_latin1(ds: Path, outside: Path) -> str:
    _latin1_table(ds, "participants.tsv")
    return "participants.tsv"


def _manifest_latin1(ds: Path, outside: Path) -> str:
    path = ds / "code/bidspack/manifest.tsv"
    path.write_bytes(path.read_bytes() + "x\xfc\t1\n".encode("latin-1"))
    return "manifest.tsv"


FORMATS = ("prov-json", "ro-crate", "bagit")
COPIES = ("ro-crate", "bagit")  # prov-json neither copies nor reads participants.tsv
EXPORTS = {
    "record-symlink-outside": (_link_record_outside, "outside the dataset", FORMATS),
    "readme-symlink-outside": (_link_readme_outside, "outside the dataset", FORMATS),
    "folder-symlink-outside": (_link_folder_outside, "outside the dataset", FORMATS),
    "record-truncated": (_truncate_record, "not valid JSON", FORMATS),
    "record-latin1": (_latin1_record, "not UTF-8 text", FORMATS),
    "record-wrong-shape": (_record_wrong_shape, "Records.Activities", FORMATS),
    "description-malformed": (_description_malformed, "not valid JSON", FORMATS),
    "manifest-latin1": (_manifest_latin1, "not UTF-8 text", FORMATS),
    "participants-latin1": (_participants_latin1, "not UTF-8 text (byte 0xfc", COPIES),
}


@pytest.mark.parametrize(
    ("case", "fmt"), [(case, fmt) for case, (_, _, fmts) in EXPORTS.items() for fmt in fmts]
)
def test_export_refuses(case: str, fmt: str, dataset: Path, sentinel: Path, tmp_path: Path) -> None:
    damage, needle, _ = EXPORTS[case]
    named = damage(dataset, sentinel.parent)
    before, outside = state(dataset), snapshot(sentinel.parent)
    out = tmp_path / "exports" / ("out.json" if fmt == "prov-json" else "out")
    out.parent.mkdir()
    proc = run_bidspack("export", str(dataset), "--format", fmt, str(out))
    refused(proc, named, needle)
    assert not out.exists() and list(out.parent.iterdir()) == []  # no partial export
    assert state(dataset) == before and snapshot(sentinel.parent) == outside


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_fifo_does_not_hang(fmt: str, dataset: Path, tmp_path: Path) -> None:
    os.mkfifo(dataset / "sourcedata" / "pipe")
    before = state(dataset)
    out = tmp_path / ("out.json" if fmt == "prov-json" else "out")
    proc = subprocess.run(
        [sys.executable, "-m", "bidspack", "export", str(dataset), "--format", fmt, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    refused(proc, "sourcedata/pipe", "fifo")
    assert not out.exists() and state(dataset) == before


IMG = f"{SUB}/micr/{SUB}_sample-brainLH_stain-N4_SPIM.ome.tif"


def test_export_image_linked_outside_refused(dataset: Path, tmp_path: Path) -> None:
    """An image moved outside and linked back is refused although its content equals
    the manifest: the export never reads outside the dataset."""
    store = tmp_path / "elsewhere.ome.tif"
    shutil.move(dataset / IMG, store)
    (dataset / IMG).symlink_to(store)
    before, kept = state(dataset), sha(store)
    out = tmp_path / "bag"
    refused(run_bidspack("export", str(dataset), "--format", "bagit", str(out)), IMG, "outside")
    assert not out.exists() and state(dataset) == before and sha(store) == kept


def test_export_follows_annex_links_inside(dataset: Path, tmp_path: Path) -> None:
    """A link that stays inside the dataset (a git-annex file: a relative link into
    ``.git/annex/objects``) is still followed and copied with its content."""
    obj = dataset / ".git" / "annex" / "objects" / "Xk" / "pQ" / "KEY" / "KEY"
    obj.parent.mkdir(parents=True)
    shutil.move(dataset / IMG, obj)
    (dataset / IMG).symlink_to(os.path.relpath(obj, (dataset / IMG).parent))
    out = tmp_path / "bag"
    proc = run_bidspack("export", str(dataset), "--format", "bagit", str(out))
    assert proc.returncode == 0, proc.stderr
    copy = out / "data" / IMG
    assert copy.is_file() and not copy.is_symlink() and sha(copy) == sha(obj)
