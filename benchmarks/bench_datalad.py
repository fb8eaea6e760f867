"""Benchmark: DataLad saving of a dataset with many small files and a few large images.

Builds one tree (``dataset_description.json``, N small JSON sidecars spread over
subject folders, and 3 large OME-TIFF-sized binary images), copies it twice, and times
in the same run:

1. ``bidspack init DATASET --datalad`` (DataLad dataset with SHA256E, text in git,
   images in git-annex; one batched ``datalad save``);
2. a plain ``datalad create --force -c text2git`` + ``datalad save`` of the copy.

Prints both times and their ratio (bidspack / plain). DataLad is slow per file
(datalad#7506); bidspack never saves per file, so the ratio should be close to 1.
Usage: python benchmarks/bench_datalad.py [--small 5000] [--large-mb 200] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}


def build(root: Path, n_small: int, large_mb: int) -> None:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "bench", "BIDSVersion": "1.11.1", "DatasetType": "raw"})
    )
    for i in range(n_small):
        d = root / f"sub-{i // 100:03d}" / "micr"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"sub-{i // 100:03d}_sample-s{i % 100:02d}_SPIM.json").write_text(
            json.dumps({"PixelSize": [1.8, 1.8, 4.0], "PixelSizeUnits": "um", "Index": i})
        )
    rng = np.random.default_rng(0)
    for j in range(3):
        path = root / f"sub-{j:03d}" / "micr" / f"sub-{j:03d}_sample-big_SPIM.ome.tif"
        with open(path, "wb") as fh:
            for _ in range(large_mb):
                fh.write(rng.integers(0, 4000, 512 * 1024, dtype=np.uint16).tobytes())


def timed(cmds: list[list[str]], cwd: Path) -> float:
    env = {**os.environ, **IDENTITY}
    t = time.perf_counter()
    for cmd in cmds:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            sys.exit(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--large-mb", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="500 small files, 3 x 10 MB")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    n_small, large = (500, 10) if args.quick else (args.small, args.large_mb)
    root = Path(tempfile.mkdtemp(prefix="bidspack-dl-"))
    try:
        build(root / "tree", n_small, large)
        shutil.copytree(root / "tree", root / "a")
        shutil.copytree(root / "tree", root / "b")
        t_bids = timed([[sys.executable, "-m", "bidspack", "init", "a", "--datalad"]], root)
        t_plain = timed(
            [
                ["datalad", "create", "--force", "-c", "text2git", "b"],
                ["datalad", "save", "-d", "b", "-m", "plain save"],
            ],
            root,
        )
        res = {
            "small_files": n_small,
            "large_images": 3,
            "large_mb_each": large,
            "bidspack_init_datalad_s": round(t_bids, 1),
            "plain_datalad_create_save_s": round(t_plain, 1),
            "ratio_bidspack_over_plain": round(t_bids / t_plain, 2),
        }
        print(f"{n_small} small files + 3 images of {large} MB")
        print(f"bidspack init --datalad (one batched save): {t_bids:7.1f} s")
        print(f"plain datalad create + save:                {t_plain:7.1f} s")
        print(f"ratio bidspack / plain: {t_bids / t_plain:.2f}")
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
