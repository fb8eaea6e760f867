"""Benchmark: slice folder -> OME-Zarr 0.5 multiscale image, bidspack against its peers.

On the same synthetic slices (``bench_aggregate``'s generator: uncompressed 2048 x 2048
uint16 light-sheet-like planes, written one by one) and in one run, for each stack depth:

1. raw decode rate: ``tifffile.imread`` of every slice in Z order, one process, warm
   page cache (the read limit);
2. bidspack: ``SliceFolder`` + ``write_ome_zarr`` (NGFF 0.5, sharded, ``verify=True``);
3. ome-zarr-py 0.18: ``ome_zarr.writer.write_image`` of a Dask array built lazily from
   the slices (``dask.array.stack`` of delayed ``tifffile.imread``, one plane per chunk);
4. ngff-zarr: ``to_ngff_image`` / ``to_multiscales`` / ``to_ngff_zarr`` of the same
   Dask array (run with ``--ngff-zarr-python`` if it lives in another environment).

Every writer gets the same pyramid (bidspack's level plan: the same levels and z/y/x
factors), the same block-mean method (ome-zarr ``local_mean``, ngff-zarr
``dask_bin_shrink``), the same chunks (1, 256, 256), the same shards where it takes
them per level (ngff-zarr takes one chunks-per-shard for all levels) and the same codec
(Blosc zstd level 1, byte shuffle). Each run is a fresh child interpreter; its peak RSS
is ``VmHWM`` from ``/proc/self/status``, not ``ru_maxrss``, which inherits the parent's
high-water mark across ``execve``. Imports are not timed. Every output's level 0 is
then read back with zarr-python and its pixel hash compared with the source's
(``--no-check`` skips that). MB = 10**6 bytes.

    python benchmarks/bench_omezarr.py                  # 2.1 GB and 4.3 GB stacks
    python benchmarks/bench_omezarr.py --quick          # smoke run
    python benchmarks/bench_omezarr.py --json out.json --workdir /tmp/b --keep

See benchmarks/README.md for the results and how to read them.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_aggregate as agg  # the shared synthetic slices

MB = 1e6
PHYSICAL_SIZE_ZYX_UM = (4.0, 1.8, 1.8)  # light-sheet-like: z is halved from level 2 on
TOOLS = ("bidspack", "ome-zarr", "ngff-zarr")
QUICK_DEPTHS = (16, 32)
QUICK_SIZE = 1024
DEFAULT_DEPTHS = (256, 512)
DEFAULT_SIZE = 2048
FILES_TARGET_BYTES = 64e6  # the target: at most one file per 64 MB of pixels

# Runs in a fresh interpreter. Argument: one JSON object; prints one JSON object last.
_CHILD = r"""
import json, os, sys, time
from pathlib import Path


def peak_kb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


a = json.loads(sys.argv[1])
files, out, levels = a["files"], a["out"], a["levels"]
ny = nx = a["size"]
sz, sy, sx = a["physical_size"]
factors = [{"z": f[0], "y": f[1], "x": f[2]} for f in (lv["factor"] for lv in levels[1:])]
units = {k: "micrometer" for k in "zyx"}
if a["tool"] == "bidspack":
    from bidspack.io.omezarr import write_ome_zarr
    from bidspack.io.sources import SliceFolder

    t0, c0 = time.perf_counter(), os.times()
    src = SliceFolder(Path(a["folder"]), [Path(f) for f in files])
    res = write_ome_zarr(Path(out), src, physical_size_zyx_um=(sz, sy, sx), name="bench")
    extra = {"pixel_hash": res.pixel_hash, "levels": [list(s) for s in res.levels]}
else:
    import dask
    import dask.array as da
    import numpy as np
    import tifffile
    from zarr.codecs import BloscCodec

    codec = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
    t0, c0 = time.perf_counter(), os.times()
    planes = [
        da.from_delayed(dask.delayed(tifffile.imread)(f), shape=(ny, nx), dtype=np.uint16)
        for f in files
    ]
    image = da.stack(planes)  # chunks (1, y, x)
    if a["tool"] == "ome-zarr":
        from ome_zarr.format import FormatV05
        from ome_zarr.writer import write_image

        options = [{"chunks": lv["chunk"], "shards": lv["shard"]} for lv in levels]
        options[0]["compressor"] = codec
        write_image(
            image, out, scale_factors=factors, method="local_mean", fmt=FormatV05(),
            axes="zyx", scale={"z": sz, "y": sy, "x": sx}, axes_units=units,
            storage_options=options,
        )
    else:
        import ngff_zarr as nz

        img = nz.to_ngff_image(
            image, dims=["z", "y", "x"], scale={"z": sz, "y": sy, "x": sx}, axes_units=units
        )
        ms = nz.to_multiscales(
            img, scale_factors=factors, method=nz.Methods.DASK_BIN_SHRINK,
            chunks=tuple(levels[0]["chunk"]),
        )
        per_shard = [s // c for s, c in zip(levels[0]["shard"], levels[0]["chunk"])]
        nz.to_ngff_zarr(
            out, ms, version="0.5", compressors=[codec],
            chunks_per_shard=dict(zip("zyx", per_shard)),
        )
    extra = {}
seconds, c1 = time.perf_counter() - t0, os.times()
cpu = c1.user - c0.user + c1.system - c0.system
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_rss_kb": peak_kb(), **extra}))
"""


def tool_versions(python: str) -> dict:
    """Versions of the writers in the interpreter *python* (``None`` if missing)."""
    code = (
        "import importlib.metadata as m, json\n"
        "v = {}\n"
        "for n in ('ome-zarr', 'ngff-zarr', 'zarr', 'dask', 'numcodecs'):\n"
        "    try: v[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: v[n] = None\n"
        "print(json.dumps(v))"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def run_child(python: str, payload: dict, timeout: float) -> dict:
    """Run one writer in a fresh interpreter; its result, or ``{"error": ...}``."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [python, "-c", _CHILD, json.dumps(payload)],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
        return {"error": f"exit status {proc.returncode}: " + " | ".join(tail)}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["child_wall_s"] = time.perf_counter() - t0
    return result


def output_stats(path: Path) -> tuple[int, int]:
    """(files, bytes) under *path*."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def level_plan(depth: int, size: int, shard_mib: float | None = None) -> list[dict]:
    """bidspack's pyramid for the stack: factor, chunk and shard of every level (shards
    of *shard_mib* MiB instead of bidspack's if given)."""
    from bidspack.io.omezarr import NgffV05, plan_pyramid

    fmt = NgffV05()
    if shard_mib:
        fmt.shard_bytes = int(shard_mib * 2**20)
    levels = plan_pyramid(
        fmt, (depth, size, size), np.dtype("<u2"), PHYSICAL_SIZE_ZYX_UM, (1, 256, 256)
    )
    return [
        {"factor": list(lv.factor), "chunk": list(lv.chunk), "shard": list(lv.shard or lv.chunk)}
        for lv in levels
    ]


def measure_depth(slice_dir: Path, files: list[Path], depth: int, work: Path, args) -> dict:
    """Raw decode and every tool on the first *depth* slices."""
    from bidspack.io.omezarr import pixel_hash_of_zarr
    from bidspack.io.pixelhash import pixel_hash_planes
    from bidspack.io.sources import SliceFolder

    files = files[:depth]
    stack_bytes = depth * args.size * args.size * 2
    agg.log(f"[depth {depth}] raw decode: warm-up and timed pass")
    agg.decode_pass(files)
    nbytes, seconds = agg.decode_pass(files)
    assert nbytes == stack_bytes
    raw = nbytes / MB / seconds
    source_hash = None
    if args.check:
        src = SliceFolder(slice_dir, files)
        source_hash = pixel_hash_planes(src.iter_planes(), "ZYX", src.shape, src.dtype)
    levels = level_plan(depth, args.size)
    peer_levels = level_plan(depth, args.size, args.peer_shard_mib)
    row: dict = {"depth": depth, "stack_bytes": stack_bytes, "raw_decode_mb_s": raw, "tools": {}}
    for tool in args.tools:
        python = args.ngff_zarr_python if tool == "ngff-zarr" else sys.executable
        out = work / f"{tool}_z{depth}.ome.zarr"
        shutil.rmtree(out, ignore_errors=True)
        agg.log(f"[depth {depth}] {tool}")
        payload = {
            "tool": tool,
            "folder": str(slice_dir),
            "files": [str(f) for f in files],
            "out": str(out),
            "size": args.size,
            "physical_size": list(PHYSICAL_SIZE_ZYX_UM),
            "levels": levels if tool == "bidspack" else peer_levels,
        }
        runs = []
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            runs.append(run_child(python, payload, args.timeout))
        r = next((x for x in runs if "error" in x), None) or min(runs, key=lambda x: x["seconds"])
        if "error" not in r:
            r["seconds_runs"] = [x["seconds"] for x in runs]
            r["peak_rss_kb"] = max(x["peak_rss_kb"] for x in runs)
            r["files"], r["output_bytes"] = output_stats(out)
            r["mb_s"] = stack_bytes / MB / r["seconds"]
            r["peak_rss_mb"] = r["peak_rss_kb"] * 1024 / MB
            r["files_per_64mb"] = r["files"] / (stack_bytes / FILES_TARGET_BYTES)
            if args.check:
                r["level0_hash_ok"] = pixel_hash_of_zarr(out) == source_hash
            agg.log(
                f"[depth {depth}]   {tool}: {r['seconds']:.1f} s, {r['mb_s']:.0f} MB/s, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB, {r['files']} files"
            )
        else:
            agg.log(f"[depth {depth}]   {tool} FAILED: {r['error']}")
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        row["tools"][tool] = r
    return row


def format_table(rows: list[dict], tools: list[str]) -> str:
    head = [
        "depth",
        "stack GB",
        "tool",
        "MB/s",
        "x raw decode",
        "CPU s",
        "CPU use",
        "peak RSS MB",
        "files",
        "files/64MB",
        "output MB",
        "level 0 ok",
    ]
    cells = []
    for row in rows:
        for tool in tools:
            r = row["tools"][tool]
            first = [str(row["depth"]), f"{row['stack_bytes'] / 1e9:.2f}", tool]
            if "error" in r:
                cells.append([*first, "failed", "", "", "", "", "", "", "", ""])
                continue
            ok = r.get("level0_hash_ok")
            cells.append(
                [
                    *first,
                    f"{r['mb_s']:.0f}",
                    f"{r['mb_s'] / row['raw_decode_mb_s']:.3f}",
                    f"{r['cpu_s']:.1f}",
                    f"{r['cpu_s'] / r['seconds'] / (os.cpu_count() or 1):.0%}",
                    f"{r['peak_rss_mb']:.0f}",
                    str(r["files"]),
                    f"{r['files_per_64mb']:.2f}",
                    f"{r['output_bytes'] / MB:.0f}",
                    "-" if ok is None else ("yes" if ok else "NO"),
                ]
            )
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def summary(rows: list[dict]) -> list[str]:
    """The issue's targets, per depth: throughput and RSS against the faster peer."""
    lines = []
    for row in rows:
        if "bidspack" not in row["tools"]:
            continue
        ours = row["tools"]["bidspack"]
        peers = {t: r for t, r in row["tools"].items() if t != "bidspack" and "error" not in r}
        if "error" in ours:
            lines.append(f"depth {row['depth']}: bidspack failed")
            continue
        decode = f"{ours['mb_s'] / row['raw_decode_mb_s']:.3f}x raw decode"
        if not peers:
            lines.append(
                f"depth {row['depth']}: bidspack {ours['mb_s']:.0f} MB/s ({decode}); no peer ran"
            )
            continue
        best = max(peers, key=lambda t: peers[t]["mb_s"])
        speed = ours["mb_s"] / peers[best]["mb_s"]
        rss = ours["peak_rss_mb"] / peers[best]["peak_rss_mb"]
        cpu = peers[best]["cpu_s"] / ours["cpu_s"]
        lines.append(
            f"depth {row['depth']}: bidspack {ours['mb_s']:.0f} MB/s = {speed:.2f}x the faster "
            f"peer ({best}, {peers[best]['mb_s']:.0f} MB/s; target >= 2x: "
            f"{'met' if speed >= 2 else 'NOT met'}); peak RSS {ours['peak_rss_mb']:.0f} MB = "
            f"{rss:.2f}x {best}'s {peers[best]['peak_rss_mb']:.0f} MB (target <= 0.25: "
            f"{'met' if rss <= 0.25 else 'NOT met'}); {ours['files']} files = "
            f"{ours['files_per_64mb']:.2f} per 64 MB (target <= 1: "
            f"{'met' if ours['files_per_64mb'] <= 1 else 'NOT met'}); {decode}; "
            f"{best} used {cpu:.2f}x bidspack's CPU time"
        )
    ok = [r["tools"]["bidspack"] for r in rows if "peak_rss_mb" in r["tools"].get("bidspack", {})]
    if len(ok) >= 2:
        lines.append(
            f"bidspack peak RSS, deepest / shallowest stack: {ok[-1]['peak_rss_mb']:.0f} / "
            f"{ok[0]['peak_rss_mb']:.0f} MB = {ok[-1]['peak_rss_mb'] / ok[0]['peak_rss_mb']:.2f} "
            f"for {rows[-1]['depth'] / rows[0]['depth']:.1f}x the depth"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=int, nargs="+", help="stack depths (default 256 512)")
    p.add_argument("--size", type=int, help="slice side y = x (default 2048; uint16)")
    p.add_argument("--quick", action="store_true", help="smoke run: depths 16 32, size 1024")
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument(
        "--ngff-zarr-python",
        default=sys.executable,
        help="interpreter with ngff-zarr installed (default: this one)",
    )
    p.add_argument(
        "--peer-shard-mib",
        type=float,
        help="shard size (MiB of pixels) for ome-zarr and ngff-zarr instead of bidspack's "
        "256: their peak RSS grows with it (one Dask chunk per shard)",
    )
    p.add_argument("--no-check", dest="check", action="store_false", help="skip hash checks")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per writer run")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per writer and depth: the fastest is shown, with the largest peak RSS",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic slices")
    p.add_argument("--workdir", type=Path, help="slices and outputs (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep slices and outputs")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.depths = sorted(set(args.depths or (QUICK_DEPTHS if args.quick else DEFAULT_DEPTHS)))
    args.size = args.size or (QUICK_SIZE if args.quick else DEFAULT_SIZE)
    if min(args.depths) < 1 or args.size < 16 or args.repeat < 1:
        p.error("depths and --repeat must be >= 1, size >= 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    own = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bidspack-omezarr-")) if own else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    slice_dir = work / f"slices_{args.size}_seed{args.seed}"
    versions = tool_versions(sys.executable)
    if "ngff-zarr" in args.tools:
        versions["ngff-zarr"] = tool_versions(args.ngff_zarr_python).get("ngff-zarr")
        if versions["ngff-zarr"] is None:
            agg.log(f"ngff-zarr is not installed for {args.ngff_zarr_python}; skipping it")
            args.tools.remove("ngff-zarr")
    started = time.perf_counter()
    try:
        files = agg.ensure_slices(slice_dir, max(args.depths), args.size, args.seed)
        rows = [measure_depth(slice_dir, files, d, work, args) for d in args.depths]
    finally:
        if not args.keep:
            shutil.rmtree(work if own else slice_dir, ignore_errors=True)
    info = {**agg.machine_info(), **{k: v for k, v in versions.items()}}
    print(
        f"slice folder -> OME-Zarr 0.5, {args.size}x{args.size} uint16 slices, chunks "
        f"(1, 256, 256), Blosc zstd 1 + shuffle; {info['cpu_count']} CPUs, "
        f"{info['memory_gib']:.0f} GiB RAM, {info['date']}; ome-zarr {versions.get('ome-zarr')}, "
        f"ngff-zarr {versions.get('ngff-zarr')}, zarr {versions.get('zarr')}, "
        f"dask {versions.get('dask')}"
    )
    print(format_table(rows, args.tools))
    for line in summary(rows):
        print(line)
    for row in rows:
        for tool, r in row["tools"].items():
            if "error" in r:
                print(f"depth {row['depth']}: {tool} failed: {r['error']}")
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "workdir")}
        settings["ngff_zarr_python"] = str(settings["ngff_zarr_python"])
        doc = {"machine": info, "settings": settings, "results": rows}
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        agg.log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    raise SystemExit(main())
