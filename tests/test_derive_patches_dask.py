"""``derive patches`` on Dask: real data (the packaged STP stack, OME-TIFF; the
isotropic downsampled brain, OME-Zarr), real Dask (local threads, an in-process
``distributed.LocalCluster`` given as a ``Client``, a process ``LocalCluster`` given by
its ``tcp://`` address); no mocks.

- 1 worker (the default task size), then small tasks (a few planes each, so tens of
  tasks go through a window of a few) on 2 local threads, on the in-process cluster and
  on the process cluster: the patch arrays, ``index.parquet`` and the manifest (every
  data file) are the same bytes; the settings are in the provenance only; a re-run with
  other settings is ``notneeded``.
- An unreachable scheduler: the ToolError, nothing written (a new or an existing
  output); bad settings: PlanErrors, also in a dry run (which never connects).
- The window: at most ``2 x workers`` tasks drawn and not yet consumed, results in task
  order although later tasks finish first (local threads and a client), early stops.
- Memory: the peak (``tracemalloc``, numpy buffers included) of the extraction with a
  window of 2 small tasks is below the patch bytes of the image (what keeping every
  result would take); one task over the whole stack peaks above the stack's bytes.
- A slab task is plain data (pickled), its patches equal the source region, a read
  error comes back from a cluster process as the SourceError naming the image.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bidspack.errors import PlanError, SourceError, ToolError
from bidspack.io.pixelhash import pixel_hash_array
from bidspack.ops.derive import patches as P
from bidspack.ops.derive.dedup import dhash64
from bidspack.ops.derive.patches import (
    PatchParams,
    SlabRunner,
    cut_slab,
    derive_patches,
    plan_patches,
    slab_groups,
)
from bidspack.ops.derive.source import SourceDataset
from conftest import snapshot
from test_derive_patches import (
    ISO_SPEC,
    STP_SPEC,
    _data_state,
    _errors,
    _expected_uint8,
    _index,
    _package,
)

STP_SHAPE = (270, 193, 271)  # uint16
STP_IMAGE = "sub-stpmousebrain/micr/sub-stpmousebrain_sample-brain_2PE.ome.tif"
ISO_IMAGE = "sub-stpmousebrain/micr/sub-stpmousebrain_sample-brain_2PE.ome.zarr"


@pytest.fixture(scope="module")
def stp(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real STP stack packaged (OME-TIFF), read-only."""
    return _package(realdata, STP_SPEC, tmp_path_factory.mktemp("stp"), "ds")


@pytest.fixture(scope="module")
def iso(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """downsampled.tiff packaged at an isotropic 100 um (OME-Zarr), read-only."""
    return _package(realdata, ISO_SPEC, tmp_path_factory.mktemp("iso"), "ds")


@pytest.fixture(scope="module")
def cluster_address() -> Iterator[str]:
    """A ``distributed.LocalCluster`` of 2 worker processes (1 thread each)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        yield address


def _executions(out: Path) -> list[dict]:
    """``execution`` of every source step in the provenance records."""
    found = []
    for p in sorted((out / "code/bidspack/provenance").glob("*.json")):
        text = p.read_text(encoding="utf-8")
        for chunk in text.split('"execution": ')[1:]:
            found.append(json.loads(chunk[: chunk.index("}") + 1]))
    return found


def _small_tasks(monkeypatch: pytest.MonkeyPatch, planes: int) -> None:
    """Slab tasks of *planes* STP planes (OME-TIFF xy) at most."""
    monkeypatch.setattr(P, "TASK_BYTES", planes * STP_SHAPE[1] * STP_SHAPE[2] * 2)
    monkeypatch.setattr(P, "MIN_TASK_BYTES", 0)


# -- identical bytes wherever the tasks run -------------------------------------------------


CASES = {
    # anisotropic OME-TIFF: xy only, percentile intensity (the sample is a task too)
    "stp": (PatchParams(planes=("xy", "xz", "yz"), size=64), 270 * 3 * 4),
    # isotropic OME-Zarr: three planes, pad edges, CEM dtype-max
    "iso": (
        PatchParams(
            planes=("xy", "xz", "yz"), size=48, edge="pad", intensity="dtype-max", hamming=4
        ),
        135 * 2 * 3 + 77 * 3 * 3 + 108 * 3 * 2,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_workers_and_clusters_give_identical_bytes(
    name: str,
    stp: Path,
    iso: Path,
    cluster_address: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1 worker (default task size), then small tasks on 2 local threads, on an
    in-process LocalCluster (a Client) and on a process LocalCluster (its address):
    identical patch arrays, index and manifest; the settings in the provenance only."""
    from distributed import Client, LocalCluster

    source = {"stp": stp, "iso": iso}[name]
    params, count = CASES[name]
    ref = tmp_path / "ref"
    recs = list(derive_patches(source, ref, params, validate=False, workers=1))
    assert not _errors(recs), _errors(recs)
    assert len(_index(ref)) == count
    want = _data_state(ref)
    assert "index.parquet" in want and "code/bidspack/manifest.tsv" in want
    assert any(k.endswith(".zarr/zarr.json") for k in want)
    assert any("/c/" in k for k in want)  # the shards
    assert _executions(ref) == [
        {"mode": "dask-threads", "workers": 1, "scheduler": None, "window": 2}
    ]
    _small_tasks(monkeypatch, 8)
    runs = {"threads": (tmp_path / "threads", None, 2)}
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as local,
        Client(local, set_as_default=False) as client,
    ):
        runs["client"] = (tmp_path / "client", client, None)
        runs["address"] = (tmp_path / "address", cluster_address, 1)
        for how, (out, scheduler, workers) in runs.items():
            recs = list(
                derive_patches(
                    source, out, params, validate=False, workers=workers, scheduler=scheduler
                )
            )
            assert not _errors(recs), (how, _errors(recs))
            assert _data_state(out) == want, how
            assert (out / "index.parquet").read_bytes() == (ref / "index.parquet").read_bytes()
            executions = _executions(out)
            assert executions and all(e == executions[0] for e in executions), executions
            ex = executions[0]
            if how == "threads":
                assert ex == {"mode": "dask-threads", "workers": 2, "scheduler": None, "window": 4}
            elif how == "client":  # workers: the cluster's threads
                assert ex["mode"] == "dask-distributed" and ex["scheduler"].startswith("inproc://")
                assert (ex["workers"], ex["window"]) == (2, 4)
            else:
                assert ex == {
                    "mode": "dask-distributed",
                    "workers": 1,
                    "scheduler": cluster_address,
                    "window": 2,
                }
            ok = [r for r in recs if r.action == "patches"]
            assert ok and all(r.details["execution"] == ex for r in ok)
    # more than a window of tasks went through (the small tasks)
    img = SourceDataset(source).select_images()[0]
    jobs = plan_patches(SourceDataset(source), params)[0].jobs
    n_tasks = sum(
        len(slab_groups(j, img.shape, img.chunks[P.PLANE_AXES[j.plane][0]], img.dtype.itemsize))
        for j in jobs
    )
    img.close()
    assert n_tasks > 2 * 2, n_tasks
    # other settings change no byte and no fingerprint: notneeded
    out = runs["address"][0]
    again = list(derive_patches(source, out, params, validate=False, workers=2))
    assert {r.status for r in again if r.action == "step"} == {"notneeded"}
    assert _data_state(out) == want
    desc = (out / "dataset_description.json").read_text(encoding="utf-8")
    assert "workers" not in desc and "scheduler" not in desc and "tcp://" not in desc


# -- errors at planning ---------------------------------------------------------------------


def test_unreachable_scheduler_and_bad_settings_write_nothing(
    stp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable scheduler: the ToolError before anything is written, into a new
    or an existing output; bad workers or scheduler: PlanError, also in a dry run; a
    dry run does not connect."""
    monkeypatch.setattr(SlabRunner, "connect_timeout", 2)
    params = PatchParams(size=64, slice_step=30)
    out = tmp_path / "out"
    unreachable = "tcp://127.0.0.1:9"
    with pytest.raises(ToolError) as err:
        list(derive_patches(stp, out, params, scheduler=unreachable))
    assert f"cannot connect to the Dask scheduler at {unreachable}" in str(err.value)
    assert "dask scheduler" in str(err.value)  # the hint
    assert not out.exists()
    # an existing dataset is left exactly as it was
    assert not _errors(list(derive_patches(stp, out, params, validate=False)))
    before = snapshot(out)
    with pytest.raises(ToolError, match="cannot connect to the Dask scheduler"):
        list(derive_patches(stp, out, PatchParams(size=32), scheduler=unreachable, workers=2))
    assert snapshot(out) == before
    # a dry run plans without connecting
    planned = list(
        derive_patches(stp, tmp_path / "dry", params, dry_run=True, scheduler=unreachable)
    )
    assert [r.status for r in planned if r.action == "patches"] == ["planned"]
    assert not (tmp_path / "dry").exists()
    bad: list[tuple[dict, str]] = [
        ({"workers": 0}, "workers 0: at least 1"),
        ({"workers": -2}, "workers -2: at least 1"),
        ({"scheduler": "bogus"}, "scheduler 'bogus': a Dask scheduler address"),
        ({"scheduler": 42}, "scheduler 42: an address, a name or a Client"),
    ]
    for kwargs, message in bad:
        for dry in (True, False):
            with pytest.raises(PlanError, match=message):
                list(derive_patches(stp, tmp_path / "new", params, dry_run=dry, **kwargs))
            assert not (tmp_path / "new").exists()
    assert snapshot(out) == before


# -- the window -----------------------------------------------------------------------------


def _late_echo(x: int) -> int:
    """*x*, after a pause that is shorter for later tasks (they finish first)."""
    time.sleep(0.002 * (20 - x % 20))
    return x


def _windowed(runner: SlabRunner, n: int, stop: int | None = None) -> tuple[list[int], int]:
    """The results of *n* tasks (or the first *stop*) and the most tasks drawn from the
    input and not yet consumed at any point."""
    drawn = [0]

    def tasks() -> Iterator[int]:
        for i in range(n):
            drawn[0] += 1
            yield i

    got: list[int] = []
    most = 0
    results = runner.imap(_late_echo, tasks())
    for x in results:
        most = max(most, drawn[0] - len(got))
        got.append(x)
        if stop is not None and len(got) == stop:
            results.close()  # type: ignore[attr-defined]
            break
    return got, most


def test_window_bounds_tasks_in_flight_and_keeps_order() -> None:
    """At most 2 x workers tasks are drawn and not yet consumed; results come in task
    order although later tasks finish first; a consumer that stops early stops the
    drawing (local threads, the synchronous scheduler and a distributed Client)."""
    from distributed import Client, LocalCluster

    with SlabRunner(workers=2) as runner:
        assert runner.window == 4 and runner.describe()["mode"] == "dask-threads"
        got, most = _windowed(runner, 40)
        assert got == list(range(40)) and 2 <= most <= 4, most
        got, most = _windowed(runner, 40, stop=5)
        assert got == list(range(5)) and most <= 4
        assert list(runner.imap(_late_echo, [])) == []
    with SlabRunner("synchronous", workers=1) as runner:
        assert runner.describe()["mode"] == "dask-synchronous"
        got, most = _windowed(runner, 9)
        assert got == list(range(9)) and most <= 2
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=3, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        runner = SlabRunner(client)
        assert runner.workers == 3 and runner.window == 6  # the cluster's threads
        got, most = _windowed(runner, 40)
        assert got == list(range(40)) and 2 <= most <= 6, most
        got, most = _windowed(runner, 40, stop=3)
        assert got == list(range(3)) and most <= 6
        runner.close()
        assert client.status == "running"  # a given client is left open
        assert runner.call(_late_echo, 7) == 7


# -- memory ---------------------------------------------------------------------------------


def _extraction_peak(
    monkeypatch: pytest.MonkeyPatch, source: Path, out: Path, params: PatchParams, workers: int
) -> int:
    """Peak traced bytes (numpy buffers included) above the start of each image's
    extraction (the slab tasks run in this process's threads)."""
    peaks: list[int] = []
    extract = P._extract

    def traced(*args: object, **kwargs: object) -> Iterator[object]:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            yield from extract(*args, **kwargs)  # type: ignore[arg-type]
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
        finally:
            tracemalloc.stop()

    with monkeypatch.context() as m:
        m.setattr(P, "_extract", traced)
        recs = list(derive_patches(source, out, params, validate=False, workers=workers))
    assert not _errors(recs), _errors(recs)
    assert len(peaks) == 1
    return peaks[0]


def test_peak_memory_is_bounded_by_the_window(
    stp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The STP stack (28 MB of uint16 pixels, 13 MB of uint8 patches) cut in tasks of 8
    planes through a window of 2 tasks peaks below the patch bytes (keeping every
    task's result would take more); one task over the whole stack peaks above the
    stack's bytes (the measurement sees the slabs)."""
    params = PatchParams(size=64, intensity="dtype-max")  # no percentile sample
    stack_bytes = int(np.prod(STP_SHAPE)) * 2
    patch_bytes = 270 * 3 * 4 * 64 * 64
    # warm up (imports inside the tasks)
    _extraction_peak(monkeypatch, stp, tmp_path / "warm", PatchParams(size=64, slice_step=90), 1)
    with monkeypatch.context() as m:
        m.setattr(P, "TASK_BYTES", 1 << 30)
        m.setattr(P, "TASKS_PER_WORKER", 1)
        whole = _extraction_peak(m, stp, tmp_path / "whole", params, 1)
    _small_tasks(monkeypatch, 8)
    windowed = _extraction_peak(monkeypatch, stp, tmp_path / "windowed", params, 1)
    assert whole > stack_bytes, (whole, stack_bytes)
    assert windowed < patch_bytes, (windowed, patch_bytes)
    assert windowed < whole / 3, (windowed, whole)
    assert _data_state(tmp_path / "windowed") == _data_state(tmp_path / "whole")


# -- the task -------------------------------------------------------------------------------


def test_slab_task_is_plain_data_and_errors_come_back(
    stp: Path, iso: Path, cluster_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slab task pickles (no open handle), runs after unpickling and its patches equal
    the source region converted; a task on a missing file returns the error, which
    unwraps as the SourceError; a corrupt OME-Zarr chunk read on a cluster process
    stops the run with the SourceError naming the image, nothing committed."""
    params = PatchParams(size=64, stride=48)
    source = SourceDataset(stp)
    (plan,) = plan_patches(source, params)
    (job,) = plan.jobs
    low, high = P.intensity_range(plan.image, params)
    groups, tasks = P._slab_tasks(plan.image, job, params, low, high, workers=8)
    assert [s for g in groups for s in g] == list(range(270)) and len(groups) > 1
    task = next(tasks)
    plan.image.close()
    blob = pickle.dumps(task)
    assert task.image._array is None and task.image._tiff is None
    assert task.image.path.is_absolute()
    result = cut_slab(pickle.loads(blob))
    assert result.error is None
    n_tiles = len(job.rows) * len(job.cols)
    assert result.patches.shape == (len(groups[0]) * n_tiles, 64, 64)
    volume = tifffile.imread(stp / STP_IMAGE, level=0)
    k = 0
    for s in groups[0]:
        for r0, r1 in job.rows:
            for c0, c1 in job.cols:
                row = {"intensity": "percentile", "intensity_low": low, "intensity_high": high}
                want = _expected_uint8(volume[s, r0:r1, c0:c1], row)
                assert np.array_equal(result.patches[k], want), (s, r0, c0)
                assert result.pixel_hashes[k] == pixel_hash_array(want, "YX")
                k += 1
    assert np.array_equal(result.dhashes, dhash64(result.patches))
    # a missing file: the error is carried back (bidspack errors do not pickle)
    gone = tmp_path / "gone"
    shutil.copytree(stp, gone, ignore=shutil.ignore_patterns("*.ome.tif"))
    lost = pickle.loads(blob)
    lost = dataclasses.replace(lost, image=dataclasses.replace(lost.image, dataset=gone))
    failed = pickle.loads(pickle.dumps(cut_slab(lost)))
    assert failed.error is not None and failed.error[0] == str(gone / STP_IMAGE)
    with pytest.raises(SourceError, match="cannot open OME-TIFF"):
        failed.unwrap()
    # a corrupt chunk, read by a cluster process
    bad = tmp_path / "bad"
    shutil.copytree(iso, bad)
    shards = [p for p in (bad / ISO_IMAGE / "0" / "c").rglob("*") if p.is_file()]
    assert shards
    for p in shards:
        p.write_bytes(b"\x00not a zstd shard" * 64)
    out = tmp_path / "out"
    iso_params = PatchParams(size=48, intensity="dtype-max")
    with pytest.raises(SourceError) as err:
        list(derive_patches(bad, out, iso_params, validate=False, scheduler=cluster_address))
    assert ISO_IMAGE in str(err.value) and "cannot decode region" in str(err.value)
    assert not out.exists()
    # the percentile sample is a task too: its read error comes back the same way
    with pytest.raises(SourceError, match="cannot decode region"):
        list(
            derive_patches(
                bad, out, PatchParams(size=48), validate=False, scheduler=cluster_address
            )
        )
    assert not out.exists()


def test_cli_workers_and_scheduler(stp: Path, tmp_path: Path) -> None:
    """The CLI passes --workers/--scheduler through: 2 workers give the bytes of a
    library run with 1; an unreachable scheduler is a clean error, nothing written."""
    from conftest import run_bidspack

    params = PatchParams(size=64, slice_step=30)
    ref = tmp_path / "ref"
    assert not _errors(list(derive_patches(stp, ref, params, workers=1, validate=False)))
    out = tmp_path / "cli"
    res = run_bidspack(
        "derive",
        "patches",
        str(stp),
        str(out),
        "--size",
        "64",
        "--slice-step",
        "30",
        "--workers",
        "2",
        "--no-validate",
    )
    assert res.returncode == 0, res.stderr
    for name in ("index.parquet",):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    bad = tmp_path / "bad"
    res = run_bidspack(
        "derive",
        "patches",
        str(stp),
        str(bad),
        "--size",
        "64",
        "--scheduler",
        "tcp://127.0.0.1:9",
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "cannot connect to the Dask scheduler" in res.stderr
    assert not bad.exists()
