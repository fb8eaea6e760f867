"""hashdiff on real pixels: every slice classified correctly, reports valid, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import imagecodecs
import jsonschema
import numpy as np
import pandas as pd
import pytest
import tifffile

from bidspack.io.ometiff import write_ome_tiff
from bidspack.io.sources import SliceFolder
from bidspack.ops.duplicates import find_duplicates
from bidspack.ops.hashdiff import hashdiff
from bidspack.report.hashdiff_report import write_outputs
from bidspack.spec import load_schema
from conftest import run_bidspack

REENCODED = {10, 11, 12}
BLANKED = {50, 60, 61}
DELETED_INTENSITY = 100
DELETED_LABEL = 7


@pytest.fixture(scope="module")
def trees(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A/ and B/ each with intensity/ (the 270 real slices) and labels/ (the real
    hemisphere mask as 135 slices); B uses 5-digit padding and the changes above."""
    root = tmp_path_factory.mktemp("hashdiff")
    a, b = root / "A", root / "B"
    for side in (a, b):
        (side / "intensity").mkdir(parents=True)
        (side / "labels").mkdir()
    for src in sorted((realdata / "stp_mouse_brain" / "slices").glob("image_*.tif")):
        z = int(src.stem.split("_")[1])
        shutil.copy(src, a / "intensity" / src.name)
        if z == DELETED_INTENSITY:
            continue
        dst = b / "intensity" / f"image_{z:05d}.tif"
        if z in REENCODED:  # same pixels, zlib-compressed and tiled: bytes differ
            tifffile.imwrite(dst, tifffile.imread(src), compression="zlib", tile=(64, 64))
        else:
            shutil.copy(src, dst)
    tifffile.imwrite(b / "intensity" / "image_00270.tif", np.zeros((193, 271), np.uint16))
    labels = tifffile.imread(realdata / "stp_mouse_brain" / "registered_hemispheres.tiff")
    for z, plane in enumerate(labels):
        tifffile.imwrite(a / "labels" / f"Z{z:04d}.tif", plane)
        if z == DELETED_LABEL:
            continue
        if z in BLANKED:  # most labels missing in B: keep one pixel row of label 1
            blank = np.zeros_like(plane)
            rows = np.nonzero((plane == 1).any(axis=1))[0]
            blank[rows[:1]] = np.where(plane[rows[:1]] == 1, 1, 0)
            plane = blank
        tifffile.imwrite(b / "labels" / f"Z{z:05d}.tif", plane)
    return a, b


def test_every_slice_classified(trees: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = trees
    diff = hashdiff(a, b)
    by_key = {r.key: r for r in diff.results}
    assert len(by_key) == 271 + 135
    for z in range(271):
        r = by_key[f"intensity/z{z}"]
        if z == DELETED_INTENSITY:
            expected = "only_in_a"
        elif z == 270:
            expected = "only_in_b"
        elif z in REENCODED:
            expected = "identical_pixels"
        else:
            expected = "identical_bytes"
        assert r.status == expected, (z, r.status, r.verdict)
        if expected.startswith("identical"):
            assert r.a_pixel_hash == r.b_pixel_hash and r.a_pixel_hash
    for z in range(135):
        r = by_key[f"labels/z{z}"]
        if z == DELETED_LABEL:
            assert r.status == "only_in_a"
        elif z in BLANKED:
            assert r.status == "different_pixels"
            assert r.is_label and r.labels_only_a == [2.0] and r.labels_only_b == []
            assert r.nonzero_lost_frac is not None and r.nonzero_lost_frac > 0.9
            assert r.verdict.startswith(f"B lost {r.nonzero_lost_frac:.0%} of labelled pixels")
            assert r.n_diff and r.frac_diff and r.max_abs_diff in (1.0, 2.0)
            assert set(r.previews) == {"a", "b", "diff"}
        else:
            assert r.status == "identical_bytes", (z, r.status)
    counts = diff.counts()
    assert counts == {
        "identical_bytes": 266 + 131,
        "identical_pixels": 3,
        "different_pixels": 3,
        "only_in_a": 2,
        "only_in_b": 1,
        "unreadable": 0,
    }


def test_outputs_valid_and_consistent(trees: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = trees
    diff = hashdiff(a, b, workers=1)
    paths = write_outputs(diff, tmp_path / "out")
    summ = json.loads(paths["summary"].read_text())
    jsonschema.validate(summ, load_schema("hashdiff"))
    assert summ["verdict"] == "different" and len(summ["different"]) == 6
    csv = pd.read_csv(paths["comparison_results_csv"])
    assert len(csv) == 406 and list(csv["key"])[:2] == ["intensity/z0", "intensity/z1"]
    pq = pd.read_parquet(paths["comparison_results_parquet"])
    assert list(pq["status"]) == list(csv["status"])
    diff_csv = pd.read_csv(paths["different_csv"])
    assert set(diff_csv["status"]) == {"different_pixels", "only_in_a", "only_in_b"}
    html = paths["report"].read_text()
    assert html.count("data:image/png;base64,") == 3 * 3 + 3  # 3 differing x 3, 3 only-in
    assert "http://" not in html.replace("http://www.w3.org", "")  # self-contained


def test_cli_exit_codes(trees: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = trees

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_bidspack(*args, cwd=tmp_path)

    same = run("hashdiff", str(a / "intensity"), str(a / "intensity"), "--out", "same")
    assert same.returncode == 0 and "verdict: identical" in same.stdout
    differ = run("hashdiff", str(a), str(b), "--out", "d", "--json")
    assert differ.returncode == 1
    assert json.loads(differ.stdout)["counts"]["different_pixels"] == 3
    again = run("hashdiff", str(a), str(b), "--out", "d")
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
    missing = run("hashdiff", str(a / "nope"), str(b), "--out", "m")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_duplicate_index_in_one_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for name in ("Z0990.tif", "Z00990.tif"):
        tifffile.imwrite(tmp_path / "a" / name, np.zeros((4, 4), np.uint8))
    from bidspack.errors import SourceError

    with pytest.raises(SourceError, match=r"Z0990\.tif and Z00990\.tif|Z00990\.tif and Z0990\.tif"):
        hashdiff(tmp_path / "a", tmp_path / "a")


def test_multipage_stacks_page_by_page(realdata: Path, tmp_path: Path) -> None:
    src = realdata / "stp_mouse_brain" / "registered_hemispheres.tiff"
    labels = tifffile.imread(src)
    changed = labels.copy()
    changed[40][changed[40] == 2] = 0
    tifffile.imwrite(tmp_path / "b.tif", changed, photometric="minisblack", compression="zlib")
    diff = hashdiff(src, tmp_path / "b.tif")
    statuses = {r.key: r.status for r in diff.results}
    assert len(statuses) == 135
    assert statuses["page00040"] == "different_pixels"
    assert {s for k, s in statuses.items() if k != "page00040"} == {"identical_pixels"}
    r = next(r for r in diff.results if r.key == "page00040")
    assert r.labels_only_a == [2.0] and r.verdict.startswith("B lost")


def test_unreadable_slice(tmp_path: Path) -> None:
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        tifffile.imwrite(tmp_path / side / "Z1.tif", np.ones((5, 5), np.uint8))
    (tmp_path / "b" / "Z2.tif").write_bytes(b"garbage")
    tifffile.imwrite(tmp_path / "a" / "Z2.tif", np.ones((5, 5), np.uint8))
    diff = hashdiff(tmp_path / "a", tmp_path / "b")
    r = {x.key: x for x in diff.results}["z2"]
    assert r.status == "unreadable" and "B" in (r.error or "")


def test_duplicates_across_names_and_formats(realdata: Path, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "x" / "y").mkdir(parents=True)
    src = realdata / "stp_mouse_brain" / "slices" / "image_0005.tif"
    plane = tifffile.imread(src)
    shutil.copy(src, root / "first.tif")
    tifffile.imwrite(root / "x" / "renamed_zlib.tiff", plane, compression="zlib")
    (root / "x" / "y" / "as.png").write_bytes(imagecodecs.png_encode(plane))
    tifffile.imwrite(root / "x" / "y" / "other.tif", plane + 1)
    sl = tmp_path / "sl"
    sl.mkdir()
    shutil.copy(src, sl / "Z0.tif")
    write_ome_tiff(
        root / "x" / "stack.ome.tif",
        SliceFolder(sl),
        physical_size_zyx_um=(1, 1, 1),
        name="s",
        workdir=tmp_path / "w",
    )
    groups, hashes = find_duplicates(root)
    assert len(hashes) == 5
    assert [[f.path for f in g] for g in groups] == [
        ["first.tif", "x/renamed_zlib.tiff", "x/stack.ome.tif", "x/y/as.png"]
    ]


def test_spec_cites_report_as_exclusion_evidence(example, tmp_path: Path) -> None:
    from bidspack.ops.package import package
    from bidspack.report.hashdiff_report import keep_in_dataset
    from test_package import validator_errors

    sub, spec = example
    subj = next(p for p in sub.iterdir() if p.name.startswith("210810_45670"))
    diff = hashdiff(subj / "atlaslabel_def_origspace", subj / "atlaslabel_def_origspace_masked")
    write_outputs(diff, spec.parent / "hd")
    text = spec.read_text().replace(
        'path = "*/atlaslabel_def_origspace_masked"',
        'path = "*/atlaslabel_def_origspace_masked"\nevidence = "hd/summary.json"',
    )
    spec.write_text(text)
    from bidspack.spec import load_spec

    ds = tmp_path / "ds"
    recs = list(package(sub, ds, load_spec(spec)))
    assert not [r for r in recs if r.status == "error"]
    pair = "atlaslabel_def_origspace_vs_atlaslabel_def_origspace_masked"
    ev = ds / f"code/bidspack/evidence/exclude0_{pair}"
    assert json.loads((ev / "summary.json").read_text())["counts"]["different_pixels"] == 2
    assert (ev / "report.html").is_file()
    excl = [r for r in recs if r.action == "exclude"]
    assert excl and all("evidence: code/bidspack/evidence/exclude0_" in r.message for r in excl)
    assert validator_errors(ds) == []
    # a report can also be kept in the dataset afterwards, as one transaction
    kept = keep_in_dataset(diff, ds)
    assert (kept / "summary.json").is_file() and not list((ds / ".bidspack/txn").iterdir())
    # a bad citation is a spec error naming the key
    spec.write_text(text.replace("hd/summary.json", "hd/nope.json"))
    from bidspack.errors import SpecError

    with pytest.raises(SpecError) as exc:
        load_spec(spec)
    assert exc.value.location == "exclude[0].evidence"
