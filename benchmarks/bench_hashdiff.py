"""Benchmark: `bidspack hashdiff` throughput vs raw tifffile decode and a baseline script.

Writes two synthetic folders of uint16 slices (A with 4-digit names, B with 5-digit
names; in B a few slices re-encoded with zlib, a few changed, one missing, one extra),
then measures in the same run, on warm page cache:

1. raw decode: ``tifffile.imread`` of every file of A and B, one process (the read limit
   of a single reader);
2. bidspack hashdiff (byte hash + decode + pixel hash + statistics, parallel threads);
3. a typical baseline script: md5 over Pillow-decoded pixels of every file, one
   process, pairs compared by digest.

Throughput is decoded MB/s over A and B together. Prints ratios against 1 and 3.
Usage: python benchmarks/bench_hashdiff.py [--slices 128] [--size 2048] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from bidspack.ops.hashdiff import hashdiff


def make(root: Path, n: int, size: int, compression: str | None = None) -> tuple[Path, Path]:
    a, b = root / "A", root / "B"
    a.mkdir(parents=True)
    b.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = (1000 + 800 * np.sin(yy / 97.0) * np.cos(xx / 131.0)).astype(np.float32)
    for z in range(n):
        plane = (base + rng.normal(0, 60, base.shape)).clip(0, 65535).astype(np.uint16)
        tifffile.imwrite(a / f"Z{z:04d}.tif", plane, compression=compression)
        if z == n // 2:
            continue  # missing in B
        if z % 16 == 3:  # re-encoded: same pixels, other bytes
            other = None if compression else "zlib"
            tifffile.imwrite(b / f"Z{z:05d}.tif", plane, compression=other, tile=(256, 256))
        elif z % 32 == 7:
            changed = plane.copy()
            changed[: size // 4] = 0
            tifffile.imwrite(b / f"Z{z:05d}.tif", changed, compression=compression)
        else:
            shutil.copy(a / f"Z{z:04d}.tif", b / f"Z{z:05d}.tif")
    tifffile.imwrite(b / f"Z{n:05d}.tif", np.zeros((size, size), np.uint16))
    return a, b


def files(*folders: Path) -> list[Path]:
    return [p for f in folders for p in sorted(f.glob("*.tif"))]


def raw_decode(paths: list[Path]) -> tuple[float, int]:
    t = time.perf_counter()
    nbytes = 0
    for p in paths:
        nbytes += tifffile.imread(p).nbytes
    return time.perf_counter() - t, nbytes


def baseline(a: Path, b: Path) -> float:
    """md5 over Pillow-decoded pixels, one process, pairs by index."""
    t = time.perf_counter()
    digests: dict[str, dict[int, str]] = {"a": {}, "b": {}}
    for side, folder in (("a", a), ("b", b)):
        for p in sorted(folder.glob("*.tif")):
            with Image.open(p) as im:
                pixels = np.asarray(im)
            digests[side][int(p.stem[1:])] = hashlib.md5(pixels.tobytes()).hexdigest()
    same = sum(1 for k, v in digests["a"].items() if digests["b"].get(k) == v)
    assert same > 0
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=128)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="16 slices of 512 px (smoke run)")
    ap.add_argument(
        "--compression",
        default=None,
        choices=["zlib", "lzw"],
        help="compress the slices (default: uncompressed, as labs deliver them)",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    args = ap.parse_args()
    n, size = (16, 512) if args.quick else (args.slices, args.size)
    root = Path(tempfile.mkdtemp(prefix="bidspack-hashdiff-", dir=args.workdir))
    try:
        a, b = make(root, n, size, args.compression)
        paths = files(a, b)
        raw_decode(paths)  # warm the page cache
        t_raw, nbytes = raw_decode(paths)
        t0 = time.perf_counter()
        diff = hashdiff(a, b, workers=args.workers)
        t_hd = time.perf_counter() - t0
        t_base = baseline(a, b)
        mb = nbytes / 1e6
        res = {
            "slices_per_side": n,
            "size": size,
            "decoded_MB": round(mb, 1),
            "cpus": os.cpu_count(),
            "counts": diff.counts(),
            "raw_decode_MBps": round(mb / t_raw, 1),
            "hashdiff_MBps": round(mb / t_hd, 1),
            "baseline_md5_pillow_MBps": round(mb / t_base, 1),
            "hashdiff_vs_raw_decode": round(t_raw / t_hd, 2),
            "hashdiff_vs_baseline": round(t_base / t_hd, 2),
        }
        print(
            f"{n} slices per side, {size}x{size} uint16, {mb:.0f} MB decoded, {os.cpu_count()} CPUs"
        )
        print(f"counts: {res['counts']}")
        print(f"raw tifffile decode (1 process): {res['raw_decode_MBps']:8.1f} MB/s")
        print(
            f"bidspack hashdiff:               {res['hashdiff_MBps']:8.1f} MB/s  "
            f"= {res['hashdiff_vs_raw_decode']:.2f}x raw decode (target >= 0.8)"
        )
        print(
            f"baseline md5(Pillow pixels):     {res['baseline_md5_pillow_MBps']:8.1f} MB/s  "
            f"-> hashdiff is {res['hashdiff_vs_baseline']:.2f}x the baseline (target > 1)"
        )
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
