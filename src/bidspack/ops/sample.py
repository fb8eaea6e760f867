"""``bidspack sample``: random cubes from remote OME-Zarr/N5 volumes up to a byte budget
(the job of the CEM dataset's ``ngff_download.py``, volume-em/cem-dataset), resumable.

For each source URL (:func:`bidspack.io.remote.open_remote`, one level, one channel
and time point) the cubes are planned first, as a pure function of the source's
metadata (shape, dtype), the URL, ``size``, ``seed`` and ``budget``:

- the cube shape is ``size`` on every axis, clipped to the volume (``(1, size, size)``
  for a 2D image); its bytes are those of the decoded pixels;
- ``n = budget // cube_bytes`` cubes **per source** (as ``ngff_download.py``'s ``-gb``
  applies to each volume), so the source's cube bytes are <= the budget and one more
  cube would exceed it;
- cube *i* starts at a position drawn uniformly (``numpy.random.default_rng`` seeded
  with ``(seed, first 8 bytes of sha256(url))``) among the positions where it fits.

Layout of OUT::

    OUT/plan.json                   arguments, source metadata, every cube's start
    OUT/cubes.jsonl                 one JSON line per finished cube (appended, fsynced)
    OUT/manifest.tsv, .parquet      every finished cube (written at the end of a run)
    OUT/cubes/<source>/cube-<i>_z<z0>-<z1>_y<y0>-<y1>_x<x0>-<x1>.ome.zarr

``<source>`` is the URL's last path segment without ``.ome.zarr``/``.zarr``/``.n5``,
plus ``-`` and 8 hex digits of the URL's sha256. Each cube is an OME-Zarr image
(:func:`bidspack.io.omezarr.write_ome_zarr`) whose ``translation`` is the cube's physical
position (the level's translation plus ``start * voxel size``), written under a hidden
name beside its final name and renamed when complete
(:func:`bidspack.txn.beside.staged_beside`), then recorded in ``cubes.jsonl``.

OUT is created (atomically, holding ``plan.json``) only after every source's metadata
was read and the plan made, so a remote error before that leaves no OUT. A run
restarted with the same arguments reuses OUT: cubes recorded in ``cubes.jsonl`` whose
files hash as recorded are ``notneeded`` (no request), the rest are downloaded. Other
arguments, or changed source metadata, against an existing OUT are refused.

Manifest columns: ``index``, ``source``, ``url``, ``level``, ``seed``, ``z0 z1 y0 y1
x0 x1`` (voxel bounds of the level, stop exclusive), ``z0_um z1_um y0_um y1_um x0_um
x1_um`` (the physical position of voxel ``z0`` and of ``z1``, the voxel after the
last: ``origin + index * voxel size``, µm), ``dtype``, ``bytes`` (decoded pixels),
``pixel_hash`` (:mod:`bidspack.io.pixelhash`, ``ZYX``), ``sha256`` (of the pixels in C
order, little-endian), ``path`` (OUT-relative).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bidspack.errors import BidspackError, OutputError, PlanError, ResourceLimitError
from bidspack.io.omezarr import DEFAULT_VERSION, NGFF_VERSIONS, write_ome_zarr
from bidspack.io.pixelhash import canonical_dtype
from bidspack.io.remote import RemoteImage, RemoteOptions, open_remote
from bidspack.io.sources import ImageSource, StackInfo
from bidspack.records import Record
from bidspack.txn.beside import staged_beside

PLAN_FILE = "plan.json"
RECORDS_FILE = "cubes.jsonl"
MANIFEST_TSV = "manifest.tsv"
MANIFEST_PARQUET = "manifest.parquet"
#: ``plan.json`` format version.
PLAN_VERSION = 1
#: Most cubes planned per source (the plan is one JSON file).
MAX_CUBES = 200_000
#: Test-only fault hook: SIGKILL this process after this many cubes were written and
#: recorded in this run (like :mod:`bidspack.txn.faults`; harmless when unset).
KILL_ENV = "BIDSPACK_SAMPLE_KILL_AFTER"

MANIFEST_COLUMNS = (
    "index",
    "source",
    "url",
    "level",
    "seed",
    "z0",
    "z1",
    "y0",
    "y1",
    "x0",
    "x1",
    "z0_um",
    "z1_um",
    "y0_um",
    "y1_um",
    "x0_um",
    "x1_um",
    "dtype",
    "bytes",
    "pixel_hash",
    "sha256",
    "path",
)
_PARTIAL = re.compile(r"^\..+\.(?:partial|work)-(\d+)-.*$")


@dataclass(frozen=True)
class Cube:
    """One planned cube: ``start``/``stop`` ``(z, y, x)`` voxel indices of the level
    (stop exclusive)."""

    index: int
    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (
            self.stop[0] - self.start[0],
            self.stop[1] - self.start[1],
            self.stop[2] - self.start[2],
        )

    def file_name(self) -> str:
        (z0, y0, x0), (z1, y1, x1) = self.start, self.stop
        return f"cube-{self.index:05d}_z{z0}-{z1}_y{y0}-{y1}_x{x0}-{x1}.ome.zarr"


def source_name(url: str) -> str:
    """A folder name for *url*: its last path segment (``.ome.zarr``, ``.zarr``,
    ``.n5`` removed, other characters than ``[A-Za-z0-9._-]`` replaced by ``_``), ``-``
    and 8 hex digits of the URL's sha256 (two URLs never share a folder)."""
    tail = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".ome.zarr", ".zarr", ".n5"):
        if tail.lower().endswith(suffix):
            tail = tail[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", tail).strip("._") or "source"
    return f"{stem[:64]}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def plan_cubes(
    shape: tuple[int, int, int], itemsize: int, *, size: int, budget: int, seed: int, url: str
) -> list[Cube]:
    """The cubes of one source (see the module docstring): a pure function of its
    arguments.

    Raises:
        PlanError: the budget is smaller than one cube, or a bad size.
        ResourceLimitError: more than :data:`MAX_CUBES` cubes.
    """
    if size < 1:
        raise PlanError(url, f"--size must be >= 1, not {size}")
    cshape = tuple(min(size, n) for n in shape)
    if shape[0] == 1:
        cshape = (1, cshape[1], cshape[2])
    cube_bytes = int(np.prod(cshape)) * itemsize
    count = budget // cube_bytes
    if count < 1:
        raise PlanError(
            url,
            f"the budget ({budget} bytes) is smaller than one cube "
            f"{'x'.join(map(str, cshape))} ({cube_bytes} bytes)",
        )
    if count > MAX_CUBES:
        raise ResourceLimitError(
            url,
            f"the budget gives {count} cubes, more than {MAX_CUBES} per source",
            hint="use a larger --size or a smaller --budget",
        )
    key = int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "big")
    rng = np.random.default_rng([int(seed), key])
    highs = [n - c + 1 for n, c in zip(shape, cshape, strict=True)]
    starts = rng.integers(0, highs, size=(count, 3))
    cubes = []
    for i, s in enumerate(starts.tolist()):
        start = (int(s[0]), int(s[1]), int(s[2]))
        stop = (start[0] + cshape[0], start[1] + cshape[1], start[2] + cshape[2])
        cubes.append(Cube(i, start, stop))
    return cubes


@dataclass
class SampleSource:
    """One opened source and its cubes."""

    image: RemoteImage
    name: str
    cubes: list[Cube]

    def describe(self) -> dict[str, Any]:
        shape = self.cubes[0].shape
        return {
            **self.image.describe(),
            "name": self.name,
            "cube_shape_zyx": list(shape),
            "cube_bytes": int(np.prod(shape)) * self.image.dtype.itemsize,
            "cubes": [list(c.start) for c in self.cubes],
        }


@dataclass
class SamplePlan:
    """What :func:`sample` will do (from :func:`plan_sample`).

    Attributes:
        out: the output folder.
        sources: the opened sources with their cubes, in the order given.
        arguments: the arguments that define the plan (``plan.json``'s ``arguments``).
        resume: OUT holds a run of this plan.
    """

    out: Path
    sources: list[SampleSource]
    arguments: dict[str, Any]
    resume: bool

    def document(self) -> dict[str, Any]:
        """``plan.json``."""
        return {
            "bidspack_sample": PLAN_VERSION,
            "arguments": self.arguments,
            "sources": [s.describe() for s in self.sources],
        }

    def close(self) -> None:
        for s in self.sources:
            s.image.close()


def plan_sample(
    urls: Sequence[str],
    out: Path,
    *,
    budget: int,
    size: int = 256,
    seed: int = 0,
    level: int = 0,
    channel: int | None = None,
    time: int | None = None,
    ngff_version: str = DEFAULT_VERSION,
    options: RemoteOptions | None = None,
) -> SamplePlan:
    """Open every source and plan its cubes; check OUT. Writes nothing.

    Raises:
        PlanError: no or repeated URLs, a bad size/budget/version, a budget below one
            cube.
        SourceError: a source cannot be opened (see :func:`open_remote`).
        OutputError: OUT is a file, a non-empty folder without ``plan.json``, or holds
            a run with other arguments or other source metadata.
        ResourceLimitError: too many cubes.
    """
    out = Path(out)
    if not urls:
        raise PlanError(None, "give at least one source URL")
    if len(set(urls)) != len(urls):
        raise PlanError(None, "a source URL is given twice")
    if budget < 1:
        raise PlanError(None, f"--budget must be >= 1 byte, not {budget}")
    if str(ngff_version) not in NGFF_VERSIONS:
        raise PlanError(None, f"OME-NGFF version {ngff_version} is not supported")
    arguments = {
        "urls": [u.rstrip("/") for u in urls],
        "budget": int(budget),
        "size": int(size),
        "seed": int(seed),
        "level": int(level),
        "channel": channel,
        "time": time,
        "ngff_version": str(ngff_version),
    }
    _check_out(out)  # before any request: a wrong OUT fails fast
    urls = [str(u) for u in arguments["urls"]]  # type: ignore[attr-defined]
    sources: list[SampleSource] = []
    try:
        for url in urls:
            image = open_remote(url, level=level, channel=channel, time=time, options=options)
            sources.append(SampleSource(image, source_name(url), []))
            sources[-1].cubes = plan_cubes(
                image.shape, image.dtype.itemsize, size=size, budget=budget, seed=seed, url=url
            )
        plan = SamplePlan(out, sources, arguments, resume=False)
        plan.resume = _check_existing(out, plan.document())
    except BaseException:
        for s in sources:
            s.image.close()
        raise
    return plan


def _check_out(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(out, "exists and is not a folder")
    if out.is_dir() and not (out / PLAN_FILE).is_file() and any(out.iterdir()):
        raise OutputError(
            out, "is a non-empty folder without plan.json", hint="choose a new output folder"
        )


def _check_existing(out: Path, doc: dict[str, Any]) -> bool:
    """Whether OUT holds a run of *doc* (then it is resumed).

    Raises:
        OutputError: OUT holds another run.
    """
    file = out / PLAN_FILE
    if not file.is_file():
        return False
    try:
        old = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(file, f"unreadable plan ({exc})") from exc
    if old == doc:
        return True
    old_args = old.get("arguments", {}) if isinstance(old, dict) else {}
    diff = [
        f"{k} {old_args.get(k)!r} (now {v!r})"
        for k, v in doc["arguments"].items()
        if old_args.get(k) != v
    ]
    what = (
        "was sampled with other arguments: " + ", ".join(diff)
        if diff
        else "was sampled from sources whose metadata has changed since"
    )
    raise OutputError(
        out, what, hint="rerun with the same arguments to resume, or choose a new output folder"
    )


class _CubeSource(ImageSource):
    """A decoded cube as an :class:`ImageSource` for :func:`write_ome_zarr`."""

    def __init__(self, url: str, data: np.ndarray, voxel: tuple[float, float, float]):
        self.path = Path(url)
        self.files = ()
        self.data = data
        z, y, x = data.shape
        self.info = StackInfo((z, y, x), data.dtype, voxel)

    def read_plane(self, z: int) -> np.ndarray:
        return self.data[z]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(folder: Path) -> list[Path]:
    """Hidden partial cubes of killed runs in *folder*."""
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _PARTIAL.match(entry.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
            removed.append(entry)
    return removed


def _read_records(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Finished cubes by ``(source, index)``; a torn last line (a killed run) ignored."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    file = out / RECORDS_FILE
    if not file.is_file():
        return rows
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            rows[(str(row["source"]), int(row["index"]))] = row
        except (ValueError, KeyError, TypeError):
            continue
    return rows


def _append_record(out: Path, row: dict[str, Any]) -> None:
    with open(out / RECORDS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _kill_point(done: int) -> None:
    """Test-only: SIGKILL after ``$BIDSPACK_SAMPLE_KILL_AFTER`` cubes (see :data:`KILL_ENV`)."""
    want = os.environ.get(KILL_ENV)
    if want and want.isdigit() and done == int(want):
        os.kill(os.getpid(), signal.SIGKILL)


def _verified(path: Path, row: dict[str, Any]) -> bool:
    """Whether the cube at *path* hashes as recorded."""
    from bidspack.io.omezarr.reader import pixel_hash_of_zarr

    if not path.is_dir():
        return False
    try:
        return pixel_hash_of_zarr(path) == row.get("pixel_hash")
    except BidspackError:
        return False


def _sha256(data: np.ndarray) -> str:
    le = np.ascontiguousarray(data, dtype=canonical_dtype(data.dtype))
    return hashlib.sha256(le.tobytes()).hexdigest()


def _cube_row(
    src: SampleSource, cube: Cube, seed: int, rel: str, pixel_hash: str, sha: str
) -> dict[str, Any]:
    im = src.image
    row: dict[str, Any] = {"index": cube.index, "source": src.name, "url": im.url}
    row.update(level=im.level, seed=seed)
    for k, axis in enumerate("zyx"):
        row[f"{axis}0"], row[f"{axis}1"] = cube.start[k], cube.stop[k]
    for k, axis in enumerate("zyx"):
        row[f"{axis}0_um"] = im.origin_um[k] + cube.start[k] * im.voxel_um[k]
        row[f"{axis}1_um"] = im.origin_um[k] + cube.stop[k] * im.voxel_um[k]
    row.update(
        dtype=im.dtype.name,
        bytes=int(np.prod(cube.shape)) * im.dtype.itemsize,
        pixel_hash=pixel_hash,
        sha256=sha,
        path=rel,
    )
    return row


def _write_manifest(out: Path, rows: list[dict[str, Any]]) -> None:
    """``manifest.tsv`` and ``manifest.parquet`` (replaced atomically)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    with staged_beside(out / MANIFEST_TSV, create=None) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, lineterminator="\n")
    with staged_beside(out / MANIFEST_PARQUET, create=None) as tmp:
        frame.to_parquet(tmp, index=False)


def sample(
    plan: SamplePlan, *, progress: Callable[[int, int], None] | None = None
) -> Iterator[Record]:
    """Download the cubes of *plan* (from :func:`plan_sample`), yielding one record per
    cube (``ok`` downloaded, ``notneeded`` already there and verified, ``error``) and one
    ``sample`` record per source. *progress* is called with ``(done, total)`` after
    each cube.

    A cube that cannot be downloaded is an ``error`` record; the source's remaining
    cubes are left for a rerun (one ``impossible`` record says how many). The sources are
    closed at the end.

    Raises:
        OutputError: OUT cannot be created or written.
    """
    out = plan.out
    seed = int(plan.arguments["seed"])
    total = sum(len(s.cubes) for s in plan.sources)
    try:
        if not plan.resume:
            doc = json.dumps(plan.document(), indent=1, sort_keys=True) + "\n"
            with staged_beside(out, create="folder") as tmp:
                (tmp / PLAN_FILE).write_text(doc, encoding="utf-8")
            yield Record("sample", str(out), "ok", f"planned {total} cube(s) in {PLAN_FILE}")
        records = _read_records(out)
        count = written = 0
        finished: list[dict[str, Any]] = []
        for src in plan.sources:
            folder = out / "cubes" / src.name
            for entry in _remove_stale(folder):
                yield Record("recover", str(entry), "ok", "removed what an interrupted run left")
            got = failed = 0
            for k, cube in enumerate(src.cubes):
                rel = f"cubes/{src.name}/{cube.file_name()}"
                path = out / rel
                row = records.get((src.name, cube.index))
                if row is not None and row.get("path") == rel and _verified(path, row):
                    finished.append(row)
                    yield Record("sample", rel, "notneeded", "already downloaded, hash verified")
                else:
                    try:
                        row = _download(src, cube, path, rel, seed, plan.arguments["ngff_version"])
                    except BidspackError as exc:
                        failed = len(src.cubes) - k
                        yield Record("sample", rel, "error", exc.message, {"url": src.image.url})
                        break
                    _append_record(out, row)
                    finished.append(row)
                    written += 1
                    got += 1
                    shape = "x".join(map(str, cube.shape))
                    yield Record("sample", rel, "ok", f"{shape} {row['dtype']} cube", row)
                    _kill_point(written)
                count += 1
                if progress is not None:
                    progress(count, total)
            if failed > 1:
                yield Record(
                    "sample",
                    src.image.url,
                    "impossible",
                    f"{failed - 1} more cube(s) not attempted; rerun the same command to resume",
                )
            n_bytes = sum(r["bytes"] for r in finished if r["source"] == src.name)
            yield Record(
                "sample",
                src.image.url,
                "ok" if not failed else "error",
                f"{got} cube(s) downloaded, {n_bytes} bytes of {len(src.cubes)} planned "
                f"cube(s) present",
                {**src.image.describe(), "name": src.name, "cube_bytes_total": n_bytes},
            )
        finished.sort(key=lambda r: (r["source"], r["index"]))
        _write_manifest(out, finished)
    finally:
        plan.close()


def _download(
    src: SampleSource, cube: Cube, path: Path, rel: str, seed: int, version: str
) -> dict[str, Any]:
    """Read one cube and write it as an OME-Zarr image (staged, renamed); its row."""
    im = src.image
    data = im.read(cube.start, cube.stop)
    sha = _sha256(data)
    if path.exists():  # written but not recorded by a killed run
        shutil.rmtree(path)
    origin = tuple(o + s * v for o, s, v in zip(im.origin_um, cube.start, im.voxel_um, strict=True))
    try:
        with staged_beside(path, create=None) as tmp:
            res = write_ome_zarr(
                tmp,
                _CubeSource(im.url, data, im.voxel_um),
                physical_size_zyx_um=im.voxel_um,
                name=path.name[: -len(".ome.zarr")],
                version=version,
                workers=1,
                scheduler="synchronous",
                origin_zyx_um=(origin[0], origin[1], origin[2]),
            )
    except ValueError as exc:
        raise PlanError(path, str(exc)) from exc
    return _cube_row(src, cube, seed, rel, res.pixel_hash, sha)
