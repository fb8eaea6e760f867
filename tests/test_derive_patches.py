"""``bidspack derive patches``: real data, real tools (tifffile, zarr, pyarrow,
bids-validator-deno), no mocks.

- The real STP stack (anisotropic, 50/40/40 um; OME-TIFF) and an isotropic real
  volume (``downsampled.tiff`` packaged at 100 um; OME-Zarr): every patch equals the
  source region its index row names, re-read and converted independently; every slice
  is used; the anisotropic source refuses xz/yz.
- Duplicates on a synthetic source with known exact copies, near copies (noised,
  shifted) and distinct textures: the index says exactly which is a duplicate of which.
- Determinism (same seed -> same bytes), notneeded re-runs, parameter changes,
  validation, verify, the fault matrix, clean errors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from click.testing import CliRunner, Result

from bidspack.cli.main import cli
from bidspack.ops.derive.dedup import dhash64
from bidspack.ops.derive.patches import (
    INDEX_COLUMNS,
    PatchParams,
    derive_patches,
    tile_spans,
)
from bidspack.ops.package import package
from bidspack.ops.verify import verify
from bidspack.spec import load_schema, load_spec
from conftest import run_bidspack, snapshot

STP_SPEC = """
spec_version = 1
[dataset]
Name = "Serial two-photon mouse brain (brainreg test data)"
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
reason = "other test data"
[[exclude]]
path = "ometiff"
reason = "other test data"
[[exclude]]
path = "omexml"
reason = "metadata samples only"
[[exclude]]
path = "swc"
reason = "tracings, not images"
[[exclude]]
path = "README.md"
reason = "the data README"
"""

#: downsampled.tiff (135, 77, 108) packaged as a one-file stack with an isotropic voxel,
#: written as OME-Zarr only (the OME-Zarr read path).
ISO_SPEC = """
spec_version = 1
[dataset]
Name = "STP brain, downsampled (isotropic for tests)"
Authors = ["BrainGlobe"]
License = "BSD-3-Clause"
[subjects]
pattern = '(?P<name>stp_mouse_brain)'
label = "{name}"
sample = "brain"
[[channels]]
folder = "downsampled.tiff"
suffix = "2PE"
voxel_size = { z = 100, y = 100, x = 100 }
voxel_unit = "um"
[[exclude]]
path = "stp_mouse_brain/slices"
reason = "full-resolution slices"
[[exclude]]
path = "stp_mouse_brain/boundaries.tiff"
reason = "registration output"
[[exclude]]
path = "stp_mouse_brain/registered_hemispheres.tiff"
reason = "registration output"
[[exclude]]
path = "czi"
reason = "other test data"
[[exclude]]
path = "ometiff"
reason = "other test data"
[[exclude]]
path = "omexml"
reason = "metadata samples only"
[[exclude]]
path = "swc"
reason = "tracings, not images"
[[exclude]]
path = "README.md"
reason = "the data README"
[output]
formats = ["ome-zarr"]
"""

SYNTH_SPEC = """
spec_version = 1
[dataset]
Name = "Synthetic textures"
Authors = ["bidspack tests"]
License = "CC0-1.0"
[subjects]
pattern = '(?P<name>[a-z0-9]+)'
label = "{name}"
sample = "s1"
[[channels]]
folder = "img"
suffix = "SPIM"
voxel_size = { z = 2, y = 1, x = 1 }
voxel_unit = "um"
"""

T = 32  # synthetic tile side


def _package(submission: Path, spec_text: str, root: Path, name: str) -> Path:
    spec = root / f"{name}.toml"
    spec.write_text(spec_text, encoding="utf-8")
    ds = root / name
    recs = list(package(submission, ds, load_spec(spec), validate=False))
    assert not [r for r in recs if r.status == "error"], [r for r in recs if r.status == "error"]
    return ds


@pytest.fixture(scope="module")
def stp(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real STP stack packaged (OME-TIFF), read-only."""
    return _package(realdata, STP_SPEC, tmp_path_factory.mktemp("stp"), "ds")


@pytest.fixture(scope="module")
def iso(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """downsampled.tiff packaged at an isotropic 100 um (OME-Zarr), read-only."""
    return _package(realdata, ISO_SPEC, tmp_path_factory.mktemp("iso"), "ds")


def _textures(n: int, seed: int = 7) -> list[np.ndarray]:
    """*n* smooth uint8 textures whose dHashes differ pairwise by more than 24 bits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:T, 0:T] / T
    found: list[np.ndarray] = []
    hashes: list[int] = []
    while len(found) < n:
        img = np.zeros((T, T))
        for _ in range(4):
            fy, fx = rng.uniform(0.5, 3, 2)
            img += rng.uniform(0.5, 1) * np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 7))
        img = (20 + (img - img.min()) / (img.max() - img.min()) * 200).astype(np.uint8)
        h = int(dhash64(img)[0])
        if all(bin(h ^ o).count("1") > 24 for o in hashes):
            found.append(img)
            hashes.append(h)
    return found


def _synthetic_volumes() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Two volumes (z 2, y 64, x 96) of 32 x 32 tiles, and which tile is what.

    Volume ``a``: slice 0 ``A B C / D A Bn``, slice 1 ``E Bs F / G H A``: A three times
    (exact), B with a noised (Bn) and a shifted (Bs) near copy, C..H distinct.
    Volume ``b``: slice 0 ``A I J / K L M``, slice 1 ``N O P / Q R S``: A again (a
    duplicate across volumes only), the rest distinct.
    """
    tex = _textures(20)
    names = [chr(c) for c in range(ord("A"), ord("S") + 1)]
    t = dict(zip(names, tex, strict=False))
    rng = np.random.default_rng(3)
    t["Bn"] = np.clip(t["B"].astype(int) + rng.integers(-3, 4, (T, T)), 0, 255).astype(np.uint8)
    t["Bs"] = np.roll(t["B"], 1, axis=1)
    layout = {
        "a": [["A", "B", "C", "D", "A", "Bn"], ["E", "Bs", "F", "G", "H", "A"]],
        "b": [["A", "I", "J", "K", "L", "M"], ["N", "O", "P", "Q", "R", "S"]],
    }
    vols: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for vol, slices in layout.items():
        v = np.zeros((2, 64, 96), np.uint8)
        for z, tiles in enumerate(slices):
            for k, name in enumerate(tiles):
                r, c = divmod(k, 3)
                v[z, r * T : (r + 1) * T, c * T : (c + 1) * T] = t[name]
                where[f"{vol}_z{z}_y{r * T}_x{c * T}"] = name
        vols[vol] = v
    return vols, where


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The synthetic source dataset (two subjects, OME-TIFF) and the tile names."""
    root = tmp_path_factory.mktemp("synth")
    vols, where = _synthetic_volumes()
    for name, vol in vols.items():
        (root / "sub" / name / "img").mkdir(parents=True)
        tifffile.imwrite(root / "sub" / name / "img" / "stack.tif", vol)
    return _package(root / "sub", SYNTH_SPEC, root, "ds"), where


def _index(out: Path) -> list[dict]:
    return pq.read_table(out / "index.parquet").to_pylist()


def _errors(recs: list) -> list:
    return [r for r in recs if r.status == "error"]


def _data_state(root: Path) -> dict[str, str]:
    """sha256 of every file but bidspack's state and the provenance records (which
    carry transaction ids and times)."""
    return {
        k: v
        for k, v in snapshot(root).items()
        if not k.startswith((".bidspack/", "code/bidspack/provenance/"))
    }


def _expected_uint8(region: np.ndarray, row: dict) -> np.ndarray:
    """The recorded intensity conversion, written out independently."""
    lo, hi = row["intensity_low"], row["intensity_high"]
    if row["intensity"] == "percentile":
        v = np.floor((region.astype(np.float64) - lo) * (255.0 / (hi - lo)) + 0.5)
        return np.clip(v, 0, 255).astype(np.uint8)
    if row["intensity"] == "dtype-max":  # CEM: im.astype(float32) / max * 255, truncated
        return (region.astype(np.float32) / np.float32(hi) * np.float32(255)).astype(np.uint8)
    return region.astype(np.uint8)


def _check_patches_equal_source(out: Path, volume: np.ndarray, rows: list[dict]) -> None:
    """Every patch equals the source region its row names (patch rows/cols along the
    plane's axes, zeros beyond height/width)."""
    arrays: dict[str, np.ndarray] = {}
    for row in rows:
        if row["array"] not in arrays:
            arrays[row["array"]] = zarr.open_array(str(out / row["array"]), mode="r")[:]
        patch = arrays[row["array"]][row["row"]]
        region = volume[row["z0"] : row["z1"], row["y0"] : row["y1"], row["x0"] : row["x1"]]
        plane = {"xy": region[0], "xz": region[:, 0, :], "yz": region[:, :, 0]}[row["plane"]]
        h, w = row["height"], row["width"]
        assert plane.shape == (h, w), row["patch_id"]
        assert np.array_equal(patch[:h, :w], _expected_uint8(plane, row)), row["patch_id"]
        assert not patch[h:, :].any() and not patch[:, w:].any(), row["patch_id"]


# -- tiling rule ---------------------------------------------------------------------------


def test_tile_spans_edge_rules() -> None:
    assert tile_spans(193, 64, 64, "keep-if-half") == [(0, 64), (64, 128), (128, 192)]
    assert tile_spans(224, 64, 64, "keep-if-half") == [(0, 64), (64, 128), (128, 192), (160, 224)]
    assert tile_spans(160, 64, 64, "keep-if-half") == [(0, 64), (64, 128), (96, 160)]  # half
    assert tile_spans(150, 64, 64, "keep-if-half") == [(0, 64), (64, 128)]
    assert tile_spans(150, 64, 64, "pad") == [(0, 64), (64, 128), (128, 150)]
    assert tile_spans(150, 64, 64, "drop") == [(0, 64), (64, 128)]
    assert tile_spans(40, 64, 64, "keep-if-half") == [(0, 40)]  # shorter axis: padded
    assert tile_spans(20, 64, 64, "keep-if-half") == []
    assert tile_spans(128, 64, 64, "pad") == [(0, 64), (64, 128)]
    # overlap: no tile after the axis is covered; a shifted tile never repeats one
    assert tile_spans(96, 64, 32, "keep-if-half") == [(0, 64), (32, 96)]
    assert tile_spans(100, 64, 32, "pad") == [(0, 64), (32, 96), (64, 100)]
    assert tile_spans(100, 64, 32, "keep-if-half") == [(0, 64), (32, 96), (36, 100)]


# -- real data -------------------------------------------------------------------------------


def test_stp_patches_equal_source_and_validate(stp: Path, tmp_path: Path) -> None:
    """Anisotropic STP stack (OME-TIFF): xy only (xz, yz refused with a record), every
    slice used, every patch equal to its source region; the dataset validates (0
    errors from bids-validator-deno on OUT alone), verifies, and re-runs notneeded."""
    out = tmp_path / "out"
    params = PatchParams(planes=("xy", "xz", "yz"), size=64)
    planned = list(derive_patches(stp, out, params, dry_run=True))
    assert not out.exists()
    assert [r.details["patches"] for r in planned if r.status == "planned"] == [270 * 3 * 4]
    recs = list(derive_patches(stp, out, params))
    assert not _errors(recs), _errors(recs)
    refused = [r for r in recs if r.action == "plane"]
    assert [(r.status, r.details["plane"]) for r in refused] == [
        ("impossible", "xz"),
        ("impossible", "yz"),
    ]
    assert "0.25 > isotropy tolerance 0.2" in refused[0].message
    assert any(r.action == "validate" for r in recs)
    rows = _index(out)
    assert len(rows) == 270 * 3 * 4
    assert {r["plane"] for r in rows} == {"xy"}
    assert sorted({r["slice_index"] for r in rows}) == list(range(270))
    src = stp / "sub-stpmousebrain/micr/sub-stpmousebrain_sample-brain_2PE.ome.tif"
    volume = tifffile.imread(src, level=0)
    _check_patches_equal_source(out, volume, rows)
    # physical bounds: voxel edges from the voxel size (origin 0 when none is recorded)
    r = next(r for r in rows if r["patch_id"].endswith("_plane-xy_z8_y64_x128"))
    assert (r["z0_um"], r["z1_um"]) == (8 * 50 - 25, 9 * 50 - 25)
    assert (r["y0_um"], r["y1_um"], r["x0_um"], r["x1_um"]) == (2540, 5100, 5100, 7660)
    assert r["source_pixel_hash"] == r["source_pixel_hash"] and len(r["pixel_hash"]) == 32
    # the index columns follow specs/derived-index.schema.json
    schema = load_schema("derived-index")
    assert [c for c, _ in INDEX_COLUMNS] == list(schema["properties"])
    assert pq.read_schema(out / "index.parquet").names == list(schema["properties"])
    validator = jsonschema.Draft202012Validator(schema)
    for row in rows[::50]:
        validator.validate(row)
    tsv = (out / "index.tsv").read_text(encoding="utf-8").splitlines()
    assert tsv[0].split("\t") == list(schema["properties"]) and len(tsv) == len(rows) + 1
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["SourceDatasets"][0]["URL"] == stp.absolute().as_uri()
    assert desc["bidspack"]["source"]["manifest_sha256"]
    assert desc["bidspack"]["parameters"]["isotropy_tolerance"] == 0.2
    checked = list(verify(out))
    assert checked[-1].status == "ok", [c for c in checked if c.status == "error"]
    again = list(derive_patches(stp, out, params, validate=False))
    assert {r.status for r in again if r.action == "step"} == {"notneeded"}
    log = run_bidspack("log", str(out))
    assert log.returncode == 0 and "derive-patches" in log.stdout


def test_isotropic_volume_all_planes(iso: Path, tmp_path: Path) -> None:
    """Isotropic volume (OME-Zarr source): xy, xz and yz, every slice of each axis,
    pad edges, CEM dtype-max intensity; every patch equal to its source region."""
    out = tmp_path / "out"
    params = PatchParams(
        planes=("xy", "xz", "yz"), size=48, edge="pad", intensity="dtype-max", hamming=4
    )
    recs = list(derive_patches(iso, out, params, validate=False))
    assert not _errors(recs) and not [r for r in recs if r.action == "plane"]
    rows = _index(out)
    nz, ny, nx = 135, 77, 108
    per = {p: [r for r in rows if r["plane"] == p] for p in ("xy", "xz", "yz")}
    assert sorted({r["slice_index"] for r in per["xy"]}) == list(range(nz))
    assert sorted({r["slice_index"] for r in per["xz"]}) == list(range(ny))
    assert sorted({r["slice_index"] for r in per["yz"]}) == list(range(nx))
    assert len(per["xy"]) == nz * 2 * 3  # y 77 -> 0:48, 48:77 (pad); x 108 -> 3 tiles
    assert len(per["xz"]) == ny * 3 * 3
    assert len(per["yz"]) == nx * 3 * 2
    src = iso / "sub-stpmousebrain/micr/sub-stpmousebrain_sample-brain_2PE.ome.zarr"
    assert rows[0]["source"].endswith(".ome.zarr")
    volume = zarr.open_array(str(src / "0"), mode="r")[:]
    assert volume.shape == (nz, ny, nx)
    _check_patches_equal_source(out, volume, rows)
    assert any(r["height"] < 48 for r in per["xy"]) and any(r["width"] < 48 for r in per["xz"])
    r = next(r for r in per["yz"] if r["x0"] == 5 and r["z0"] == 48 and r["y0"] == 0)
    assert (r["x0_um"], r["x1_um"], r["z0_um"], r["z1_um"]) == (450, 550, 4750, 9550)


# -- duplicates --------------------------------------------------------------------------------


def test_dedup_decisions_synthetic(synth: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Known exact copies, noised and shifted near copies, distinct textures: the index
    says exactly which patch is a duplicate of which (volume scope), and the dataset
    scope adds the copy across volumes."""
    ds, where = synth
    out = tmp_path / "out"
    params = PatchParams(size=T, intensity="none", seed=5)
    assert not _errors(list(derive_patches(ds, out, params, validate=False)))
    rows = _index(out)
    assert len(rows) == 24
    by_tile: dict[str, list[dict]] = {}
    for r in rows:
        vol = r["source"].split("/")[0].removeprefix("sub-")
        tile = where[f"{vol}_z{r['z0']}_y{r['y0']}_x{r['x0']}"]
        by_tile.setdefault(f"{vol}:{tile}", []).append(r)
    # seeded order: a permutation per volume, recorded
    for vol in ("a", "b"):
        vrows = [r for r in rows if r["source"].startswith(f"sub-{vol}/")]
        order = np.random.default_rng(5).permutation(len(vrows))
        assert [vrows[i]["dedup_order"] for i in order] == list(range(len(vrows)))
    copies = sorted(by_tile["a:A"], key=lambda r: r["dedup_order"])
    assert len(copies) == 3 and len({r["pixel_hash"] for r in copies}) == 1
    first = copies[0]["patch_id"]
    assert copies[0]["kept"] and copies[0]["reason"] == "exemplar"
    for r in copies[1:]:
        assert not r["kept"] and r["reason"] == f"exact duplicate of {first}"
        assert r["exact_group"] == first and r["exemplar_id"] == first and r["hamming"] == 0
    near = sorted(
        by_tile["a:B"] + by_tile["a:Bn"] + by_tile["a:Bs"], key=lambda r: r["dedup_order"]
    )
    ex = near[0]
    assert ex["kept"] and ex["reason"] == "exemplar"
    for r in near[1:]:
        assert not r["kept"] and r["exemplar_id"] == ex["patch_id"] and r["hamming"] <= 12
        assert r["pixel_hash"] != ex["pixel_hash"]
        assert r["reason"] == f"near duplicate of {ex['patch_id']} (hamming {r['hamming']})"
        assert r["exact_group"] == r["patch_id"]
    distinct = [k for k in by_tile if k.split(":")[1] not in ("A", "B", "Bn", "Bs")]
    for key in [*distinct, "b:A"]:
        (r,) = by_tile[key]
        assert r["kept"] and r["reason"] == "exemplar", key
    assert sum(r["kept"] for r in rows) == 24 - 2 - 2
    # dataset scope: A of volume b is now a duplicate too (exact, of the first A)
    out2 = tmp_path / "out2"
    params2 = PatchParams(size=T, intensity="none", seed=5, dedup_scope="dataset")
    assert not _errors(list(derive_patches(ds, out2, params2, validate=False)))
    rows2 = _index(out2)
    a_all = [r for r in rows2 if r["pixel_hash"] == copies[0]["pixel_hash"]]
    assert len(a_all) == 4 and sum(r["kept"] for r in a_all) == 1
    assert {r["dedup_group"] for r in rows2} == {"dataset"}
    assert sum(r["kept"] for r in rows2) == 24 - 3 - 2
    order = np.random.default_rng(5).permutation(24)
    assert [rows2[i]["dedup_order"] for i in order] == list(range(24))


def test_determinism_reruns_and_parameter_changes(
    synth: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Same seed -> identical bytes (arrays, index, manifest, metadata) in two output
    folders; re-run notneeded; a new seed re-decides only the index (recorded), a new
    size re-extracts; the derived dataset validates and verifies."""
    ds, _ = synth
    params = PatchParams(size=T, stride=24, intensity="percentile", seed=1)
    one, two = tmp_path / "one", tmp_path / "two"
    recs = list(derive_patches(ds, one, params))
    assert not _errors(recs), _errors(recs)
    assert not _errors(list(derive_patches(ds, two, params, validate=False)))
    state = _data_state(one)
    assert state == _data_state(two)
    assert any(k.endswith("plane-xy.zarr/zarr.json") for k in state)
    again = list(derive_patches(ds, one, params, validate=False))
    assert [r.status for r in again if r.action == "step"] == ["notneeded"] * 3
    assert _data_state(one) == state
    # a new seed: extraction steps unchanged, the index step re-runs; seed recorded
    recs = list(derive_patches(ds, one, PatchParams(size=T, stride=24, seed=2), validate=False))
    steps = {r.path: r.status for r in recs if r.action == "step"}
    assert steps == {"patches/sub-a_sample-s1_SPIM": "notneeded"} | {
        "patches/sub-b_sample-s1_SPIM": "notneeded",
        "index": "ok",
    }
    desc = json.loads((one / "dataset_description.json").read_text())
    assert desc["bidspack"]["parameters"]["seed"] == 2
    assert "--seed 2" in desc["GeneratedBy"][0]["Description"]
    new = _data_state(one)
    assert new["index.parquet"] != state["index.parquet"]
    assert all(new[k] == v for k, v in state.items() if k.startswith("patches/"))
    # a new size: everything re-runs, the old arrays are replaced
    recs = list(derive_patches(ds, one, PatchParams(size=16, seed=2), validate=False))
    assert {r.status for r in recs if r.action == "step"} == {"ok"}
    assert len(_index(one)) == 2 * (2 * 4 * 6)
    # only subject a: b's outputs and step record are removed by the index step
    recs = list(
        derive_patches(ds, one, PatchParams(size=16, seed=2), entities={"sub": "a"}, validate=False)
    )
    assert not (one / "patches/sub-b_sample-s1_SPIM").exists()
    assert {r["source"].split("/")[0] for r in _index(one)} == {"sub-a"}
    assert not list((one / ".bidspack/steps").glob("*sub-b*"))
    checked = list(verify(one))
    assert checked[-1].status == "ok", [c for c in checked if c.status == "error"]


# -- crash safety ------------------------------------------------------------------------------

#: ``staged@3``: in the index step (the third transaction of the run).
FAULTS = ["stage@1", "stage@3", "staged", "journal", "committed", "apply@1", "staged@3"]


def test_fault_matrix_kill_then_rerun_equals_uninterrupted(
    synth: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """``bidspack derive patches`` killed (SIGKILL, in a child process) at every fault
    point, then re-run: the result equals an uninterrupted run, byte for byte, and no
    transaction is left."""
    ds, _ = synth
    params = PatchParams(size=T, stride=24, seed=3)
    ref = tmp_path / "ref"
    assert not _errors(list(derive_patches(ds, ref, params, validate=False)))
    want = _data_state(ref)
    opts = ["--size", str(T), "--stride", "24", "--seed", "3", "--no-validate", "--json"]
    env = {k: v for k, v in os.environ.items() if k != "BIDSPACK_FAULT"}
    for fault in FAULTS:
        out = tmp_path / fault.replace("@", "-")
        killed = run_bidspack(
            "derive", "patches", str(ds), str(out), *opts, env={**env, "BIDSPACK_FAULT": fault}
        )
        assert killed.returncode == -9, (fault, killed.returncode, killed.stderr[-500:])
        recs = list(derive_patches(ds, out, params, validate=False))
        assert not _errors(recs), (fault, _errors(recs))
        assert _data_state(out) == want, fault
        assert not list((out / ".bidspack" / "txn").glob("*")), fault
        shutil.rmtree(out)


# -- errors ------------------------------------------------------------------------------------


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_bad_input_is_a_clean_error_and_writes_nothing(
    synth: tuple[Path, dict[str, str]], stp: Path, tmp_path: Path
) -> None:
    """No matching image, bad options, a bad source or output folder: one clean error
    line, a non-zero exit, nothing written."""
    ds, _ = synth
    out = tmp_path / "out"
    cases = [
        ([str(ds), str(out), "--suffix", "TEM"], "no image matches the selection (suffix TEM)"),
        ([str(ds), str(out), "--sub", "zz"], "no image matches"),
        ([str(ds), str(out), "--planes", "xy,ab"], "each must be one of xy, xz, yz"),
        ([str(ds), str(out), "--size", "1"], "size 1"),
        ([str(ds), str(out), "--hamming", "65"], "hamming 65"),
        ([str(ds), str(out), "--edge", "wrap"], "Invalid value for '--edge'"),
        ([str(stp), str(out), "--intensity", "none"], "needs uint8 pixels"),
        ([str(tmp_path / "nothing"), str(out)], "not a folder"),
        ([str(ds), str(ds / "inside")], "inside one another"),
    ]
    for args, message in cases:
        res = _cli("derive", "patches", *args)
        assert res.exit_code != 0, args
        assert message in res.stderr, (args, res.stderr)
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        assert not out.exists() and not (ds / "inside").exists(), args
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = _cli("derive", "patches", str(ds), str(out), "--size", str(T))
    assert res.exit_code != 0 and "not empty" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_cli_dry_run_and_run(synth: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """The CLI: --dry-run prints the plan and writes nothing; a run prints JSON records."""
    ds, _ = synth
    out = tmp_path / "out"
    res = _cli(
        "derive", "patches", str(ds), str(out), "--size", "32", "--planes", "xy,xz", "--dry-run"
    )
    assert res.exit_code == 0, res.output
    assert "plan: 24 patches" in res.stdout and "plane xz refused" in res.stdout
    assert not out.exists()
    res = _cli("derive", "patches", str(ds), str(out), "--size", "32", "--no-validate", "--json")
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["status"] for r in recs if r["action"] == "step"] == ["ok"] * 3
