"""hashdiff on real pixels: every slice classified correctly, reports valid, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import imagecodecs
import jsonschema
import numpy as np
import pandas as pd
import pytest
import tifffile

from bidspack.io.ometiff import write_ome_tiff
from bidspack.io.sources import SliceFolder
from bidspack.ops.duplicates import find_duplicates
from bidspack.ops.hashdiff import hashdiff, percent
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
            lost, nza = r.nonzero_lost, r.nonzero_a
            assert lost and nza and r.nonzero_lost_frac == lost / nza
            assert r.verdict.startswith(
                f"B lost {lost:,} of {nza:,} labelled pixels ({percent(lost, nza)}); "
                f"{nza - lost:,} remain labelled"
            ), r.verdict
            assert "100%" not in r.verdict  # some labelled pixels remain in B
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
        "skipped": 0,
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


def test_spec_cites_report_as_exclusion_evidence(
    example: tuple[Path, Path], tmp_path: Path
) -> None:
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


# -- wording (issue 12): absolute counts beside percentages, no false 0% / 100% ------------


@pytest.mark.parametrize(
    ("n", "total", "text"),
    [
        (0, 8021, "0%"),
        (8021, 8021, "100%"),
        (1, 8021, "0.012%"),
        (1, 10**6, "<0.01%"),
        (8019, 8021, "99.98%"),
        (10**6 - 1, 10**6, ">99.99%"),
        (1, 2, "50.0%"),
        (3580, 4136, "86.6%"),
        (9996, 10000, "99.96%"),
        (1, 150, "0.67%"),
    ],
)
def test_percent_never_rounds_to_0_or_100(n: int, total: int, text: str) -> None:
    assert percent(n, total) == text


def _labels() -> np.ndarray:
    """64 x 200 label plane with 8,021 labelled pixels (labels 1 and 2)."""
    a = np.zeros((64, 200), np.uint8)
    a[0:40, 0:200] = 1  # 8,000
    a[40, 0:21] = 2  # 21
    assert int(np.count_nonzero(a)) == 8021
    return a


def _pair(tmp_path: Path, a: np.ndarray, b: np.ndarray) -> Any:
    for side, arr in (("A", a), ("B", b)):
        (tmp_path / side).mkdir()
        tifffile.imwrite(tmp_path / side / "Z1.tif", arr)
    (r,) = hashdiff(tmp_path / "A", tmp_path / "B").results
    assert r.status == "different_pixels"
    return r


def test_verdict_two_of_8021_remain(tmp_path: Path) -> None:
    a = _labels()
    b = np.zeros_like(a)
    b[0, 0:2] = 1  # two labelled pixels remain
    r = _pair(tmp_path, a, b)
    assert r.verdict == (
        "B lost 8,019 of 8,021 labelled pixels (99.98%); 2 remain labelled; labels only in A: 2"
    )
    assert (r.nonzero_lost, r.nonzero_a, r.n_diff, r.n_pixels) == (8019, 8021, 8019, 12800)


def test_verdict_one_voxel_relabelled(tmp_path: Path) -> None:
    a = _labels()
    b = a.copy()
    b[10, 10] = 2
    r = _pair(tmp_path, a, b)
    assert r.verdict == "labels changed in 1 of 12,800 pixels (<0.01%)"
    assert r.n_diff == 1 and r.frac_diff == 1 / 12800


def test_verdict_one_voxel_lost_and_gained(tmp_path: Path) -> None:
    a = _labels()
    b = a.copy()
    b[10, 10] = 0
    b[60, 150] = 3
    r = _pair(tmp_path, a, b)
    assert r.verdict == (
        "B lost 1 of 8,021 labelled pixels (0.012%); 8,020 remain labelled; "
        "B gained 1 labelled pixel (0.012% of A's 8,021); labels only in B: 3"
    )


def test_verdict_one_intensity_voxel(tmp_path: Path) -> None:
    a = np.random.default_rng(0).integers(0, 60000, (300, 500), dtype=np.uint16)
    b = a.copy()
    b[123, 321] ^= 1
    r = _pair(tmp_path, a, b)
    assert r.verdict == "1 of 150,000 pixels differ (<0.01%; max |A-B| 1)"


def test_diffmap_marks_one_off_grid_voxel() -> None:
    from bidspack.io.thumbnails import MARK_COLOUR, diffmap_png, thumbnail_png

    a = np.random.default_rng(1).integers(0, 1000, (1000, 1500), dtype=np.uint16)
    b = a.copy()
    b[502, 753] += 1  # 1500 px -> 6 x 6 blocks: (502, 753) is not on the sampling grid
    img = np.asarray(imagecodecs.png_decode(diffmap_png(a, b, label=False)))
    thumb = np.asarray(imagecodecs.png_decode(thumbnail_png(a, label=False)))
    assert img.shape[:2] == thumb.shape[:2] == (167, 250)
    cell = (502 // 6, 753 // 6)
    assert img[cell].min() >= 64, img[cell]  # the smallest difference is still visible
    lit = np.argwhere(img.max(axis=-1) > 0)
    yellow = np.all(img == MARK_COLOUR, axis=-1)
    others = lit[~yellow[lit[:, 0], lit[:, 1]]]
    assert [tuple(x) for x in others] == [cell]  # only the changed cell, and the box
    ys, xs = np.nonzero(yellow)
    assert ys.min() < cell[0] < ys.max() and xs.min() < cell[1] < xs.max()
    assert ys.max() - ys.min() < 30 and xs.max() - xs.min() < 30
    # a tiny plane is enlarged so one changed pixel is more than one screen pixel
    small = np.zeros((5, 5), np.uint8)
    other = small.copy()
    other[2, 2] = 1
    big = np.asarray(imagecodecs.png_decode(diffmap_png(small, other, label=True)))
    assert big.shape == (125, 125, 3)
    assert np.all(big[50:75, 50:75] == (40, 200, 60))  # gained in B: green 25 x 25
    assert np.all(big == MARK_COLOUR, axis=-1).any()
