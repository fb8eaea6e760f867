"""Benchmark: rasterising SWC tracings sparsely vs a per-segment skimage loop.

Makes N synthetic random-walk trees of M nodes each (seeded; persistent random walk,
2 um steps, a new branch from a random earlier node with probability 0.03, radii
0.3-2 um) inside a grid of 1024 x 2048 x 2048 voxels of (1.0, 0.5, 0.5) um, i.e. about
1 mm on a side, and measures in the same run, each phase in a fresh process (spawned,
so that its peak RSS is its own):

1. ``bidspack.io.rasterize.rasterize(mode="line", labels="tree")``: all segments at
   once, sparse output (never a dense mask);
2. the same with ``mode="radius"`` (swept spheres; no reference);
3. reference: ``skimage.draw.line_nd(start, stop, endpoint=True)`` in a Python loop
   over the segments, coordinates concatenated, out-of-grid voxels dropped and the
   voxels deduplicated with ``np.unique`` (what a script does without a dense mask).

Prints times, the peak RSS of each phase above its process's baseline (data made,
modules imported), the ratio of the reference time to bidspack's, and how many voxels
differ between 1 and 3 (only samples falling exactly on x.5, rounded half up by
bidspack and half to even by skimage, and segments clipped at the border can differ).

Usage: python benchmarks/bench_rasterize.py [--tracings 100] [--nodes 5000] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time

import numpy as np

SHAPE = (1024, 2048, 2048)
VOXEL = (1.0, 0.5, 0.5)


def make_tracings(n: int, nodes: int, shape: tuple[int, int, int], seed: int = 0) -> list:
    from bidspack.io.swc import calibrate, tracing_from_arrays

    rng = np.random.default_rng(seed)
    extent = np.asarray(shape) * np.asarray(VOXEL)  # (z, y, x) um
    out = []
    for k in range(n):
        xyz = np.empty((nodes, 3))
        parents = np.empty(nodes, dtype=np.int64)
        xyz[0] = rng.uniform(0.1, 0.9, 3) * extent[::-1]
        parents[0] = -1
        direction = rng.normal(size=3)
        for i in range(1, nodes):
            if rng.random() < 0.03:
                p = int(rng.integers(0, i))
                direction = rng.normal(size=3)
            else:
                p = i - 1
            direction = 0.8 * direction / np.linalg.norm(direction) + 0.6 * rng.normal(size=3)
            xyz[i] = xyz[p] + 2.0 * direction / np.linalg.norm(direction)
            parents[i] = p + 1
        radius = rng.uniform(0.3, 2.0, nodes)
        t = tracing_from_arrays(
            np.arange(1, nodes + 1),
            np.full(nodes, 3),
            xyz,
            radius,
            parents,
            path=f"synthetic_{k:03d}.swc",
            unit="um",
        )
        out.append(calibrate(t))
    return out


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def phase(name: str, n: int, nodes: int, shape: tuple[int, int, int], queue: mp.Queue) -> None:
    from skimage.draw import line_nd

    from bidspack.io.rasterize import VoxelGrid, rasterize

    pts = make_tracings(n, nodes, shape)
    grid = VoxelGrid(shape, VOXEL, (0.0, 0.0, 0.0))
    import gc

    gc.collect()
    base = peak_mib()
    t0 = time.perf_counter()
    if name in ("line", "radius"):
        mask = rasterize(pts, grid, mode=name, labels="tree")  # type: ignore[arg-type]
        c = mask.coords.astype(np.int64)
        lin = (c[:, 0] * shape[1] + c[:, 1]) * shape[2] + c[:, 2]
        extra = {
            "outside": mask.n_nodes_outside,
            "clipped": mask.n_segments_clipped,
            "labels": len(mask.label_info),
        }
    else:
        parts = []
        n_seg = 0
        for pt in pts:
            cont = grid.to_index(pt.xyz_um[:, ::-1])
            pidx = pt.tracing.parent_index
            for c in np.flatnonzero(pidx >= 0):
                parts.append(np.stack(line_nd(cont[pidx[c]], cont[c], endpoint=True), axis=1))
                n_seg += 1
        v = np.concatenate(parts)
        ok = ((v >= 0) & (v < np.asarray(shape))).all(axis=1)
        v = v[ok]
        lin = np.unique((v[:, 0] * shape[1] + v[:, 1]) * shape[2] + v[:, 2])
        extra = {"segments": n_seg}
    dt = time.perf_counter() - t0
    queue.put(
        {
            "name": name,
            "seconds": dt,
            "peak_above_base_mib": peak_mib() - base,
            "peak_mib": peak_mib(),
            "voxels": int(lin.size),
            "lin": lin if name != "radius" else None,
            **extra,
        }
    )


def run(name: str, n: int, nodes: int, shape: tuple[int, int, int]) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=phase, args=(name, n, nodes, shape, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracings", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="10 x 1000 nodes, 256 x 512 x 512")
    args = ap.parse_args()
    n, nodes, shape = args.tracings, args.nodes, SHAPE
    if args.quick:
        n, nodes, shape = 10, 1000, (256, 512, 512)
    dense_gib = np.prod(shape, dtype=np.float64) / 2**30
    print(
        f"{n} tracings x {nodes} nodes ({n * (nodes - 1)} segments) into "
        f"{' x '.join(map(str, shape))} voxels of {VOXEL} um (z, y, x); a dense mask "
        f"would be {dense_gib:.1f} GiB as uint8, {2 * dense_gib:.1f} GiB as uint16"
    )
    res = {name: run(name, n, nodes, shape) for name in ("line", "radius", "reference")}
    for name in ("line", "radius", "reference"):
        r = res[name]
        info = {k: v for k, v in r.items() if k in ("outside", "clipped", "labels", "segments")}
        print(
            f"{name:>9}: {r['seconds']:8.2f} s  {r['voxels']:>10,} voxels  "
            f"peak RSS +{r['peak_above_base_mib']:7.1f} MiB (process peak "
            f"{r['peak_mib']:7.1f} MiB)  {info}"
        )
    ratio = res["reference"]["seconds"] / res["line"]["seconds"]
    diff = np.setxor1d(res["line"]["lin"], res["reference"]["lin"]).size
    print(f"reference line_nd loop / bidspack line: {ratio:.1f}x; voxels differing: {diff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
