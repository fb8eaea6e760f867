"""A submission that mixes every kind of input (issue 16 must-show): a real Zeiss CZI
(one channel and time point selected), a real Imaris ``.ims`` (one channel), real MRC
maps and a folder of real STP TIFF slices, packaged into one valid BIDS microscopy
dataset, as OME-TIFF and OME-Zarr.

Physical sizes come from the files where the files carry them (CZI XML scaling in
metres, Imaris extents in ``um``, MRC cell in Å, each converted exactly) and from the
spec only for the STP slices, which carry none (``../shared/realdata/README.md``:
z 50 um, y 40 um, x 40 um). Every output's pixels are compared with the source as an
independent reader (pylibCZIrw, h5py, mrcfile, tifffile) decodes it.

The MRC and Imaris files are fetched from PyPI sdists with sha256 checks
(``tests/realfiles.py``); the CZI and slices are copied from ``../shared/realdata``.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from bidspack.errors import SpecError
from bidspack.io.ometiff import pixel_hash_of_file
from bidspack.io.omezarr import ome_zarr_scale_um, pixel_hash_of_zarr
from bidspack.io.pixelhash import pixel_hash_array
from bidspack.io.sources import open_source
from bidspack.ops.package import build_plan, package
from bidspack.spec import load_spec
from conftest import run_bidspack, snapshot
from realfiles import real_file
from test_package import validator_errors

CELL = "czi/CellDivision_T3_Z5_CH2_X240_Y170.czi"  # T3 C2 Z5 (170, 240) uint16
SLICES = "stp_mouse_brain/slices"  # image_0000.tif ... image_0269.tif, (193, 271) uint16
#: slices copied per subject (a few, to keep the test fast)
STP_Z = {"mouse1": range(100, 104), "mouse2": range(200, 206)}
#: the MRC map delivered per subject: EMD-3197 (11.4 Å isotropic), EMD-3001 (anisotropic)
MAPS = {"mouse1": "EMD-3197.map", "mouse2": "EMD-3001.map"}
#: their (z, y, x) um, exact to the printed precision: EMD-3197 11.4 Å per axis; EMD-3001
#: its cell over its grid (17.93, 4.71, 33.03 Å over 40, 12, 72, axes mapped C=Z, R=X, S=Y)
MAP_UM = {"mouse1": (0.00114, 0.00114, 0.00114), "mouse2": (0.00003925, 0.000044825, 0.000045875)}

SPEC = """
spec_version = 1

[dataset]
Name = "Correlative mouse brain imaging (bidspack mixed-input test)"
Authors = ["A. Curator", "B. Microscopist"]
License = "CC-BY-4.0"

[subjects]
pattern = 'mouse(?P<id>\\d+)'
label = "{id}"
sample = "brain"
sample_type = "tissue"

[sidecar]
BodyPart = "BRAIN"
SampleEnvironment = "ex vivo"

# a Zeiss confocal time-lapse: channel LED470 at its last time point
[[channels]]
folder = "cells.czi"
suffix = "CONF"
entities = { stain = "LED470" }
select = { channel = "LED470", time = 2 }

# an Imaris light-sheet crop: its second channel (delivered for mouse1 only)
[[channels]]
folder = "lightsheet.ims"
suffix = "SPIM"
entities = { stain = "ch1" }
select = { channel = 1 }
required = false

# an EM density map (MRC)
[[channels]]
folder = "density.map"
suffix = "TEM"

# serial two-photon slices: the files carry no physical size
[[channels]]
folder = "stp"
suffix = "2PE"
voxel_size = { z = 50, y = 40, x = 40 }
voxel_unit = "um"

[output]
formats = ["ome-tiff", "ome-zarr"]
"""


def make_submission(realdata: Path, root: Path) -> tuple[Path, Path]:
    """Two subject folders as a curator delivers them: both with the CZI, an MRC map
    and STP slices; mouse1 also with the Imaris file. Returns (submission, spec)."""
    sub = root / "submission"
    for name in ("mouse1", "mouse2"):
        folder = sub / name
        (folder / "stp").mkdir(parents=True)
        shutil.copyfile(realdata / CELL, folder / "cells.czi")
        shutil.copyfile(real_file(MAPS[name]), folder / "density.map")
        for z in STP_Z[name]:
            name_z = f"image_{z:04d}.tif"
            shutil.copyfile(realdata / SLICES / name_z, folder / "stp" / name_z)
    shutil.copyfile(real_file("brain_crop3.ims"), sub / "mouse1" / "lightsheet.ims")
    spec = root / "spec.toml"
    spec.write_text(SPEC, encoding="utf-8")
    return sub, spec


@pytest.fixture(scope="module")
def mixed(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(submission, spec), written once for the module; read-only."""
    return make_submission(realdata, tmp_path_factory.mktemp("mixed"))


# ------------------------------------------------------------ independent readers


def czi_planes(path: Path, channel: int, time: int) -> np.ndarray:
    """(z, y, x) of one channel and time point, as Zeiss's pylibCZIrw decodes it."""
    from pylibCZIrw import czi as pyczi

    with pyczi.open_czi(str(path)) as f:
        nz = f.total_bounding_box["Z"][1]
        return np.stack(
            [f.read(plane={"C": channel, "Z": z, "T": time})[..., 0] for z in range(nz)]
        )


def ims_channel(path: Path, channel: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(z, y, x) of one Imaris channel at full resolution, cropped to the image size the
    file states (its chunks are padded), and (z, y, x) um per voxel from its extents."""

    def attr(group: h5py.Group, key: str) -> str:
        return b"".join(group.attrs[key]).decode()

    with h5py.File(path, "r") as f:
        info = f["DataSetInfo/Image"]
        size = {a: int(attr(info, a)) for a in "XYZ"}
        um = tuple(
            (float(attr(info, f"ExtMax{i}")) - float(attr(info, f"ExtMin{i}"))) / size[a]
            for i, a in ((2, "Z"), (1, "Y"), (0, "X"))
        )
        data = f[f"DataSet/ResolutionLevel 0/TimePoint 0/Channel {channel}/Data"]
        arr = np.asarray(data[: size["Z"], : size["Y"], : size["X"]])
    return arr, um  # type: ignore[return-value]


def mrc_data(path: Path) -> np.ndarray:
    """The map's (sections, rows, columns) array, as mrcfile reads it."""
    import mrcfile

    with mrcfile.open(path, permissive=False) as mrc:
        return np.array(mrc.data)


def slices(folder: Path) -> np.ndarray:
    """The slice folder's TIFFs in name order, stacked by tifffile."""
    return np.stack([tifffile.imread(p) for p in sorted(folder.glob("*.tif"))])


def expected_images(sub: Path) -> dict[str, tuple[np.ndarray, tuple[float, float, float]]]:
    """BIDS file stem -> (the source's (z, y, x) pixels, the (z, y, x) um the sidecar
    must say). CZI: 9.05766741522E-08 m (X, Y), 3.2E-07 m (Z) in its XML scaling;
    MRC: :data:`MAP_UM`; Imaris: its extents over its size (um); STP: the spec's
    50, 40, 40 um."""
    out: dict[str, tuple[np.ndarray, tuple[float, float, float]]] = {}
    for label in ("1", "2"):
        folder = sub / f"mouse{label}"
        stem = f"sub-{label}/micr/sub-{label}_sample-brain"
        out[f"{stem}_stain-LED470_CONF"] = (
            czi_planes(folder / "cells.czi", channel=1, time=2),
            (0.32, 0.0905766741522, 0.0905766741522),
        )
        out[f"{stem}_TEM"] = (mrc_data(folder / "density.map"), MAP_UM[folder.name])
        out[f"{stem}_2PE"] = (slices(folder / "stp"), (50.0, 40.0, 40.0))
    data, um = ims_channel(sub / "mouse1" / "lightsheet.ims", channel=1)
    assert um == pytest.approx((5.33, 0.497826771654, 0.497835066865), rel=1e-11)
    out["sub-1/micr/sub-1_sample-brain_stain-ch1_SPIM"] = (
        data,
        (5.33, 0.497826771654, 0.497835066865),  # rounded to 12 significant digits
    )
    return out


# ------------------------------------------------------------ tests


def test_mixed_submission_packages_to_one_valid_dataset(
    mixed: tuple[Path, Path], tmp_path: Path
) -> None:
    """CZI + Imaris + MRC + slice folder: no error, the official validator accepts the
    dataset, every image exists as OME-TIFF and OME-Zarr with the source's shape and
    pixels, sidecar PixelSize (and the OME-Zarr scale) is the file's own physical size
    (origin "file" in the plan) or, for the slices, the spec's; the submission is
    unchanged and `bidspack validate` reports 0 errors."""
    sub, spec_path = mixed
    before = snapshot(sub)
    spec = load_spec(spec_path)
    ds = tmp_path / "ds"
    recs = list(package(sub, ds, spec))
    errors = [r for r in recs if r.status == "error"]
    assert errors == [], errors
    assert any(r.action == "validate" for r in recs)  # bids-validator-deno ran
    assert snapshot(sub) == before  # read-only: nothing in the submission changed

    expected = expected_images(sub)
    converts = [a for a in json.loads((ds / "code/bidspack/plan.json").read_text())["actions"]]
    converts = [a for a in converts if a["kind"] == "convert"]
    assert len(converts) == 2 * len(expected) == 14
    by_target = {a["target"]: a for a in converts}
    for stem, (data, zyx_um) in expected.items():
        want = pixel_hash_array(data, "ZYX")
        tif, zarr_path = ds / f"{stem}.ome.tif", ds / f"{stem}.ome.zarr"
        with tifffile.TiffFile(tif) as t:
            assert t.series[0].shape == data.shape, stem
        assert zarr.open_group(zarr_path, mode="r")["0"].shape == data.shape, stem
        assert pixel_hash_of_file(tif) == want, stem
        assert pixel_hash_of_zarr(zarr_path) == want, stem
        side = json.loads((ds / f"{stem}.json").read_text())
        z, y, x = zyx_um
        assert side["PixelSize"] == [x, y, z] and side["PixelSizeUnits"] == "um", stem
        assert ome_zarr_scale_um(zarr_path) == (z, y, x), stem
        origin = "spec" if stem.endswith("_2PE") else "file"
        for ext in (".ome.tif", ".ome.zarr"):
            params = by_target[f"{stem}{ext}"]["params"]
            assert params["voxel_size_origin"] == dict.fromkeys("zyx", origin), stem
            assert params["voxel_size_zyx_um"] == [z, y, x], stem
    # MRC Å converted exactly (not 0.0011400000000000002)
    tem = json.loads((ds / "sub-1/micr/sub-1_sample-brain_TEM.json").read_text())
    assert [repr(v) for v in tem["PixelSize"]] == ["0.00114"] * 3
    # the CZI's instrument reaches its sidecar; what its selection leaves out is said
    czi_side = json.loads((ds / "sub-2/micr/sub-2_sample-brain_stain-LED470_CONF.json").read_text())
    assert czi_side["Manufacturer"] == "Zeiss" and czi_side["NumericalAperture"] == 1.2
    czi_tif = by_target["sub-1/micr/sub-1_sample-brain_stain-LED470_CONF.ome.tif"]["params"]
    assert czi_tif["left_out"] == ["channel(s) LED555", "time point(s) 0, 1"]
    # mouse2 has no Imaris file: skipped (required = false), not an error
    assert not list(ds.glob("sub-2/micr/*SPIM*"))
    assert any(r.action == "skip" and "sub-2/lightsheet.ims" in r.path for r in recs)

    assert validator_errors(ds) == []
    proc = run_bidspack("validate", str(ds))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validation: 0 errors" in proc.stdout


def test_mixed_submission_dry_run_lists_each_input(
    mixed: tuple[Path, Path], tmp_path: Path
) -> None:
    """`bidspack package --dry-run` plans every image from its input (the CZI with its
    selection, the Imaris file, each MRC map, each slice of the folders) and writes
    nothing; a spec voxel size that contradicts an MRC file's is refused at planning,
    naming both values."""
    sub, spec_path = mixed
    before = snapshot(sub)
    ds = tmp_path / "ds"
    proc = run_bidspack("package", str(sub), str(ds), "--spec", str(spec_path), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for label in ("1", "2"):
        assert f"1 file: mouse{label}/cells.czi -> OME-TIFF (5, 170, 240) uint16" in out
        assert f"1 file: mouse{label}/density.map -> OME-Zarr" in out
        z = STP_Z[f"mouse{label}"]
        assert f"{len(z)} files in mouse{label}/stp/, Z {z[0]}-{z[-1]} -> OME-TIFF" in out
    assert "1 file: mouse1/lightsheet.ims -> OME-TIFF (51, 635, 673) uint16" in out
    assert "Nothing was written (dry run)." in out

    proc = run_bidspack(
        "package", str(sub), str(ds), "--spec", str(spec_path), "--dry-run", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    sources = {s for r in recs if r["action"] == "convert" for s in r["details"]["sources"]}
    inputs = {p.relative_to(sub).as_posix() for p in sub.rglob("*") if p.is_file()}
    assert sources == inputs  # every input file, each slice included, feeds an image
    assert not ds.exists() and snapshot(sub) == before

    # a spec value contradicting the file (11.4 Å = 0.00114 um) is an error at planning
    bad = tmp_path / "bad.toml"
    bad.write_text(
        SPEC.replace(
            'folder = "density.map"\n', 'folder = "density.map"\nvoxel_size = { x = 0.0012 }\n'
        ),
        encoding="utf-8",
    )
    with pytest.raises(SpecError, match=r"0\.00114") as info:
        build_plan(sub, load_spec(bad))
    assert "0.0012" in str(info.value)
    # the same file read by bidspack gives the sizes the sidecars hold
    assert open_source(sub / "mouse1" / "density.map").info.found_sizes() == (0.00114,) * 3


def test_draft_spec_of_the_mixed_submission_plans_with_the_files_sizes(
    mixed: tuple[Path, Path],
) -> None:
    """`draft-spec` reads the mixed submission as packaging does: the Imaris file's two
    channels and the MRC maps through bidspack's container readers (not as unreadable
    vendor files or loose files), the CZI's channels with their exact scaling; the only
    TODO is the STP slices' voxel size, and no voxel_size repeats a file's axes. Filled,
    the draft plans every image with its voxel size from the file (origin "file")."""
    from bidspack.ops.draft_spec import draft_spec

    sub, _ = mixed
    text, recs = draft_spec(sub)
    assert not [r for r in recs if r.status == "error"], [r for r in recs if r.status == "error"]
    assert [r.path for r in recs if r.action in ("todo", "exclude")] == ["channels[5].voxel_size"]
    todo = '{ z = "TODO", y = "TODO", x = "TODO" }'
    assert text.count(todo) == 1
    doc = tomllib.loads(text)
    by_folder: dict[str, list[dict]] = {}
    for c in doc["channels"]:
        by_folder.setdefault(c["folder"], []).append(c)
    assert [c["select"] for c in by_folder["lightsheet.ims"]] == [{"channel": 0}, {"channel": 1}]
    assert all(c["required"] is False for c in by_folder["lightsheet.ims"])
    assert [c["select"]["channel"] for c in by_folder["cells.czi"]] == ["LED555", "LED470"]
    assert len(by_folder["density.map"]) == 1
    for folder in ("lightsheet.ims", "cells.czi", "density.map"):
        assert all("voxel_size" not in c for c in by_folder[folder]), folder
    assert "shape (z, y, x) (51, 635, 673), uint16, voxel size (z, y, x) 5.33, 0.497827" in text

    spec = sub.parent / "drafted.toml"
    spec.write_text(text.replace(todo, "{ z = 50, y = 40, x = 40 }"), encoding="utf-8")
    plan = build_plan(sub, load_spec(spec))
    origins = {
        (a.sources[0].split("/")[1], a.params["voxel_size_origin"]["x"])
        for a in plan.actions
        if a.kind == "convert"
    }
    assert origins == {
        ("cells.czi", "file"),
        ("lightsheet.ims", "file"),
        ("density.map", "file"),
        ("stp", "spec"),
    }
    sizes = {a.target: a.params["voxel_size_zyx_um"] for a in plan.actions if a.kind == "convert"}
    assert sorted({tuple(v) for v in sizes.values()}) == sorted(
        {
            (0.32, 0.0905766741522, 0.0905766741522),
            (5.33, 0.497826771654, 0.497835066865),
            MAP_UM["mouse1"],
            MAP_UM["mouse2"],
            (50.0, 40.0, 40.0),
        }
    )
