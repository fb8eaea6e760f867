"""Benchmark: ``bidspack derive classify`` throughput per model kind (issue 15).

On real patches (the STP mouse brain of ``../shared/realdata``, packaged and cut into
patches in a temporary folder), in one run:

1. ``rules`` and ``sklearn`` (a logistic regression trained on the rule decisions, only
   for timing): patches per second of bidspack's pipeline (patches read from the Zarr
   array batch by batch, features in a reader thread, scores and decisions), next to the
   bare feature computation on the same patches already in memory;
2. ``torch`` (a randomly initialised ResNet34 in CEM500K's layout, 224 x 224 patches:
   CEM's size, no resize): patches per second of bidspack's pipeline (read + CEM
   preprocessing in the reader thread, overlapping the forward pass), next to a bare
   ``torchvision`` forward pass (``model(x)`` under ``torch.inference_mode()``, sigmoid)
   on the same preprocessed tensors, already in memory, in the same process; the ratio
   pipeline / bare is the goal's measure (>= 0.9);
3. the whole verb (``derive_classify`` into a new folder, without validation) once per
   kind, for the cost of the transactional steps and the table.

The torch part runs on the CPU with a fixed thread count and, when CUDA is available, on
the GPU too (otherwise it says so). Batch sizes are printed with each line.

    python benchmarks/bench_classify.py                # default sizes
    python benchmarks/bench_classify.py --quick        # smoke run
    python benchmarks/bench_classify.py --json out.json

See benchmarks/README.md for measured numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("BIDSPACK_REALDATA", REPO.parent / "shared" / "realdata"))
sys.path.insert(0, str(REPO / "tests"))

STP_SPEC = """
spec_version = 1
[dataset]
Name = "STP mouse brain (benchmark)"
Authors = ["BrainGlobe"]
License = "BSD-3-Clause"
[subjects]
pattern = '(?P<name>stp_mouse_brain)'
label = "{name}"
sample = "brain"
[[channels]]
folder = "slices"
suffix = "2PE"
voxel_size = { z = 50, y = 40, x = 40 }
voxel_unit = "um"
[[exclude]]
path = "stp_mouse_brain/*.tiff"
reason = "registration outputs"
[[exclude]]
path = "czi"
reason = "other"
[[exclude]]
path = "ometiff"
reason = "other"
[[exclude]]
path = "omexml"
reason = "other"
[[exclude]]
path = "swc"
reason = "other"
[[exclude]]
path = "README.md"
reason = "other"
"""


def _package(root: Path) -> Path:
    from bidspack.ops.package import package
    from bidspack.spec import load_spec

    spec = root / "stp.toml"
    spec.write_text(STP_SPEC, encoding="utf-8")
    ds = root / "ds"
    recs = list(package(REALDATA, ds, load_spec(spec), validate=False))
    assert not [r for r in recs if r.status == "error"]
    return ds


def _patches(ds: Path, out: Path, size: int, slice_step: int) -> Path:
    from bidspack.ops.derive.patches import PatchParams, derive_patches

    recs = list(
        derive_patches(ds, out, PatchParams(size=size, slice_step=slice_step), validate=False)
    )
    assert not [r for r in recs if r.status == "error"]
    return out


def _pipeline_rate(clf: object, parent: object, batch: int, repeats: int) -> float:
    """Patches per second of bidspack's pipeline over every patch of *parent*."""
    from bidspack.ops.derive.classify import iter_batches, run_pipeline

    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for rel in parent.arrays():  # type: ignore[attr-defined]
            rows = parent.rows(parent.positions(rel))  # type: ignore[attr-defined]
            arr = parent.open_array(rel)  # type: ignore[attr-defined]
            for scores, _, _ in run_pipeline(clf, iter_batches(arr, rows, batch)):
                n += len(scores)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _all(parent: object) -> np.ndarray:
    from bidspack.ops.derive.classify import read_rows

    out = []
    for rel in parent.arrays():  # type: ignore[attr-defined]
        rows = parent.rows(parent.positions(rel))  # type: ignore[attr-defined]
        out.append(read_rows(parent.open_array(rel), rows))  # type: ignore[attr-defined]
    return np.concatenate(out)


def _verb_seconds(parent_path: Path, out: Path, **kw: object) -> float:
    from bidspack.ops.derive.classify import ClassifyParams, derive_classify

    t0 = time.perf_counter()
    recs = list(derive_classify(parent_path, out, ClassifyParams(**kw), validate=False))  # type: ignore[arg-type]
    assert not [r for r in recs if r.status == "error"], recs
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (fewer patches)")
    ap.add_argument("--batch", type=int, default=256, help="rules/sklearn batch size")
    ap.add_argument("--torch-batch", type=int, default=16, help="torch batch size")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    args = ap.parse_args()

    from bidspack.ops.derive.classify import PatchDataset, train_classifier
    from bidspack.ops.derive.models import (
        RulesClassifier,
        cem_preprocess,
        import_torch,
        load_classifier,
        patch_features,
    )

    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
    }
    print(results["machine"])
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
        root = Path(tmp)
        ds = _package(root)
        small = _patches(ds, root / "p64", 64, 1 if not args.quick else 10)  # 3240 / 324
        big = _patches(ds, root / "p224", 224, 1 if not args.quick else 5)  # 270 / 54
        parent = PatchDataset(small)
        batch = _all(parent)
        n = len(batch)
        repeats = 1 if args.quick else 3

        # rules
        rules = RulesClassifier()
        t0 = time.perf_counter()
        for s in range(0, n, args.batch):
            rules.infer(rules.prepare(batch[s : s + args.batch]))
        bare = n / (time.perf_counter() - t0)
        rate = _pipeline_rate(rules, parent, args.batch, repeats)
        verb = _verb_seconds(small, root / "c-rules")
        print(
            f"rules    64x64   batch {args.batch:4d}: {rate:9.0f} patches/s (pipeline from Zarr), "
            f"{bare:9.0f} in memory, ratio {rate / bare:.2f}; whole verb {n} patches "
            f"{verb:.2f} s"
        )
        results["rules"] = {"batch": args.batch, "patches": n, "pipeline_per_s": rate,
                            "memory_per_s": bare, "verb_s": verb}  # fmt: skip

        # sklearn (trained on the rule decisions: timing only)
        labels = root / "labels.csv"
        import pyarrow.parquet as pq

        tab = pq.read_table(root / "c-rules" / "classification.parquet").to_pylist()
        with open(labels, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["patch_id", "label"])
            for r in tab:
                w.writerow([r["patch_id"], int(r["decision"] == "kept")])
        model = root / "model.json"
        list(train_classifier(small, labels, model))
        lin = load_classifier(str(model))
        t0 = time.perf_counter()
        for s in range(0, n, args.batch):
            lin.infer(patch_features(batch[s : s + args.batch]))
        bare = n / (time.perf_counter() - t0)
        rate = _pipeline_rate(lin, parent, args.batch, repeats)
        verb = _verb_seconds(small, root / "c-sk", model=str(model))
        print(
            f"sklearn  64x64   batch {args.batch:4d}: {rate:9.0f} patches/s (pipeline from Zarr), "
            f"{bare:9.0f} in memory, ratio {rate / bare:.2f}; whole verb {n} patches "
            f"{verb:.2f} s"
        )
        results["sklearn"] = {"batch": args.batch, "patches": n, "pipeline_per_s": rate,
                              "memory_per_s": bare, "verb_s": verb}  # fmt: skip

        # torch
        try:
            torch, torchvision, _ = import_torch()
        except Exception as exc:  # the optional extra
            print(f"torch: not run ({exc})")
            torch = None
        if torch is not None:
            torch.manual_seed(0)
            net = torchvision.models.resnet34(weights=None)
            net.fc = torch.nn.Linear(512, 1)
            weights = root / "cem.pth"
            torch.save(net.state_dict(), weights)
            tparent = PatchDataset(big)
            tbatch = _all(tparent)
            tn = len(tbatch)
            devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
            if len(devices) == 1:
                print("torch: no CUDA device here: CPU only")
            for device in devices:
                clf = load_classifier(str(weights), device=device, threads=args.threads)
                tb = args.torch_batch if device == "cpu" else 128
                tensors = [
                    cem_preprocess(tbatch[s : s + tb], torch, "cpu") for s in range(0, tn, tb)
                ]
                model = clf.model  # type: ignore[attr-defined]
                dev = clf.device  # type: ignore[attr-defined]

                def bare_forward(tensors=tensors, model=model, dev=dev) -> float:  # type: ignore[no-untyped-def]
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        for x in tensors:
                            torch.sigmoid(model(x.to(dev)))[:, 0].cpu()
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    return tn / (time.perf_counter() - t0)

                bare_forward()  # warm-up (allocator, cuDNN)
                rounds = 1 if args.quick else 3
                bare_rate = rate = 0.0
                for _ in range(rounds):  # interleaved: the same machine state for both
                    bare_rate = max(bare_rate, bare_forward())
                    rate = max(rate, _pipeline_rate(clf, tparent, tb, 1))
                threads = torch.get_num_threads()
                verb = _verb_seconds(
                    big, root / f"c-torch-{device}", model=str(weights), device=device,
                    threads=args.threads, batch_size=tb,
                )  # fmt: skip
                print(
                    f"torch    224x224 batch {tb:4d} ({device}, {threads} threads): "
                    f"{rate:7.1f} patches/s (pipeline from Zarr), bare torchvision forward "
                    f"{bare_rate:7.1f}, ratio {rate / bare_rate:.2f}; whole verb {tn} patches "
                    f"{verb:.1f} s"
                )
                results[f"torch-{device}"] = {
                    "batch": tb, "patches": tn, "threads": threads, "pipeline_per_s": rate,
                    "bare_forward_per_s": bare_rate, "ratio": rate / bare_rate, "verb_s": verb,
                }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
