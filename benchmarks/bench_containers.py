"""Read throughput per container format: bidspack (``open_source(...).iter_planes()``,
plane by plane / one chunk-deep slab at a time) vs the format's own library reading the
whole array at once, in the same run, on the same file.

The data is the real STP stack (``../shared/realdata/stp_mouse_brain/downsampled.tiff``,
135 x 77 x 108 uint16) tiled ``--repeat`` times in Z and X (default 4: 540 x 77 x 432,
36 MB), written with each format's library into a temporary folder. Prints MB/s of
decoded pixels for both and the ratio bidspack / library (>= 1: bidspack not slower).

    python benchmarks/bench_containers.py [--repeat 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile

from bidspack.io.sources import open_source

STP = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "realdata"
    / "stp_mouse_brain"
    / "downsampled.tiff"
)


def best(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def writers(data: np.ndarray, tmp: Path) -> dict[str, tuple[Path, Callable[[], np.ndarray]]]:
    import av
    import h5py
    import mrcfile
    import nrrd
    import zarr

    out: dict[str, tuple[Path, Callable[[], np.ndarray]]] = {}
    with mrcfile.new(tmp / "a.mrc") as m:
        m.set_data(data)
        m.voxel_size = 10.0

    def mrc_lib() -> np.ndarray:
        with mrcfile.open(tmp / "a.mrc") as m:
            return np.array(m.data)

    out["mrc"] = (tmp / "a.mrc", mrc_lib)
    with mrcfile.new(tmp / "a.mrc.gz", compression="gzip") as m:
        m.set_data(data)

    def mrcgz_lib() -> np.ndarray:
        with mrcfile.open(tmp / "a.mrc.gz") as m:
            return np.array(m.data)

    out["mrc.gz"] = (tmp / "a.mrc.gz", mrcgz_lib)
    for enc in ("raw", "gzip"):
        nrrd.write(str(tmp / f"{enc}.nrrd"), data, {"encoding": enc}, index_order="C")
        out[f"nrrd-{enc}"] = (
            tmp / f"{enc}.nrrd",
            lambda enc=enc: nrrd.read(str(tmp / f"{enc}.nrrd"), index_order="C")[0],
        )
    with h5py.File(tmp / "a.h5", "w") as f:
        f.create_dataset("d", data=data, chunks=(16, 77, 108), compression="gzip")

    def h5_lib() -> np.ndarray:
        with h5py.File(tmp / "a.h5", "r") as f:
            return f["d"][()]

    out["hdf5-gzip"] = (tmp / "a.h5", h5_lib)
    g = zarr.open_group(str(tmp / "a.zarr"), mode="w", zarr_format=3)
    g.create_array("0", data=data, chunks=(16, 77, 108))
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}],
                    }
                ],
            }
        ],
    }
    out["ome-zarr"] = (
        tmp / "a.zarr",
        lambda: zarr.open_array(str(tmp / "a.zarr" / "0"), mode="r")[:],
    )
    try:
        import tensorstore as ts

        store = ts.open(
            {
                "driver": "n5",
                "kvstore": {"driver": "file", "path": str(tmp / "a.n5" / "s0")},
                "metadata": {
                    "dimensions": list(data.shape[::-1]),
                    "blockSize": [108, 77, 16],
                    "dataType": "uint16",
                    "compression": {"type": "gzip"},
                },
                "create": True,
            }
        ).result()
        store.write(np.ascontiguousarray(data.transpose(2, 1, 0))).result()
        (tmp / "a.n5" / "attributes.json").write_text(json.dumps({"n5": "2.5.0"}))

        def n5_lib() -> np.ndarray:
            return (
                ts.open(
                    {
                        "driver": "n5",
                        "kvstore": {"driver": "file", "path": str(tmp / "a.n5" / "s0")},
                    }
                )
                .result()
                .read()
                .result()
            )

        out["n5-gzip (lib: tensorstore)"] = (tmp / "a.n5" / "s0", n5_lib)
    except ImportError:
        pass
    d8 = (data >> 8).astype(np.uint8)
    with av.open(str(tmp / "a.avi"), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = d8.shape[2], d8.shape[1], "gray"
        for pl in d8:
            for p in s.encode(av.VideoFrame.from_ndarray(pl, format="gray")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)

    def avi_lib() -> np.ndarray:
        with av.open(str(tmp / "a.avi")) as c:
            return np.stack([f.to_ndarray(format="gray") for f in c.decode(video=0)])

    out["avi-ffv1"] = (tmp / "a.avi", avi_lib)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    stp = tifffile.imread(STP)
    data = np.ascontiguousarray(np.tile(stp, (args.repeat, 1, args.repeat)))
    print(f"stack {data.shape} {data.dtype}, {data.nbytes / 1e6:.1f} MB; best of {args.rounds}")
    print(f"{'format':28} {'bidspack MB/s':>14} {'library MB/s':>13} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, lib) in writers(data, Path(tmp)).items():
            src = open_source(path)
            nbytes = src.nbytes

            def ours(src_path: Path = path) -> None:
                s = open_source(src_path)
                for _ in s.iter_planes():
                    pass

            t_ours = best(ours, args.rounds)
            t_lib = best(lib, args.rounds)
            print(
                f"{name:28} {nbytes / t_ours / 1e6:14.1f} {nbytes / t_lib / 1e6:13.1f} "
                f"{t_lib / t_ours:6.2f}"
            )


if __name__ == "__main__":
    main()
