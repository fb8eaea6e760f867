"""``bidspack inspect``: an inventory of the image sources under some paths, from
metadata only (no pixel is decoded).

What is listed:

- files that a reader of bidspack opens: TIFF/OME-TIFF stacks (a folder's 2D TIFFs
  together as one slice folder), MRC, NRRD, video, vendor files bioio reads (CZI ...),
  every 2D/3D dataset of an HDF5 file, every channel set of an Imaris file;
- container stores (a folder ending in ``.zarr``/``.n5``, or holding ``zarr.json``,
  ``.zgroup``, ``.zarray`` or N5 ``attributes.json``): every multiscale image
  (OME-Zarr ``multiscales``, N5 ``multiscales``/``s0`` ...) and every array that is
  not a level of one;
- every entry that is not read, with the reason: links (not followed), FIFOs, sockets
  and devices (never opened), files no reader opens (``unreadable``).

The walk does not follow symbolic links and never opens anything but regular files
and folders (:func:`bidspack.io.tree.refusal`, the rule of :func:`bidspack.io.tree.scan`);
it does not descend into the arrays of a container (chunk files are never listed).

Label roles (OpenOrganelle / CellMap naming, :func:`label_role`), from the path of an
image inside its container, case-insensitive, first rule that matches:

1. ``ground-truth``: a path component ``gt``, ``groundtruth``, ``ground_truth``,
   ``ground-truth``, or ending in ``_gt``;
2. ``inference``: a component ``inference``, ``prediction(s)``, ``pred(s)``, or ending
   in ``_pred``, ``_prediction(s)``, ``_seg``, ``_inference``;
3. ``labels``: any other image under a ``labels`` group (e.g. NGFF labels);
4. otherwise ``image``.

Totals count containers (a Zarr/N5 store or an HDF5 file): with ground truth, with
inference, with both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bidspack.errors import BidspackError
from bidspack.io.tree import refusal
from bidspack.safety import entry_kind

#: Vendor file suffixes offered to bioio (other suffixes are not image files here).
VENDOR_SUFFIXES = (".czi", ".lif", ".nd2", ".lsm", ".oib", ".oir", ".vsi", ".sld", ".lei")

_GT = re.compile(r"^(gt|groundtruth|ground_truth|ground-truth)$|_gt$")
_INF = re.compile(r"^(inference|predictions?|preds?)$|_(pred|predictions?|seg|inference)$")


def label_role(inner: str) -> str:
    """The role of an image from its path inside its container (module docstring)."""
    parts = [p.lower() for p in inner.strip("/").split("/") if p]
    if any(_GT.search(p) for p in parts):
        return "ground-truth"
    if any(_INF.search(p) for p in parts):
        return "inference"
    if "labels" in parts:
        return "labels"
    return "image"


@dataclass
class SourceEntry:
    """One image source found.

    Attributes:
        path: the file or folder as found (under the given path).
        dataset: the image inside a container (``/group/array``), or ``None``.
        format: reader format name.
        shape: the stored shape, in *axes* order.
        axes: axis letters (``ZYX``, ``TCZYX`` ...).
        shape_zyx: the ``(z, y, x)`` image bidspack reads.
        dtype: pixel type.
        physical_size_zyx_um: voxel size in µm, ``None`` per axis the file lacks (a 2D
            image has no Z), or ``None`` (none in the file).
        unit: the file's length unit, or ``None``.
        translation_zyx_um: first voxel centre in µm, or ``None``.
        channels: channel names (or count, as ``""`` names).
        levels: resolution levels.
        role: ``image``, ``labels``, ``ground-truth`` or ``inference``.
        container: the container store / HDF5 file this belongs to, or ``None``.
    """

    path: str
    dataset: str | None
    format: str
    shape: list[int]
    axes: str
    shape_zyx: list[int]
    dtype: str
    physical_size_zyx_um: list[float | None] | None
    unit: str | None
    translation_zyx_um: list[float] | None
    channels: list[str]
    levels: int
    role: str = "image"
    container: str | None = None


@dataclass
class Inventory:
    """What :func:`inspect_paths` found: ``sources``, ``unreadable`` (``path``,
    ``reason``), ``refused`` (entries not read: links, FIFOs ...), ``containers``
    (per store: ``path``, ``ground_truth``, ``inference`` counts) and ``totals``."""

    sources: list[SourceEntry] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    containers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        """Counts: sources, unreadable, refused, containers, and containers with
        ground truth, with inference, with both."""
        gt = sum(1 for c in self.containers if c["ground_truth"])
        inf = sum(1 for c in self.containers if c["inference"])
        both = sum(1 for c in self.containers if c["ground_truth"] and c["inference"])
        return {
            "sources": len(self.sources),
            "unreadable": len(self.unreadable),
            "refused": len(self.refused),
            "containers": len(self.containers),
            "with_ground_truth": gt,
            "with_inference": inf,
            "with_both": both,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``--json``)."""
        return {
            "sources": [asdict(s) for s in self.sources],
            "unreadable": self.unreadable,
            "refused": self.refused,
            "containers": self.containers,
            "totals": self.totals,
        }


def _entry(
    src: Any, shown: str, *, role: str = "image", container: str | None = None
) -> SourceEntry:
    found = src.info.found_sizes()
    phys = list(found) if any(v is not None for v in found) else None
    org = src.info.origin
    names = list(getattr(src, "channel_names", ()) or ())
    if not names and getattr(src, "channel_name", None):
        names = [str(src.channel_name)]
    return SourceEntry(
        path=shown,
        dataset=getattr(src, "dataset", None),
        format=getattr(src, "format", "") or type(src).__name__,
        shape=list(getattr(src, "file_shape", ()) or src.shape),
        axes=getattr(src, "axes", "ZYX"),
        shape_zyx=list(src.shape),
        dtype=src.dtype.name,
        physical_size_zyx_um=phys,
        unit=getattr(src, "unit", None) or ("µm" if phys else None),
        translation_zyx_um=list(org) if org else None,
        channels=names,
        levels=int(getattr(src, "levels", 1)),
        role=role,
        container=container,
    )


def _open_any(path: Path, **sel: Any) -> Any:
    """Open with a first channel/time point chosen when the file has several."""
    from bidspack.io.containers import open_container

    try:
        return open_container(path, **sel)
    except BidspackError as exc:
        text = exc.reason
        if "choose a channel" in text or "; choose one" in text:
            if "time point" in text:
                sel = {**sel, "time": 0}
            if "channel" in text:
                sel = {**sel, "channel": "Y" if "Y for the luma" in text else 0}
            return _open_any(path, **sel)
        raise


def _walk(root: Path) -> tuple[list[Path], list[Path], list[dict[str, str]]]:
    """(files, container folders, refused) under *root*: links and special files are
    refused (the rule of :func:`bidspack.io.tree.scan`), containers not descended."""
    from bidspack.io.containers import FOLDER_SUFFIXES, is_zarr

    files: list[Path] = []
    stores: list[Path] = []
    refused: list[dict[str, str]] = []
    kind = entry_kind(root)
    if kind == "missing":
        return [], [], [{"path": str(root), "reason": "not found"}]
    if kind == "symlink":
        return (
            [],
            [],
            [{"path": str(root), "reason": f"symbolic link to {os.readlink(root)}: not followed"}],
        )
    if kind == "file":
        return [root], [], []
    if kind != "dir":
        return [], [], [{"path": str(root), "reason": f"a {kind}: not read"}]

    def is_store(p: Path) -> bool:
        return (
            p.name.lower().endswith(FOLDER_SUFFIXES)
            or is_zarr(p)
            or (p / "attributes.json").is_file()
        )

    if is_store(root):
        return [], [root], []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            names = sorted(os.listdir(root / rel) if rel else os.listdir(root))
        except OSError as exc:
            refused.append(
                {"path": str(root / rel), "reason": f"cannot list folder ({exc.strerror})"}
            )
            continue
        for name in names:
            child = f"{rel}/{name}" if rel else name
            why = refusal(root, child, follow_symlinks=False)
            if why is not None:
                refused.append({"path": str(root / child), "reason": why})
                continue
            ck = entry_kind(root / child)
            if ck == "dir":
                if is_store(root / child):
                    stores.append(root / child)
                else:
                    stack.append(child)
            elif ck == "file":
                files.append(root / child)
    return sorted(files), sorted(stores), refused


def _store_nodes(store: Path) -> list[str]:
    """Container-relative paths of the images of an N5/Zarr store: multiscale groups
    and arrays that are not levels of one. Never descends into an array."""
    import json

    out: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        here = store / rel if rel else store
        attrs: dict[str, Any] = {}
        node = "group"
        try:
            if (here / "zarr.json").is_file():
                doc = json.loads((here / "zarr.json").read_text("utf-8"))
                node = doc.get("node_type", "group")
                attrs = doc.get("attributes", {}) or {}
            elif (here / ".zarray").is_file():
                node = "array"
            elif (here / "attributes.json").is_file():
                attrs = json.loads((here / "attributes.json").read_text("utf-8"))
                node = "array" if "dimensions" in attrs else "group"
            if (here / ".zattrs").is_file():
                attrs = json.loads((here / ".zattrs").read_text("utf-8"))
        except (OSError, ValueError):
            out.append(rel)  # reported as unreadable when opened
            continue
        if node == "array":
            out.append(rel)
            continue
        ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
        ms = ome.get("multiscales") if isinstance(ome, dict) else None
        skip: set[str] = set()
        if isinstance(ms, list) and ms and isinstance(ms[0], dict):
            out.append(rel)
            skip = {
                str(d.get("path", "")).split("/")[0]
                for d in ms[0].get("datasets", [])
                if isinstance(d, dict)
            }
        elif (here / "s0" / "attributes.json").is_file():
            out.append(rel)
            skip = {c.name for c in here.iterdir() if re.fullmatch(r"s\d+", c.name)}
        try:
            children = sorted(os.listdir(here))
        except OSError:
            continue
        for name in children:
            if name in skip or name.startswith("."):
                continue
            if entry_kind(here / name) == "dir":
                stack.append(f"{rel}/{name}" if rel else name)
    return sorted(out)


def inspect_paths(paths: Sequence[Path]) -> Inventory:
    """The inventory of every image source under *paths* (module docstring).

    Never raises for a file it cannot read: the file is listed in ``unreadable`` with
    the reader's reason.
    """
    inv = Inventory()
    for root in paths:
        root = Path(root)
        files, stores, refused = _walk(root)
        inv.refused.extend(refused)
        for store in stores:
            _inspect_store(store, inv)
        _inspect_files(files, inv)
    return inv


def _inspect_store(store: Path, inv: Inventory) -> None:
    from bidspack.io.containers import ChunkedStoreSource

    counts: dict[str, Any] = {
        "path": str(store),
        "images": 0,
        "ground_truth": 0,
        "inference": 0,
        "labels": 0,
    }
    for rel in _store_nodes(store):
        shown = str(store / rel) if rel else str(store)
        try:
            try:
                src = ChunkedStoreSource(store, dataset=rel or None)
            except BidspackError as exc:
                if "choose" not in exc.reason:
                    raise
                sel: dict[str, Any] = {"channel": 0} if "channel" in exc.reason else {"time": 0}
                try:
                    src = ChunkedStoreSource(store, dataset=rel or None, **sel)
                except BidspackError as exc2:
                    if "choose" not in exc2.reason:
                        raise
                    src = ChunkedStoreSource(store, dataset=rel or None, channel=0, time=0)
        except BidspackError as exc:
            inv.unreadable.append({"path": shown, "reason": exc.reason})
            continue
        role = label_role(rel)
        inv.sources.append(_entry(src, shown, role=role, container=str(store)))
        key = {"ground-truth": "ground_truth", "inference": "inference", "labels": "labels"}.get(
            role, "images"
        )
        counts[key] += 1
    inv.containers.append(counts)


def _inspect_files(files: Iterable[Path], inv: Inventory) -> None:
    from bidspack.io.containers import container_kind, hdf5_datasets
    from bidspack.io.sources import SliceFolder, TiffStack, _tiff_header, is_tiff

    slices: dict[Path, list[Path]] = {}
    for f in files:
        kind = container_kind(f)
        try:
            if kind == "hdf5":
                _inspect_hdf5(f, inv, hdf5_datasets)
            elif kind is not None:
                src = _open_any(f)
                inv.sources.append(_entry(src, str(f)))
            elif is_tiff(f):
                shape, _, _, _ = _tiff_header(f)
                if len(shape) == 2:
                    slices.setdefault(f.parent, []).append(f)
                else:
                    inv.sources.append(_entry(TiffStack(f), str(f)))
            elif f.name.lower().endswith(VENDOR_SUFFIXES):
                from bidspack.io.vendor import VendorImage

                src = VendorImage(f)
                inv.sources.append(_entry(src, str(f)))
            elif _looks_binary_image(f):
                inv.unreadable.append({"path": str(f), "reason": "no reader for this file type"})
        except BidspackError as exc:
            inv.unreadable.append({"path": str(f), "reason": exc.reason})
    for folder, group in sorted(slices.items()):
        try:
            src = SliceFolder(folder, group) if len(group) > 1 else TiffStack(group[0])
            inv.sources.append(_entry(src, str(folder if len(group) > 1 else group[0])))
        except BidspackError as exc:
            inv.unreadable.append({"path": str(folder), "reason": exc.reason})


def _looks_binary_image(path: Path) -> bool:
    """Files named like images that no reader here takes (listed as unreadable)."""
    return path.suffix.lower() in (".jp2", ".png", ".jpg", ".jpeg", ".bmp", ".raw", ".img", ".vol")


def _inspect_hdf5(path: Path, inv: Inventory, lister: Any) -> None:
    from bidspack.io.containers import HDF5Source, _hdf5_file

    h5 = _hdf5_file(path)
    try:
        found = lister(h5)
    finally:
        h5.close()
    counts: dict[str, Any] = {
        "path": str(path),
        "images": 0,
        "ground_truth": 0,
        "inference": 0,
        "labels": 0,
    }
    if not found:
        inv.unreadable.append({"path": str(path), "reason": "no 2D-5D numeric dataset in the file"})
    for name, shape, _ in found:
        shown = f"{path}:{name}"
        if len(shape) not in (2, 3):
            inv.unreadable.append(
                {"path": shown, "reason": f"dataset of shape {list(shape)}: not 2D/3D"}
            )
            continue
        try:
            src = HDF5Source(path, dataset=name)
        except BidspackError as exc:
            inv.unreadable.append({"path": shown, "reason": exc.reason})
            continue
        role = label_role(name)
        inv.sources.append(_entry(src, shown, role=role, container=str(path)))
        key = {"ground-truth": "ground_truth", "inference": "inference", "labels": "labels"}.get(
            role, "images"
        )
        counts[key] += 1
    inv.containers.append(counts)
