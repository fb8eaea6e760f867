"""Benchmark ``bidspack report`` on a dataset holding one large OME-Zarr image.

Writes a synthetic ``(z, y, x)`` uint8 image (default 256 x 4096 x 4096 = 4 GiB,
smooth blobs plus noise) with :func:`bidspack.io.omezarr.write_ome_zarr` (NGFF 0.5,
sharded) into a minimal BIDS dataset under a temporary folder, then times, each in a
fresh child process (peak RSS from ``getrusage``):

1. reading the pyramid level the report chooses (:func:`choose_level`), whole, with
   zarr-python through the same slab reader;
2. reading the coarsest level;
3. ``bidspack report DATASET --no-validate``.

Prints the times, peak RSS and the ratio report / chosen-level read. The temporary
folder is removed at the end. ``--gib 0.5`` for a smaller image; ``--keep DIR`` to
write (and keep) the dataset there instead.

    python benchmarks/bench_report.py            # 4 GiB
    python benchmarks/bench_report.py --gib 0.5  # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bidspack.io.sources import ImageSource, StackInfo

CHILD_READ = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
from bidspack.io.omezarr.reader import iter_slabs, open_level
t = time.perf_counter()
arr = open_level(Path(sys.argv[1]), int(sys.argv[2]))
total = 0
for slab in iter_slabs(arr):
    total += int(slab.size)
secs = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": secs, "voxels": total, "shape": list(arr.shape), "rss": rss}))
"""

CHILD_REPORT = r"""
import json, resource, sys, time
from pathlib import Path
from bidspack.report.dataset_report import write_report
t = time.perf_counter()
r = write_report(Path(sys.argv[1]), Path(sys.argv[2]), validate=False, force=True)
secs = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": secs, "rss": rss, "size": r.size,
                  "levels": {k: [v[0], v[1], list(v[2])] for k, v in r.levels_read.items()}}))
"""


class Synthetic(ImageSource):
    """Smooth blobs plus a little noise, generated plane by plane (never held whole)."""

    def __init__(self, shape: tuple[int, int, int]):
        self.path = Path("synthetic")
        self.files = ()
        self.info = StackInfo(shape, np.dtype(np.uint8), (2.0, 0.5, 0.5))
        _, y, x = shape
        self._yy = np.linspace(-1, 1, y, dtype=np.float32)[:, None]
        self._xx = np.linspace(-1, 1, x, dtype=np.float32)[None, :]
        self._rng = np.random.default_rng(0)

    def read_plane(self, z: int) -> np.ndarray:
        nz = self.shape[0]
        t = z / max(1, nz - 1) * 2 - 1
        r2 = self._yy**2 + self._xx**2 + t**2
        base = 200 * np.exp(-3 * r2) + 30 * np.cos(12 * self._xx + 7 * t) ** 2
        noise = self._rng.integers(0, 16, base.shape, dtype=np.uint8)
        return (base.astype(np.uint8) + noise).astype(np.uint8)


def _child(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Write the dataset, run the three measurements, print them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0, help="level-0 size in GiB (uint8)")
    ap.add_argument("--keep", type=Path, default=None, help="write the dataset here and keep it")
    args = ap.parse_args()
    from bidspack.io.omezarr import write_ome_zarr
    from bidspack.report.dataset_report import choose_level, open_pyramid

    side = 4096 if args.gib >= 1 else 2048
    nz = max(8, round(args.gib * 2**30 / (side * side)))
    shape = (nz, side, side)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        ds = root / "ds"
        (ds / "sub-01" / "micr").mkdir(parents=True, exist_ok=True)
        (ds / "dataset_description.json").write_text(
            json.dumps({"Name": "bench", "BIDSVersion": "1.11.1", "DatasetType": "raw"})
        )
        image = ds / "sub-01" / "micr" / "sub-01_SPIM.ome.zarr"
        if not image.exists():
            t = time.perf_counter()
            write_ome_zarr(
                image,
                Synthetic(shape),
                physical_size_zyx_um=(2.0, 0.5, 0.5),
                name="sub-01_SPIM",
                verify=False,
            )
            print(
                f"wrote {shape} uint8 ({math.prod(shape) / 2**30:.2f} GiB) in "
                f"{time.perf_counter() - t:.1f} s"
            )
        on_disk = sum(p.stat().st_size for p in image.rglob("*") if p.is_file())
        pyr = open_pyramid(image)
        chosen = choose_level(pyr.shapes)
        print(f"levels: {pyr.shapes}; on disk {on_disk / 2**30:.2f} GiB; report reads {chosen}")
        read = _child(CHILD_READ, str(image), str(chosen))
        coarse = _child(CHILD_READ, str(image), str(len(pyr.shapes) - 1))
        rep = _child(CHILD_REPORT, str(ds), str(root / "report.html"))
        assert rep["levels"]["sub-01/micr/sub-01_SPIM"][1] == chosen
        print(
            f"read level {chosen} {read['shape']}: {read['seconds']:.2f} s, "
            f"peak RSS {read['rss'] / 2**20:.0f} MiB"
        )
        print(
            f"read coarsest level {coarse['shape']}: {coarse['seconds']:.2f} s, "
            f"peak RSS {coarse['rss'] / 2**20:.0f} MiB"
        )
        print(
            f"bidspack report --no-validate: {rep['seconds']:.2f} s, peak RSS "
            f"{rep['rss'] / 2**20:.0f} MiB, report {rep['size'] / 2**10:.0f} KiB"
        )
        print(f"ratio report / read of level {chosen}: {rep['seconds'] / read['seconds']:.2f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
