"""Benchmark: reading a Zeiss CZI stack plane by plane through bioio (bidspack's
``VendorImage``), against the read limit and against loading the stack whole.

For each stack depth a synthetic CZI (uint16 planes, one channel, one time point) is
written with pylibCZIrw (Zeiss's own library), then read in fresh child interpreters:

1. ``pylibCZIrw``: ``CziReader.read(plane={"Z": z})`` for every z (the read limit);
2. ``bidspack``: ``VendorImage(path).iter_planes()`` (bioio + bioio-czi, one Dask chunk
   per plane);
3. ``bioio whole``: ``BioImage(path).get_image_data("ZYX")``, the whole stack at once
   (what reading without plane chunks amounts to: bioio's default chunk is a Z stack).

Each run reports MB/s and peak RSS (``VmHWM``); bidspack's pixel hash of every plane is
compared with pylibCZIrw's. MB = 10**6 bytes.

    python benchmarks/bench_vendor.py                 # 256 MB and 1 GB stacks
    python benchmarks/bench_vendor.py --depths 64 128 --size 512   # smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1e6

_CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
path, tool = args["path"], args["tool"]
import numpy as np, xxhash
digest = xxhash.xxh3_128()
if tool == "pylibCZIrw":
    from pylibCZIrw import czi as pyczi
    t = time.perf_counter()
    with pyczi.open_czi(path) as f:
        for z in range(args["depth"]):
            plane = f.read(plane={"Z": z, "C": 0, "T": 0})[..., 0]
            digest.update(np.ascontiguousarray(plane))
elif tool == "bidspack":
    from bidspack.io.vendor import VendorImage
    t = time.perf_counter()
    for plane in VendorImage(path).iter_planes():
        digest.update(np.ascontiguousarray(plane))
else:
    import warnings
    warnings.simplefilter("ignore")
    from bioio import BioImage
    t = time.perf_counter()
    stack = BioImage(path).get_image_data("ZYX")
    for plane in stack:
        digest.update(np.ascontiguousarray(plane))
seconds = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
out = {"seconds": seconds, "peak_rss_mb": hwm * 1024 / 1e6, "digest": digest.hexdigest()}
print(json.dumps(out))
"""

TOOLS = ("pylibCZIrw", "bidspack", "bioio whole")


def write_czi(path: Path, depth: int, size: int, seed: int = 0) -> int:
    """A one-channel uint16 CZI of *depth* planes of *size* x *size*; its byte count."""
    from pylibCZIrw import czi as pyczi

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 3000, (size, size)).astype(np.uint16)
    with pyczi.create_czi(str(path), exist_ok=True) as f:
        for z in range(depth):
            f.write(data=np.roll(base, z, axis=1), plane={"Z": z, "C": 0, "T": 0})
    return depth * size * size * 2


def run(tool: str, path: Path, depth: int) -> dict:
    arg = json.dumps({"tool": tool, "path": str(path), "depth": depth})
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, arg], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--size", type=int, default=1024, help="plane side (uint16)")
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-vendor-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for depth in args.depths:
        path = work / f"stack{depth}.czi"
        t = time.perf_counter()
        nbytes = write_czi(path, depth, args.size)
        print(f"[depth {depth}] wrote {nbytes / MB:.0f} MB CZI in {time.perf_counter() - t:.1f} s")
        results = {tool: run(tool, path, depth) for tool in TOOLS}
        digests = {r["digest"] for r in results.values()}
        for tool, r in results.items():
            rows.append((depth, nbytes, tool, nbytes / MB / r["seconds"], r["peak_rss_mb"]))
        limit = nbytes / MB / results["pylibCZIrw"]["seconds"]
        ours = nbytes / MB / results["bidspack"]["seconds"]
        whole = results["bioio whole"]
        print(
            f"[depth {depth}] bidspack {ours:.0f} MB/s = {ours / limit:.2f}x pylibCZIrw "
            f"({limit:.0f} MB/s), {ours / (nbytes / MB / whole['seconds']):.2f}x bioio whole; "
            f"peak RSS {results['bidspack']['peak_rss_mb']:.0f} MB vs "
            f"{whole['peak_rss_mb']:.0f} MB whole; same pixels: {len(digests) == 1}"
        )
    print(f"\nCZI {args.size}x{args.size} uint16 planes, one channel")
    print("depth | stack MB |        tool |  MB/s | peak RSS MB")
    for depth, nbytes, tool, rate, rss in rows:
        print(f"{depth:5d} | {nbytes / MB:8.0f} | {tool:>11} | {rate:5.0f} | {rss:11.0f}")
    ours = [r[4] for r in rows if r[2] == "bidspack"]
    print(
        f"bidspack peak RSS deepest / shallowest: {ours[-1]:.0f} / {ours[0]:.0f} MB = "
        f"{ours[-1] / ours[0]:.2f} for {args.depths[-1] / args.depths[0]:.0f}x the depth"
    )


if __name__ == "__main__":
    main()
