"""``bidspack aggregate``: a slice folder or stack -> OME-Zarr or OME-TIFF, locally and
on a dask.distributed cluster given by address; clean errors, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bidspack.io.ometiff import pixel_hash_of_file
from bidspack.io.omezarr import ome_zarr_scale_um, pixel_hash_of_zarr, validate_ome_zarr
from bidspack.io.sources import SliceFolder, TiffStack
from conftest import run_bidspack, snapshot


def bidspack(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bidspack(*args)


def record(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (line,) = proc.stdout.splitlines()
    return json.loads(line)


def test_aggregate_local_and_on_a_cluster_by_address(realdata: Path, tmp_path: Path) -> None:
    """The real STP slices, as OME-Zarr 0.5 locally and through `--scheduler tcp://...`
    of a running LocalCluster with 2 worker processes: the same bytes; as OME-TIFF: the
    same pixel hash."""
    import distributed

    slices = realdata / "stp_mouse_brain" / "slices"
    expected = SliceFolder(slices)
    common = ["--voxel-size", "50,40,40", "--name", "stp", "--json"]
    local = record(bidspack("aggregate", str(slices), str(tmp_path / "local.ome.zarr"), *common))
    assert local["status"] == "ok" and local["details"]["format"] == "ome-zarr"
    zarr_hash = pixel_hash_of_zarr(tmp_path / "local.ome.zarr")
    assert local["details"]["pixel_hash"] == zarr_hash
    assert validate_ome_zarr(tmp_path / "local.ome.zarr", full=True) == []
    assert ome_zarr_scale_um(tmp_path / "local.ome.zarr") == pytest.approx((50.0, 40.0, 40.0))
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        remote = record(
            bidspack(
                "aggregate",
                str(slices),
                str(tmp_path / "cluster.ome.zarr"),
                *common,
                "--scheduler",
                address,
            )
        )
    assert remote["details"]["pixel_hash"] == zarr_hash
    assert snapshot(tmp_path / "cluster.ome.zarr") == snapshot(tmp_path / "local.ome.zarr")
    tiff = record(bidspack("aggregate", str(slices), str(tmp_path / "stp.ome.tif"), *common))
    assert tiff["details"]["pixel_hash"] == pixel_hash_of_file(tmp_path / "stp.ome.tif")
    assert tiff["details"]["pixel_hash"] == zarr_hash
    assert list(tmp_path.glob(".*")) == []  # no partial or work folders left
    assert expected.shape == (270, 193, 271)


def test_aggregate_with_ngff_labels_from_real_masks(realdata: Path, tmp_path: Path) -> None:
    d = realdata / "stp_mouse_brain"
    out = tmp_path / "brain.ome.zarr"
    rec = record(
        bidspack(
            "aggregate",
            str(d / "downsampled.tiff"),
            str(out),
            "--voxel-size",
            "100,100,100",
            "--chunk",
            "1,32,32",
            "--label-image",
            f"hemispheres={d / 'registered_hemispheres.tiff'}",
            "--json",
        )
    )
    assert list(rec["details"]["labels"]) == ["hemispheres"]
    assert (
        pixel_hash_of_zarr(out / "labels" / "hemispheres")
        == rec["details"]["labels"]["hemispheres"]
    )
    assert validate_ome_zarr(out) == []


def test_aggregate_bad_input_is_a_clean_error(realdata: Path, tmp_path: Path) -> None:
    slices = realdata / "stp_mouse_brain" / "slices"
    d = realdata / "stp_mouse_brain"
    existing = tmp_path / "exists.ome.zarr"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    floats = tmp_path / "floats.tif"
    tifffile.imwrite(floats, np.zeros((135, 77, 108), np.float32))
    cases = {
        "no voxel size": ([str(slices), str(tmp_path / "a.ome.zarr")], "no physical voxel size"),
        "bad suffix": (
            [str(slices), str(tmp_path / "a.zarr"), "--voxel-size", "1,1,1"],
            ".ome.zarr",
        ),
        "exists": ([str(slices), str(existing), "--voxel-size", "1,1,1"], "already exists"),
        "bad voxel": ([str(slices), str(tmp_path / "a.ome.zarr"), "--voxel-size", "1,1"], "Z,Y,X"),
        "no source": ([str(tmp_path / "nope"), str(tmp_path / "a.ome.zarr")], "nope"),
        "label shape": (
            [
                str(slices),
                str(tmp_path / "a.ome.zarr"),
                "--voxel-size",
                "1,1,1",
                "--label-image",
                f"h={d / 'registered_hemispheres.tiff'}",
            ],
            "NGFF labels must match",
        ),
        "float label": (
            [
                str(d / "downsampled.tiff"),
                str(tmp_path / "a.ome.zarr"),
                "--voxel-size",
                "1,1,1",
                "--label-image",
                f"f={floats}",
            ],
            "not integers",
        ),
        "labels in tiff": (
            [
                str(d / "downsampled.tiff"),
                str(tmp_path / "a.ome.tif"),
                "--voxel-size",
                "1,1,1",
                "--label-image",
                f"h={d / 'registered_hemispheres.tiff'}",
            ],
            ".ome.zarr output",
        ),
        "scheduler for tiff": (
            [
                str(d / "downsampled.tiff"),
                str(tmp_path / "a.ome.tif"),
                "--voxel-size",
                "1,1,1",
                "--scheduler",
                "tcp://127.0.0.1:1",
            ],
            ".ome.zarr output only",
        ),
        "no scheduler there": (
            [
                str(d / "downsampled.tiff"),
                str(tmp_path / "a.ome.zarr"),
                "--voxel-size",
                "1,1,1",
                "--scheduler",
                "tcp://127.0.0.1:9",
            ],
            "cannot connect to the Dask scheduler",
        ),
    }
    before = snapshot(tmp_path)
    for what, (args, message) in cases.items():
        proc = bidspack("aggregate", *args)
        assert proc.returncode != 0, what
        assert message in proc.stderr, (what, proc.stderr)
        assert "Traceback" not in proc.stderr, what
        assert proc.stderr.startswith("Error:"), what
        assert snapshot(tmp_path) == before, f"{what}: left output behind"
    assert TiffStack(floats).shape == (135, 77, 108)


def test_aggregate_origin(realdata: Path, tmp_path: Path) -> None:
    """--origin (in --unit) becomes the OME-Zarr translation and the OME-TIFF Plane
    position, which a later conversion reads back."""
    d = realdata / "stp_mouse_brain"
    out = tmp_path / "brain.ome.zarr"
    rec = record(
        bidspack(
            "aggregate",
            str(d / "downsampled.tiff"),
            str(out),
            "--voxel-size",
            "0.1,0.1,0.1",
            "--unit",
            "mm",
            "--origin",
            "-5,3,2",
            "--json",
        )
    )
    assert rec["details"]["origin_zyx_um"] == [-5000.0, 3000.0, 2000.0]
    meta = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    first = meta["datasets"][0]["coordinateTransformations"]
    assert first == [
        {"type": "scale", "scale": [100.0, 100.0, 100.0]},
        {"type": "translation", "translation": [-5000.0, 3000.0, 2000.0]},
    ]
    assert validate_ome_zarr(out) == []
    # OME-TIFF output keeps the origin as its OME-XML Plane position; converting that
    # file to OME-Zarr then gives the same translation without --origin
    tif = tmp_path / "brain.ome.tif"
    args = ["--voxel-size", "0.1,0.1,0.1", "--unit", "mm", "--origin", "-5,3,2", "--json"]
    record(bidspack("aggregate", str(d / "downsampled.tiff"), str(tif), *args))
    assert TiffStack(tif).info.origin == (-5000.0, 3000.0, 2000.0)
    again = tmp_path / "again.ome.zarr"
    record(bidspack("aggregate", str(tif), str(again), "--json"))
    meta = json.loads((again / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    assert meta["datasets"][0]["coordinateTransformations"] == first


def test_killed_aggregate_leaves_no_output_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    """kill -9 while writing: OUT does not exist, only the hidden partial folder; the next
    run removes it (a 'recover' record) and writes OUT."""
    import os
    import signal
    import time

    rng = np.random.default_rng(1)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, rng.integers(0, 4000, (96, 1024, 1024)).astype(np.uint16))
    out = tmp_path / "out" / "stack.ome.zarr"
    args = ["aggregate", str(stack), str(out), "--voxel-size", "2,1,1", "--workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "bidspack", *args])
    deadline = time.monotonic() + 60
    partial = None
    while partial is None and time.monotonic() < deadline and proc.poll() is None:
        found = list(out.parent.glob(".stack.ome.zarr.partial-*")) if out.parent.exists() else []
        partial = found[0] if found and any(found[0].iterdir()) else None
        time.sleep(0.01)
    assert partial is not None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not out.exists()
    again = run_bidspack(*args, "--json")
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in again.stdout.splitlines()]
    assert [r["action"] for r in records] == ["recover", "aggregate"]
    assert records[0]["path"] == str(partial)
    assert not partial.exists() and out.is_dir()
    assert [p.name for p in out.parent.iterdir()] == ["stack.ome.zarr"]
    assert validate_ome_zarr(out) == []
