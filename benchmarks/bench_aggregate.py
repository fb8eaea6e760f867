"""Benchmark: streaming aggregation of a 2D TIFF slice folder into one OME-TIFF.

For each stack depth this script measures, on the same synthetic slices and in one run:

1. the raw decode rate of the slices: ``tifffile.imread`` of every slice file in Z
   order, single process, after one untimed pass that warms the page cache;
2. bidspack's aggregation throughput (``SliceFolder`` + ``write_ome_tiff`` with the
   pyramid and ``verify=True``), in MB/s of uncompressed input, and its ratio to (1);
3. the peak RSS of the aggregation, measured inside a fresh child process that does
   nothing else (its ``VmHWM`` on Linux, not ``ru_maxrss``: see ``_CHILD``), so the
   parent's memory does not count.

Two depths are run (default 256 and 512 slices of 2048 x 2048 uint16: 2.1 GB and
4.3 GB) to show that peak RSS does not grow with stack depth. MB = 10**6 bytes,
GB = 10**9 bytes throughout.

    python benchmarks/bench_aggregate.py                 # default: 2.1 GB and 4.3 GB stacks
    python benchmarks/bench_aggregate.py --quick         # smoke run, a few seconds
    python benchmarks/bench_aggregate.py --json out.json # also write the results as JSON

See benchmarks/README.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import datetime as _dt
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
import tifffile

MB = 1e6
GB = 1e9
RSS_TARGET_MB = 500.0
#: Bump when the synthetic content changes, so kept slice folders are regenerated.
GENERATOR_VERSION = 1
QUICK_DEPTHS = (16, 32)
QUICK_SIZE = 1024  # large enough for one pyramid sub-level (bidspack stops at 512 px)
DEFAULT_DEPTHS = (256, 512)
DEFAULT_SIZE = 2048
PHYSICAL_SIZE_ZYX_UM = (4.0, 1.8, 1.8)

# ---------------------------------------------------------------------------------------
# Synthetic slices
# ---------------------------------------------------------------------------------------

_KNOT_SPACING_Z = 32  # planes between the coarse random fields interpolated along Z
_COARSE = 12  # coarse grid side of the smooth background (bilinear-upsampled to the plane)


def _interp_matrix(n: int, k: int) -> np.ndarray:
    """``(n, k)`` matrix that linearly interpolates *k* knots onto *n* samples."""
    pos = np.linspace(0.0, k - 1.0, n)
    lo = np.minimum(np.floor(pos).astype(np.int64), k - 2)
    frac = pos - lo
    w = np.zeros((n, k), dtype=np.float32)
    w[np.arange(n), lo] = 1.0 - frac
    w[np.arange(n), lo + 1] = frac
    return w


def _knot(seed: int, k: int) -> np.ndarray:
    """Coarse random field number *k* (deterministic in *seed* and *k*)."""
    rng = np.random.default_rng([seed, 1, k])
    return rng.normal(0.0, 1.0, (_COARSE, _COARSE)).astype(np.float32)


def synthetic_plane(z: int, size: int, seed: int, interp: np.ndarray) -> np.ndarray:
    """Plane *z* of the synthetic stack as a ``(size, size)`` uint16 array.

    A light-sheet-like image: about half the plane is dark background (offset 100),
    the rest "tissue" (mean ~1500-2500) with a soft edge, a smooth random structure
    that drifts with Z and a sinusoidal texture; noise is Gaussian with sCMOS-like
    read noise (sigma 2) plus shot noise (variance half the signal above offset).
    With plain deflate (zlib level 6, no predictor) this compresses about 1.8x.

    Each plane depends only on ``(z, size, seed)``, so the first N planes of a deeper
    stack are exactly the planes of an N-deep one.
    """
    k, t = divmod(z, _KNOT_SPACING_Z)
    f = t / _KNOT_SPACING_Z
    coarse = (1.0 - f) * _knot(seed, k) + f * _knot(seed, k + 1)
    smooth = interp @ coarse @ interp.T  # (size, size), bilinear upsampling of the knots
    axis = np.arange(size, dtype=np.float32) / size
    texture = np.outer(
        np.sin(2 * np.pi * (7 * axis + 0.013 * z)), np.cos(2 * np.pi * (5 * axis - 0.011 * z))
    )
    tissue = np.clip(3.0 * smooth, 0.0, 1.0)  # 0 background .. 1 tissue
    signal = tissue * (1500.0 + 600.0 * smooth + 400.0 * texture)
    rng = np.random.default_rng([seed, 2, z])
    noise = rng.standard_normal((size, size), dtype=np.float32)
    plane = 100.0 + signal + np.sqrt(4.0 + 0.5 * np.maximum(signal, 0.0)) * noise
    return np.clip(plane, 0, 65535).astype(np.uint16)


def ensure_slices(folder: Path, depth: int, size: int, seed: int) -> list[Path]:
    """Write ``Z0000.tif`` .. into *folder* (one uncompressed uint16 plane per file,
    written plane by plane), or reuse them if a complete matching set is there."""
    manifest = folder / "manifest.json"
    want = {"generator": GENERATOR_VERSION, "size": size, "seed": seed, "dtype": "uint16"}
    files = [folder / f"Z{z:04d}.tif" for z in range(depth)]
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if (
            {key: have.get(key) for key in want} == want
            and have.get("depth", 0) >= depth
            and all(p.is_file() for p in files)
        ):
            log(f"reusing {depth} slices in {folder}")
            return files
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    interp = _interp_matrix(size, _COARSE)
    t0 = time.perf_counter()
    for z, path in enumerate(files):
        tifffile.imwrite(path, synthetic_plane(z, size, seed, interp))
        if (z + 1) % 64 == 0 or z + 1 == depth:
            log(f"  wrote {z + 1}/{depth} slices ({time.perf_counter() - t0:.0f} s)")
    manifest.write_text(json.dumps({**want, "depth": depth}))
    return files


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------


def decode_pass(files: list[Path]) -> tuple[int, float]:
    """``tifffile.imread`` every file in order; (bytes decoded, seconds)."""
    nbytes = 0
    t0 = time.perf_counter()
    for path in files:
        nbytes += tifffile.imread(path).nbytes
    return nbytes, time.perf_counter() - t0


# Runs in a fresh interpreter (python -c) so that its peak RSS is the aggregation's
# alone. Argument: one JSON object. Prints one JSON object on the last stdout line.
#
# Peak RSS is VmHWM from /proc/self/status (Linux): the high-water mark of this
# process's own address space. getrusage's ru_maxrss is also recorded but is NOT used
# on Linux: execve() carries the parent's RSS high-water mark over into the child's
# ru_maxrss, so a child started from a parent holding 300 MB reports ru_maxrss >= 300 MB
# even if it never uses more than 15 MB. Elsewhere ru_maxrss is the fallback (bytes on
# macOS, KiB on other systems).
_CHILD = r"""
import json, resource, sys, time
from pathlib import Path


def peak_kb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]), "VmHWM"
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (ru // 1024 if sys.platform == "darwin" else ru), "ru_maxrss"


from bidspack.io.ometiff import write_ome_tiff
from bidspack.io.sources import SliceFolder

a = json.loads(sys.argv[1])
if a["tifffile_buffersize"]:
    import tifffile
    tifffile.TIFF.BUFFERSIZE = a["tifffile_buffersize"]
rss_imports_kb, _ = peak_kb()
t0 = time.perf_counter()
src = SliceFolder(Path(a["folder"]), [Path(p) for p in a["files"]])
t1 = time.perf_counter()
res = write_ome_tiff(
    Path(a["out"]), src,
    physical_size_zyx_um=tuple(a["physical_size"]), name="bench", kind="intensity",
    compression=a["compression"], compression_level=a["level"], tile=a["tile"],
    workdir=Path(a["scratch"]), verify=a["verify"],
)
t2 = time.perf_counter()
peak, how = peak_kb()
print(json.dumps({
    "open_s": t1 - t0,
    "write_s": t2 - t1,
    "nbytes": src.nbytes,
    "shape": list(src.shape),
    "rss_after_imports_kb": rss_imports_kb,
    "peak_rss_kb": peak,
    "peak_rss_source": how,
    "ru_maxrss_raw": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "pixel_hash": res.pixel_hash,
    "levels": [list(lv) for lv in res.levels],
    "bigtiff": res.bigtiff,
}))
"""


def aggregate_in_child(
    folder: Path,
    files: list[Path],
    out: Path,
    scratch: Path,
    *,
    compression: str,
    level: int,
    tile: int,
    verify: bool,
    tifffile_buffersize: int | None,
) -> dict:
    """Run the aggregation in a child interpreter; its timings and peak RSS."""
    payload = {
        "folder": str(folder),
        "files": [str(p) for p in files],
        "out": str(out),
        "scratch": str(scratch),
        "compression": compression,
        "level": level,
        "tile": tile,
        "verify": verify,
        "tifffile_buffersize": tifffile_buffersize,
        "physical_size": list(PHYSICAL_SIZE_ZYX_UM),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(payload)],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"aggregation child failed with exit status {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["child_wall_s"] = wall
    result["output_bytes"] = out.stat().st_size
    return result


def codec_pass(files: list[Path], compression: str, level: int, tile: int) -> float | None:
    """MB/s of tifffile's own encoder for *compression* (the one ``write_ome_tiff`` ends up
    calling), one thread, on the 256 px tiles of *files*; ``None`` for no compression."""
    if compression == "none":
        return None
    tag = {"zlib": 8, "lzw": 5}[compression]
    encode = tifffile.TIFF.COMPRESSORS[tag]
    kwargs = {"level": level} if compression == "zlib" else {}
    planes = [tifffile.imread(p) for p in files]
    nbytes = 0
    t0 = time.perf_counter()
    for plane in planes:
        for ty in range(0, plane.shape[0], tile):
            for tx in range(0, plane.shape[1], tile):
                chunk = np.ascontiguousarray(plane[ty : ty + tile, tx : tx + tile])
                encode(chunk, **kwargs)
                nbytes += chunk.nbytes
    return nbytes / MB / (time.perf_counter() - t0)


def measure_depth(
    slice_dir: Path, all_files: list[Path], depth: int, work: Path, args: argparse.Namespace
) -> dict:
    from bidspack.io.ometiff import ome_tiff_extension

    files = all_files[:depth]
    shape = (depth, args.size, args.size)
    nbytes_expected = depth * args.size * args.size * 2

    log(f"[depth {depth}] raw decode: warm-up pass")
    n_first, s_first = decode_pass(files)
    log(f"[depth {depth}] raw decode: timed pass")
    n_warm, s_warm = decode_pass(files)
    assert n_first == n_warm == nbytes_expected
    raw_mbs = n_warm / MB / s_warm

    ext = ome_tiff_extension(shape, np.dtype(np.uint16))
    scratch = work / f"scratch_z{depth}"

    def run(verify: bool, i: int) -> dict:
        out = work / f"bench_z{depth}{'' if verify else '_noverify'}{ext}"
        log(f"[depth {depth}] bidspack aggregation {i + 1}/{args.repeat} (verify={verify})")
        r = aggregate_in_child(
            slice_dir,
            files,
            out,
            scratch,
            compression=args.compression,
            level=args.level,
            tile=256,
            verify=verify,
            tifffile_buffersize=tifffile_buffer_bytes(args),
        )
        if not (args.keep and verify and i == args.repeat - 1):
            out.unlink()
        shutil.rmtree(scratch, ignore_errors=True)
        r["seconds"] = r["open_s"] + r["write_s"]
        r["peak_rss_mb"] = r["peak_rss_kb"] * 1024 / MB
        log(
            f"[depth {depth}]   {r['seconds']:.1f} s "
            f"({r['nbytes'] / MB / r['seconds']:.1f} MB/s), peak RSS {r['peak_rss_mb']:.0f} MB"
        )
        return r

    runs = [run(True, i) for i in range(args.repeat)]
    r = runs[-1]
    agg_s = float(np.median([x["seconds"] for x in runs]))
    agg_mbs = r["nbytes"] / MB / agg_s
    row = {
        "depth": depth,
        "shape_zyx": list(shape),
        "stack_bytes": r["nbytes"],
        "stack_gb": r["nbytes"] / GB,
        "raw_decode_first_pass_mb_s": n_first / MB / s_first,
        "raw_decode_mb_s": raw_mbs,
        "raw_decode_s": s_warm,
        "bidspack_s": agg_s,
        "bidspack_s_runs": [x["seconds"] for x in runs],
        "bidspack_open_s": r["open_s"],
        "bidspack_write_verify_s": r["write_s"],
        "bidspack_mb_s": agg_mbs,
        "ratio_to_raw_decode": agg_mbs / raw_mbs,
        "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
        "peak_rss_mb_runs": [x["peak_rss_mb"] for x in runs],
        "rss_after_imports_mb": r["rss_after_imports_kb"] * 1024 / MB,
        "peak_rss_source": r["peak_rss_source"],
        "output_file": f"bench_z{depth}{ext}",
        "output_mb": r["output_bytes"] / MB,
        "compression_ratio": r["nbytes"] / r["output_bytes"],
        "bigtiff": r["bigtiff"],
        "levels_yx": r["levels"],
        "pixel_hash": r["pixel_hash"],
    }
    if args.breakdown:
        nv = run(False, 0)
        row["bidspack_no_verify_s"] = nv["seconds"]
        row["bidspack_no_verify_mb_s"] = nv["nbytes"] / MB / nv["seconds"]
        row["peak_rss_no_verify_mb"] = nv["peak_rss_mb"]
        row["verify_s_estimate"] = agg_s - nv["seconds"]
    log(
        f"[depth {depth}] raw {raw_mbs:.0f} MB/s, bidspack {agg_mbs:.1f} MB/s "
        f"({agg_s:.1f} s), peak RSS {row['peak_rss_mb']:.0f} MB"
    )
    return row


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def format_table(rows: list[dict]) -> str:
    cols = [
        ("depth", "depth", "{:d}"),
        ("stack GB", "stack_gb", "{:.2f}"),
        ("raw decode MB/s", "raw_decode_mb_s", "{:.0f}"),
        ("bidspack MB/s", "bidspack_mb_s", "{:.1f}"),
        ("ratio", "ratio_to_raw_decode", "{:.3f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("output MB", "output_mb", "{:.0f}"),
        ("compr. ratio", "compression_ratio", "{:.2f}"),
    ]
    cells = [[fmt.format(row[key]) for _, key, fmt in cols] for row in rows]
    widths = [max(len(head), *(len(c[i]) for c in cells)) for i, (head, _, _) in enumerate(cols)]
    lines = [" | ".join(head.rjust(w) for (head, _, _), w in zip(cols, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def tifffile_buffer_bytes(args: argparse.Namespace) -> int | None:
    mib = args.tifffile_buffersize
    return None if mib is None else int(mib * 2**20)


def machine_info() -> dict:
    import imagecodecs

    import bidspack

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    return {
        "date": _dt.date.today().isoformat(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gib": mem / 2**30 if mem else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tifffile": tifffile.__version__,
        "imagecodecs": imagecodecs.__version__,
        "bidspack": getattr(bidspack, "__version__", None),
    }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark bidspack's slice-folder -> OME-TIFF aggregation against "
        "raw tifffile decoding, with peak RSS measured in a child process.",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="where slices and outputs go (default: a new temp dir under /tmp, removed "
        "at the end unless --keep); slices kept there are reused by later runs",
    )
    p.add_argument(
        "--depths",
        type=int,
        nargs="+",
        help=f"stack depths in slices (default: {' '.join(map(str, DEFAULT_DEPTHS))})",
    )
    p.add_argument("--size", type=int, help=f"slice side y = x in pixels (default {DEFAULT_SIZE})")
    p.add_argument("--compression", choices=["zlib", "lzw", "none"], default="zlib")
    p.add_argument("--level", type=int, default=6, help="zlib level (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: depths {' '.join(map(str, QUICK_DEPTHS))}, size {QUICK_SIZE} "
        "(unless --depths/--size are given)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="aggregation runs per depth (fresh child each); the table shows the median "
        "time and the largest peak RSS (default 1)",
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also run each depth with verify=False (about 1.5x the runtime) to split "
        "write and verify time",
    )
    p.add_argument(
        "--tifffile-buffersize",
        type=float,
        metavar="MIB",
        help="diagnostic: set tifffile.TIFF.BUFFERSIZE (MiB) in the aggregation child. "
        "TiffWriter.write buffers 2x this many bytes of uncompressed tiles (default 2 x 256 "
        "MiB) plus their encoded bytes per compression batch; bidspack passes no "
        "buffersize, so this bounds its peak RSS. Default: tifffile's own",
    )
    p.add_argument("--keep", action="store_true", help="keep slices and outputs")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.depths is None:
        args.depths = list(QUICK_DEPTHS if args.quick else DEFAULT_DEPTHS)
    if args.size is None:
        args.size = QUICK_SIZE if args.quick else DEFAULT_SIZE
    if min(args.depths) < 1 or args.size < 16 or args.repeat < 1:
        p.error("depths and --repeat must be >= 1, size >= 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    depths = sorted(set(args.depths))
    own_workdir = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bidspack-bench-")) if own_workdir else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    slice_dir = work / f"slices_{args.size}_seed{args.seed}"
    started = time.perf_counter()
    try:
        log(f"workdir {work}; generating up to {max(depths)} slices of {args.size}^2 uint16")
        files = ensure_slices(slice_dir, max(depths), args.size, args.seed)
        rows = [measure_depth(slice_dir, files, d, work, args) for d in depths]
        codec_files = files[: min(8, len(files))]
        log(f"codec baseline on {len(codec_files)} slices")
        codec_mbs = codec_pass(codec_files, args.compression, args.level, 256)
    finally:
        if not args.keep:
            if own_workdir:
                shutil.rmtree(work, ignore_errors=True)
            else:
                shutil.rmtree(slice_dir, ignore_errors=True)
    total_s = time.perf_counter() - started

    info = machine_info()
    level = f" level {args.level}" if args.compression == "zlib" else ""
    diag = (
        f"tifffile.TIFF.BUFFERSIZE={args.tifffile_buffersize:g} MiB (diagnostic); "
        if args.tifffile_buffersize is not None
        else ""
    )
    print(
        f"bidspack slice-folder -> OME-TIFF aggregation; {args.size}x{args.size} uint16 slices, "
        f"{args.compression}{level}, tile 256, verify=True; {diag}"
        f"{info['cpu_count']} CPUs, {info['memory_gib']:.0f} GiB RAM, {info['date']}"
    )
    print(format_table(rows))
    if args.breakdown:
        for r in rows:
            print(
                f"depth {r['depth']}: open {r['bidspack_open_s']:.1f} s, write+verify "
                f"{r['bidspack_write_verify_s']:.1f} s; without verify "
                f"{r['bidspack_no_verify_s']:.1f} s ({r['bidspack_no_verify_mb_s']:.1f} MB/s), "
                f"verify ~{r['verify_s_estimate']:.1f} s"
            )
    if codec_mbs is not None:
        print(
            f"codec alone: tifffile's {args.compression} encoder{level}, 256 px tiles of "
            f"{len(codec_files)} slices, 1 thread: {codec_mbs:.1f} MB/s"
        )
    peaks = [r["peak_rss_mb"] for r in rows]
    under = all(p < RSS_TARGET_MB for p in peaks)
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        print(
            f"peak RSS: depth {hi['depth']} ({hi['stack_gb']:.2f} GB) / depth {lo['depth']} "
            f"({lo['stack_gb']:.2f} GB) = {hi['peak_rss_mb']:.0f} / {lo['peak_rss_mb']:.0f} MB "
            f"= {hi['peak_rss_mb'] / lo['peak_rss_mb']:.3f} for "
            f"{hi['depth'] / lo['depth']:.1f}x the depth; "
            f"all under {RSS_TARGET_MB:.0f} MB: {'yes' if under else 'NO'}"
        )
    else:
        print(
            f"peak RSS {peaks[0]:.0f} MB; under {RSS_TARGET_MB:.0f} MB: {'yes' if under else 'NO'}"
        )
    print(f"total benchmark time {total_s:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "settings": {
                        "depths": depths,
                        "size": args.size,
                        "dtype": "uint16",
                        "compression": args.compression,
                        "level": args.level,
                        "tile": 256,
                        "verify": True,
                        "seed": args.seed,
                        "repeat": args.repeat,
                        "tifffile_buffersize_bytes": tifffile_buffer_bytes(args),
                        "generator_version": GENERATOR_VERSION,
                    },
                    "results": rows,
                    "codec_1thread_mb_s": codec_mbs,
                    "peak_rss_ratio_deepest_to_shallowest": peaks[-1] / peaks[0],
                    "all_under_rss_target": under,
                    "rss_target_mb": RSS_TARGET_MB,
                    "total_s": total_s,
                },
                indent=2,
            )
            + "\n"
        )
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
