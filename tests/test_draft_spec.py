"""``bidspack draft-spec``: a commented packaging spec drafted from a submission (real
files: the shipped example, the real STP slices and a real Zeiss CZI). A draft with its
TODOs filled loads, packages, and gives a valid dataset; unfilled TODOs are refused."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bidspack.errors import PlanError, SpecError
from bidspack.ops.draft_spec import draft_spec
from bidspack.ops.package import build_plan, package
from bidspack.spec import load_spec
from conftest import run_bidspack, snapshot

STP = "stp_mouse_brain/slices"
CELL = "czi/CellDivision_T3_Z5_CH2_X240_Y170.czi"
TODO_VOXEL = '{ z = "TODO", y = "TODO", x = "TODO" }'


def fill_voxel_sizes(text: str, sizes: dict[str, tuple[float, float, float]]) -> str:
    """Replace the voxel-size TODO of each ``[[channels]]`` entry whose folder is a key
    of *sizes* by ``(z, y, x)`` micrometres; other lines stay as drafted."""
    blocks = text.split("[[channels]]")
    for i, block in enumerate(blocks[1:], start=1):
        folder = re.search(r'^folder = "([^"]+)"', block, re.M)
        if folder and folder.group(1) in sizes and TODO_VOXEL in block:
            z, y, x = sizes[folder.group(1)]
            blocks[i] = block.replace(TODO_VOXEL, f"{{ z = {z}, y = {y}, x = {x} }}")
    return "[[channels]]".join(blocks)


def todo_lines(text: str) -> list[str]:
    """Lines of the draft that hold a TODO value (not the header's comments)."""
    return [line for line in text.splitlines() if "TODO" in line and not line.startswith("#")]


def package_errors(sub: Path, ds: Path, spec: Path) -> list:
    recs = list(package(sub, ds, load_spec(spec)))
    assert any(r.action == "validate" for r in recs)  # bids-validator-deno ran
    return [r for r in recs if r.status == "error"]


def lab_submission(realdata: Path, root: Path) -> Path:
    """Real STP slices in a lab-style subject folder; a real CZI in a second one."""
    sub = root / "sub"
    stp = sub / "210810_45670_ko_female_LH_stp" / "488_STP"
    shutil.copytree(realdata / STP, stp)
    (sub / "210811_45671_wt_male_RH_czi").mkdir(parents=True)
    shutil.copy(realdata / CELL, sub / "210811_45671_wt_male_RH_czi" / Path(CELL).name)
    for p in sub.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return sub


def test_draft_of_the_example_packages_to_a_valid_dataset(
    example_source: tuple[Path, Path], tmp_path: Path
) -> None:
    """The shipped example: subjects, label channels, extras and the near-copy are
    found; only voxel sizes are TODO; filled, the draft packages to a valid dataset."""
    sub, _ = example_source
    text, recs = draft_spec(sub)
    assert not [r for r in recs if r.status == "error"]
    doc = tomllib.loads(text)  # valid TOML even with its TODOs
    subj = doc["subjects"]
    assert subj["label"] == "{id}{genotype}"
    assert set(re.compile(subj["pattern"]).groupindex) >= {"date", "id", "genotype", "sex"}
    assert subj["participants"]["sex"]["map"] == {"female": "F", "male": "M"}
    assert "hemisphere" in subj["samples"]
    channels = {c["folder"]: c for c in doc["channels"]}
    assert set(channels) == {
        "640_N4",
        "atlaslabel_def_origspace",
        "atlaslabel_def_origspace_masked",
        "640_FRST_seg",
        "640_FRST_seg_corr",
        "heatmaps_atlasspace",
    }
    assert channels["640_N4"]["type"] == "raw" and channels["640_N4"]["image"] == "intensity"
    assert channels["640_N4"]["entities"] == {"stain": "N4"}
    for label in ("atlaslabel_def_origspace", "640_FRST_seg"):
        assert channels[label]["image"] == "label"
        assert channels[label]["type"] == "derivative"
    assert channels["640_FRST_seg"]["extras"] == "sourcedata"
    assert channels["640_FRST_seg_corr"]["image"] == "none"
    assert channels["heatmaps_atlasspace"]["image"] == "intensity"
    assert "# 24 TIFF file(s), shape (z, y, x) (24, 96, 128), uint16, no voxel size" in text
    assert "bidspack hashdiff " in text and "NEAR-COPY of atlaslabel_def_origspace" in text
    near = [r for r in recs if r.action == "near-copy"]
    assert len(near) == 1 and near[0].details["other"].endswith("_masked")
    todos = [r for r in recs if r.action == "todo"]
    assert len(todos) == 5 == len(todo_lines(text))
    for rec in todos:  # each TODO record points at its line of the draft
        assert "TODO" in text.splitlines()[rec.details["line"] - 1]
        assert f"line {rec.details['line']}: {rec.path}" in text

    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    with pytest.raises(SpecError, match="'TODO' is not of type 'number'") as info:
        load_spec(spec)
    assert info.value.line == todos[0].details["line"]

    sizes = dict.fromkeys(channels, (4.0, 1.8, 1.8))
    sizes["heatmaps_atlasspace"] = (4.0, 3.6, 3.6)
    spec.write_text(fill_voxel_sizes(text, sizes))
    assert package_errors(sub, tmp_path / "ds", spec) == []
    ds = tmp_path / "ds"
    assert (ds / "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-N4_SPIM.ome.tif").is_file()
    assert (ds / "sourcedata/sub-45670ko/640_FRST_seg/cells.csv").is_file()
    tsv = (ds / "participants.tsv").read_text()
    rows = [line.split("\t") for line in tsv.splitlines()]
    row = dict(zip(rows[0], next(r for r in rows if r[0] == "sub-45671floxed"), strict=True))
    assert row["sex"] == "M" and row["genotype"] == "floxed"


def test_draft_of_real_stp_and_czi_files_packages_after_the_voxel_size(
    realdata: Path, tmp_path: Path
) -> None:
    """Real STP slices (no voxel size in the files) and a real CZI (voxel size, channel
    names and acquisition mode in its metadata): the only TODO is the STP voxel size;
    filled with z 50, y 40, x 40 um, the draft packages to a valid dataset."""
    sub = lab_submission(realdata, tmp_path)
    spec = tmp_path / "spec.toml"
    proc = run_bidspack("draft-spec", str(sub), "-o", str(spec))
    assert proc.returncode == 0, proc.stderr
    assert "1 TODO(s) left to fill" in proc.stdout
    text = spec.read_text()
    assert todo_lines(text) == [f"voxel_size = {TODO_VOXEL}  # TODO: micrometres per voxel"]
    doc = tomllib.loads(text)
    assert doc["subjects"]["label"] == "{id}{genotype}"
    assert "# -> 45670ko, 45671wt" in text
    stp, *czi = doc["channels"]
    assert stp["folder"] == "488_STP" and stp["required"] is False
    assert "# 270 TIFF file(s), shape (z, y, x) (270, 193, 271), uint16, no voxel size" in text
    assert [c["select"] for c in czi] == [
        {"channel": "LED555", "time": 0},
        {"channel": "LED470", "time": 0},
    ]
    for c in czi:
        assert c["folder"] == Path(CELL).name and c["suffix"] == "FLUO"
        assert "voxel_size" not in c  # the CZI carries z, y, x: the spec gives none
    assert text.count("# the file carries the voxel size of z, y, x: so no voxel_size") == 2
    assert "3 time points; this entry packages time point 0" in text

    proc = run_bidspack("package", str(sub), str(tmp_path / "ds0"), "--spec", str(spec))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert (
        "TODO" in proc.stderr
        and f"spec.toml:{text.count(chr(10), 0, text.index(TODO_VOXEL)) + 1}" in proc.stderr
    )
    assert not (tmp_path / "ds0").exists()

    spec.write_text(fill_voxel_sizes(text, {"488_STP": (50, 40, 40)}))
    ds = tmp_path / "ds"
    assert package_errors(sub, ds, spec) == []
    side = ds / "sub-45670ko/micr/sub-45670ko_sample-brainLH_stain-STP_SPIM.json"
    assert json.loads(side.read_text())["PixelSize"] == [40, 40, 50]
    czi_side = ds / "sub-45671wt/micr/sub-45671wt_sample-brainRH_stain-LED470_FLUO.json"
    assert json.loads(czi_side.read_text())["PixelSize"] == pytest.approx(
        [0.0905767, 0.0905767, 0.32], rel=1e-6
    )
    proc = run_bidspack("validate", str(ds))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _write_lab(root: Path) -> Path:
    """A small synthetic delivery with every kind of finding."""
    rng = np.random.default_rng(7)
    sub = root / "sub"
    for name in ("20210810_1_F", "20210811_2_M"):
        s = sub / name
        for folder in ("stack_1", "stack_01", "cell_mask", "heat"):
            (s / folder).mkdir(parents=True)
        for z in range(4):
            img = rng.integers(0, 4000, (16, 20), dtype=np.uint16)
            tifffile.imwrite(s / "stack_1" / f"Z{z:03d}.tif", img)
            tifffile.imwrite(s / "stack_01" / f"Z{z:04d}.tif", img)
            tifffile.imwrite(s / "cell_mask" / f"m{z}.tif", (img > 3000).astype(np.uint8))
            tifffile.imwrite(s / "heat" / f"h{z}.tif", img.astype(np.float32))
        (s / "cell_mask" / "cells.csv").write_text("id,z\n1,0\n")
        (s / "notes.txt").write_text("lab notes\n")
        (s / "heat" / ".DS_Store").write_bytes(b"\0")
        (s / "heat" / "._h0.tif").write_bytes(b"\0")
        # an ImageJ slice folder that carries its voxel size
        (s / "ij").mkdir()
        for z in range(3):
            tifffile.imwrite(
                s / "ij" / f"p{z}.tif",
                rng.integers(0, 4000, (16, 20), dtype=np.uint16),
                imagej=True,
                resolution=(1 / 0.5, 1 / 0.5),
                metadata={"spacing": 2.0, "unit": "um"},
            )
    (sub / "Thumbs.db").write_bytes(b"\0")
    (sub / "desktop.ini").write_text("[x]\n")
    (sub / "~$sheet.xlsx").write_bytes(b"\0")
    (sub / ".nfs0001").write_bytes(b"\0")
    (sub / "README.txt").write_text("delivery notes\n")
    return sub


def test_findings_near_copies_junk_loose_files_and_voxel_sizes(tmp_path: Path) -> None:
    """Zero-padding near-copies get a hashdiff command, junk is listed (not excluded by
    hand), loose files become [[exclude]] TODOs, ImageJ voxel sizes are filled, masks
    are label derivatives; with its TODOs filled the draft loads."""
    sub = _write_lab(tmp_path)
    text, recs = draft_spec(sub)
    doc = tomllib.loads(text)
    channels = {c["folder"]: c for c in doc["channels"]}
    assert channels["cell_mask"]["image"] == "label"
    assert channels["cell_mask"]["type"] == "derivative"
    assert channels["cell_mask"]["extras"] == "sourcedata"
    assert channels["heat"]["image"] == "intensity"
    assert channels["ij"]["voxel_size"] == {"z": 2.0, "y": 0.5, "x": 0.5}
    assert channels["stack_1"]["entities"] != channels["stack_01"]["entities"]
    assert doc["subjects"]["participants"]["sex"]["map"] == {"F": "F", "M": "M"}
    near = [r for r in recs if r.action == "near-copy"]
    assert [(r.path.split("/")[1], r.details["other"].split("/")[1]) for r in near] == [
        ("stack_01", "stack_1")
    ]
    assert "zero padding" in near[0].message
    assert f"bidspack hashdiff {sub}/20210810_1_F/stack_01 {sub}/20210810_1_F/stack_1" in text
    junk = sorted(r.path for r in recs if r.action == "junk")
    assert junk == sorted(
        [
            ".nfs0001",
            "Thumbs.db",
            "desktop.ini",
            "~$sheet.xlsx",
            *[
                f"{s}/heat/{j}"
                for s in ("20210810_1_F", "20210811_2_M")
                for j in (".DS_Store", "._h0.tif")
            ],
        ]
    )
    assert "# OS junk (8 file(s)), excluded by bidspack by default:" in text
    assert all(e["path"] not in junk for e in doc["exclude"])
    assert [e["path"] for e in doc["exclude"]] == ["README.txt", "*/notes.txt"]
    assert all(e["reason"] == ["TODO"] for e in doc["exclude"])
    todos = [r for r in recs if r.action == "todo"]
    assert [r.path for r in todos] == [
        "channels[0].voxel_size",
        "channels[1].voxel_size",
        "channels[3].voxel_size",
        "channels[4].voxel_size",
        "exclude[0].reason",
        "exclude[1].reason",
    ]
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert info.value.line == todos[0].details["line"]
    filled = fill_voxel_sizes(text, dict.fromkeys(channels, (2, 1, 1)))
    spec.write_text(filled)
    with pytest.raises(SpecError, match=r"exclude\[0\]\.reason: \['TODO'\] is not of type"):
        load_spec(spec)
    spec.write_text(filled.replace('reason = ["TODO"]', 'reason = "notes, not data"'))
    loaded = load_spec(spec)
    assert [e.path for e in loaded.excludes] == ["README.txt", "*/notes.txt"]


def test_cli_output_file_stdout_json_and_errors(
    example_source: tuple[Path, Path], tmp_path: Path
) -> None:
    """-o refuses an existing file unless --force; without -o the draft goes to stdout
    (findings to stderr); --json gives records; a missing folder or an unreadable TIFF
    is a clean error (the draft of the rest is still written)."""
    sub, _ = example_source
    out = tmp_path / "spec.toml"
    out.write_text("mine\n")
    proc = run_bidspack("draft-spec", str(sub), "-o", str(out))
    assert proc.returncode == 1 and "exists already" in proc.stderr and "--force" in proc.stderr
    assert out.read_text() == "mine\n"
    proc = run_bidspack("draft-spec", str(sub), "-o", str(out), "--force")
    assert proc.returncode == 0 and out.read_text().startswith("# bidspack packaging spec")

    proc = run_bidspack("draft-spec", str(sub))
    assert proc.returncode == 0
    assert proc.stdout == out.read_text()
    assert "5 TODO(s) left" in proc.stderr and "near-copy" in proc.stderr

    proc = run_bidspack("draft-spec", str(sub), "--json")
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert recs[-1]["action"] == "draft" and recs[-1]["details"]["text"] == out.read_text()
    assert sum(r["action"] == "todo" for r in recs) == 5

    proc = run_bidspack("draft-spec", str(tmp_path / "nowhere"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr
    with pytest.raises(PlanError, match="does not exist"):
        draft_spec(tmp_path / "nowhere")

    bad = tmp_path / "bad"
    shutil.copytree(sub / next(p.name for p in sub.iterdir()) / "640_N4", bad / "m1_ko" / "640_N4")
    (bad / "m1_ko" / "640_N4" / "Z0003.tif").write_bytes(b"not a tiff at all")
    proc = run_bidspack("draft-spec", str(bad), "-o", str(tmp_path / "bad.toml"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "not a readable TIFF file" in proc.stdout
    assert "# PROBLEM" in (tmp_path / "bad.toml").read_text()


# ----------------------------------------------------------------- 2D files (issue 16)

SEM = "czi/Al2O3_SE_020_sp.czi"  # 2D (1536, 2048) uint8, 27.91 nm x/y in the CZI, no Z
OMETIFF = "ometiff/s_1_t_1_c_1_z_1.ome.tiff"  # 2D (325, 475) uint16, 1.0833 um x/y, no Z


def test_draft_of_2d_files_proposes_no_axis_the_file_carries(
    realdata: Path, tmp_path: Path
) -> None:
    """The 2D SEM CZI (read through pylibCZIrw) and the 2D real OME-TIFF: the draft takes
    their x/y sizes from the files (exact), says so, writes no voxel_size (spec values
    are only for axes a file lacks) and asks for no z (they stay 2D), so it has no TODO;
    it chooses OME-Zarr output (a 2D OME-TIFF fails the validator). Loaded as drafted,
    it packages to a valid dataset with PixelSize x, y from the files."""
    sub = tmp_path / "sub"
    (sub / "sample1").mkdir(parents=True)
    shutil.copyfile(realdata / SEM, sub / "sample1" / "sem.czi")
    shutil.copyfile(realdata / OMETIFF, sub / "sample1" / "bright.ome.tiff")
    before = snapshot(sub)
    text, recs = draft_spec(sub)
    assert not [r for r in recs if r.status in ("error", "impossible")], recs
    assert todo_lines(text) == []
    doc = tomllib.loads(text)
    channels = {c["folder"]: c for c in doc["channels"]}
    assert set(channels) == {"sem.czi", "bright.ome.tiff"}
    assert channels["sem.czi"]["select"] == {"channel": "Channel:0", "time": 0}
    for c in channels.values():
        assert "voxel_size" not in c and "voxel_unit" not in c
    assert doc["output"]["formats"] == ["ome-zarr"]
    assert text.count("# the file carries the voxel size of y, x: so no voxel_size") == 2
    assert text.count("# 2D image (one plane, no Z size): it stays 2D") == 2
    assert (
        "shape (z, y, x) (1, 1536, 2048), uint8, voxel size (z, y, x) ?, 0.02791, 0.02791" in text
    )
    by_path = {r.path.split(" ")[0]: r for r in recs if r.action == "channel"}
    assert by_path["sem.czi"].details["voxel_size_zyx_um"] == [None, 0.02791, 0.02791]
    assert by_path["sem.czi"].details["voxel_size_from_file"] == ["y", "x"]
    size = 1.0833333333333333  # the OME-XML's PhysicalSizeX/Y
    assert by_path["bright.ome.tiff"].details["voxel_size_zyx_um"] == [None, size, size]

    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    ds = tmp_path / "ds"
    assert package_errors(sub, ds, spec) == []
    assert snapshot(sub) == before
    micr = ds / "sub-sample1" / "micr"
    sides = {p.name: json.loads(p.read_text()) for p in micr.glob("*.json")}
    assert sorted(s["PixelSize"][0] for s in sides.values()) == [0.02791, size]
    assert all(len(s["PixelSize"]) == 2 for s in sides.values())
    assert not list(micr.glob("*.ome.tif")) and len(list(micr.glob("*.ome.zarr"))) == 2
    plan = json.loads((ds / "code/bidspack/plan.json").read_text())
    origins = [a["params"]["voxel_size_origin"] for a in plan["actions"] if a["kind"] == "convert"]
    assert origins == [{"z": "none (2D image)", "y": "file", "x": "file"}] * 2


def test_draft_fills_only_the_axes_a_file_lacks(realdata: Path, tmp_path: Path) -> None:
    """The 2D OME-TIFF again, the curator choosing to give it a Z size (a section
    thickness) and OME-TIFF output too: the draft proposed no x/y, so the hand-added z
    is the only spec value (origin "spec") and x/y stay the file's (origin "file")."""
    sub = tmp_path / "sub"
    (sub / "cell1").mkdir(parents=True)
    shutil.copyfile(realdata / OMETIFF, sub / "cell1" / "bright.ome.tiff")
    text, _ = draft_spec(sub)
    assert todo_lines(text) == [] and "voxel_size" not in tomllib.loads(text)["channels"][0]
    filled = text.replace(
        'image = "intensity"\n', 'image = "intensity"\nvoxel_size = { z = 2.5 }\n'
    )
    filled = filled.replace('formats = ["ome-zarr"]', 'formats = ["ome-tiff", "ome-zarr"]')
    spec = tmp_path / "spec.toml"
    spec.write_text(filled)
    plan = build_plan(sub, load_spec(spec))
    converts = [a for a in plan.actions if a.kind == "convert"]
    assert len(converts) == 2
    for a in converts:
        assert a.params["voxel_size_origin"] == {"z": "spec", "y": "file", "x": "file"}
        assert a.params["voxel_size_zyx_um"] == [2.5, 1.0833333333333333, 1.0833333333333333]
