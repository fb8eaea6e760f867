"""``bidspack derive subvolume``, ``bidspack derive export``, ``bidspack.training`` and
the ``derive patches`` progress callback: real data (the packaged STP stack and the
isotropic real volume of ``test_derive_patches``), real files read back with tifffile,
h5py and zarr, no mocks.

- subvolume: the block equals the source region re-read independently and converted
  with the recorded parameters; the patch's slice equals the stored patch, on the first,
  a middle and the last slice (shift and clip), and for xz/yz patches of the isotropic
  volume; files written outside the dataset; clean errors, nothing written.
- export: TIFF files (patch-id and CEM ``-LOC-`` names) and HDF5 read back equal the
  index's patches, with the right names and attributes; an existing DEST is refused.
- training: PatchSet random access, seeded batches covering every kept patch once per
  epoch, deterministic per seed, from a plain Python consumer.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from click.testing import CliRunner, Result

import test_derive_patches as base
from bidspack.cli.main import cli
from bidspack.errors import BidspackError, IntegrityError, OutputError, PlanError
from bidspack.ops.derive.export import export_patches, loc_name
from bidspack.ops.derive.patches import PatchParams, derive_patches
from bidspack.ops.derive.subvolume import block_span, subvolume, subvolumes
from bidspack.training import PatchSet

# the packaged real datasets and the synthetic one of test_derive_patches (module fixtures)
stp = base.stp
iso = base.iso
synth = base.synth
T = base.T
_expected_uint8 = base._expected_uint8

STP_IMAGE = "sub-stpmousebrain/micr/sub-stpmousebrain_sample-brain_2PE.ome.tif"
ISO_IMAGE = "sub-stpmousebrain/micr/sub-stpmousebrain_sample-brain_2PE.ome.zarr"
STEM = "sub-stpmousebrain_sample-brain_2PE"


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def stp_patches(stp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Patches 96 x 96 of the real STP stack (270, 193, 271) uint16: percentile
    intensity, the column tile at the edge shifted inside (175:271)."""
    out = tmp_path_factory.mktemp("stp_patches") / "out"
    recs = list(derive_patches(stp, out, PatchParams(size=96, seed=3), validate=False))
    assert not [r for r in recs if r.status == "error"]
    return out


@pytest.fixture(scope="module")
def iso_patches(iso: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """xy, xz and yz patches 48 x 48 (pad edges) of the isotropic real volume
    (135, 77, 108) (OME-Zarr source)."""
    out = tmp_path_factory.mktemp("iso_patches") / "out"
    params = PatchParams(planes=("xy", "xz", "yz"), size=48, edge="pad", slice_step=2)
    assert not [r for r in derive_patches(iso, out, params, validate=False) if r.status == "error"]
    return out


def _index(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "index.parquet").to_pandas()


def _stored(out: Path, row: pd.Series) -> np.ndarray:
    return zarr.open_array(str(out / row["array"]), mode="r")[int(row["row"])]


def _check_block(sv, row: pd.Series, volume: np.ndarray, depth: int, edge: str) -> None:
    """The block equals the source region read independently, converted with the
    recorded parameters, zero beyond the patch's height/width."""
    axes = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}[row["plane"]]
    s_ax = axes[0]
    n = volume.shape[s_ax]
    s = int(row["slice_index"])
    s0, s1 = block_span(s, n, depth, edge)
    idx = [slice(int(row[f"{a}0"]), int(row[f"{a}1"])) for a in "zyx"]
    idx[s_ax] = slice(s0, s1)
    region = np.transpose(volume[tuple(idx)], axes)
    want = np.zeros((s1 - s0, sv.data.shape[1], sv.data.shape[2]), np.uint8)
    want[:, : row["height"], : row["width"]] = _expected_uint8(region, row)
    assert sv.data.dtype == np.uint8
    np.testing.assert_array_equal(sv.data, want)
    assert sv.center == s - s0
    assert sv.bounds[f"{'zyx'[s_ax]}0"] == s0 and sv.bounds[f"{'zyx'[s_ax]}1"] == s1


# -- subvolume ------------------------------------------------------------------------------


def test_block_span_edges() -> None:
    """Centred, shifted inside or cut at the ends; thinner volumes; even depths."""
    assert block_span(10, 270, 5, "shift") == (8, 13)
    assert block_span(0, 270, 5, "shift") == (0, 5)
    assert block_span(1, 270, 5, "shift") == (0, 5)
    assert block_span(269, 270, 5, "shift") == (265, 270)
    assert block_span(268, 270, 5, "shift") == (265, 270)
    assert block_span(0, 270, 5, "clip") == (0, 3)
    assert block_span(269, 270, 5, "clip") == (267, 270)
    assert block_span(1, 3, 5, "shift") == (0, 3) and block_span(1, 3, 5, "clip") == (0, 3)
    assert block_span(10, 270, 4, "shift") == (8, 12)  # even: one more before
    assert block_span(10, 270, 1, "clip") == (10, 11)


def test_subvolume_stp_first_middle_last(stp: Path, stp_patches: Path, tmp_path: Path) -> None:
    """Real STP stack (OME-TIFF source): blocks around patches on the first, a middle
    and the last slice, shift and clip, equal the independently converted source; the
    patch's slice equals the stored patch; written as OME-TIFF, TIFF, .npy outside the
    dataset."""
    index = _index(stp_patches)
    volume = tifffile.imread(stp / STP_IMAGE, level=0)
    assert volume.shape == (270, 193, 271)
    picks = [
        f"{STEM}_plane-xy_z0_y0_x0",
        f"{STEM}_plane-xy_z100_y96_x96",
        f"{STEM}_plane-xy_z269_y96_x175",  # last slice, column tile shifted inside
        f"{STEM}_plane-xy_z268_y0_x175",
    ]
    rows = index.set_index("patch_id").loc[picks].reset_index()
    for edge in ("shift", "clip"):
        blocks = subvolumes(stp_patches, picks, depth=5, edge=edge)
        for sv, (_, row) in zip(blocks, rows.iterrows(), strict=True):
            _check_block(sv, row, volume, 5, edge)
            np.testing.assert_array_equal(sv.data[sv.center], _stored(stp_patches, row))
            assert sv.axes == "zyx" and sv.voxel_um == (50.0, 40.0, 40.0)
        first, middle, last, before_last = blocks
        if edge == "shift":
            assert [b.data.shape[0] for b in blocks] == [5, 5, 5, 5]
            assert (first.center, middle.center, last.center, before_last.center) == (0, 2, 4, 3)
            assert (last.bounds["z0"], last.bounds["z1"]) == (265, 270)
        else:
            assert [b.data.shape[0] for b in blocks] == [3, 5, 3, 4]
            assert (first.center, middle.center, last.center) == (0, 2, 2)
            assert (last.bounds["z0"], last.bounds["z1"]) == (267, 270)
    # raw: the source values themselves
    raw = subvolume(stp_patches, picks[1], depth=3, raw=True)
    assert raw.data.dtype == np.uint16
    np.testing.assert_array_equal(raw.data, volume[99:102, 96:192, 96:192])
    # written files, outside the dataset
    ome = tmp_path / "block.ome.tif"
    res = _cli("derive", "subvolume", str(stp_patches), picks[2], "--depth", "5", "-o", str(ome))
    assert res.exit_code == 0, res.output
    with tifffile.TiffFile(ome) as tf:
        assert tf.is_ome and tf.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tf.asarray(), subvolume(stp_patches, picks[2]).data)
        xml = tf.ome_metadata
    assert 'PhysicalSizeZ="50.0"' in xml and 'PhysicalSizeX="40.0"' in xml
    assert picks[2] in xml and "&quot;center&quot;: 4" in xml
    npy = tmp_path / "block.npy"
    assert _cli("derive", "subvolume", str(stp_patches), picks[0], "-o", str(npy)).exit_code == 0
    np.testing.assert_array_equal(np.load(npy), subvolume(stp_patches, picks[0]).data)
    folder = tmp_path / "blocks"
    res = _cli(
        "derive",
        "subvolume",
        str(stp_patches),
        *picks[:2],
        "-o",
        str(folder),
        "--format",
        "tiff",
        "--edge",
        "clip",
        "--json",
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{p}.tif" for p in picks[:2])
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["details"]["center"] for r in recs] == [0, 2]
    page = tifffile.TiffFile(folder / f"{picks[0]}.tif").pages[0]
    assert json.loads(page.description)["bidspack"]["source"] == STP_IMAGE
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing staged left


def test_subvolume_isotropic_xz_yz(iso: Path, iso_patches: Path) -> None:
    """Isotropic real volume (OME-Zarr source): xz and yz patches (padded ones too) at
    the first and last slice and inside; the block axes follow the patch's plane."""
    index = _index(iso_patches)
    volume = zarr.open_array(str(iso / ISO_IMAGE / "0"), mode="r")[:]
    _, ny, nx = volume.shape
    chosen = []
    for plane in ("xz", "yz"):
        rows = index[index["plane"] == plane]
        top = rows["slice_index"].max()
        for s in (0, int(top), 40):
            chosen.append(rows[rows["slice_index"] == s].iloc[-1])  # last tile: padded
        chosen.append(rows[rows["slice_index"] == 40].iloc[0])
    assert any(r["height"] < 48 or r["width"] < 48 for r in chosen)
    ids = [r["patch_id"] for r in chosen]
    blocks = subvolumes(iso_patches, ids, depth=7)
    for sv, row in zip(blocks, chosen, strict=True):
        _check_block(sv, row, volume, 7, "shift")
        np.testing.assert_array_equal(sv.data[sv.center], _stored(iso_patches, row))
        assert sv.axes == {"xz": "yzx", "yz": "xzy"}[row["plane"]]
        assert sv.voxel_um == (100.0, 100.0, 100.0)
    assert {b.data.shape for b in blocks} == {(7, 48, 48)}
    # slice_step 2 on y (77 slices): the last used slice 76 is the last of the volume
    assert int(chosen[1]["slice_index"]) == ny - 1 and blocks[1].center == 6
    assert int(chosen[5]["slice_index"]) == nx - 2 and blocks[5].center == 5


def test_subvolume_errors_write_nothing(stp: Path, stp_patches: Path, tmp_path: Path) -> None:
    """Unknown ids, bad depth, existing or in-dataset outputs, a bad ending, a folder
    that is not a patches dataset, a changed source: clean errors, nothing written."""
    pid = f"{STEM}_plane-xy_z0_y0_x0"
    existing = tmp_path / "there.npy"
    existing.write_bytes(b"mine")
    cases = [
        ([str(stp_patches), "nope", "-o", str(tmp_path / "a.npy")], "patch 'nope' is not in"),
        ([str(stp_patches), pid, "--depth", "0", "-o", str(tmp_path / "a.npy")], "depth 0"),
        ([str(stp_patches), pid, "-o", str(existing)], "already exists"),
        ([str(stp_patches), pid, "-o", str(stp_patches / "x.npy")], "is inside the dataset"),
        ([str(stp_patches), pid, "-o", str(stp / "x.npy")], "is inside the dataset"),
        ([str(stp_patches), pid, "-o", str(tmp_path / "a.png")], "name a .ome.tif, .tif or .npy"),
        ([str(stp), pid], "not a derived patches dataset"),
        ([str(stp_patches), pid, "--source", str(tmp_path)], "not a bidspack dataset"),
    ]
    for args, message in cases:
        res = _cli("derive", "subvolume", *args)
        assert res.exit_code != 0, args
        assert message in res.stderr, (args, res.stderr)
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.npy"]
    assert existing.read_bytes() == b"mine" and not (stp_patches / "x.npy").exists()
    # a patch array that no longer matches its source: IntegrityError, not a wrong block
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(stp_patches, copy)
    row = _index(copy).set_index("patch_id").loc[pid]
    arr = zarr.open_array(str(copy / row["array"]), mode="r+")
    patch = arr[int(row["row"])]
    patch[0, 0] ^= 1
    arr[int(row["row"])] = patch
    with pytest.raises(IntegrityError, match="differs from its source region"):
        subvolume(copy, pid, source=stp)
    with pytest.raises(PlanError, match="no patch id"):
        subvolumes(copy, [])


# -- exports --------------------------------------------------------------------------------


def test_export_tiff_and_loc_names(stp_patches: Path, tmp_path: Path) -> None:
    """TIFF files named by patch id, or kept patches with CEM's -LOC- names
    (<stem>-LOC-<axis>_<slice zero-padded>_<r0>-<r1>_<c0>-<c1>.tiff); pixels equal the
    index's patches; patches.tsv lists them."""
    index = _index(stp_patches)
    dest = tmp_path / "tiffs"
    recs = list(export_patches(stp_patches, dest, fmt="tiff", kept_only=True, loc_names=True))
    assert recs[0].status == "ok" and recs[0].details["patches"] == int(index["kept"].sum())
    kept = index[index["kept"]]
    names = sorted(p.name for p in dest.iterdir())
    assert "patches.tsv" in names and len(names) == len(kept) + 1
    row = index.set_index("patch_id").loc[f"{STEM}_plane-xy_z7_y96_x175"]
    name = f"{STEM}-LOC-0_007_96-192_175-271.tiff"
    assert loc_name({**row.to_dict(), "patch_id": row.name}, 3) + ".tiff" == name
    for _, r in kept.iloc[:: max(1, len(kept) // 40)].iterrows():
        s, y0, y1, x0, x1 = r["slice_index"], r["y0"], r["y1"], r["x0"], r["x1"]
        f = dest / f"{STEM}-LOC-0_{s:03d}_{y0}-{y1}_{x0}-{x1}.tiff"
        with tifffile.TiffFile(f) as tf:
            np.testing.assert_array_equal(tf.asarray(), _stored(stp_patches, r))
            meta = json.loads(tf.pages[0].description)["bidspack"]
        assert meta["patch_id"] == r["patch_id"] and meta["z0"] == s
    table = pd.read_csv(dest / "patches.tsv", sep="\t")
    assert list(table.columns[:3]) == ["file", "patch_id", "source"]
    assert set(table["patch_id"]) == set(kept["patch_id"]) and set(table["kept"]) == {True}
    # all patches, named by patch id
    all_dest = tmp_path / "all"
    res = _cli("derive", "export", str(stp_patches), str(all_dest), "--format", "tiff")
    assert res.exit_code == 0, res.output
    assert len(list(all_dest.glob("*.tiff"))) == len(index)
    r = index.iloc[-1]
    np.testing.assert_array_equal(
        tifffile.imread(all_dest / f"{r['patch_id']}.tiff"), _stored(stp_patches, r)
    )


def test_export_hdf5(iso_patches: Path, tmp_path: Path) -> None:
    """HDF5: patches (n, size, size) uint8 chunked per patch equal the arrays; patch_id,
    source, bounds and the index columns are there; file attributes name the datasets."""
    index = _index(iso_patches)
    dest = tmp_path / "out" / "patches.h5"
    res = _cli("derive", "export", str(iso_patches), str(dest), "--format", "hdf5", "--json")
    assert res.exit_code == 0, res.output
    with h5py.File(dest, "r") as f:
        data = f["patches"]
        assert data.shape == (len(index), 48, 48) and data.dtype == np.uint8
        assert data.chunks == (1, 48, 48)
        ids = [v.decode() if isinstance(v, bytes) else v for v in f["patch_id"][:]]
        assert ids == index["patch_id"].tolist()
        assert f["source"][0].decode() == ISO_IMAGE
        bounds = f["bounds"][:]
        assert list(f["bounds"].attrs["columns"]) == ["z0", "z1", "y0", "y1", "x0", "x1"]
        np.testing.assert_array_equal(bounds, index[["z0", "z1", "y0", "y1", "x0", "x1"]])
        np.testing.assert_array_equal(f["index/kept"][:], index["kept"].to_numpy())
        assert f.attrs["derived_dataset"] == iso_patches.absolute().as_uri()
        assert f.attrs["source_dataset"].startswith("file://") and f.attrs["patch_size"] == 48
        for i in range(0, len(index), max(1, len(index) // 50)):
            np.testing.assert_array_equal(data[i], _stored(iso_patches, index.iloc[i]))
    # kept only, and refusals: existing DEST, inside the dataset, --loc-names with hdf5
    kept = tmp_path / "kept.h5"
    list(export_patches(iso_patches, kept, fmt="hdf5", kept_only=True))
    with h5py.File(kept, "r") as f:
        assert f["patches"].shape[0] == int(index["kept"].sum()) and f.attrs["kept_only"]
    before = dest.read_bytes()
    for args, message in [
        ([str(dest), "--format", "hdf5"], "already exists"),
        ([str(iso_patches / "x.h5"), "--format", "hdf5"], "is inside the dataset"),
        ([str(tmp_path / "y.h5"), "--format", "hdf5", "--loc-names"], "does not apply"),
        ([str(tmp_path / "z"), "--format", "zip"], "Invalid value for '--format'"),
    ]:
        res = _cli("derive", "export", str(iso_patches), *args)
        assert res.exit_code != 0 and message in res.stderr, (args, res.stderr)
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.h5", "out"]
    with pytest.raises(BidspackError, match="not a derived patches dataset"):
        list(export_patches(tmp_path, tmp_path / "w", fmt="tiff"))
    with pytest.raises(OutputError):
        list(export_patches(iso_patches, kept, fmt="hdf5"))


# -- training ------------------------------------------------------------------------------


def test_patchset_random_access_and_seeded_batches(stp_patches: Path) -> None:
    """A plain Python consumer: every kept patch exactly once per epoch, batches equal
    the stored patches, the same seed gives the same batches, another seed another
    order; random access by position; queries; picklable; a table of ids + arrays."""
    index = _index(stp_patches)
    ps = PatchSet(stp_patches)
    kept = index[index["kept"]].reset_index(drop=True)
    assert len(ps) == len(kept) and ps.size == 96
    assert ps.ids == kept["patch_id"].tolist()
    for i in (0, 17, len(ps) - 1, -1):
        np.testing.assert_array_equal(ps[i], _stored(stp_patches, kept.iloc[i]))
    with pytest.raises(IndexError):
        ps[len(ps)]

    def epoch(seed: int, **kw: object) -> list[tuple[np.ndarray, list[str]]]:
        return list(ps.batches(64, seed=seed, **kw))  # type: ignore[arg-type]

    one = epoch(7)
    seen = [pid for _, ids in one for pid in ids]
    assert sorted(seen) == sorted(kept["patch_id"]) and len(seen) == len(set(seen))
    assert [len(ids) for _, ids in one[:-1]] == [64] * (len(one) - 1)
    assert one[-1][0].shape == (len(ps) - 64 * (len(one) - 1), 96, 96)
    by_id = dict(zip(kept["patch_id"], range(len(kept)), strict=True))
    for batch, ids in one[:3] + one[-1:]:
        assert batch.dtype == np.uint8
        for b, pid in zip(batch, ids, strict=True):
            np.testing.assert_array_equal(b, _stored(stp_patches, kept.iloc[by_id[pid]]))
    again = epoch(7)
    assert [ids for _, ids in again] == [ids for _, ids in one]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(one, again, strict=True))
    assert [ids for _, ids in epoch(8)] != [ids for _, ids in one]
    plain = epoch(0, shuffle=False, drop_last=True)
    assert [pid for _, ids in plain for pid in ids] == ps.ids[: 64 * (len(ps) // 64)]
    # all patches, a query, pickling, a bare table of ids and array references
    everything = PatchSet(stp_patches, kept_only=False, query="slice_index >= 260")
    assert len(everything) == int((index["slice_index"] >= 260).sum())
    clone = pickle.loads(pickle.dumps(ps))
    np.testing.assert_array_equal(clone[3], ps[3])
    bare = PatchSet.from_table(kept[["patch_id", "array", "row"]].iloc[::-1], stp_patches)
    np.testing.assert_array_equal(bare[0], ps[-1])
    for bad, message in [
        (lambda: PatchSet(stp_patches, query="nonsense ==="), "bad query"),
        (lambda: PatchSet.from_table(kept[["patch_id"]], stp_patches), "no 'array' column"),
        (lambda: PatchSet(stp_patches.parent), "no index.parquet"),
    ]:
        with pytest.raises(BidspackError, match=message):
            bad()


# -- derive patches: progress ---------------------------------------------------------------


def test_derive_patches_progress(synth: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """The progress callback counts patches up to the planned total, also when the
    steps are notneeded."""
    ds, _ = synth
    out = tmp_path / "out"
    calls: list[tuple[str, int, int]] = []
    params = PatchParams(size=T, intensity="none")
    recs = list(
        derive_patches(ds, out, params, validate=False, progress=lambda *a: calls.append(a))
    )
    assert not [r for r in recs if r.status == "error"]
    assert calls[-1][1:] == (24, 24) and [c[1] for c in calls] == sorted(c[1] for c in calls)
    assert {c[0] for c in calls} == {
        r["source"] for r in pq.read_table(out / "index.parquet").select(["source"]).to_pylist()
    }
    calls.clear()
    list(derive_patches(ds, out, params, validate=False, progress=lambda *a: calls.append(a)))
    assert calls[-1][1:] == (24, 24)
