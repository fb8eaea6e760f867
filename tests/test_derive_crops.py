"""``bidspack derive crops``: real tracings, real label images, real tools (tifffile,
zarr, h5py, pyarrow, bids-validator-deno), no mocks.

- A source dataset packaged by bidspack (OME-TIFF and OME-Zarr) with two synthetic-
  intensity stacks whose physical extent (from their OME-XML voxel size and origin)
  covers real tracings of ``../shared/realdata/swc/``: a NeuroMorpho tracing (um,
  StdSwc) at an anisotropic voxel (2, 1, 1) um, and the two-root hemibrain tracing
  (8 nm voxel units) at an isotropic 2 um voxel.
- The real brainreg hemisphere label image packaged as a label derivative next to
  ``downsampled.tiff`` (100 um isotropic), cropped to its non-zero bounding box.
- Malformed SWC files, the derived dataset's validation, a kill at a fault point then a
  re-run (identical bytes), and a notneeded re-run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from click.testing import CliRunner, Result
from scipy import ndimage

from bidspack.cli.main import cli
from bidspack.io.omexml import build_omexml
from bidspack.io.rasterize import VoxelGrid
from bidspack.io.sources import TiffStack
from bidspack.io.swc import calibrate, read_swc
from bidspack.ops.derive.crops import TABLE_COLUMNS, CropParams, MaskSpec, derive_crops
from bidspack.ops.derive.source import open_image
from bidspack.ops.package import package
from bidspack.ops.validate import validate_dataset
from bidspack.spec import load_schema, load_spec
from conftest import REALDATA, run_bidspack
from test_derive_patches import _data_state

SWC_DIR = REALDATA / "swc"
NEUROMORPHO = SWC_DIR / "EBT7R.CNG.swc.txt"
HEMIBRAIN = SWC_DIR / "754538881.swc"  # two roots
CUBE = np.ones((3, 3, 3), dtype=bool)

#: (name, shape, voxel, origin) of the synthetic stacks, all (z, y, x), micrometres.
#: EBT7R spans z -71..0, y -121.5..-58.2, x 12.8..153.1 um; 754538881 (8 nm voxels)
#: z 86.8..222.6, y 98.4..297.6, x 17.5..174.3 um.
STACKS = {
    "nm": ((50, 90, 170), (2.0, 1.0, 1.0), (-85.0, -135.0, 0.0)),
    "hb": ((90, 120, 95), (2.0, 2.0, 2.0), (70.0, 80.0, 5.0)),
}

SYNTH_SPEC = """
spec_version = 1
[dataset]
Name = "Synthetic stacks covering real tracings"
Authors = ["bidspack tests"]
License = "CC0-1.0"
[subjects]
pattern = '(?P<name>[a-z0-9]+)'
label = "{name}"
sample = "s1"
[[channels]]
folder = "img"
suffix = "SPIM"
[output]
formats = ["ome-tiff", "ome-zarr"]
"""

HEMI_SPEC = """
spec_version = 1
[dataset]
Name = "STP brain, downsampled, with hemisphere labels"
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
[[channels]]
folder = "registered_hemispheres.tiff"
type = "derivative"
pipeline = "brainreg"
desc = "hemispheres"
suffix = "2PE"
image = "label"
voxel_size = { z = 100, y = 100, x = 100 }
voxel_unit = "um"
[[exclude]]
path = "stp_mouse_brain/slices"
reason = "full-resolution slices"
[[exclude]]
path = "stp_mouse_brain/boundaries.tiff"
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
"""

pytestmark = pytest.mark.skipif(
    not (NEUROMORPHO.is_file() and HEMIBRAIN.is_file()), reason="no real SWC data"
)


def _package(submission: Path, spec_text: str, root: Path) -> Path:
    spec = root / "spec.toml"
    spec.write_text(spec_text, encoding="utf-8")
    ds = root / "ds"
    recs = list(package(submission, ds, load_spec(spec), validate=False))
    assert not [r for r in recs if r.status == "error"], [r for r in recs if r.status == "error"]
    return ds


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both stacks packaged (OME-TIFF and OME-Zarr), voxel size and origin from the
    OME-XML of the submitted files; read-only."""
    root = tmp_path_factory.mktemp("crops-src")
    for k, (name, (shape, voxel, origin)) in enumerate(STACKS.items()):
        (root / "sub" / name / "img").mkdir(parents=True)
        rng = np.random.default_rng(k)
        vol = rng.integers(0, 4000, size=shape, dtype=np.uint16)
        xml = build_omexml(
            name=name, shape_zyx=shape, dtype=vol.dtype, physical_size_zyx_um=voxel,
            origin_zyx_um=origin,
        )  # fmt: skip
        path = root / "sub" / name / "img" / "stack.ome.tif"
        tifffile.imwrite(path, vol, description=xml.encode(), metadata=None)
    return _package(root / "sub", SYNTH_SPEC, root)


@pytest.fixture(scope="module")
def hemi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """downsampled.tiff (raw) and registered_hemispheres.tiff (label derivative,
    pipeline brainreg, desc hemispheres), 100 um isotropic, OME-TIFF; read-only."""
    return _package(REALDATA, HEMI_SPEC, tmp_path_factory.mktemp("crops-hemi"))


def _image(ds: Path, name: str, ext: str) -> Path:
    return ds / f"sub-{name}/micr/sub-{name}_sample-s1_SPIM{ext}"


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out / "crops.parquet").to_pylist()


def _errors(recs: list) -> list:
    return [r for r in recs if r.status == "error"]


def _segments_zyx(pt) -> tuple[np.ndarray, np.ndarray]:
    tr = pt.tracing
    child = np.flatnonzero(tr.parent_index >= 0)
    zyx = pt.xyz_um[:, ::-1]
    return zyx[tr.parent_index[child]], zyx[child]


def _distance_to_segments(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each point of ``p`` (n, 3) to the nearest segment a->b (m, 3)."""
    out = np.full(len(p), np.inf)
    ab = b - a
    ll = np.einsum("ij,ij->i", ab, ab)
    for s in range(0, len(p), 256):
        q = p[s : s + 256, None, :]
        t = np.einsum("nmk,mk->nm", q - a[None], ab) / np.where(ll > 0, ll, 1.0)
        t = np.clip(np.where(ll > 0, t, 0.0), 0, 1)
        d = np.linalg.norm(q - (a[None] + t[..., None] * ab[None]), axis=2)
        out[s : s + 256] = d.min(axis=1)
    return out


def _check_swc_crop(
    out: Path, row: dict, source_volume: np.ndarray, pt, shape, voxel, origin, margin
) -> np.ndarray:
    """The checks every SWC crop passes; returns its mask."""
    z0, z1, y0, y1, x0, x1 = (row[k] for k in ("z0", "z1", "y0", "y1", "x0", "x1"))
    image = tifffile.imread(out / row["image_ome_tiff"], level=0)
    mask = tifffile.imread(out / row["mask_ome_tiff"], level=0)
    assert image.shape == mask.shape == (z1 - z0, y1 - y0, x1 - x0)
    # image pixels equal the source region (re-read from the source file)
    assert np.array_equal(image, source_volume[z0:z1, y0:y1, x0:x1])
    # the crop's OME origin maps back: crop voxel + offset = source voxel
    info = TiffStack(out / row["image_ome_tiff"]).info
    want = np.asarray(origin) + np.asarray([z0, y0, x0]) * np.asarray(voxel)
    assert info.physical_size == pytest.approx(voxel)
    assert info.origin == pytest.approx(tuple(want))
    assert (row["origin_z_um"], row["origin_y_um"], row["origin_x_um"]) == pytest.approx(
        tuple(want)
    )
    assert TiffStack(out / row["mask_ome_tiff"]).info.origin == pytest.approx(tuple(want))
    # every in-image node's voxel is set, and the crop holds it with the margin
    grid = VoxelGrid(shape, voxel, origin)
    vox = np.floor(grid.to_index(pt.xyz_um[:, ::-1]) + 0.5).astype(np.int64)
    inside = ((vox >= 0) & (vox < shape)).all(axis=1)
    v = vox[inside]
    lo, hi = np.array([z0, y0, x0]), np.array([z1, y1, x1])
    m = np.asarray(margin)
    assert (lo <= np.maximum(v.min(axis=0) - m, 0)).all()
    assert (hi >= np.minimum(v.max(axis=0) + 1 + m, shape)).all()
    assert (lo == np.maximum(v.min(axis=0) - m, 0)).all() or row["target"] == "tree"
    assert mask[tuple((v - lo).T)].all()
    # mask voxels mapped back through the recorded offset and voxel size lie within
    # half a voxel diagonal of an SWC segment (physical units)
    nz = np.argwhere(mask > 0)
    offset = np.array([row["z0"], row["y0"], row["x0"]])
    rec_voxel = np.array([row["voxel_z_um"], row["voxel_y_um"], row["voxel_x_um"]])
    src_origin = np.array([row["origin_z_um"], row["origin_y_um"], row["origin_x_um"]]) - (
        offset * rec_voxel
    )
    phys = (nz + offset) * rec_voxel + src_origin
    a, b = _segments_zyx(pt)
    d = _distance_to_segments(phys, a, b)
    half = 0.5 * float(np.linalg.norm(voxel))
    # a soma (single node or 3-point) is drawn as a sphere of its radius
    scale = float(np.prod(pt.scale_um)) ** (1 / 3)
    for s in pt.tracing.somata:
        if s.kind != "multi":
            centre = pt.xyz_um[s.center, ::-1]
            near = np.linalg.norm(phys - centre, axis=1) <= s.radius * scale + half + 1e-9
            d = np.where(near, 0.0, d)
    assert (d <= half + 1e-9).all(), f"{(d > half).sum()} voxels far from the tracing"
    assert row["mask_voxels"] == int((mask > 0).sum())
    return mask


# -- SWC -------------------------------------------------------------------------------------


def test_neuromorpho_anisotropic_tiff_zarr_hdf5(synth: Path, tmp_path: Path) -> None:
    """NeuroMorpho tracing (um) in the (2, 1, 1) um stack read as OME-TIFF: the crop
    contains every node with a 5 um margin, the mask is one 26-connected tree within
    half a voxel diagonal of the segments, image pixels equal the source, origins map
    back; OME-Zarr with the mask as NGFF label; HDF5 export read back; the table follows
    its schema; the dataset validates and re-runs notneeded."""
    out, h5 = tmp_path / "out", tmp_path / "crops.h5"
    params = CropParams(margin_um=(5.0, 5.0, 5.0), formats=("ome-tiff", "ome-zarr"))
    recs = list(
        derive_crops(
            synth, out, params, swc=[NEUROMORPHO], entities={"sub": "nm"}, fmt="ome-tiff",
            export_hdf5_file=h5,
        )
    )  # fmt: skip
    assert not _errors(recs), _errors(recs)
    swc_recs = [r for r in recs if r.action == "swc"]
    assert len(swc_recs) == 1 and swc_recs[0].details["nodes_outside"] == 0
    shape, voxel, origin = STACKS["nm"]
    (row,) = _rows(out)
    assert row["source"].endswith(".ome.tif") and row["annotation"] == "swc"
    assert (row["margin_z"], row["margin_y"], row["margin_x"]) == (3, 5, 5)  # ceil(5 / 2)
    assert row["swc_sha256"] == [read_swc(NEUROMORPHO).sha256]
    assert row["swc_files"] == ["sourcedata/swc/EBT7R.CNG.swc.txt"]
    assert (out / row["swc_files"][0]).read_bytes() == NEUROMORPHO.read_bytes()
    assert (row["mode"], row["labels"], row["nodes_outside"]) == ("line", "tree", 0)
    pt = calibrate(read_swc(NEUROMORPHO))
    source = tifffile.imread(_image(synth, "nm", ".ome.tif"), level=0)
    mask = _check_swc_crop(out, row, source, pt, shape, voxel, origin, (3, 5, 5))
    _, n = ndimage.label(mask > 0, structure=CUBE)
    assert n == pt.tracing.n_trees == 1
    # OME-Zarr: same pixels, the mask as NGFF label "mask", same origin
    zimg = out / row["image_ome_zarr"]
    assert np.array_equal(zarr.open_array(str(zimg / "0"), mode="r")[:], source[
        row["z0"] : row["z1"], row["y0"] : row["y1"], row["x0"] : row["x1"]
    ])  # fmt: skip
    assert np.array_equal(zarr.open_array(str(zimg / "labels/mask/0"), mode="r")[:], mask)
    labels_meta = json.loads((zimg / "labels/zarr.json").read_text())
    assert labels_meta["attributes"]["ome"]["labels"] == ["mask"]
    handle = open_image(out, row["image_ome_zarr"])
    crop_origin = (row["origin_z_um"], row["origin_y_um"], row["origin_x_um"])
    assert handle.origin_um == pytest.approx(crop_origin)
    # the table: columns and types as specs/crops-index.schema.json says
    schema = load_schema("crops-index")
    assert [c for c, _ in TABLE_COLUMNS] == list(schema["properties"])
    assert pq.read_schema(out / "crops.parquet").names == list(schema["properties"])
    jsonschema.Draft202012Validator(schema).validate(row)
    tsv = (out / "crops.tsv").read_text(encoding="utf-8").splitlines()
    assert tsv[0].split("\t") == list(schema["properties"]) and len(tsv) == 2
    # HDF5 export: pixels equal the source region, attributes
    with h5py.File(h5, "r") as f:
        g = f[row["crop_id"]]
        assert np.array_equal(g["image"][:], source[
            row["z0"] : row["z1"], row["y0"] : row["y1"], row["x0"] : row["x1"]
        ])  # fmt: skip
        assert np.array_equal(g["mask"][:], mask)
        assert list(g.attrs["voxel_size_um"]) == list(voxel)
        assert list(g.attrs["offset_voxels"]) == [row["z0"], row["y0"], row["x0"]]
        want = [row["z0"] * 2.0, row["y0"] * 1.0, row["x0"] * 1.0]
        assert list(g.attrs["offset_um"]) == pytest.approx(want)
        assert list(g.attrs["origin_um"]) == pytest.approx(np.add(origin, want))
        assert g.attrs["source"] == row["source"]
        assert g.attrs["source_pixel_hash"] == row["source_pixel_hash"]
        assert list(g.attrs["swc_sha256"]) == row["swc_sha256"]
        assert list(g["image"].attrs["element_size_um"]) == list(voxel)
    assert not list(tmp_path.glob(".crops.h5.*"))  # staged file renamed
    # validation (run by derive_crops) and again, explicitly: 0 errors
    assert any(r.action == "validate" for r in recs)
    assert not _errors(list(validate_dataset(out, recursive=False)))
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["bidspack"]["operation"] == "derive-crops"
    again = list(derive_crops(
        synth, out, params, swc=[NEUROMORPHO], entities={"sub": "nm"}, fmt="ome-tiff",
        validate=False,
    ))  # fmt: skip
    assert {r.status for r in again if r.action == "step"} == {"notneeded"}


def test_hemibrain_two_roots_voxel_units_per_tree(synth: Path, tmp_path: Path) -> None:
    """The two-root hemibrain tracing in 8 nm voxel units, isotropic 2 um stack read
    as OME-Zarr: per-tree labels (two labels, one 26-connected component each), the
    union crop holds every node, and --per-tree gives one crop per tree. Its trees
    come within 0.99 um of each other, so at 2 um their voxels touch (the binary
    mask is one component; tests/test_swc.py measures this)."""
    shape, voxel, origin = STACKS["hb"]
    pt = calibrate(read_swc(HEMIBRAIN), voxel_size=0.008)
    source = zarr.open_array(str(_image(synth, "hb", ".ome.zarr") / "0"), mode="r")[:]
    out = tmp_path / "union"
    params = CropParams(swc_unit="voxel", swc_voxel_size=(0.008, 0.008, 0.008))
    recs = list(derive_crops(synth, out, params, swc=[HEMIBRAIN], entities={"sub": "hb"}))
    assert not _errors(recs), _errors(recs)
    (row,) = _rows(out)
    assert row["source"].endswith(".ome.zarr") and row["swc_calibration"] == [
        "voxel_size=(0.008, 0.008, 0.008) um"
    ]
    mask = _check_swc_crop(out, row, source, pt, shape, voxel, origin, (0, 0, 0))
    assert (
        sorted(np.unique(mask[mask > 0]).tolist())
        == [1, 2]
        == list(range(1, pt.tracing.n_trees + 1))
    )
    for label in (1, 2):
        _, n = ndimage.label(mask == label, structure=CUBE)
        assert n == 1, label
    assert row["mask_labels"] == 2
    # one crop per tree, each containing its tree's nodes
    per = tmp_path / "per"
    params = CropParams(
        swc_unit="voxel", swc_voxel_size=(0.008, 0.008, 0.008), per_tree=True,
        margin_voxels=(1, 2, 3),
    )  # fmt: skip
    recs = list(derive_crops(
        synth, per, params, swc=[HEMIBRAIN], entities={"sub": "hb"}, validate=False
    ))  # fmt: skip
    rows = _rows(per)
    assert [(r["target"], r["target_tree"], r["target_label"]) for r in rows] == [
        ("tree", 0, 1),
        ("tree", 1, 2),
    ]
    for r in rows:
        sel = pt.tracing.tree == r["target_tree"]
        sub = type(pt)(pt.tracing, pt.xyz_um[sel], pt.radius_um[sel], pt.scale_um, pt.offset_um)
        # only this tree's nodes: restrict the segments check to the crop's own tree
        grid = VoxelGrid(shape, voxel, origin)
        vox = np.floor(grid.to_index(sub.xyz_um[:, ::-1]) + 0.5).astype(np.int64)
        lo = np.array([r["z0"], r["y0"], r["x0"]])
        hi = np.array([r["z1"], r["y1"], r["x1"]])
        assert (lo == np.maximum(vox.min(axis=0) - (1, 2, 3), 0)).all()
        assert (hi == np.minimum(vox.max(axis=0) + 1 + np.array((1, 2, 3)), shape)).all()
        crop = tifffile.imread(per / r["mask_ome_tiff"])
        assert crop[tuple((vox - lo).T)].all()


def test_nodes_outside_reported_and_folder_of_swcs(synth: Path, tmp_path: Path) -> None:
    """A tracing shifted (--swc-offset) partly out of the image: its nodes outside are
    counted per file (record and table), independently recomputed; a folder of SWC
    files gives one label per file (--labels file)."""
    folder = tmp_path / "swcs"
    folder.mkdir()
    for p in (NEUROMORPHO, SWC_DIR / "XT6L2.CNG.swc.txt"):
        shutil.copy(p, folder / p.name)
    (folder / "notes.txt").write_text("not a tracing")
    out = tmp_path / "out"
    params = CropParams(labels="file", swc_offset_um=(0.0, 0.0, 60.0), formats=("ome-zarr",))
    recs = list(derive_crops(
        synth, out, params, swc=[folder], entities={"sub": "nm"}, validate=False
    ))  # fmt: skip
    assert not _errors(recs), _errors(recs)
    shape, voxel, origin = STACKS["nm"]
    grid = VoxelGrid(shape, voxel, origin)
    expected = []
    for name in ("EBT7R.CNG.swc.txt", "XT6L2.CNG.swc.txt"):
        pt = calibrate(read_swc(folder / name), offset=(0.0, 0.0, 60.0))
        vox = np.floor(grid.to_index(pt.xyz_um[:, ::-1]) + 0.5)
        expected.append(int((~((vox >= 0) & (vox < shape)).all(axis=1)).sum()))
    assert all(e > 0 for e in expected)
    swc_recs = [r for r in recs if r.action == "swc"]
    assert [r.details["nodes_outside"] for r in swc_recs] == expected
    assert all("outside the image" in r.message and "first on line" in r.message for r in swc_recs)
    (row,) = _rows(out)
    assert row["swc_nodes_outside"] == expected and row["nodes_outside"] == sum(expected)
    assert [Path(s).name for s in row["swc_sources"]] == ["EBT7R.CNG.swc.txt", "XT6L2.CNG.swc.txt"]
    assert row["image_ome_tiff"] is None and row["mask_ngff_label"].endswith("/labels/mask")
    mask = zarr.open_array(str(out / row["mask_ngff_label"] / "0"), mode="r")[:]
    assert sorted(np.unique(mask).tolist()) == [0, 1, 2]
    assert row["x1"] == shape[2]  # clipped at the border


# -- label image -------------------------------------------------------------------------------


def test_mask_crops_on_real_label_image(hemi: Path, tmp_path: Path) -> None:
    """The packaged hemisphere labels (desc hemispheres) crop downsampled.tiff to their
    non-zero bounding box, equal to numpy's; per label value with --per-tree; a TIFF
    path gives the same crop."""
    labels = tifffile.imread(REALDATA / "stp_mouse_brain/registered_hemispheres.tiff")
    image = tifffile.imread(REALDATA / "stp_mouse_brain/downsampled.tiff")
    assert labels.shape == image.shape == (135, 77, 108)

    def bbox(sel: np.ndarray) -> list[int]:
        idx = np.argwhere(sel)
        lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
        return [int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2])]

    out = tmp_path / "out"
    recs = list(derive_crops(hemi, out, CropParams(), mask=MaskSpec(desc="hemispheres")))
    assert not _errors(recs), _errors(recs)
    (row,) = _rows(out)
    box = [row[k] for k in ("z0", "z1", "y0", "y1", "x0", "x1")]
    assert box == bbox(labels > 0)
    assert row["source"] == "sub-stpmousebrain/micr/sub-stpmousebrain_sample-brain_2PE.ome.tif"
    assert row["mask_source"].startswith("derivatives/brainreg/")
    assert (row["annotation"], row["labels"], row["mode"]) == ("mask", "source", None)
    sl = np.s_[box[0] : box[1], box[2] : box[3], box[4] : box[5]]
    assert np.array_equal(tifffile.imread(out / row["image_ome_tiff"]), image[sl])
    assert np.array_equal(tifffile.imread(out / row["mask_ome_tiff"]), labels[sl])
    assert row["mask_voxels"] == int((labels > 0).sum()) and row["mask_labels"] == 2
    # per label value, with a margin in voxels
    per = tmp_path / "per"
    recs = list(derive_crops(
        hemi, per, CropParams(per_tree=True, margin_voxels=(2, 2, 2)),
        mask=MaskSpec(desc="hemispheres", pipeline="brainreg"), validate=False,
    ))  # fmt: skip
    assert not _errors(recs)
    rows = _rows(per)
    assert [r["target_label"] for r in rows] == [1, 2]
    for r in rows:
        b = bbox(labels == r["target_label"])
        want = [max(b[0] - 2, 0), min(b[1] + 2, 135), max(b[2] - 2, 0), min(b[3] + 2, 77)]
        want += [max(b[4] - 2, 0), min(b[5] + 2, 108)]
        assert [r[k] for k in ("z0", "z1", "y0", "y1", "x0", "x1")] == want
    # a TIFF path (outside the dataset) gives the same crop as the packaged label image
    viapath = tmp_path / "path"
    tiff = REALDATA / "stp_mouse_brain/registered_hemispheres.tiff"
    recs = list(derive_crops(
        hemi, viapath, CropParams(), mask=MaskSpec(path=tiff), pipeline="raw", validate=False
    ))  # fmt: skip
    assert not _errors(recs)
    (prow,) = _rows(viapath)
    assert [prow[k] for k in ("z0", "z1", "y0", "y1", "x0", "x1")] == box
    assert prow["mask_source"] == str(tiff.absolute())
    assert prow["mask_pixel_hash"] == row["mask_pixel_hash"]


# -- errors, transactions ----------------------------------------------------------------------


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


MALFORMED = {
    "missing-parent.swc": ("1 1 0 0 0 1 -1\n2 3 1 0 0 1 7\n", "line 2: parent id 7"),
    "cycle.swc": ("1 1 0 0 0 1 -1\n2 3 1 0 0 1 3\n3 3 2 0 0 1 2\n", "cycle"),
    "not-a-number.swc": ("# unit um\n1 1 0 0 0 1 -1\n2 3 x 0 0 1 1\n", "line 3: x 'x'"),
    "six-columns.swc": ("1 1 0 0 0 -1\n", "line 1: 6 columns"),
    "empty.swc": ("# nothing\n", "has no node rows"),
}


def test_malformed_swc_and_bad_input_write_nothing(synth: Path, tmp_path: Path) -> None:
    """A malformed SWC file: a clean error naming file and line, non-zero exit, no OUT
    folder. Bad options and selections likewise."""
    out = tmp_path / "out"
    base = [str(synth), str(out), "--sub", "nm", "--swc-unit", "um"]
    for name, (text, message) in MALFORMED.items():
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        res = _cli("derive", "crops", *base, "--swc", str(p))
        assert res.exit_code != 0, name
        assert name in res.stderr and message in res.stderr, (name, res.stderr)
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        assert not out.exists(), name
    cases = [
        (["--swc", str(NEUROMORPHO), "--sub", "zz"], "no image matches"),
        (["--swc", str(NEUROMORPHO)], "2 images match"),
        (["--sub", "nm"], "give SWC tracings (--swc) or a label image"),
        (["--sub", "nm", "--swc", str(tmp_path / "none.swc")], "no such SWC file"),
        (["--sub", "hb", "--swc", str(HEMIBRAIN)], "states no unit"),
        (["--sub", "hb", "--swc", str(HEMIBRAIN), "--swc-unit", "voxel"], "--swc-voxel-size"),
        (["--sub", "nm", "--swc", str(NEUROMORPHO), "--margin", "1,2"], "Z,Y,X"),
        (["--sub", "nm", "--swc", str(NEUROMORPHO), "--formats", "png"], "formats ['png']"),
        (["--sub", "nm", "--swc", str(NEUROMORPHO), "--swc-offset", "0,0,1e6"], "no annotated"),
        (["--sub", "nm", "--mask-desc", "nothing"], "no label image with desc 'nothing'"),
        (["--sub", "nm", "--swc", str(NEUROMORPHO), "--export", "hdf5", str(synth / "x.h5")],
         "inside the derived or the source dataset"),
    ]  # fmt: skip
    for args, message in cases:
        res = _cli("derive", "crops", str(synth), str(out), *args)
        assert res.exit_code != 0, args
        assert message in res.stderr, (args, res.stderr)
        assert not out.exists(), args
    assert not (synth / "x.h5").exists()


def test_dry_run_prints_the_plan(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _cli(
        "derive", "crops", str(synth), str(out), "--sub", "hb", "--swc", str(HEMIBRAIN),
        "--swc-unit", "voxel", "--swc-voxel-size", "0.008", "--per-tree", "--dry-run",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "plan: 2 crop(s)" in res.stdout and "nothing was written" in res.stdout
    assert not out.exists()


#: ``stage@2``: in the first crop step, after one output is staged; ``committed``: the
#: first transaction committed, not applied.
FAULTS = ["stage@2", "committed"]


def test_fault_kill_then_rerun_identical_then_notneeded(synth: Path, tmp_path: Path) -> None:
    """Killed (SIGKILL, child process) at a fault point, then re-run: the data files
    equal an uninterrupted run's byte for byte; a second re-run is notneeded."""
    opts = ["--sub", "hb", "--swc", str(HEMIBRAIN), "--swc-unit", "voxel"]
    opts += ["--swc-voxel-size", "0.008,0.008,0.008", "--per-tree", "--margin", "4"]
    params = CropParams(
        swc_unit="voxel", swc_voxel_size=(0.008, 0.008, 0.008), per_tree=True,
        margin_um=(4.0, 4.0, 4.0),
    )  # fmt: skip
    ref = tmp_path / "ref"
    res = run_bidspack("derive", "crops", str(synth), str(ref), *opts, "--no-validate", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    want = _data_state(ref)
    assert sum(k.endswith(".ome.tif") for k in want) == 4
    env = {k: v for k, v in os.environ.items() if k != "BIDSPACK_FAULT"}
    for fault in FAULTS:
        out = tmp_path / fault.replace("@", "-")
        killed = run_bidspack(
            "derive", "crops", str(synth), str(out), *opts, "--no-validate",
            env={**env, "BIDSPACK_FAULT": fault},
        )  # fmt: skip
        assert killed.returncode == -9, (fault, killed.returncode, killed.stderr[-800:])
        recs = list(derive_crops(
            synth, out, params, swc=[HEMIBRAIN], entities={"sub": "hb"}, validate=False
        ))  # fmt: skip
        assert not _errors(recs), (fault, _errors(recs))
        assert _data_state(out) == want, fault
        assert not list((out / ".bidspack" / "txn").glob("*")), fault
        again = list(derive_crops(
            synth, out, params, swc=[HEMIBRAIN], entities={"sub": "hb"}, validate=False
        ))  # fmt: skip
        assert {r.status for r in again if r.action == "step"} == {"notneeded"}, fault
