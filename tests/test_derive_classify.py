"""``bidspack derive classify``, ``train-classifier`` and ``select``: real patches of the
packaged STP mouse brain, real tools (zarr, pyarrow, scikit-learn, torch/torchvision when
installed, bids-validator-deno), no mocks.

- Rules: background tiles (image corners of mid slices, outside the brain) rejected,
  tissue tiles (centre of mid slices) kept, picked by position; thresholds recorded.
- sklearn: labels from the tissue content of each tile's raw 16-bit source region;
  trained, held-out AUROC in the sidecar and in the classification's provenance, the
  split reproduced from the recorded seed, the JSON model equal to scikit-learn's own.
- torch: a randomly initialised ResNet34 saved in CEM500K's layout: scores equal a
  reference torchvision forward pass with the same preprocessing (1e-5); a wrong key or
  shape names the key; a pickle holding objects is refused; without torch, a clean
  error with the install command.
- select: the query language (no eval), the materialised subset (both parents,
  readable by ``bidspack.training``).
- Validation (0 errors), verify, the fault matrix, identical re-runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from click.testing import CliRunner, Result

from bidspack.cli.main import cli
from bidspack.errors import PlanError, SourceError, ToolError
from bidspack.ops.derive.classify import TABLE_COLUMNS, ClassifyParams, derive_classify
from bidspack.ops.derive.models import (
    FEATURE_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    patch_features,
    split_labels,
)
from bidspack.ops.derive.patches import PatchParams, derive_patches
from bidspack.ops.derive.select import derive_select, evaluate_query, parse_query
from bidspack.ops.verify import verify
from bidspack.spec import load_schema
from conftest import run_bidspack
from test_derive_patches import STP_SPEC, _data_state, _package


@pytest.fixture(scope="module")
def stp(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real STP stack packaged (OME-TIFF), read-only."""
    return _package(realdata, STP_SPEC, tmp_path_factory.mktemp("stp"), "ds")


SRC = "sub-stpmousebrain/micr/sub-stpmousebrain_sample-brain_2PE.ome.tif"
STEM = "sub-stpmousebrain_sample-brain_2PE_plane-xy"


def _errors(recs: list) -> list:
    return [r for r in recs if r.status == "error"]


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _table(out: Path, name: str = "classification.parquet") -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def _validation_errors(recs: list) -> list:
    return [r for r in recs if r.action == "validate" and r.status == "error"]


@pytest.fixture(scope="module")
def volume(stp: Path) -> np.ndarray:
    """The raw (z, y, x) uint16 STP volume (270, 193, 271)."""
    return tifffile.imread(stp / SRC, level=0)


def _patches(stp: Path, root: Path, **kw: object) -> Path:
    out = root / "patches"
    recs = list(derive_patches(stp, out, PatchParams(**kw), validate=False))  # type: ignore[arg-type]
    assert not _errors(recs), _errors(recs)
    return out


@pytest.fixture(scope="module")
def p32(stp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 x 32 patches of every 10th slice: 27 slices x 6 x 8 tiles = 1296 patches."""
    return _patches(stp, tmp_path_factory.mktemp("p32"), size=32, slice_step=10)


@pytest.fixture(scope="module")
def rules_cls(p32: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """The rule classification of p32 (validated), and its records."""
    out = tmp_path_factory.mktemp("rules") / "cls"
    recs = list(derive_classify(p32, out, ClassifyParams()))
    assert not _errors(recs), _errors(recs)
    return out, recs


# -- (a) rules ------------------------------------------------------------------------------


def test_rules_reject_background_keep_tissue_by_position(
    p32: Path, rules_cls: tuple[Path, list]
) -> None:
    """Mid slices (z 90..180): the four image corners (outside the brain) are rejected
    with the failing rules as reason, the central tiles (inside the brain) kept; every
    parent patch is listed once with its id; the thresholds are in the provenance; the
    table follows its schema; the dataset validates (0 errors) and verifies."""
    out, recs = rules_cls
    assert not _validation_errors(recs) and any(r.action == "validate" for r in recs)
    rows = _table(out)
    parent = pq.read_table(p32 / "index.parquet").to_pylist()
    assert [r["patch_id"] for r in rows] == [r["patch_id"] for r in parent]
    by_id = {r["patch_id"]: r for r in rows}
    mid = range(90, 181, 10)
    for z in mid:
        for y0, x0 in [(0, 0), (0, 224), (160, 0), (160, 224)]:  # corners: background
            r = by_id[f"{STEM}_z{z}_y{y0}_x{x0}"]
            assert r["decision"] == "rejected" and r["score"] <= 0.5, r
            assert "empty" in r["reason"] and ">= 0.5" in r["reason"], r
        for y0 in (32, 64, 96):  # centre: tissue
            for x0 in (64, 96, 128, 160):
                r = by_id[f"{STEM}_z{z}_y{y0}_x{x0}"]
                assert r["decision"] == "kept" and r["score"] > 0.5, r
                assert r["reason"] == "passes all rules"
    # the decision is score > threshold for every patch; reasons name the failing rule
    assert all((r["score"] > 0.5) == (r["decision"] == "kept") for r in rows)
    assert {r["decision"] for r in rows} == {"kept", "rejected"}
    # the recorded features of one background tile, recomputed from the stored patch
    arr = zarr.open_array(str(p32 / parent[0]["array"]), mode="r")
    f = patch_features(arr[0:1])[0]
    assert rows[0]["reason"].startswith(f"contrast {f[0]:.4g} <= 4")
    # provenance: thresholds, kind, sha256, in dataset_description and the step record
    desc = json.loads((out / "dataset_description.json").read_text())
    model = desc["bidspack"]["parameters"]["model"]
    assert model["kind"] == "rules" and model["threshold"] == 0.5
    assert model["rules"] == {
        "min_contrast": 4.0,
        "min_entropy": 2.0,
        "max_saturated": 0.25,
        "max_empty": 0.5,
        "empty_level": 10,
    }
    assert len(model["sha256"]) == 64 and "numpy" in model["library_versions"]
    assert desc["SourceDatasets"] == [{"URL": p32.absolute().as_uri()}]
    assert "--min-contrast 4" in desc["GeneratedBy"][0]["Description"]
    prov = "\n".join(p.read_text() for p in (out / "code/bidspack/provenance").glob("*.json"))
    assert '"min_entropy": 2.0' in prov and model["sha256"] in prov
    # schema: column order and types, rows validate
    schema = load_schema("classification-index")
    assert [c for c, _ in TABLE_COLUMNS] == list(schema["properties"])
    assert pq.read_schema(out / "classification.parquet").names == list(schema["properties"])
    types = {p: s["x-arrow-type"] for p, s in schema["properties"].items()}
    assert {f.name: str(f.type) for f in pq.read_schema(out / "classification.parquet")} == {
        k: {"bool": "bool", "float64": "double"}.get(v, v) for k, v in types.items()
    }
    validator = jsonschema.Draft202012Validator(schema)
    for row in rows[::37]:
        validator.validate(row)
    tsv = (out / "classification.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == list(schema["properties"]) and len(tsv) == len(rows) + 1
    checked = list(verify(out))
    assert checked[-1].status == "ok", [c for c in checked if c.status == "error"]
    log = run_bidspack("log", str(out))
    assert log.returncode == 0 and "derive-classify" in log.stdout


def test_rules_thresholds_change_decisions_and_rerun_notneeded(
    p32: Path, rules_cls: tuple[Path, list], tmp_path: Path
) -> None:
    """Same parameters in a new folder: identical bytes; re-run: notneeded; a stricter
    threshold asks for a margin (fewer kept, reason says so), recorded."""
    out, _ = rules_cls
    two = tmp_path / "two"
    assert not _errors(list(derive_classify(p32, two, ClassifyParams(), validate=False)))
    assert _data_state(two) == _data_state(out)
    again = list(derive_classify(p32, two, ClassifyParams(), validate=False))
    assert {r.status for r in again if r.action == "step"} == {"notneeded"}
    strict = list(derive_classify(p32, two, ClassifyParams(threshold=0.9), validate=False))
    assert {r.status for r in strict if r.action == "step"} == {"ok"}
    rows, base = _table(two), _table(out)
    assert sum(r["decision"] == "kept" for r in rows) < sum(r["decision"] == "kept" for r in base)
    assert any(r["reason"].startswith("all rules pass but score") for r in rows)
    desc = json.loads((two / "dataset_description.json").read_text())
    assert desc["bidspack"]["parameters"]["threshold"] == 0.9


# -- (b) sklearn ---------------------------------------------------------------------------


def _tissue_labels(p32: Path, volume: np.ndarray, path: Path) -> dict[str, int]:
    """Label each patch from its raw 16-bit source region: good (1) when at least 75%
    of its voxels are tissue (raw value > 20; the background is about 5), else bad."""
    labels = {}
    for r in pq.read_table(p32 / "index.parquet").to_pylist():
        region = volume[r["z0"] : r["z1"], r["y0"] : r["y1"], r["x0"] : r["x1"]]
        labels[r["patch_id"]] = int((region > 20).mean() >= 0.75)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patch_id", "label", "note"])
        for pid, lab in labels.items():
            w.writerow([pid, "good" if lab else "bad", "tissue fraction"])
    return labels


def test_train_evaluate_sklearn_split_reproducible(
    p32: Path, volume: np.ndarray, tmp_path: Path
) -> None:
    """train-classifier on real tiles labelled from their source region: a JSON model
    (no pickle) equal to scikit-learn's own StandardScaler + LogisticRegression, the
    held-out split reproduced from the recorded seed, AUROC in the sidecar; classify
    with it and --labels: the evaluation and the model's sha256 in the provenance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    labels_csv = tmp_path / "labels.csv"
    labels = _tissue_labels(p32, volume, labels_csv)
    assert 300 < sum(labels.values()) < 1000
    model = tmp_path / "models" / "quality.json"
    res = _cli(
        "derive", "train-classifier", str(p32), "--labels", str(labels_csv),
        "-o", str(model), "--seed", "7", "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(model.read_text())  # plain JSON: loading it runs no code
    assert doc["format"] == "bidspack-linear-classifier" and doc["features"] == list(FEATURE_NAMES)
    side = json.loads((tmp_path / "models" / "quality.training.json").read_text())
    assert side["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert side["seed"] == 7 and side["test_size"] == 0.15
    assert side["labels"]["sha256"] == hashlib.sha256(labels_csv.read_bytes()).hexdigest()
    metrics = side["metrics"]
    assert metrics["auroc"] > 0.95, metrics
    assert metrics["n"] == side["n_held_out"] == len(side["held_out_ids"])
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    assert tn + fp + fn + tp == metrics["n"] and tp / (tp + fn) == pytest.approx(metrics["recall"])
    # the split, reproduced from the recorded seed (index order), twice over
    ids = [r["patch_id"] for r in pq.read_table(p32 / "index.parquet").to_pylist()]
    ys = [labels[i] for i in ids]
    train, held = split_labels(ids, ys, seed=side["seed"], test_size=side["test_size"])
    assert held == side["held_out_ids"]
    _, held2 = train_test_split(ids, test_size=0.15, random_state=7, stratify=ys)
    assert list(held2) == held
    # the JSON model scores as scikit-learn's fitted pipeline does
    feats = patch_features(_all_patches(p32))
    pos = {p: i for i, p in enumerate(ids)}
    tr = [pos[i] for i in train]
    scaler = StandardScaler().fit(feats[tr])
    lr = LogisticRegression(C=1.0, class_weight="balanced", solver="lbfgs", max_iter=1000)
    lr.fit(scaler.transform(feats[tr]), np.asarray(ys)[tr])
    want = lr.predict_proba(scaler.transform(feats))[:, 1]
    out = tmp_path / "cls"
    recs = list(derive_classify(p32, out, ClassifyParams(model=str(model)), labels=labels_csv))
    assert not _errors(recs), _errors(recs)
    got = np.array([r["score"] for r in _table(out)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert all((r["score"] > 0.5) == (r["decision"] == "kept") for r in _table(out))
    desc = json.loads((out / "dataset_description.json").read_text())
    params = desc["bidspack"]["parameters"]
    assert params["model"]["kind"] == "sklearn"
    assert params["model"]["sha256"] == side["model_sha256"]
    assert params["model"]["training"]["seed"] == 7
    ev = params["evaluation"]
    assert ev["n"] == len(labels) and ev["auroc"] > 0.95
    assert params["labels"]["sha256"] == side["labels"]["sha256"]
    assert any(r.action == "evaluate" and "AUROC" in r.message for r in recs)
    assert not _validation_errors(recs)


def test_train_and_labels_errors(p32: Path, tmp_path: Path) -> None:
    """Bad labels and outputs are clean errors; nothing is written."""
    bad = tmp_path / "bad.csv"
    bad.write_text("patch_id,label\nnot-a-patch,1\n")
    res = _cli(
        "derive", "train-classifier", str(p32), "--labels", str(bad), "-o", str(tmp_path / "m.json")
    )
    assert res.exit_code != 0 and "'not-a-patch' is not in the patches" in res.stderr
    bad.write_text(f"patch_id,label\n{STEM}_z0_y0_x0,maybe\n")
    res = _cli(
        "derive", "train-classifier", str(p32), "--labels", str(bad), "-o", str(tmp_path / "m.json")
    )
    assert res.exit_code != 0 and "label 'maybe'" in res.stderr
    bad.write_text(f"patch_id,label\n{STEM}_z0_y0_x0,1\n{STEM}_z0_y0_x32,0\n")
    res = _cli(
        "derive", "train-classifier", str(p32), "--labels", str(bad), "-o", str(tmp_path / "m.json")
    )
    assert res.exit_code != 0 and "cannot split" in res.stderr
    res = _cli(
        "derive", "train-classifier", str(p32), "--labels", str(bad), "-o", str(tmp_path / "m.pkl")
    )
    assert res.exit_code != 0 and "must end in .json" in res.stderr
    assert not list(tmp_path.glob("m*"))
    fake = tmp_path / "fake.json"
    fake.write_text('{"format": "something else"}')
    res = _cli("derive", "classify", str(p32), str(tmp_path / "o"), "--model", str(fake))
    assert res.exit_code != 0 and "not a bidspack linear classifier" in res.stderr
    assert not (tmp_path / "o").exists()


# -- (c) torch: CEM500K ResNet34 layout -------------------------------------------------------


def _torch():  # type: ignore[no-untyped-def]
    from bidspack.ops.derive.models import import_torch

    try:
        torch, torchvision, _ = import_torch()
    except ToolError as exc:
        pytest.skip(f"the classify extra is not installed: {exc}")
    return torch, torchvision


@pytest.fixture(scope="module")
def cem_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised ResNet34 (seed 0) in the CEM500K layout, fc = Linear(512,
    1) scaled by 1/50 so that the scores spread over (0, 1), saved as a state_dict."""
    torch, torchvision = _torch()
    torch.manual_seed(0)
    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(512, 1)
    with torch.no_grad():
        model.fc.weight.mul_(0.02)
        model.fc.bias.zero_()
    path = tmp_path_factory.mktemp("cem") / "patch_quality_classifier_nn.pth"
    torch.save(model.state_dict(), path)
    return path


def _reference_scores(weights: Path, patches: np.ndarray) -> np.ndarray:
    """A reference forward pass written out independently: torchvision's resnet34 with
    CEM's fc, weights through torch.load(weights_only=True); grey to RGB and
    albumentations' Normalize formula in numpy; torchvision's resize (bilinear,
    no antialias) rounded half up when the patch is not 224 x 224; sigmoid."""
    torch, torchvision = _torch()
    import torchvision.transforms.v2.functional as tvf

    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(in_features=512, out_features=1)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    x = patches.astype(np.float32)
    if patches.shape[1:] != (224, 224):
        t = tvf.resize(
            torch.from_numpy(x)[:, None],
            [224, 224],
            interpolation=tvf.InterpolationMode.BILINEAR,
            antialias=False,
        )
        x = np.clip(np.floor(t[:, 0].numpy() + np.float32(0.5)), 0, 255).astype(np.float32)
    rgb = np.repeat(x[..., None], 3, axis=-1)  # cv2.COLOR_GRAY2RGB, (b, h, w, 3)
    mean = np.array(IMAGENET_MEAN, dtype=np.float32) * np.float32(255.0)
    std = np.array(IMAGENET_STD, dtype=np.float32) * np.float32(255.0)
    rgb = (rgb - mean) * np.reciprocal(std, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return torch.sigmoid(model(tensor))[:, 0].numpy().astype(np.float64)


def _all_patches(ds: Path) -> np.ndarray:
    rows = pq.read_table(ds / "index.parquet").to_pylist()
    arrays = {a: zarr.open_array(str(ds / a), mode="r")[:] for a in {r["array"] for r in rows}}
    return np.stack([arrays[r["array"]][r["row"]] for r in rows])


def test_torch_cem_resnet34_equals_reference_forward(
    stp: Path, cem_weights: Path, tmp_path: Path
) -> None:
    """bidspack's scores equal the reference torchvision forward pass within 1e-5, for
    96 x 96 patches (resized to 224) and 224 x 224 patches (CEM's size, not resized);
    the model's sha256, kind, threshold, device, threads and versions are recorded; a
    second run gives the same table bytes (CPU, fixed threads)."""
    torch, _ = _torch()
    p96 = _patches(stp, tmp_path / "a", size=96, slice_step=135)  # 2 slices x 2 x 3 tiles
    p224 = _patches(stp, tmp_path / "b", size=224, slice_step=135)  # 2 slices x 1 x 1
    params = ClassifyParams(model=str(cem_weights), threads=2, batch_size=5)
    sha = hashlib.sha256(cem_weights.read_bytes()).hexdigest()
    for ds, n in ((p96, 12), (p224, 2)):
        out = ds.parent / "cls"
        recs = list(derive_classify(ds, out, params, validate=False))
        assert not _errors(recs), _errors(recs)
        rows = _table(out)
        assert len(rows) == n
        got = np.array([r["score"] for r in rows])
        want = _reference_scores(cem_weights, _all_patches(ds))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert got.min() > 0.001 and got.max() < 0.999  # informative scores
        assert all((r["score"] > 0.5) == (r["decision"] == "kept") for r in rows)
        model = json.loads((out / "dataset_description.json").read_text())["bidspack"][
            "parameters"
        ]["model"]
        assert model["kind"] == "torch" and model["sha256"] == sha and model["threshold"] == 0.5
        assert model["device"] == "cpu" and model["threads"] == 2
        assert model["library_versions"]["torch"] == torch.__version__
        assert model["preprocessing"]["normalize_mean"] == list(IMAGENET_MEAN)
    two = p224.parent / "cls2"
    assert not _errors(list(derive_classify(p224, two, params, validate=False)))
    assert _data_state(two) == _data_state(p224.parent / "cls")


def test_torch_bad_weights_are_clean_errors(p32: Path, cem_weights: Path, tmp_path: Path) -> None:
    """A wrong key or shape names the key; a pickle holding an object (a class
    instance, a whole model) is refused without being unpickled; a file that is no
    PyTorch file at all is an error; nothing is written."""
    torch, _ = _torch()
    state = torch.load(cem_weights, weights_only=True)
    out = tmp_path / "out"

    def run(path: Path) -> Result:
        res = _cli("derive", "classify", str(p32), str(out), "--model", str(path))
        assert res.exit_code != 0 and not out.exists(), res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        return res

    renamed = dict(state)
    renamed["fc.weights"] = renamed.pop("fc.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    res = run(tmp_path / "renamed.pth")
    assert "state_dict has no key 'fc.weight'" in res.stderr
    assert "unexpected key 'fc.weights'" in res.stderr
    extra = dict(state)
    extra["head.weight"] = torch.zeros(3)
    torch.save(extra, tmp_path / "extra.pth")
    assert "unexpected key 'head.weight'" in run(tmp_path / "extra.pth").stderr
    shaped = dict(state)
    shaped["fc.weight"] = torch.zeros(2, 512)
    torch.save(shaped, tmp_path / "shape.pth")
    res = run(tmp_path / "shape.pth")
    assert "key 'fc.weight' has shape (2, 512)" in res.stderr and "(1, 512)" in res.stderr
    # a pickle with an arbitrary object: refused, and its code never runs
    marker = tmp_path / "ran"
    script = (
        "import os, torch\n"
        "class Payload:\n"
        "    def __reduce__(self):\n"
        f"        return (os.mkdir, ({str(marker)!r},))\n"
        f"torch.save({{'fc.weight': Payload()}}, {str(tmp_path / 'evil.pth')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    res = run(tmp_path / "evil.pth")
    assert "refused: the file holds Python objects other than tensors" in res.stderr
    assert "os.mkdir" in res.stderr or "posix.mkdir" in res.stderr
    assert not marker.exists()
    _, torchvision = _torch()
    whole = torchvision.models.resnet34(weights=None)
    torch.save(whole, tmp_path / "whole.pth")
    assert "refused" in run(tmp_path / "whole.pth").stderr
    (tmp_path / "text.pth").write_text("not weights")
    assert "not a PyTorch weights file" in run(tmp_path / "text.pth").stderr


def test_torch_missing_is_a_clean_error(p32: Path, tmp_path: Path) -> None:
    """Without torch (its import blocked), kind torch says how to install the extra."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"\0")
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "from bidspack.cli.main import main\n"
        "sys.argv = ['bidspack', 'derive', 'classify', sys.argv[1], sys.argv[2], "
        "'--model', sys.argv[3]]\n"
        "main()\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(p32), str(tmp_path / "out"), str(weights)],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0
    assert "pip install 'bidspack[classify]'" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


# -- select -----------------------------------------------------------------------------------


def test_query_language_is_parsed_not_evaluated() -> None:
    """Precedence (not > and > or), in / not in, strings with escapes, booleans; code
    and unknown columns are errors, never run."""
    cols = {
        "score": np.array([0.1, 0.8, 0.95, 0.5]),
        "decision": np.array(["rejected", "kept", "kept", "rejected"], dtype=object),
        "plane": np.array(["xy", "xy", "xz", "xy"], dtype=object),
        "dedup_kept": np.array([True, False, True, True]),
        "slice_index": np.array([0, 10, 20, 30]),
    }

    def sel(q: str) -> list[int]:
        return np.nonzero(evaluate_query(parse_query(q), cols, q))[0].tolist()

    assert sel("decision == 'kept' and score > 0.7 and plane == 'xy'") == [1]
    assert sel("decision == 'kept' or score < 0.2 and plane == 'xz'") == [1, 2]
    assert sel("(decision == 'kept' or score < 0.2) and plane == 'xy'") == [0, 1]
    assert sel("not dedup_kept or slice_index in (0, 30)") == [0, 1, 3]
    assert sel("plane not in ('xy') and dedup_kept") == [2]
    assert sel('decision != "kept" and not (score >= 0.5)') == [0]
    assert sel("score >= 5e-1 AND dedup_kept == true") == [2, 3]
    assert sel("decision == 'it\\'s'") == []
    for q, msg in [
        ("__import__('os').system('true')", "expected"),
        ("score > 0.7; import os", "unexpected character ';'"),
        ("nope > 1", "unknown column 'nope' (columns: decision, dedup_kept, plane,"),
        ("decision > 'kept'", "compares numbers"),
        ("score == 'high'", "holds numbers, compared with 'high'"),
        ("plane", "is not true/false"),
        ("score > ", "expected a number"),
        ("(score > 1", "expected rp, found the end"),
        ("decision == 'kept", "unexpected character"),
        ("", "empty"),
    ]:
        with pytest.raises(PlanError) as info:
            evaluate_query(parse_query(q), cols, q)
        assert msg in str(info.value), (q, str(info.value))


def test_select_materialises_subset_with_both_parents(
    p32: Path, rules_cls: tuple[Path, list], tmp_path: Path
) -> None:
    """The kept, high-scoring xy patches of the rule classification: their own Zarr
    arrays (each patch equal to its parent patch), an index with parent ids and rows,
    both parents in SourceDatasets; validates, verifies, loads in bidspack.training;
    the same query on the patch dataset directly (its own columns)."""
    cls, _ = rules_cls
    out = tmp_path / "sel"
    query = "decision == 'kept' and score > 0.7 and plane == 'xy' and dedup_kept"
    res = _cli("derive", "select", str(cls), str(out), "--query", query, "--dry-run")
    assert res.exit_code == 0 and "plan:" in res.stdout and not out.exists(), res.output
    recs = list(derive_select(cls, out, query))
    assert not _errors(recs) and not _validation_errors(recs), _errors(recs)
    crows = _table(cls)
    want = [
        r["patch_id"]
        for r in crows
        if r["decision"] == "kept" and r["score"] > 0.7 and r["dedup_kept"]
    ]
    rows = _table(out, "index.parquet")
    assert [r["patch_id"] for r in rows] == want and 100 < len(want) < len(crows)
    assert list(rows[0])[:5] == ["patch_id", "array", "row", "parent_array", "parent_row"]
    assert {"score", "decision", "z0", "pixel_hash", "dedup_reason"} <= set(rows[0])
    parent = {r["patch_id"]: r for r in pq.read_table(p32 / "index.parquet").to_pylist()}
    src = zarr.open_array(str(p32 / rows[0]["parent_array"]), mode="r")[:]
    mine = zarr.open_array(str(out / rows[0]["array"]), mode="r")[:]
    assert mine.shape == (len(rows), 32, 32)
    for r in rows:
        assert r["parent_row"] == parent[r["patch_id"]]["row"]
        assert np.array_equal(mine[r["row"]], src[r["parent_row"]])
    desc = json.loads((out / "dataset_description.json").read_text())
    assert [s["URL"] for s in desc["SourceDatasets"]] == [
        cls.absolute().as_uri(),
        p32.absolute().as_uri(),
    ]
    assert desc["bidspack"]["parameters"]["query"] == query
    checked = list(verify(out))
    assert checked[-1].status == "ok", [c for c in checked if c.status == "error"]
    from bidspack.training import PatchSet

    ps = PatchSet(out)
    assert len(ps) == len(rows) and np.array_equal(ps[3], mine[rows[3]["row"]])
    # a patch dataset as the source: its index (kept, reason as dedup_kept, dedup_reason)
    out2 = tmp_path / "sel2"
    recs = list(derive_select(p32, out2, "not dedup_kept or slice_index >= 200", validate=False))
    assert not _errors(recs)
    rows2 = _table(out2, "index.parquet")
    assert rows2 and all(r["slice_index"] >= 200 or not r["dedup_kept"] for r in rows2)
    assert any(not r["dedup_kept"] for r in rows2) and "kept" not in rows2[0]
    assert len(PatchSet(out2)) == len(rows2)  # no 'kept' column: every selected row
    assert [
        s["URL"]
        for s in json.loads((out2 / "dataset_description.json").read_text())["SourceDatasets"]
    ] == [p32.absolute().as_uri()]
    # errors: nothing written
    for q, msg in [
        ("decision == 'kept' and nope < 1", "unknown column 'nope'"),
        ("score > 2", "selects no patch"),
        ("exec('x')", "expected"),
    ]:
        res = _cli("derive", "select", str(cls), str(tmp_path / "bad"), "--query", q)
        assert res.exit_code != 0 and msg in res.stderr, (q, res.stderr)
        assert not (tmp_path / "bad").exists()


# -- crash safety --------------------------------------------------------------------------

#: classify: the scores step is the first transaction, the index step the second.
CLASSIFY_FAULTS = ["stage@1", "staged", "journal", "committed", "apply@1", "staged@2"]
SELECT_FAULTS = ["staged", "committed@2"]


@pytest.fixture(scope="module")
def p64(stp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 x 64 patches of every 30th slice: 9 slices x 3 x 4 tiles = 108 patches."""
    return _patches(stp, tmp_path_factory.mktemp("p64"), size=64, slice_step=30)


def test_fault_matrix_kill_then_rerun_equals_uninterrupted(p64: Path, tmp_path: Path) -> None:
    """classify and select killed (SIGKILL, in a child process) at fault points, then
    re-run: the result equals an uninterrupted run byte for byte; no transaction left."""
    env = {k: v for k, v in os.environ.items() if k != "BIDSPACK_FAULT"}
    ref = tmp_path / "ref"
    assert not _errors(list(derive_classify(p64, ref, ClassifyParams(), validate=False)))
    want = _data_state(ref)
    for fault in CLASSIFY_FAULTS:
        out = tmp_path / fault.replace("@", "-")
        killed = run_bidspack(
            "derive", "classify", str(p64), str(out), "--no-validate", "--json",
            env={**env, "BIDSPACK_FAULT": fault},
        )  # fmt: skip
        assert killed.returncode == -9, (fault, killed.returncode, killed.stderr[-500:])
        recs = list(derive_classify(p64, out, ClassifyParams(), validate=False))
        assert not _errors(recs), (fault, _errors(recs))
        assert _data_state(out) == want, fault
        assert not list((out / ".bidspack" / "txn").glob("*")), fault
        shutil.rmtree(out)
    query = "decision == 'kept'"
    sref = tmp_path / "sref"
    assert not _errors(list(derive_select(ref, sref, query, validate=False)))
    swant = _data_state(sref)
    for fault in SELECT_FAULTS:
        out = tmp_path / ("s-" + fault.replace("@", "-"))
        killed = run_bidspack(
            "derive", "select", str(ref), str(out), "--query", query, "--no-validate",
            env={**env, "BIDSPACK_FAULT": fault},
        )  # fmt: skip
        assert killed.returncode == -9, (fault, killed.returncode, killed.stderr[-500:])
        assert not _errors(list(derive_select(ref, out, query, validate=False))), fault
        assert _data_state(out) == swant, fault


def test_classify_cli_dry_run_and_bad_input(p32: Path, tmp_path: Path) -> None:
    """--dry-run prints the plan and writes nothing; bad sources and options are clean
    errors."""
    out = tmp_path / "out"
    res = _cli("derive", "classify", str(p32), str(out), "--dry-run", "--batch-size", "100")
    assert res.exit_code == 0, res.output
    assert "plan: 1296 patches" in res.stdout and "13 batches of 100" in res.stdout
    assert not out.exists()
    for args, msg in [
        ([str(p32), str(out), "--batch-size", "0"], "batch size 0"),
        ([str(p32), str(out), "--max-empty", "2"], "max_empty 2.0"),
        ([str(p32), str(out), "--model", str(tmp_path / "none.pth")], "does not exist"),
        ([str(p32), str(out), "--model", str(tmp_path / "m.bin2")], "cannot tell the model kind"),
        ([str(tmp_path), str(out)], "not a bidspack dataset"),
        ([str(p32), str(p32 / "inside")], "inside one another"),
    ]:
        res = _cli("derive", "classify", *args)
        assert res.exit_code != 0 and msg in res.stderr, (args, res.stderr)
        assert not out.exists() and not (p32 / "inside").exists()
    with pytest.raises(SourceError):
        list(derive_classify(p32, out, ClassifyParams(model=str(tmp_path / "x.json"))))
