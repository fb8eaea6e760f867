"""OME-Zarr writer, NGFF 0.4 and 0.5 (after ome-zarr-py's test_writer.py: every test runs
for both versions): official JSON schemas, ome-zarr-models, the ome-zarr reader, pixel
hashes, label pyramids, scales, byte-identical rewrites, dask.distributed, shard counts."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from bidspack.errors import IntegrityError, OutputError, SourceError
from bidspack.io.omezarr import (
    NGFF_VERSIONS,
    NgffV04,
    NgffV05,
    ome_zarr_scale_um,
    pixel_hash_of_zarr,
    pyramid,
    pyramid_shapes,
    validate_ome_zarr,
    write_ome_zarr,
)
from bidspack.io.pixelhash import pixel_hash_array, pixel_hash_planes
from bidspack.io.sources import ImageSource, SliceFolder, TiffStack
from conftest import REPO, snapshot

VERSIONS = sorted(NGFF_VERSIONS)
SCHEMAS = REPO.parent / "shared" / "ngff-schemas"
STP_UM = (50.0, 40.0, 40.0)  # z, y, x voxel size of the stp_mouse_brain slices


@pytest.fixture(scope="module")
def stp(realdata: Path) -> SliceFolder:
    """270 real slices of (193, 271) uint16."""
    return SliceFolder(realdata / "stp_mouse_brain" / "slices")


def _stack(source: ImageSource) -> np.ndarray:
    return np.stack([source.read_plane(z) for z in range(source.shape[0])])


def _tiff(path: Path, data: np.ndarray) -> TiffStack:
    tifffile.imwrite(path, data, photometric="minisblack")
    return TiffStack(path)


def _root_attributes(path: Path) -> dict:
    if (path / "zarr.json").is_file():
        return json.loads((path / "zarr.json").read_text())["attributes"]
    return json.loads((path / ".zattrs").read_text())


def _multiscale(path: Path) -> dict:
    attrs = _root_attributes(path)
    return attrs.get("ome", attrs)["multiscales"][0]


def _level(path: Path, i: int) -> np.ndarray:
    return np.asarray(zarr.open_array(str(path / str(i)), mode="r")[:])


def _schema_errors(
    version: str, attributes: dict, names: tuple[str, ...] = ("image.schema", "strict_image.schema")
) -> dict[str, list[str]]:
    """Errors of the official NGFF JSON schemas (built here, independently of omezarr)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    docs = {p.name: json.loads(p.read_text()) for p in (SCHEMAS / version).glob("*.schema")}
    registry = Registry().with_resources(
        (d["$id"], Resource.from_contents(d, default_specification=DRAFT202012))
        for d in docs.values()
    )
    return {
        name: [
            e.message
            for e in Draft202012Validator(docs[name], registry=registry).iter_errors(attributes)
        ]
        for name in names
    }


def _reference_pyramid(data: np.ndarray, halve_z: list[bool], kind: str) -> list[np.ndarray]:
    """The pyramid by the documented rules, in plain NumPy on the whole stack."""
    out = [data]
    for hz in halve_z:
        a = out[-1]
        pad = [(0, a.shape[0] % 2 if hz else 0), (0, a.shape[1] % 2), (0, a.shape[2] % 2)]
        a = np.pad(a, pad, mode="edge")
        if kind == "label":
            out.append(a[:: 2 if hz else 1, ::2, ::2])
            continue
        acc = a.astype(np.float64 if a.dtype.kind == "f" else np.int64)
        s = acc[:, 0::2, 0::2] + acc[:, 1::2, 0::2] + acc[:, 0::2, 1::2] + acc[:, 1::2, 1::2]
        n = 4
        if hz:
            s, n = s[0::2] + s[1::2], 8
        mean = s / n if a.dtype.kind == "f" else (s + n // 2) // n
        out.append(mean.astype(data.dtype))
    return out


# ---------------------------------------------------------------------------------------


def test_pyramid_rules() -> None:
    # real stp voxel 50 x 40 x 40 um: z is within 1.5x of y/x, so it is halved at once
    assert [s for s, _ in pyramid_shapes((270, 193, 271), STP_UM, (256, 256))] == [
        (270, 193, 271),
        (135, 97, 136),
    ]
    # light-sheet-like 4 x 1.8 x 1.8 um: z is halved from level 2 on (4 <= 1.5 * 3.6)
    levels = pyramid_shapes((512, 2048, 2048), (4.0, 1.8, 1.8), (256, 256))
    assert [f for _, f in levels] == [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    assert levels[-1][0] == (128, 256, 256)  # the smallest level fits in one chunk
    assert pyramid_shapes((1, 300, 300), (1.0, 1.0, 1.0), (256, 256))[-1][0] == (1, 150, 150)
    assert len(pyramid_shapes((9, 256, 100), (1.0, 1.0, 1.0), (256, 256))) == 1
    # shards of 0.5: 2048 px in y/x, >= 256 MiB deep (clipped to the array)
    assert NgffV05().shard((512, 2048, 2048), (1, 256, 256), 2) == (32, 2048, 2048)
    assert NgffV05().shard((5, 300, 300), (1, 256, 256), 2) == (5, 512, 512)
    assert NgffV04().shard((512, 2048, 2048), (8, 256, 256), 2) is None


@pytest.mark.parametrize("version", VERSIONS)
def test_real_slices_validate_read_and_hash(tmp_path: Path, stp: SliceFolder, version: str) -> None:
    out = tmp_path / "stp.ome.zarr"
    res = write_ome_zarr(out, stp, physical_size_zyx_um=STP_UM, name="stp", version=version)
    source_hash = pixel_hash_planes(stp.iter_planes(), "ZYX", stp.shape, stp.dtype)
    assert res.pixel_hash == source_hash == pixel_hash_of_zarr(out)
    assert res.version == version
    assert res.levels == ((270, 193, 271), (135, 97, 136))
    assert res.scales_um == (STP_UM, (100.0, 80.0, 80.0))

    # bidspack's validation: NGFF schemas, ome-zarr-models, every chunk readable
    assert validate_ome_zarr(out, full=True) == []
    # the official NGFF JSON schemas, applied here directly
    assert _schema_errors(version, _root_attributes(out)) == {
        "image.schema": [],
        "strict_image.schema": [],
    }
    # ome-zarr-models
    import ome_zarr_models

    model = ome_zarr_models.open_ome_zarr(out, version=version)
    assert type(model).__module__ == f"ome_zarr_models.v0{version[-1]}.image"

    # the ome-zarr reader: levels, pixels, axes and scales
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    location = parse_url(str(out))
    assert location is not None
    node = next(iter(Reader(location)()))
    assert [tuple(d.shape) for d in node.data] == list(res.levels)
    data = _stack(stp)
    assert np.array_equal(np.asarray(node.data[0]), data)
    assert np.array_equal(np.asarray(node.data[1]), _reference_pyramid(data, [True], "mean")[1])
    meta = node.metadata
    assert [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in meta["axes"]} == {"micrometer"}
    scales = [t[0]["scale"] for t in meta["coordinateTransformations"]]
    assert scales == [[50.0, 40.0, 40.0], [100.0, 80.0, 80.0]]
    assert meta["coordinateTransformations"][1][1] == {
        "type": "translation",
        "translation": [25.0, 20.0, 20.0],
    }
    assert ome_zarr_scale_um(out) == STP_UM

    ms = _multiscale(out)
    assert ms["type"] == "mean" and ms["name"] == "stp"
    omero = _root_attributes(out).get("omero") or _root_attributes(out)["ome"]["omero"]
    window = omero["channels"][0]["window"]
    assert (window["min"], window["max"]) == (0, 65535)
    assert data.min() <= window["start"] < window["end"] <= data.max()


@pytest.mark.parametrize("version", VERSIONS)
def test_label_pyramid_keeps_label_values(tmp_path: Path, realdata: Path, version: str) -> None:
    src = TiffStack(realdata / "stp_mouse_brain" / "registered_hemispheres.tiff")
    assert src.shape == (135, 77, 108)
    out = tmp_path / "labels.ome.zarr"
    chunk = (1, 32, 32) if version == "0.5" else (4, 32, 32)  # small chunks: 3 levels
    res = write_ome_zarr(
        out,
        src,
        physical_size_zyx_um=STP_UM,
        name="hemis",
        kind="label",
        version=version,
        chunk=chunk,
    )
    assert res.levels == ((135, 77, 108), (68, 39, 54), (34, 20, 27))
    assert validate_ome_zarr(out) == []
    data = _stack(src)
    labels = set(np.unique(data).tolist())
    assert labels == {0, 1, 2}
    reference = _reference_pyramid(data, [True, True], "label")
    for i in range(len(res.levels)):
        level = _level(out, i)
        assert set(np.unique(level).tolist()) <= labels, f"level {i} has new values"
        assert np.array_equal(level, reference[i])
    assert _multiscale(out)["type"] == "nearest"
    assert "omero" not in json.dumps(_root_attributes(out))
    # label images carry no translation: the first voxel of a block keeps its position
    assert all(len(d["coordinateTransformations"]) == 1 for d in _multiscale(out)["datasets"])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["intensity", "label"])
def test_synthetic_pyramid_matches_reference(
    tmp_path: Path, version: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Odd sizes in every axis, z halved at each level (isotropic voxels), chunk depth 4
    for 0.4; tasks of 64 KiB, so planes are split in row bands of one chunk row."""
    monkeypatch.setattr(pyramid, "TASK_BYTES", 2**16)
    rng = np.random.default_rng(7)
    data = rng.integers(0, 60000, (21, 600, 530)).astype(np.uint16)
    src = _tiff(tmp_path / "in.tif", data)
    chunk = (1, 128, 128) if version == "0.5" else (4, 128, 128)
    out = tmp_path / "out.ome.zarr"
    res = write_ome_zarr(
        out, src, physical_size_zyx_um=(2.0,) * 3, name="s", kind=kind, version=version, chunk=chunk
    )
    assert res.levels == ((21, 600, 530), (11, 300, 265), (6, 150, 133), (3, 75, 67))
    assert res.scales_um[-1] == (16.0, 16.0, 16.0)
    reference = _reference_pyramid(data, [True, True, True], kind)
    for i in range(4):
        assert np.array_equal(_level(out, i), reference[i]), f"level {i}"
    shift = [t for t in _multiscale(out)["datasets"][3]["coordinateTransformations"][1:]]
    assert shift == (
        [{"type": "translation", "translation": [7.0, 7.0, 7.0]}] if kind == "intensity" else []
    )
    assert validate_ome_zarr(out) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_float_nan_and_big_endian_signed(tmp_path: Path, version: str) -> None:
    rng = np.random.default_rng(1)
    floats = rng.normal(0, 1000, (5, 300, 270)).astype(np.float32)
    floats[2, 10, 10] = np.nan
    signed = (rng.integers(-3000, 3000, (4, 257, 301))).astype(">i2")  # big-endian TIFF
    for name, data in (("f", floats), ("i", signed)):
        src = _tiff(tmp_path / f"{name}.tif", data)
        out = tmp_path / f"{name}.ome.zarr"
        res = write_ome_zarr(
            out, src, physical_size_zyx_um=(3.0, 1.0, 1.0), name=name, version=version
        )
        assert res.pixel_hash == pixel_hash_array(data, "ZYX") == pixel_hash_of_zarr(out)
        assert _level(out, 0).dtype == data.dtype.newbyteorder("<")
        reference = _reference_pyramid(data.astype(data.dtype.newbyteorder("<")), [False], "mean")
        assert np.array_equal(_level(out, 1), reference[1], equal_nan=True)
        assert validate_ome_zarr(out) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_byte_identical_rewrites(tmp_path: Path, stp: SliceFolder, version: str) -> None:
    """Same input, other worker counts and scheduler: the same bytes in every file."""
    outs = [tmp_path / f"{i}.ome.zarr" for i in range(3)]
    kw = {"physical_size_zyx_um": STP_UM, "name": "stp", "version": version}
    write_ome_zarr(outs[0], stp, workers=2, **kw)
    write_ome_zarr(outs[1], stp, workers=1, **kw)
    write_ome_zarr(outs[2], stp, scheduler="synchronous", **kw)
    first = snapshot(outs[0])
    assert first and all(snapshot(o) == first for o in outs[1:])
    text = "".join(
        (outs[0] / f).read_text() for f in ("zarr.json", ".zattrs") if (outs[0] / f).exists()
    )
    assert "uuid" not in text.lower() and "date" not in text.lower()


def test_distributed_cluster_gives_the_same_bytes(tmp_path: Path, stp: SliceFolder) -> None:
    """The conversion on a dask.distributed LocalCluster (2 worker processes), through a
    Client and through the scheduler's address, writes the bytes of the local run."""
    import distributed  # a declared dependency (dask[distributed])

    kw = {"physical_size_zyx_um": STP_UM, "name": "stp"}
    local = {v: tmp_path / f"local{v}.ome.zarr" for v in VERSIONS}
    for v, out in local.items():
        write_ome_zarr(out, stp, version=v, **kw)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        for v in VERSIONS:
            out = tmp_path / f"cluster{v}.ome.zarr"
            write_ome_zarr(out, stp, version=v, scheduler=client, **kw)
            assert snapshot(out) == snapshot(local[v])
        out = tmp_path / "address.ome.zarr"
        write_ome_zarr(out, stp, version="0.5", scheduler=cluster.scheduler_address, **kw)
        assert snapshot(out) == snapshot(local["0.5"])


def test_sharded_file_count_and_bounded_memory(tmp_path: Path) -> None:
    """A 315 MB stack in 0.5: at most one shard file per 64 MB of pixels, and the writer
    never holds more than a small part of the stack."""
    shape = (150, 1024, 1024)
    base = np.random.default_rng(5).integers(0, 4000, shape[1:], dtype=np.uint16)
    path = tmp_path / "big.tif"
    with tifffile.TiffWriter(path) as tif:  # written plane by plane
        tif.write((base + z for z in range(shape[0])), shape=shape, dtype=np.uint16)
    src = TiffStack(path)
    out = tmp_path / "big.ome.zarr"
    tracemalloc.start()
    try:
        res = write_ome_zarr(out, src, physical_size_zyx_um=(4.0, 1.8, 1.8), name="big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.levels == ((150, 1024, 1024), (150, 512, 512), (75, 256, 256))
    shards = [p for p in out.rglob("*") if p.is_file() and "c" in p.relative_to(out).parts]
    assert len(shards) <= src.nbytes / 64e6, f"{len(shards)} shard files for {src.nbytes} bytes"
    assert res.files == len(shards) + 4  # + zarr.json of the group and of 3 arrays
    assert peak < src.nbytes / 4, f"peak traced memory {peak / 1e6:.0f} MB"
    assert pixel_hash_of_zarr(out) == res.pixel_hash  # zarr-python reads every shard
    assert pixel_hash_of_zarr(out, level=2) == pixel_hash_array(_level(out, 2), "ZYX")


def test_bad_arguments(tmp_path: Path, stp: SliceFolder) -> None:
    kw = {"physical_size_zyx_um": STP_UM, "name": "x"}
    out = tmp_path / "o.ome.zarr"
    with pytest.raises(ValueError, match="version"):
        write_ome_zarr(out, stp, version="0.3", **kw)
    with pytest.raises(ValueError, match="kind"):
        write_ome_zarr(out, stp, kind="mask", **kw)
    with pytest.raises(ValueError, match="chunk"):
        write_ome_zarr(out, stp, chunk=(0, 256, 256), **kw)
    with pytest.raises(ValueError, match="physical"):
        write_ome_zarr(out, stp, physical_size_zyx_um=(0.0, 1.0, 1.0), name="x")
    floats = _tiff(tmp_path / "f.tif", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="label"):
        write_ome_zarr(out, floats, kind="label", **kw)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(OutputError, match=str(out)):
        write_ome_zarr(out, stp, **kw)


@pytest.mark.parametrize("version", VERSIONS)
def test_integrity_error_removes_the_output(
    tmp_path: Path, stp: SliceFolder, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode = pyramid.encode_chunks

    def corrupt(planes, z0, y0, level):
        if level.path == "0" and z0 == 0:
            planes = [planes[0] ^ 1, *planes[1:]]  # one changed plane, as a bad disk would
        return encode(planes, z0, y0, level)

    monkeypatch.setattr(pyramid, "encode_chunks", corrupt)
    out = tmp_path / "bad.ome.zarr"
    with pytest.raises(IntegrityError, match="hashes to"):
        write_ome_zarr(out, stp, physical_size_zyx_um=STP_UM, name="x", version=version)
    assert not out.exists()


@pytest.mark.parametrize("version", VERSIONS)
def test_validate_reports_problems(tmp_path: Path, stp: SliceFolder, version: str) -> None:
    good = tmp_path / "good.ome.zarr"
    write_ome_zarr(good, stp, physical_size_zyx_um=STP_UM, name="stp", version=version)
    meta_file = good / ("zarr.json" if version == "0.5" else ".zattrs")

    def edited(name: str, edit) -> Path:
        copy = tmp_path / name
        shutil.copytree(good, copy)
        doc = json.loads((copy / meta_file.name).read_text())
        ms = (doc["attributes"]["ome"] if version == "0.5" else doc)["multiscales"][0]
        edit(ms)
        (copy / meta_file.name).write_text(json.dumps(doc))
        return copy

    no_type = edited("no_type", lambda ms: ms.pop("type"))
    problems = validate_ome_zarr(no_type)
    assert any(p.startswith("strict_image.schema") and "'type'" in p for p in problems)
    assert not any(p.startswith("image.schema") for p in problems)

    level1_scale = [50.0, 40.0, 40.0]  # level 0's: wrong for the halved level 1
    bad_scale = edited(
        "bad_scale",
        lambda ms: ms["datasets"][1]["coordinateTransformations"][0].update(scale=level1_scale),
    )
    assert any("scale" in p and "level 1" in p for p in validate_ome_zarr(bad_scale))

    bad_unit = edited("bad_unit", lambda ms: ms["axes"][0].update(unit="parsec"))
    with pytest.raises(SourceError, match="unit"):
        ome_zarr_scale_um(bad_unit)

    damaged = tmp_path / "damaged"
    shutil.copytree(good, damaged)
    chunk_file = next(
        p
        for p in sorted((damaged / "0").rglob("*"))
        if p.is_file() and not p.name.startswith((".", "zarr"))
    )
    chunk_file.write_bytes(chunk_file.read_bytes()[:100])
    assert any("level 0" in p for p in validate_ome_zarr(damaged, full=True))
    with pytest.raises(SourceError):
        pixel_hash_of_zarr(damaged)

    (tmp_path / "plain").mkdir()
    assert len(validate_ome_zarr(tmp_path / "plain")) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ome_zarr.writer's own Scaler
def test_scale_reader_on_another_writers_image(tmp_path: Path) -> None:
    """ome_zarr_scale_um reads an image written by ome-zarr-py, in nanometres."""
    from ome_zarr.writer import write_image

    out = tmp_path / "peer.ome.zarr"
    write_image(
        np.zeros((4, 64, 64), np.uint8),
        str(out),
        axes="zyx",
        scale={"z": 2000.0, "y": 250.0, "x": 125.0},
        axes_units={"z": "nanometer", "y": "nanometer", "x": "nanometer"},
        scale_factors=[2],
    )
    assert ome_zarr_scale_um(out) == pytest.approx((2.0, 0.25, 0.125))
    assert pixel_hash_of_zarr(out) == pixel_hash_array(np.zeros((4, 64, 64), np.uint8), "ZYX")


# ---------------------------------------------------------------------------------------
# NGFF labels of an intensity image (0.4 / 0.5 #labels-md, #label-md)
# ---------------------------------------------------------------------------------------

LABEL_SCHEMAS = ("image.schema", "strict_image.schema", "label.schema", "strict_label.schema")
ATLAS_UM = (100.0, 100.0, 100.0)  # brainreg's downsampled space (README: supplied by the curator)


@pytest.fixture(scope="module")
def atlas(realdata: Path) -> dict[str, TiffStack]:
    """The real registered brain (135, 77, 108) uint16 and two real label masks in its
    space: hemispheres {0, 1, 2} uint8 and region boundaries {0, 1} int8."""
    d = realdata / "stp_mouse_brain"
    return {
        "image": TiffStack(d / "downsampled.tiff"),
        "hemispheres": TiffStack(d / "registered_hemispheres.tiff"),
        "boundaries": TiffStack(d / "boundaries.tiff"),
    }


def _write_with_labels(out: Path, atlas: dict[str, TiffStack], version: str):
    chunk = (1, 32, 32) if version == "0.5" else (8, 32, 32)  # a 3-level pyramid
    return write_ome_zarr(
        out,
        atlas["image"],
        physical_size_zyx_um=ATLAS_UM,
        name="brain",
        version=version,
        chunk=chunk,
        labels={"hemispheres": atlas["hemispheres"], "boundaries": atlas["boundaries"]},
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_ngff_labels_of_a_real_image(
    tmp_path: Path, atlas: dict[str, TiffStack], version: str
) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    out = tmp_path / "brain.ome.zarr"
    res = _write_with_labels(out, atlas, version)
    assert len(res.levels) == 3
    assert [(lb.name, lb.values) for lb in res.labels] == [("hemispheres", 3), ("boundaries", 2)]
    assert validate_ome_zarr(out, full=True) == []

    # the labels group lists both, in order; each label image passes the official
    # image and label schemas (strict included: it has colors)
    group = _root_attributes(out / "labels")
    assert group.get("ome", group)["labels"] == ["hemispheres", "boundaries"]
    for name in ("hemispheres", "boundaries"):
        label = out / "labels" / name
        attrs = _root_attributes(label)
        assert _schema_errors(version, attrs, LABEL_SCHEMAS) == {n: [] for n in LABEL_SCHEMAS}
        meta = attrs.get("ome", attrs)
        assert meta["image-label"]["source"] == {"image": "../../"}
        source = _stack(atlas[name])
        assert [c["label-value"] for c in meta["image-label"]["colors"]] == sorted(
            np.unique(source).tolist()
        )
        assert meta["image-label"]["colors"][0] == {"label-value": 0, "rgba": [0, 0, 0, 0]}
        assert _multiscale(label)["type"] == "nearest"
        # level 0 is the source, pixel for pixel; every level only has level-0 values
        assert pixel_hash_of_zarr(label) == pixel_hash_array(source, "ZYX")
        assert next(lb for lb in res.labels if lb.name == name).pixel_hash == pixel_hash_of_zarr(
            label
        )
        values = set(np.unique(_level(label, 0)).tolist())
        for i in range(3):
            level = _level(label, i)
            assert level.shape == _level(out, i).shape  # same shape as the image's level
            assert level.dtype == source.dtype
            assert set(np.unique(level).tolist()) <= values, f"{name} level {i} has new values"

    # ome-zarr-models sees the labels; the ome-zarr reader gives the image and both labels
    if version == "0.5":
        from ome_zarr_models.v05.image import Image
    else:
        from ome_zarr_models.v04.image import Image
    model = Image.from_zarr(zarr.open_group(str(out), mode="r"))
    assert model.labels is not None
    nodes = list(Reader(parse_url(str(out)))())
    labels = {n.zarr.basename(): n for n in nodes if any(isinstance(s, Label) for s in n.specs)}
    assert sorted(labels) == ["boundaries", "hemispheres"]
    assert [d.shape for d in labels["hemispheres"].data] == list(res.levels)
    assert sorted(labels["hemispheres"].metadata["color"]) == [0, 1, 2]

    # deterministic: the same input gives the same bytes
    again = tmp_path / "again.ome.zarr"
    _write_with_labels(again, atlas, version)
    assert snapshot(again) == snapshot(out)


@pytest.mark.parametrize("version", VERSIONS)
def test_ngff_labels_bad_input(
    tmp_path: Path, atlas: dict[str, TiffStack], stp: SliceFolder, version: str
) -> None:
    out = tmp_path / "x.ome.zarr"
    kw = {"physical_size_zyx_um": ATLAS_UM, "name": "x", "version": version}
    with pytest.raises(ValueError, match=r"shape \(270, 193, 271\)"):
        write_ome_zarr(out, atlas["image"], labels={"slices": stp}, **kw)
    floats = _tiff(tmp_path / "f.tif", np.zeros(atlas["image"].shape, np.float32))
    with pytest.raises(ValueError, match="float32; NGFF labels are integers"):
        write_ome_zarr(out, atlas["image"], labels={"f": floats}, **kw)
    for name in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="label name"):
            write_ome_zarr(out, atlas["image"], labels={name: atlas["hemispheres"]}, **kw)
    with pytest.raises(ValueError, match="not to a label image"):
        write_ome_zarr(
            out, atlas["hemispheres"], kind="label", labels={"h": atlas["hemispheres"]}, **kw
        )
    assert not out.exists()


def test_ngff_label_colors_above_the_cap(
    tmp_path: Path, atlas: dict[str, TiffStack], monkeypatch: pytest.MonkeyPatch
) -> None:
    """More distinct values than MAX_COLORS: only the background gets a colour."""
    from bidspack.io.omezarr import writer

    monkeypatch.setattr(writer, "MAX_COLORS", 2)
    out = tmp_path / "x.ome.zarr"
    res = _write_with_labels(out, atlas, "0.5")
    assert [(lb.name, lb.values) for lb in res.labels] == [("hemispheres", None), ("boundaries", 2)]
    meta = _root_attributes(out / "labels" / "hemispheres")["ome"]["image-label"]
    assert meta["colors"] == [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    assert validate_ome_zarr(out) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_validate_reports_label_problems(
    tmp_path: Path, atlas: dict[str, TiffStack], version: str
) -> None:
    good = tmp_path / "good.ome.zarr"
    _write_with_labels(good, atlas, version)
    meta_name = "zarr.json" if version == "0.5" else ".zattrs"

    def edited(name: str, rel: str, edit) -> Path:
        copy = tmp_path / name
        shutil.copytree(good, copy)
        file = copy / rel / meta_name
        doc = json.loads(file.read_text())
        attrs = doc["attributes"] if version == "0.5" else doc
        edit(attrs.get("ome", attrs))
        file.write_text(json.dumps(doc))
        return copy

    missing = edited("missing.ome.zarr", "labels", lambda m: m["labels"].append("cells"))
    assert any(
        "labels/cells: listed in the labels group but missing" in p
        for p in validate_ome_zarr(missing)
    )
    fewer = edited(
        "fewer.ome.zarr", "labels/boundaries", lambda m: m["multiscales"][0]["datasets"].pop()
    )
    assert any(
        "labels/boundaries: 2 levels, the image has 3" in p for p in validate_ome_zarr(fewer)
    )
    elsewhere = edited(
        "elsewhere.ome.zarr",
        "labels/hemispheres",
        lambda m: m["image-label"].update(source={"image": "../"}),
    )
    assert any("source.image" in p for p in validate_ome_zarr(elsewhere))
    colours = edited(
        "colours.ome.zarr",
        "labels/hemispheres",
        lambda m: m["image-label"]["colors"][1].update(rgba=[0, 0, 300, 255]),
    )
    assert any("label.schema" in p and "300" in p for p in validate_ome_zarr(colours))


def _positioned_tiff(path: Path, data: np.ndarray) -> TiffStack:
    """An OME-TIFF whose Plane positions (micrometres) put its first voxel at
    (z, y, x) = (100, -50.5, 2000) um, voxel size (2, 0.5, 0.5) um."""
    z = data.shape[0]
    planes = {
        "PositionX": [2000.0] * z,
        "PositionXUnit": ["µm"] * z,
        "PositionY": [-50.5] * z,
        "PositionYUnit": ["µm"] * z,
        "PositionZ": [100.0 + 2 * i for i in range(z)],
        "PositionZUnit": ["µm"] * z,
    }
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}
    tifffile.imwrite(path, data, metadata={**meta, "Plane": planes})
    return TiffStack(path)


@pytest.mark.parametrize("version", VERSIONS)
def test_translation_from_the_source_origin(tmp_path: Path, version: str) -> None:
    """The source's OME-XML Plane position becomes each level's translation (plus the
    half-block shift of mean levels); NGFF labels share the origin; a position in
    'reference frame' units (the real Zeiss OME-TIFF) gives no translation."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4000, (4, 300, 300)).astype(np.uint16)
    src = _positioned_tiff(tmp_path / "pos.ome.tif", data)
    assert src.info.origin == (100.0, -50.5, 2000.0)
    labels = _tiff(tmp_path / "lab.tif", (data > 2000).astype(np.uint8))
    out = tmp_path / "pos.ome.zarr"
    write_ome_zarr(
        out,
        src,
        physical_size_zyx_um=(2.0, 0.5, 0.5),
        name="pos",
        version=version,
        labels={"bright": labels},
    )
    assert validate_ome_zarr(out, full=True) == []
    datasets = _multiscale(out)["datasets"]
    assert len(datasets) == 2
    t0, t1 = (d["coordinateTransformations"][1]["translation"] for d in datasets)
    assert t0 == [100.0, -50.5, 2000.0]
    assert t1 == pytest.approx([100.0, -50.25, 2000.25])  # + half a 2x2 block - half a voxel
    label_sets = _multiscale(out / "labels" / "bright")["datasets"]
    assert [d["coordinateTransformations"][1]["translation"] for d in label_sets] == [
        [100.0, -50.5, 2000.0]
    ] * 2
    assert ome_zarr_scale_um(out) == pytest.approx((2.0, 0.5, 0.5))
    # an explicit origin wins; the real Zeiss file's stage positions have no length unit
    again = tmp_path / "given.ome.zarr"
    write_ome_zarr(
        again, src, physical_size_zyx_um=(2.0, 0.5, 0.5), name="pos", origin_zyx_um=(1, 2, 3)
    )
    assert _multiscale(again)["datasets"][0]["coordinateTransformations"][1]["translation"] == [
        1,
        2,
        3,
    ]
    real = REPO.parent / "shared" / "realdata" / "ometiff" / "s_1_t_1_c_1_z_1.ome.tiff"
    assert TiffStack(real).info.origin is None
