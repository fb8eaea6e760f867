"""``bidspack validate``: the official BIDS validator plus bidspack's own checks.

1. ``bids-validator-deno --format json -r`` (the official validator, BIDS 1.11.1
   schema 1.2.7 in the pinned 3.0.2; ``-r`` validates ``derivatives/*`` too). Each
   error becomes an ``error`` record; warnings are grouped per code into ``ok`` records
   with ``severity: warning``.
2. Checks the validator does not make (measured on 3.0.2):
   - ``samples.tsv`` present when files carry a ``sample`` entity, one row per
     (sample, participant) pair used, every participant listed in ``participants.tsv``;
   - the sidecar ``PixelSize`` equals the OME-XML physical sizes of every
     ``.ome.tif``/``.ome.btf``, wherever the OME-XML lies and in BigTIFF too (the
     validator only looks at the first 4 KiB of classic TIFFs);
   - ``.ome.zarr`` folders are Zarr groups (their content is opaque to the validator);
   - a packaged dataset is complete: every output of its plan (``code/bidspack/plan.json``)
     is present, else one ``INCOMPLETE_PACKAGING`` error per missing step (a run
     stopped part-way; re-running ``bidspack package`` finishes it).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tifffile

from bidspack.bids.tables import read_tsv
from bidspack.errors import ToolError, ValidationFailed
from bidspack.io.omexml import physical_sizes_um
from bidspack.records import Record
from bidspack.txn.steps import step_key

VALIDATOR = "bids-validator-deno"
_ENT = re.compile(r"(?:^|_)(sub|sample)-([0-9a-zA-Z+]+)")


def validator_command() -> list[str]:
    """The command that runs the pinned validator.

    Raises:
        ToolError: ``bids-validator-deno`` is not installed.
    """
    exe = shutil.which(VALIDATOR)
    if exe is None:
        raise ToolError(
            None, f"{VALIDATOR} is not installed", hint="pip install bids-validator-deno"
        )
    return [exe]


def run_bids_validator(dataset: Path, *, recursive: bool = True) -> dict[str, Any]:
    """Run the official validator and return its JSON report.

    Raises:
        ToolError: the validator is missing, crashed, or printed no JSON.
    """
    cmd = [*validator_command(), str(dataset), "--format", "json", "--no-color"]
    if recursive:
        cmd.append("-r")
    env = dict(os.environ, NO_COLOR="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        tail = (proc.stderr or proc.stdout).strip()[-500:]
        raise ToolError(dataset, f"{VALIDATOR} failed (exit {proc.returncode}): {tail}") from exc


def _validator_records(report: dict[str, Any]) -> Iterator[Record]:
    groups: list[tuple[str, dict[str, Any]]] = [("", report)]
    groups += [(k.strip("/"), v) for k, v in sorted(report.get("derivativesSummary", {}).items())]
    for prefix, rep in groups:
        warnings: dict[str, list[str]] = defaultdict(list)
        for issue in rep.get("issues", {}).get("issues", []):
            loc = (issue.get("location") or "/").lstrip("/")
            path = f"{prefix}/{loc}".strip("/") if prefix else loc
            code = issue.get("code", "UNKNOWN")
            if issue.get("subCode"):
                code += f"[{issue['subCode']}]"
            if issue.get("severity") == "error":
                msg = (issue.get("issueMessage") or "").strip().splitlines()
                yield Record(
                    "validate",
                    path or ".",
                    "error",
                    f"{code}" + (f": {msg[0]}" if msg else ""),
                    {
                        "validator": VALIDATOR,
                        "code": issue.get("code"),
                        "subCode": issue.get("subCode"),
                        "severity": "error",
                    },
                )
            else:
                warnings[code].append(path or ".")
        for code, paths in sorted(warnings.items()):
            yield Record(
                "validate",
                prefix or ".",
                "ok",
                f"warning {code} ({len(paths)} file(s))",
                {
                    "validator": VALIDATOR,
                    "code": code,
                    "severity": "warning",
                    "paths": sorted(set(paths))[:20],
                },
            )


def _image_files(dataset: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(dataset):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and d != "sourcedata" and not d.endswith(".ome.zarr")
        )
        rel = Path(dirpath).relative_to(dataset)
        if rel.parts and rel.parts[0] == "code":
            continue
        for f in sorted(filenames):
            if f.endswith((".ome.tif", ".ome.btf")):
                out.append(Path(dirpath) / f)
    return out


def check_samples(dataset: Path) -> Iterator[Record]:
    """samples.tsv / participants.tsv consistency with the ``sample`` entities used."""
    used: set[tuple[str, str]] = set()
    for dirpath, dirnames, filenames in os.walk(dataset):
        rel = Path(dirpath).relative_to(dataset)
        if rel.parts and (
            rel.parts[0].startswith(".") or rel.parts[0] in ("sourcedata", "code", "derivatives")
        ):
            dirnames[:] = []
            continue
        for f in filenames + [d for d in dirnames if d.endswith(".ome.zarr")]:
            ents = dict(_ENT.findall(f))
            if "sub" in ents and "sample" in ents:
                used.add((f"sample-{ents['sample']}", f"sub-{ents['sub']}"))
    if not used:
        return
    tsv = dataset / "samples.tsv"
    if not tsv.is_file():
        yield Record(
            "validate",
            "samples.tsv",
            "error",
            "samples.tsv is missing but files use the sample entity",
            {"check": "samples"},
        )
        return
    rows = read_tsv(tsv)
    pairs = {(r.get("sample_id", ""), r.get("participant_id", "")) for r in rows}
    for sample, sub in sorted(used - pairs):
        yield Record(
            "validate",
            "samples.tsv",
            "error",
            f"no row for {sample} of {sub}",
            {"check": "samples"},
        )
    ptsv = dataset / "participants.tsv"
    participants = {r.get("participant_id") for r in read_tsv(ptsv)} if ptsv.is_file() else set()
    for _, sub in sorted(pairs):
        if sub not in participants:
            yield Record(
                "validate",
                "samples.tsv",
                "error",
                f"{sub} is not listed in participants.tsv",
                {"check": "samples"},
            )
    yield Record(
        "validate", "samples.tsv", "ok", f"{len(used)} sample(s) consistent", {"check": "samples"}
    )


def _compare_pixel_size(
    rel: str,
    sidecar: Path,
    image_zyx: Sequence[float | None] | None,
    what: str,
) -> Record:
    """Compare a sidecar's ``PixelSize`` ``[x, y(, z)]`` (with ``PixelSizeUnits``) to the
    image's own ``(z, y, x)`` physical size in micrometres; one record either way."""

    def error(message: str) -> Record:
        return Record("validate", rel, "error", message, {"check": "pixelsize"})

    if not sidecar.is_file():
        return error("no JSON sidecar next to the image")
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    size = meta.get("PixelSize")
    factor = {"um": 1.0, "nm": 1e-3, "mm": 1e3}.get(meta.get("PixelSizeUnits") or "")
    if (
        image_zyx is None
        or image_zyx[1] is None
        or image_zyx[2] is None
        or not isinstance(size, list)
        or factor is None
    ):
        return error(f"PixelSize/PixelSizeUnits or {what} physical sizes missing")
    side_xyz = [float(v) * factor for v in size]
    full_xyz = [image_zyx[2], image_zyx[1], image_zyx[0]]
    image_xyz = full_xyz[: len(side_xyz)]
    if len(side_xyz) == 2 and what == "OME-XML" and full_xyz[2] is not None:
        return error(f"sidecar PixelSize has no Z but the {what} has PhysicalSizeZ {full_xyz[2]}")
    if all(
        b is not None and math.isclose(a, b, rel_tol=1e-6)
        for a, b in zip(side_xyz, image_xyz, strict=True)
    ):
        return Record("validate", rel, "ok", f"PixelSize matches {what}", {"check": "pixelsize"})
    return error(f"sidecar PixelSize {side_xyz} um (x, y, z) != {what} {image_xyz} um")


def check_pixel_sizes(dataset: Path) -> Iterator[Record]:
    """Sidecar PixelSize vs OME-XML physical sizes for every OME-TIFF (all of the XML)."""
    for path in _image_files(dataset):
        rel = path.relative_to(dataset).as_posix()
        name = path.name.removesuffix(".ome.tif").removesuffix(".ome.btf")
        try:
            with tifffile.TiffFile(path) as tif:
                xml = tif.ome_metadata
        except Exception as exc:
            yield Record(
                "validate", rel, "error", f"unreadable OME-TIFF: {exc}", {"check": "pixelsize"}
            )
            continue
        if not xml:
            yield Record("validate", rel, "error", "no OME-XML in the file", {"check": "pixelsize"})
            continue
        try:
            ome_zyx = physical_sizes_um(xml)
        except ValueError as exc:
            yield Record("validate", rel, "error", str(exc), {"check": "pixelsize"})
            continue
        yield _compare_pixel_size(rel, path.with_name(name + ".json"), ome_zyx, "OME-XML")


def check_ome_zarr(dataset: Path) -> Iterator[Record]:
    """Every ``.ome.zarr`` image: official NGFF schemas, ome-zarr-models, readable
    arrays, and level-0 scale equal to the sidecar ``PixelSize`` (the BIDS validator
    treats ``.ome.zarr`` as an opaque folder)."""
    from bidspack.io.omezarr import ome_zarr_scale_um, validate_ome_zarr

    for path in sorted(dataset.rglob("*.ome.zarr")):
        rel = path.relative_to(dataset).as_posix()
        if not path.is_dir() or rel.startswith((".", "sourcedata/", "code/")):
            continue
        problems = validate_ome_zarr(path)
        for problem in problems:
            yield Record("validate", rel, "error", problem, {"check": "ome-zarr"})
        if problems:
            continue
        yield Record("validate", rel, "ok", "NGFF valid", {"check": "ome-zarr"})
        sidecar = path.with_name(path.name.removesuffix(".ome.zarr") + ".json")
        yield _compare_pixel_size(rel, sidecar, ome_zarr_scale_um(path), "OME-Zarr scale")


def check_complete(dataset: Path) -> Iterator[Record]:
    """One ``INCOMPLETE_PACKAGING`` error per step of the dataset's packaging plan
    (``code/bidspack/plan.json``) whose outputs are not all present (a run stopped by an
    error or a kill part-way; finished by re-running ``bidspack package``)."""
    plan_file = dataset / "code" / "bidspack" / "plan.json"
    if not plan_file.is_file():
        return
    try:
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        actions = list(plan["actions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        yield Record("validate", "code/bidspack/plan.json", "error", f"unreadable plan ({exc})")
        return
    # a step is missing when one of its outputs is absent and it has no step record
    # (a file deleted after its step committed is reported by the other checks; a clone
    # has the outputs but not bidspack's state)
    steps_dir = dataset / ".bidspack" / "steps"
    missing: dict[str, list[str]] = defaultdict(list)
    for a in actions:
        target = a.get("target") if isinstance(a, dict) else None
        if not isinstance(target, str) or os.path.lexists(dataset / target):
            continue
        step = str(a.get("step"))
        if not (steps_dir / f"{step_key(step)}.json").is_file():
            missing[step].append(target)
    for step, targets in sorted(missing.items()):
        yield Record(
            "validate",
            step,
            "error",
            f"INCOMPLETE_PACKAGING: step {step} is not committed ({len(targets)} output(s) "
            f"missing, e.g. {targets[0]}); re-run 'bidspack package' with the same spec "
            "to finish it",
            {"code": "INCOMPLETE_PACKAGING", "severity": "error", "missing": targets[:20]},
        )


def validate_dataset(dataset: Path, *, recursive: bool = True) -> Iterator[Record]:
    """Run every validation of *dataset*, yielding records (errors have status ``error``).

    Raises:
        ToolError: the official validator cannot be run.
        ValidationFailed: *dataset* is not a folder with a dataset_description.json
            (for a bidspack dataset whose first step never committed, the message
            says so and how to finish it).
    """
    dataset = Path(dataset)
    if not (dataset / "dataset_description.json").is_file():
        if (dataset / ".bidspack" / "steps").is_dir():
            raise ValidationFailed(
                dataset,
                "an incomplete bidspack dataset: its 'dataset' step (dataset_description.json"
                ", tables, plan) is not committed",
                hint="re-run 'bidspack package' with the same spec to finish it",
            )
        raise ValidationFailed(dataset, "not a BIDS dataset (no dataset_description.json)")
    yield from check_complete(dataset)
    yield from _validator_records(run_bids_validator(dataset, recursive=recursive))
    yield from check_samples(dataset)
    yield from check_pixel_sizes(dataset)
    yield from check_ome_zarr(dataset)
