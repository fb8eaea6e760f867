"""Write a deterministic example submission shaped like a real light-sheet lab delivery.

Per subject folder (``<date>_<id>_<genotype>_<sex>_<hemisphere>_<time>_decon_<date>_<time>``)::

    640_N4/Z0000.tif ...                      intensity slices, uint16
    atlaslabel_def_origspace/Z0000.tif ...    atlas label slices, uint16
    atlaslabel_def_origspace_masked/Z00000.tif ...
                                              same labels, 5-digit padding; in a few
                                              slices most labels are missing
    640_FRST_seg/Z0000.tif ... + cells.csv, regions.csv
                                              segmentation label slices and tables
    640_FRST_seg_corr/cells_corrected.csv     tables only
    heatmaps_atlasspace/Z0000.tif ...         float32 heat maps in atlas space

The same arguments give byte-identical files (seeded generator, no timestamps).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import tifffile

EXAMPLE_SPEC_NAME = "lightsheet-spec.toml"


@dataclass(frozen=True)
class ExampleSubject:
    """One subject folder of the example."""

    date: str
    subject: str
    genotype: str
    sex: str
    hemisphere: str
    time: str
    processed: str

    @property
    def folder(self) -> str:
        """The folder name, as the lab names it."""
        return (
            f"{self.date}_{self.subject}_{self.genotype}_{self.sex}_{self.hemisphere}_"
            f"{self.time}_decon_{self.processed}"
        )


SUBJECTS = (
    ExampleSubject("210810", "45670", "ko", "female", "LH", "14-48-50", "2021-10-28_12-39-11"),
    ExampleSubject("210811", "45671", "floxed", "male", "RH", "09-12-03", "2021-10-28_15-02-47"),
    ExampleSubject("210812", "45672", "ko", "male", "LH", "11-30-19", "2021-10-29_08-21-05"),
)


def example_spec_text() -> str:
    """The packaging spec of the example (``examples/lightsheet-spec.toml``)."""
    return resources.files("bidspack.examples").joinpath(EXAMPLE_SPEC_NAME).read_text("utf-8")


def _brain(rng: np.random.Generator, z: int, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic brain: ellipsoid intensity (uint16) and atlas labels (uint16)."""
    zz, yy, xx = np.meshgrid(
        np.linspace(-1, 1, z), np.linspace(-1, 1, y), np.linspace(-1, 1, x), indexing="ij"
    )
    r = np.sqrt((zz / 0.9) ** 2 + (yy / 0.8) ** 2 + (xx / 0.9) ** 2)
    inside = r < 1
    intensity = (inside * (1200 - 600 * r) + rng.normal(150, 40, r.shape)).clip(0, 65535)
    angle = np.arctan2(yy, xx)
    labels = np.where(
        inside, 1 + (np.floor((angle + np.pi) / (np.pi / 4)) % 8) * 10 + np.floor(r * 3), 0
    )
    return intensity.astype(np.uint16), labels.astype(np.uint16)


def write_submission(
    root: Path,
    *,
    shape: tuple[int, int, int] = (24, 96, 128),
    n_subjects: int = 3,
    masked_slices: tuple[int, ...] = (5, 11),
    seed: int = 45670,
    with_spec: bool = True,
) -> Path:
    """Write the example submission under *root* (created; must not exist or be empty).

    Args:
        root: submission folder.
        shape: ``(z, y, x)`` of each subject's stacks in pixels.
        n_subjects: 1 to 3 subject folders.
        masked_slices: Z indices where the ``_masked`` label copy lost most labels.
        seed: random seed (the output depends only on the arguments).
        with_spec: also write the packaging spec, as ``root.parent / EXAMPLE_SPEC_NAME``.

    Returns:
        The path of the packaging spec (or *root* if ``with_spec`` is false).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    z, y, x = shape
    for i, subj in enumerate(SUBJECTS[:n_subjects]):
        rng = np.random.default_rng(seed + i)
        intensity, labels = _brain(rng, z, y, x)
        base = root / subj.folder
        for name in (
            "640_N4",
            "atlaslabel_def_origspace",
            "atlaslabel_def_origspace_masked",
            "640_FRST_seg",
            "640_FRST_seg_corr",
            "heatmaps_atlasspace",
        ):
            (base / name).mkdir(parents=True, exist_ok=True)
        seg = ((intensity > 900) & (rng.random(intensity.shape) > 0.7)).astype(np.uint16)
        heat = intensity[:, ::2, ::2].astype(np.float32) / 1000.0
        for k in range(z):
            tifffile.imwrite(base / "640_N4" / f"Z{k:04d}.tif", intensity[k])
            tifffile.imwrite(base / "atlaslabel_def_origspace" / f"Z{k:04d}.tif", labels[k])
            masked = labels[k].copy()
            if k in masked_slices:
                masked[masked > 11] = 0  # most labels missing
            tifffile.imwrite(base / "atlaslabel_def_origspace_masked" / f"Z{k:05d}.tif", masked)
            tifffile.imwrite(base / "640_FRST_seg" / f"Z{k:04d}.tif", seg[k] * (k + 1))
            tifffile.imwrite(base / "heatmaps_atlasspace" / f"Z{k:04d}.tif", heat[k])
        cells = np.argwhere(seg[:, ::8, ::8] > 0)[:50]
        rows = "\n".join(f"{n},{c[0]},{c[1] * 8},{c[2] * 8}" for n, c in enumerate(cells))
        (base / "640_FRST_seg" / "cells.csv").write_text("id,z,y,x\n" + rows + "\n")
        counts = np.bincount(labels.ravel().astype(np.int64))
        regions = "\n".join(f"{lab},{int(n)}" for lab, n in enumerate(counts) if n and lab)
        (base / "640_FRST_seg" / "regions.csv").write_text("label,voxels\n" + regions + "\n")
        (base / "640_FRST_seg_corr" / "cells_corrected.csv").write_text(
            "id,z,y,x,corrected\n" + "\n".join(r + ",1" for r in rows.splitlines()) + "\n"
        )
    if not with_spec:
        return root
    spec_path = root.parent / EXAMPLE_SPEC_NAME
    spec_path.write_text(example_spec_text(), encoding="utf-8")
    return spec_path
