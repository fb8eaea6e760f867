"""``bidspack inspect``: the table and JSON of a folder of real-pixel containers, a FIFO,
a link and a broken file, and the label totals of CellMap-style stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from bidspack.ops.inspect import inspect_paths, label_role


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bidspack", *args], capture_output=True, text=True, check=False
    )


def _multiscale(group: zarr.Group, data: np.ndarray, scale: list[float]) -> None:
    group.create_array("s0", data=data, chunks=(8, 32, 32))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
            "datasets": [
                {
                    "path": "s0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": scale},
                        {"type": "translation", "translation": [0.0, 0.0, 0.0]},
                    ],
                }
            ],
        }
    ]


@pytest.fixture
def folder(realdata: Path, tmp_path: Path) -> Path:
    import mrcfile
    import nrrd

    stp = tifffile.imread(realdata / "stp_mouse_brain" / "downsampled.tiff")[:16]
    root = tmp_path / "sub"
    root.mkdir()
    with mrcfile.new(root / "em.mrc") as mrc:
        mrc.set_data(stp)
        mrc.voxel_size = (11.4, 11.4, 30.0)
    nrrd.write(
        str(root / "mask.nrrd"),
        (stp > 3000).astype(np.uint8),
        {"spacings": [1.0, 1.0, 2.0], "units": ["mm", "mm", "mm"]},
        index_order="C",
    )
    with h5py.File(root / "train.h5", "w") as f:
        f.create_dataset("raw", data=stp).attrs["element_size_um"] = [2.0, 1.0, 1.0]
        f.create_dataset("labels/mito_gt", data=(stp > 3000).astype(np.uint8))
        f.create_dataset("predictions/mito", data=(stp > 2000).astype(np.uint8))
    raw = (root / "em.mrc").read_bytes()
    (root / "broken.mrc").write_bytes(raw[:2000])
    os.mkfifo(root / "pipe.mrc")
    (root / "link.mrc").symlink_to(root / "em.mrc")
    (root / "notes.txt").write_text("not an image")
    # CellMap-style Zarr: raw EM, ground truth and inference
    g = zarr.open_group(str(root / "jrc_cell.zarr"), mode="w", zarr_format=2)
    _multiscale(g.require_group("recon-1/em/fibsem-uint16"), stp, [30.0, 11.4, 11.4])
    _multiscale(
        g.require_group("recon-1/labels/groundtruth/crop1/mito"), stp[:8] > 0, [30.0, 11.4, 11.4]
    )
    _multiscale(
        g.require_group("recon-1/labels/inference/segmentations/mito"),
        (stp > 3000).astype(np.uint8),
        [30.0, 11.4, 11.4],
    )
    g2 = zarr.open_group(str(root / "only_gt.zarr"), mode="w", zarr_format=3)
    _multiscale(g2.require_group("labels/gt/er"), (stp > 1).astype(np.uint8), [8.0, 8.0, 8.0])
    return root


def test_label_role_rule() -> None:
    assert label_role("recon-1/labels/groundtruth/crop1/mito") == "ground-truth"
    assert label_role("labels/mito_gt") == "ground-truth"
    assert label_role("recon-1/labels/inference/segmentations/mito") == "inference"
    assert label_role("labels/mito_seg") == "inference"
    assert label_role("labels/mito_pred") == "inference"
    assert label_role("image/labels/nuclei") == "labels"
    assert label_role("recon-1/em/fibsem-uint8") == "image"


def test_inspect_folder_json_and_table(folder: Path) -> None:
    inv = inspect_paths([folder])
    by_path = {s.path: s for s in inv.sources}
    em = by_path[str(folder / "em.mrc")]
    assert em.format == "mrc" and em.shape_zyx == [16, 77, 108] and em.dtype == "uint16"
    assert em.physical_size_zyx_um == [0.003, 0.00114, 0.00114] and em.unit == "Å"
    mask = by_path[str(folder / "mask.nrrd")]
    assert mask.physical_size_zyx_um == [2000.0, 1000.0, 1000.0] and mask.unit == "mm"
    raw = by_path[f"{folder / 'train.h5'}:/raw"]
    assert raw.physical_size_zyx_um == [2.0, 1.0, 1.0] and raw.role == "image"
    assert by_path[f"{folder / 'train.h5'}:/labels/mito_gt"].role == "ground-truth"
    assert by_path[f"{folder / 'train.h5'}:/predictions/mito"].role == "inference"
    cell = folder / "jrc_cell.zarr"
    fib = by_path[str(cell / "recon-1/em/fibsem-uint16")]
    assert fib.format == "ome-zarr" and fib.physical_size_zyx_um == [0.03, 0.0114, 0.0114]
    assert fib.levels == 1 and fib.container == str(cell)
    assert by_path[str(cell / "recon-1/labels/groundtruth/crop1/mito")].role == "ground-truth"
    assert by_path[str(cell / "recon-1/labels/inference/segmentations/mito")].role == "inference"
    unreadable = {u["path"]: u["reason"] for u in inv.unreadable}
    assert "truncated" in unreadable[str(folder / "broken.mrc")]
    refused = {r["path"]: r["reason"] for r in inv.refused}
    assert "FIFO" in refused[str(folder / "pipe.mrc")]
    assert "symbolic link" in refused[str(folder / "link.mrc")]
    assert str(folder / "notes.txt") not in unreadable
    assert inv.totals == {
        "sources": 9,
        "unreadable": 1,
        "refused": 2,
        "containers": 3,  # train.h5, jrc_cell.zarr, only_gt.zarr
        "with_ground_truth": 3,
        "with_inference": 2,
        "with_both": 2,
    }
    proc = cli("inspect", str(folder), "--json")
    assert proc.returncode == 1  # an unreadable file
    doc = json.loads(proc.stdout)
    assert doc["totals"] == inv.totals
    assert {"format", "shape", "axes", "dtype", "physical_size_zyx_um", "unit"} <= set(
        doc["sources"][0]
    )
    table = cli("inspect", str(folder))
    assert "Traceback" not in table.stdout + table.stderr
    for word in ("em.mrc", "broken.mrc", "pipe.mrc", "ground truth", "with both: 2", "ome-zarr"):
        assert word in table.stdout, word
