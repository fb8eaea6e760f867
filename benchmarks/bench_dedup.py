"""Benchmark: dHash throughput and greedy near-duplicate selection (issue 13).

(a) dHash of 224 x 224 uint8 patches cut from the real STP slices (percentile rescale to
    uint8): ``bidspack.ops.derive.dedup.dhash64`` on the whole batch vs the CEM-style loop
    ``imagehash.dhash(Image.fromarray(p).resize((224, 224), resample=2))`` per patch (the
    resize is CEM's ``crop_patches.calculate_hash``; for a full-size patch Pillow returns
    a copy). The hashes are compared for equality; the ratio is of times measured in this
    run (best of repeats). With threadpoolctl installed, dhash64 is timed with the BLAS
    thread pool as it is and limited to one thread.

(b) Greedy exemplar selection at threshold 12 on N synthetic 64-bit hashes in one group
    (``synthetic_hashes``): 20 % unique uniformly random codes; 80 % near-copies in
    clusters around N/12.5 random centres (each copy assigned to a random centre, so
    cluster sizes are Poisson with mean 10; a copy flips 0-6 random bits of its centre, so
    two copies may be up to 12 bits apart and a cluster may need several exemplars); 5 %
    of the items are then overwritten with exact copies of other items; shuffled. Order:
    ``seeded_order(N, seed)``.
    - bidspack ``greedy_dedup`` (default method: compiled with numba, exact) on all N,
      and both compiled kernels forced (``numba-scan``: the brute-force greedy loop
      compiled; ``numba-mih``: multi-index), each compared decision by decision;
      the first call of the compiled kernels (compilation, or loading them from numba's
      cache) is timed separately, on a few hashes, before. ``--cold`` points
      ``NUMBA_CACHE_DIR`` to an empty folder first, so that it is a full compilation.
    - the numpy multi-index (``method="mih"``, the fallback without numba) on the first
      ``--numpy-n`` items, identical decisions checked.
    - brute-force greedy (``greedy_dedup_bruteforce``: every item against every exemplar
      kept before it) on the first ``--brute-n`` items of the same order; the time per
      comparison is extrapolated to N with the exact number of comparisons at N
      (sum over items of the exemplars kept before it, from the exact result).
    - FAISS ``IndexBinaryMultiHash`` (static index over the distinct hashes,
      ``range_search`` radius 13 = distance <= 12) inside the same leader loop, on the
      first ``--faiss-n`` items: time and recall against the exact result on the same
      items (recall: fraction of true duplicates given the same exemplar; exact
      agreement of every decision is also reported).

(a) also times ``dhash64`` with the numpy engine and, with numba, on 2 threads
(``threads=2``); the first numba call (compilation or cache load) separately.

Prints measurements, never asserts on time. The machine this was written on has 2 CPU
cores shared with other work; times vary from run to run.

    python benchmarks/bench_dedup.py [--n 1000000] [--seed 0] [--quick] [--cold]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if "--cold" in sys.argv:  # before numba is imported: compile into an empty cache
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_dedup-numba-")

from bidspack.ops.derive.dedup import (
    HAVE_NUMBA,
    dhash64,
    greedy_dedup,
    greedy_dedup_bruteforce,
    seeded_order,
)

SLICES = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "stp_mouse_brain" / "slices"


def best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# ------------------------------------------------------------------------------ (a)


def real_patches(count: int) -> np.ndarray:
    import tifffile

    files = sorted(glob.glob(str(SLICES / "*.tif")))
    if not files:
        raise SystemExit(f"no slices under {SLICES}")
    rows = []
    for f in files:
        a = tifffile.imread(f).astype(np.float64)
        lo, hi = np.percentile(a, [1, 99])
        rows.append(np.clip((a - lo) / (hi - lo) * 255 + 0.5, 0, 255).astype(np.uint8))
    mosaic = np.concatenate(rows, axis=0)  # slices stacked: (270 * 193, 271)
    tiles = []
    for x in (0, 47):
        for y in range(0, mosaic.shape[0] - 224 + 1, 56):
            tiles.append(mosaic[y : y + 224, x : x + 224])
            if len(tiles) == count:
                return np.stack(tiles)
    return np.stack(tiles)


def bench_dhash(count: int, loop_count: int) -> None:
    import imagehash
    from PIL import Image

    patches = real_patches(count)
    n = patches.shape[0]
    print(f"(a) dHash, {n} real 224x224 uint8 patches (STP slices, percentile rescale)")

    def cem(p: np.ndarray) -> int:
        im = Image.fromarray(p).resize((224, 224), resample=2)
        return int(str(imagehash.dhash(im, hash_size=8)), 16)

    sub = patches[:loop_count]
    t_loop = best_of(lambda: [cem(p) for p in sub], 2) / sub.shape[0]
    ref = np.array([cem(p) for p in sub], dtype=np.uint64)
    print(f"    CEM-style loop (PIL + imagehash), {sub.shape[0]} patches:", end="")
    print(f" {t_loop * 1e6:8.1f} us/patch")
    if HAVE_NUMBA:
        t0 = time.perf_counter()
        dhash64(patches[:1])
        dhash64(patches[:2], threads=2)
        print(f"    numba first calls (compile or cache load): {time.perf_counter() - t0:.2f} s")
    runs = [("numba, 1 thread", {}), ("numba, threads=2", {"threads": 2})] if HAVE_NUMBA else []
    runs.append(("numpy engine, BLAS as set", {"engine": "numpy"}))
    for label, kw in runs:
        equal = np.array_equal(dhash64(sub, **kw), ref)
        t_ours = best_of(lambda kw=kw: dhash64(patches, **kw), 3) / n
        print(
            f"    bidspack dhash64 ({label}):".ljust(48) + f"{t_ours * 1e6:8.1f} us/patch"
            f"   ratio {t_loop / t_ours:5.1f}x   hashes equal: {equal}"
        )
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    with threadpool_limits(limits=1, user_api="blas"):
        t_one = best_of(lambda: dhash64(patches, engine="numpy"), 3) / n
    print(
        "    bidspack dhash64 (numpy engine, BLAS 1 thread):".ljust(48)
        + f"{t_one * 1e6:8.1f} us/patch   ratio {t_loop / t_one:5.1f}x"
    )


# ------------------------------------------------------------------------------ (b)


def synthetic_hashes(n: int, seed: int) -> np.ndarray:
    """The mixture described in the module docstring."""
    rng = np.random.default_rng(seed)
    n_unique = n // 5
    n_copies = n - n_unique
    centres = rng.integers(0, 2**64, max(1, n_copies // 10), dtype=np.uint64)
    copies = centres[rng.integers(0, centres.shape[0], n_copies)]
    flips = rng.integers(0, 7, n_copies)
    for f in range(6):
        bit = np.uint64(1) << rng.integers(0, 64, n_copies).astype(np.uint64)
        copies = np.where(flips > f, copies ^ bit, copies)
    h = np.concatenate([rng.integers(0, 2**64, n_unique, dtype=np.uint64), copies])
    h[rng.integers(0, n, n // 20)] = h[rng.integers(0, n, n // 20)]
    rng.shuffle(h)
    return h


def faiss_greedy(hashes: np.ndarray, order: np.ndarray, t: int, nhash: int, bits: int, nflip: int):  # type: ignore[no-untyped-def]
    """CEM's leader loop with FAISS IndexBinaryMultiHash range search (radius t + 1)."""
    import faiss

    n = hashes.shape[0]
    uniq, first_pos, inverse = np.unique(hashes[order], return_index=True, return_inverse=True)
    by_rank = np.argsort(first_pos, kind="stable")
    rank_of = np.empty_like(by_rank)
    rank_of[by_rank] = np.arange(by_rank.shape[0])
    vals = uniq[by_rank]
    m = vals.shape[0]
    index = faiss.IndexBinaryMultiHash(64, nhash, bits)
    index.nflip = nflip
    index.add(np.ascontiguousarray(vals).view(np.uint8).reshape(m, 8))
    remaining = np.ones(m, dtype=bool)
    ex = np.arange(m)
    block = 256
    ptr = 0
    while ptr < m:
        cand = np.flatnonzero(remaining[ptr : ptr + 4 * block])[:block] + ptr
        if cand.size == 0:
            ptr += 4 * block
            continue
        ptr = int(cand[-1]) + 1
        lims, _, ids = index.range_search(vals[cand].view(np.uint8).reshape(-1, 8), t + 1)
        for j, c in enumerate(cand.tolist()):
            if not remaining[c]:
                continue
            remaining[c] = False
            nb = ids[lims[j] : lims[j + 1]]
            nb = nb[remaining[nb]]
            remaining[nb] = False
            ex[nb] = c
    item_rank = rank_of[inverse.ravel()]
    first_item = order[first_pos[by_rank]]
    exemplar = np.empty(n, dtype=np.int64)
    exemplar[order] = first_item[ex[item_rank]]
    return exemplar


def bench_dedup(
    n: int,
    seed: int,
    brute_n: int,
    faiss_n: int,
    faiss_cfgs: list[tuple[int, int, int]],
    numpy_n: int = 0,
) -> None:
    t = 12
    print(f"(b) greedy dedup, threshold {t}, {n} synthetic 64-bit hashes in one group, seed {seed}")
    h = synthetic_hashes(n, seed)
    order = seeded_order(n, seed)
    if HAVE_NUMBA:
        t0 = time.perf_counter()
        for m in ("numba-scan", "numba-mih"):
            greedy_dedup(h[:50], t, method=m)
        print(
            f"    numba first calls (compile or cache load): {time.perf_counter() - t0:.2f} s"
            f"{'  (--cold: empty cache)' if '--cold' in sys.argv else ''}"
        )
    t0 = time.perf_counter()
    res = greedy_dedup(h, t, order)
    t_ours = time.perf_counter() - t0
    label = "compiled" if HAVE_NUMBA else "numpy multi-index"
    print(
        f"    bidspack greedy_dedup ({label}): {t_ours:8.2f} s   kept {res.n_kept}"
        f" ({res.n_kept / n:.1%})"
    )
    if HAVE_NUMBA:
        for m in ("numba-scan", "numba-mih"):
            t0 = time.perf_counter()
            other = greedy_dedup(h, t, order, method=m)
            dt = time.perf_counter() - t0
            dup = ~other.kept
            recall = float(np.mean(res.exemplar[dup] == other.exemplar[dup])) if dup.any() else 1
            print(
                f"      method={m}: {dt:8.2f} s   all decisions identical to the default:"
                f" {other.same_as(res)}  recall {recall:.4f}"
            )
    if numpy_n:
        sub_n = order[: min(numpy_n, n)]
        t0 = time.perf_counter()
        np_res = greedy_dedup(h[sub_n], t, method="mih")
        t_np = time.perf_counter() - t0
        t0 = time.perf_counter()
        nb_res = greedy_dedup(h[sub_n], t)
        t_nb = time.perf_counter() - t0
        print(
            f"    numpy multi-index (method=mih) on the first {sub_n.shape[0]} items:"
            f" {t_np:.2f} s (default method on the same: {t_nb:.2f} s; identical:"
            f" {np_res.same_as(nb_res)})"
        )
    # brute force on a prefix of the order, extrapolated by the number of comparisons
    kept_in_order = res.kept[order].astype(np.int64)
    comparisons_full = int((np.cumsum(kept_in_order) - kept_in_order).sum())
    sub = order[: min(brute_n, n)]
    hs = h[sub]
    t0 = time.perf_counter()
    ref_sub = greedy_dedup_bruteforce(hs, t)
    t_brute_sub = time.perf_counter() - t0
    k_sub = ref_sub.kept.astype(np.int64)
    comparisons_sub = int((np.cumsum(k_sub) - k_sub).sum())
    per_cmp = t_brute_sub / max(comparisons_sub, 1)
    est = per_cmp * comparisons_full
    t0 = time.perf_counter()
    fast_sub = greedy_dedup(hs, t)
    t_fast_sub = time.perf_counter() - t0
    print(
        f"    brute force on the first {sub.shape[0]} items: {t_brute_sub:.2f} s"
        f" ({comparisons_sub:.3g} comparisons; bidspack on the same: {t_fast_sub:.2f} s,"
        f" identical: {fast_sub.same_as(ref_sub)})"
    )
    print(
        f"    brute force extrapolated to {n}: {est:10.1f} s  ({comparisons_full:.3g}"
        f" comparisons x {per_cmp * 1e9:.2f} ns)   ratio {est / t_ours:6.1f}x"
    )
    try:
        import faiss
    except ImportError:
        print("    FAISS: not installed")
        return
    fn = min(faiss_n, n)
    hf = h[order[:fn]]
    exact = greedy_dedup(hf, t)
    t0 = time.perf_counter()
    exact = greedy_dedup(hf, t)
    t_exact_f = time.perf_counter() - t0
    dup = ~exact.kept
    print(
        f"    FAISS {faiss.__version__} IndexBinaryMultiHash on the first {fn} items"
        f" (omp threads {faiss.omp_get_max_threads()}); bidspack on the same: {t_exact_f:.2f} s"
    )
    for nhash, bits, nflip in faiss_cfgs:
        t0 = time.perf_counter()
        ex = faiss_greedy(hf, np.arange(fn), t, nhash, bits, nflip)
        tf = time.perf_counter() - t0
        recall = float(np.mean(ex[dup] == exact.exemplar[dup])) if dup.any() else 1.0
        print(
            f"      nhash={nhash} b={bits} nflip={nflip}: {tf:8.2f} s"
            f"  recall {recall:.4f}  all decisions equal: {np.array_equal(ex, exact.exemplar)}"
            f"  ratio faiss/bidspack {tf / t_exact_f:5.1f}x"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="hashes in (b)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--patches", type=int, default=1500, help="patches in (a)")
    ap.add_argument("--brute-n", type=int, default=30_000)
    ap.add_argument("--faiss-n", type=int, default=50_000)
    ap.add_argument("--numpy-n", type=int, default=200_000, help="items for method=mih")
    ap.add_argument("--cold", action="store_true", help="empty numba cache (full compile)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.patches, args.brute_n, args.faiss_n = 50_000, 200, 5_000, 5_000
        args.numpy_n = 20_000
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}, numpy {np.__version__}")
    bench_dhash(args.patches, min(args.patches, 400))
    cfgs = [(4, 16, 2), (4, 16, 3)]
    bench_dedup(args.n, args.seed, args.brute_n, args.faiss_n, cfgs, args.numpy_n)


if __name__ == "__main__":
    main()
