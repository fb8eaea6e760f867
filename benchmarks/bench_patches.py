"""Benchmark: ``bidspack derive patches`` (issue 13, items (a) and (c)).

Measured in one run, on synthetic uint16 volumes with structure (a smooth background
drifting with Z, a field of Gaussian "cells" that moves slowly with Z, shot and read
noise), written as OME-Zarr (NGFF 0.5, sharded; :func:`bidspack.io.omezarr.write_ome_zarr`)
into a minimal bidspack source dataset (the image and a manifest with its pixel hash):

(a) patches/s of ``derive patches`` (224 x 224, xy, percentile intensity, pixel hash +
    dHash per patch, Zarr v3 arrays, Parquet index, seeded dedup; no validation), end
    to end in a fresh child process, on the larger volume (default 2.1 GB); and a
    CEM-style reference loop on the same patches: per patch
    ``imagehash.dhash(PIL.Image.fromarray(patch).resize((224, 224), resample=2))`` as
    ``patchify3d.py`` of volume-em/cem-dataset does. The reference is timed on the
    patches of a subset of planes (read and converted to uint8 beforehand, not timed:
    in its favour) and extrapolated per patch; its extraction (read each plane from the
    same OME-Zarr, the same percentile conversion to uint8, cut the same tiles) is timed
    separately. Ratios printed: end to end (bidspack's whole run, which also writes the
    Zarr arrays, the index and the dedup decisions, vs the reference's extraction +
    hashing of the same volume, which writes nothing), vs the reference's hashing alone,
    and hashing alone (bidspack's pixel hash + dHash vs imagehash, same patches).
(c) peak RSS (``VmHWM`` of the child process, Linux) of ``derive patches`` on a volume
    and on one twice as deep (default 1.07 GB and 2.15 GB): it should not grow.

No timed assertion: the script prints what it measured. MB = 10**6 bytes, GB = 10**9.

    python benchmarks/bench_patches.py            # 1.07 GB and 2.15 GB volumes
    python benchmarks/bench_patches.py --quick    # 16 MB and 33 MB, a few seconds
    python benchmarks/bench_patches.py --workdir /tmp/bp --keep   # keep the data
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_patches.py   # see benchmarks/README.md

The dHash (:func:`bidspack.ops.derive.dedup.dhash64`) runs compiled numba kernels (one
thread) when numba is installed; its numpy fallback runs NumPy matrix products, and on an
oversubscribed machine a threaded BLAS spins and makes that many times slower (measured
here: 7.5 ms instead of 0.23 ms per patch with 2 OpenBLAS threads at load 5 on 2 cores),
so the BLAS thread setting is printed with the results. The child's first dHash call
compiles the kernels or loads them from numba's cache (run twice to see the cached time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bidspack.io.sources import ImageSource, StackInfo

GB = 1e9
MB = 1e6
SIZE = 224
VOXEL_UM = (1.0, 0.5, 0.5)
DEFAULT = {"plane": 2048, "depths": (128, 256), "ref_planes": 16}
QUICK = {"plane": 1024, "depths": (8, 16), "ref_planes": 2}
IMAGE = "sub-bench/micr/sub-bench_sample-s1_SPIM.ome.zarr"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- synthetic volume -------------------------------------------------------------------


def _interp(n: int, k: int) -> np.ndarray:
    pos = np.linspace(0.0, k - 1.0, n)
    lo = np.minimum(np.floor(pos).astype(np.int64), k - 2)
    frac = (pos - lo).astype(np.float32)
    w = np.zeros((n, k), np.float32)
    w[np.arange(n), lo] = 1.0 - frac
    w[np.arange(n), lo + 1] = frac
    return w


def _cells(size: int, seed: int) -> np.ndarray:
    """A (size, size) float32 field of Gaussian blobs (radius 4-14 px) on 2 % of it."""
    rng = np.random.default_rng([seed, 7])
    img = np.zeros((size, size), np.float32)
    n = size * size // 1200
    ys, xs = rng.integers(0, size, n), rng.integers(0, size, n)
    radii = rng.uniform(4, 14, n)
    for y, x, r in zip(ys, xs, radii, strict=True):
        h = int(3 * r)
        y0, y1, x0, x1 = max(0, y - h), min(size, y + h), max(0, x - h), min(size, x + h)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * r * r))
    return img


class SyntheticVolume(ImageSource):
    """``(depth, size, size)`` uint16 (12-bit range) planes; each depends only on
    ``(z, size, seed)`` (thread-safe, any order)."""

    def __init__(self, depth: int, size: int, seed: int = 1) -> None:
        self.path = Path(f"synthetic-{depth}x{size}x{size}")
        self.files = ()
        self.info = StackInfo((depth, size, size), np.dtype("uint16"), VOXEL_UM)
        self.size, self.seed = size, seed
        self._interp = _interp(size, 12)
        self._cells = _cells(size, seed)

    def read_plane(self, z: int) -> np.ndarray:
        """Plane *z*: smooth background drifting with z, cells moving slowly, noise."""
        size, seed = self.size, self.seed
        k, t = divmod(z, 32)
        knots = [np.random.default_rng([seed, 1, i]).random((12, 12)) for i in (k, k + 1)]
        coarse = ((1 - t / 32) * knots[0] + t / 32 * knots[1]).astype(np.float32)
        smooth = self._interp @ coarse @ self._interp.T
        cells = np.roll(self._cells, (z // 3, z // 5), axis=(0, 1))
        signal = 300 + 1200 * smooth + 2000 * cells
        noise = np.random.default_rng([seed, 2, z]).standard_normal((size, size), np.float32)
        plane = signal + np.sqrt(4 + 0.5 * signal) * noise
        return np.clip(plane, 0, 4095).astype(np.uint16)


def make_dataset(root: Path, depth: int, size: int) -> tuple[Path, float]:
    """A minimal bidspack source dataset at *root* holding one synthetic OME-Zarr
    image (and a manifest row with its pixel hash); returns (root, seconds)."""
    from bidspack.bids.tables import tsv_text
    from bidspack.io.omezarr import write_ome_zarr
    from bidspack.provenance.manifest import COLUMNS, MANIFEST_TSV

    t0 = time.perf_counter()
    src = SyntheticVolume(depth, size)
    res = write_ome_zarr(
        root / IMAGE,
        src,
        physical_size_zyx_um=VOXEL_UM,
        name="bench",
        verify=False,
        workers=2,
    )
    row = {"path": IMAGE + "/0", "size": 0, "sha256": "n/a", "xxh3_128": "n/a"}
    row |= {"pixel_hash": res.pixel_hash, "step": "bench"}
    (root / MANIFEST_TSV).parent.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_TSV).write_text(tsv_text(COLUMNS, [row]), encoding="utf-8")
    return root, time.perf_counter() - t0


# -- the child: derive patches ------------------------------------------------------------

_CHILD = r"""
import json, sys, time
from pathlib import Path


def peak_kb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


from bidspack.ops.derive.patches import PatchParams, derive_patches

a = json.loads(sys.argv[1])
import numpy as np
from bidspack.ops.derive.dedup import dhash64
t0 = time.perf_counter()
dhash64(np.zeros((2, a["size"], a["size"]), np.uint8))  # numba: compile or load the cache
jit = time.perf_counter() - t0
base = peak_kb()
t0 = time.perf_counter()
recs = list(derive_patches(Path(a["ds"]), Path(a["out"]), PatchParams(size=a["size"]),
                           validate=False))
dt = time.perf_counter() - t0
errors = [r.message for r in recs if r.status == "error"]
index = [r.details for r in recs if r.action == "index"][0]
print(json.dumps({"seconds": dt, "jit_seconds": jit, "patches": index["patches"],
                  "kept": index["kept"],
                  "peak_rss_kb": peak_kb(), "rss_after_imports_kb": base, "errors": errors}))
"""


def run_child(ds: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps({"ds": str(ds), "out": str(out), "size": SIZE})],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"derive patches child failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"derive patches reported errors: {result['errors'][:3]}")
    return result


# -- the reference ------------------------------------------------------------------------


def reference_patches(ds: Path, out: Path, planes: int) -> tuple[list[np.ndarray], float]:
    """The uint8 patches of the first *planes* planes, exactly as bidspack cut them
    (same tiles, same recorded percentile conversion), and the seconds this extraction
    took (read each plane from the OME-Zarr, convert to uint8, cut the tiles)."""
    import pyarrow.parquet as pq

    from bidspack.ops.derive.patches import tile_spans, to_uint8
    from bidspack.ops.derive.source import SourceDataset

    first = pq.read_table(out / "index.parquet").slice(0, 1).to_pylist()[0]
    (img,) = SourceDataset(ds).select_images()
    _, ny, nx = img.shape
    rows = tile_spans(ny, SIZE, SIZE, "keep-if-half")
    cols = tile_spans(nx, SIZE, SIZE, "keep-if-half")
    patches = []
    t0 = time.perf_counter()
    for z in range(planes):
        plane = to_uint8(
            img.read(z, z + 1, 0, ny, 0, nx)[0],
            "percentile",
            first["intensity_low"],
            first["intensity_high"],
        )
        for r0, r1 in rows:
            for c0, c1 in cols:
                patches.append(np.ascontiguousarray(plane[r0:r1, c0:c1]))
    seconds = time.perf_counter() - t0
    img.close()
    return patches, seconds


def time_reference(patches: list[np.ndarray]) -> tuple[float, list[int]]:
    """Seconds per patch of CEM's per-patch hashing, and the hashes as integers."""
    import imagehash
    from PIL import Image

    hashes = []
    t0 = time.perf_counter()
    for p in patches:
        bits = imagehash.dhash(Image.fromarray(p).resize((SIZE, SIZE), resample=2), 8).hash
        hashes.append(bits)
    dt = time.perf_counter() - t0
    ints = [int("".join("1" if b else "0" for b in h.flatten()), 2) for h in hashes]
    return dt / len(patches), ints


def time_bidspack_hashing(patches: list[np.ndarray]) -> tuple[float, list[int]]:
    """Seconds per patch of bidspack's pixel hash (per patch) + dHash (vectorised per
    block of 256 patches, as a shard), and the dHashes."""
    from bidspack.io.pixelhash import pixel_hash_array
    from bidspack.ops.derive.dedup import dhash64

    stack = np.stack(patches)
    out: list[int] = []
    dhash64(stack[:2])  # numba: compile or load the cache (not timed)
    t0 = time.perf_counter()
    for p in stack:
        pixel_hash_array(p, "YX")
    for i in range(0, len(stack), 256):
        out.extend(int(h) for h in dhash64(stack[i : i + 256]))
    return (time.perf_counter() - t0) / len(patches), out


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small volumes (smoke run)")
    ap.add_argument("--workdir", type=Path, help="folder for the data (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the data afterwards")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else DEFAULT
    size, (small, large) = int(cfg["plane"]), cfg["depths"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_patches-"))
    work.mkdir(parents=True, exist_ok=True)
    import bidspack

    print(
        f"# bench_patches  bidspack {bidspack.__version__}  Python {platform.python_version()}"
        f"  {platform.machine()}  {os.cpu_count()} CPU(s)  workdir {work}"
    )
    blas = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    print(f"# BLAS threads (environment, inherited by the child): {blas}")
    try:
        results = {}
        for depth in (small, large):
            nbytes = depth * size * size * 2
            log(f"writing a {depth} x {size} x {size} uint16 volume ({nbytes / GB:.2f} GB) ...")
            ds, wrote = make_dataset(work / f"ds-{depth}", depth, size)
            log(f"  written in {wrote:.0f} s; derive patches (child process) ...")
            res = run_child(ds, work / f"out-{depth}")
            res["nbytes"] = nbytes
            results[depth] = res
            print(
                f"volume {depth} x {size} x {size} uint16 ({nbytes / GB:.2f} GB): "
                f"{res['patches']} patches ({res['kept']} kept) in {res['seconds']:.1f} s = "
                f"{res['patches'] / res['seconds']:.0f} patches/s, "
                f"{nbytes / MB / res['seconds']:.0f} MB/s; peak RSS "
                f"{res['peak_rss_kb'] / 1024:.0f} MiB (before: first dHash call, numba "
                f"compile or cache load, {res['jit_seconds']:.1f} s, not counted)"
            )
        big = results[large]
        planes = int(cfg["ref_planes"])
        patches, extract_s = reference_patches(work / f"ds-{large}", work / f"out-{large}", planes)
        ref_s, ref_h = time_reference(patches)
        ref_x = extract_s / len(patches)  # seconds per patch of the reference's extraction
        ours_s, ours_h = time_bidspack_hashing(patches)
        same = sum(a == b for a, b in zip(ref_h, ours_h, strict=True))
        e2e = big["patches"] / big["seconds"]
        ref_e2e = 1 / (ref_x + ref_s)
        print(
            f"(a) reference (CEM-style loop: read a plane, percentile to uint8, cut tiles; "
            f"per patch PIL resize + imagehash.dhash) on {len(patches)} patches of {planes} "
            f"planes: extraction {1e6 * ref_x:.0f} + hashing {1e6 * ref_s:.0f} us/patch = "
            f"{ref_e2e:.0f} patches/s (extrapolated: {big['patches'] / ref_e2e:.1f} s for "
            f"{big['patches']} patches; writes nothing)"
        )
        print(
            f"(a) bidspack hashing only (pixel hash + dHash per shard of 256) on the same "
            f"patches: {1e6 * ours_s:.1f} us/patch = {1 / ours_s:.0f} patches/s; dHash equal "
            f"to imagehash on {same}/{len(patches)}"
        )
        print(
            f"(a) RATIO END TO END: bidspack derive patches (read + convert + pixel hash + "
            f"dHash + Zarr write + Parquet index + dedup) {e2e:.0f} patches/s vs the "
            f"reference (extraction + hashing, same volume) {ref_e2e:.0f} patches/s = "
            f"{e2e / ref_e2e:.1f}x  (goal >= 30x: {'met' if e2e / ref_e2e >= 30 else 'not met'})"
        )
        print(
            f"(a) ratio vs the reference's hashing alone: {e2e * ref_s:.1f}x; hashing only "
            f"(same patches, bidspack pixel hash + dHash vs imagehash): {ref_s / ours_s:.1f}x"
        )
        lo, hi = results[small]["peak_rss_kb"], results[large]["peak_rss_kb"]
        print(
            f"(c) peak RSS of derive patches: {lo / 1024:.0f} MiB at "
            f"{results[small]['nbytes'] / GB:.2f} GB, {hi / 1024:.0f} MiB at "
            f"{results[large]['nbytes'] / GB:.2f} GB: ratio {hi / lo:.2f} for 2x the volume"
        )
    finally:
        if args.keep:
            log(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
