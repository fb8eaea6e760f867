"""The packaging spec: load (TOML or YAML), validate against
``specs/packaging.schema.json``, and expose typed settings.

Errors name the spec file, the line and the key path (``channels[1].voxel_size``)
before anything else runs.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bidspack.errors import SpecError
from bidspack.io.sources import UNIT_TO_UM


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load one of bidspack's JSON Schemas (``specs/<name>.schema.json``)."""
    text = resources.files("bidspack").joinpath("specs", f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class Column:
    """A participants.tsv / samples.tsv column: from a pattern group or a constant."""

    name: str
    group: str | None = None
    value: str | None = None
    mapping: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def resolve(self, groups: dict[str, str]) -> str:
        """The cell value for one subject folder's pattern groups."""
        if self.group is None:
            return "" if self.value is None else str(self.value)
        raw = groups.get(self.group) or ""
        return str(self.mapping.get(raw, raw))


@dataclass(frozen=True)
class Channel:
    """One channel folder entry of the spec (see the schema for field meanings).

    ``voxel_size_um`` is ``(z, y, x)`` in micrometres, or ``None``. ``labels_of`` is the
    folder of the intensity channel whose OME-Zarr gets this label image as NGFF label
    ``label_name``; ``select`` the scene/channel/time of a vendor file.
    """

    index: int
    folder: str
    type: str
    pipeline: str | None
    desc: str | None
    suffix: str
    entities: dict[str, str]
    image: str
    voxel_size_um: tuple[float, float, float] | None
    required: bool
    sidecar: dict[str, Any]
    extras: str
    labels_of: str | None = None
    label_name: str | None = None
    select: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Exclude:
    """Files excluded on purpose: a submission-relative glob, the reason, and optionally
    a hashdiff ``summary.json`` (absolute path, validated) cited as evidence."""

    path: str
    reason: str
    evidence: Path | None = None


@dataclass(frozen=True)
class PackagingSpec:
    """A validated packaging spec.

    Attributes:
        source: the spec file.
        raw: the parsed document (as validated).
        text: the file's text (copied into the dataset's ``code/bidspack/``).
    """

    source: Path
    raw: dict[str, Any]
    text: str
    dataset: dict[str, Any]
    pattern: re.Pattern[str]
    label_template: str
    sanitize: bool
    sample_template: str
    sample_type: str
    participant_columns: tuple[Column, ...]
    sample_columns: tuple[Column, ...]
    channels: tuple[Channel, ...]
    excludes: tuple[Exclude, ...]
    output: dict[str, Any]


def _line_of(text: str, path: list[str | int], is_yaml: bool) -> int | None:
    """Best-effort 1-based line of a key path in the spec text."""
    if is_yaml:
        try:
            node: Any = yaml.compose(text)
            line = None
            for part in path:
                if node is None:
                    break
                line = node.start_mark.line + 1
                if isinstance(node, yaml.MappingNode):
                    node = next((v for k, v in node.value if k.value == part), None)
                    if node is not None:
                        line = node.start_mark.line + 1
                elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                    node = node.value[part] if part < len(node.value) else None
            return line
        except yaml.YAMLError:
            return None
    lines = text.splitlines()
    start = 0
    table: list[str] = []
    for part in path:
        if isinstance(part, int):
            header = "[[" + ".".join(table) + "]]"
            seen = -1
            for i in range(start, len(lines)):
                if lines[i].strip() == header:
                    seen += 1
                    if seen == part:
                        start = i
                        break
            continue
        key_re = re.compile(rf"^\s*(\"{re.escape(part)}\"|{re.escape(part)})\s*=")
        hdr_re = re.compile(rf"^\s*\[+\s*[^\]]*\b{re.escape(part)}\s*\]+")
        for i in range(start, len(lines)):
            if key_re.match(lines[i]) or hdr_re.match(lines[i]):
                start = i
                break
            if re.search(rf"\b{re.escape(part)}\s*=", lines[i]):
                start = i
                break
        table.append(part)
    return start + 1 if path else None


def _fmt_path(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _evidence(spec_path: Path, entry: dict[str, Any], i: int, fail: Any) -> Path | None:
    """Resolve and check an exclude's hashdiff evidence (a valid summary.json)."""
    if "evidence" not in entry:
        return None
    ev = (spec_path.parent / entry["evidence"]).resolve()
    loc: list[str | int] = ["exclude", i, "evidence"]
    try:
        doc = json.loads(ev.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise fail(loc, f"cannot read hashdiff summary {entry['evidence']}: {exc}") from exc
    errors = list(jsonschema.Draft202012Validator(load_schema("hashdiff")).iter_errors(doc))
    if errors:
        raise fail(loc, f"{entry['evidence']} is not a hashdiff summary: {errors[0].message}")
    return ev


def load_spec(path: Path) -> PackagingSpec:
    """Read and validate a packaging spec (``.toml``, ``.yaml`` or ``.yml``).

    Raises:
        SpecError: unreadable file, syntax error, schema violation, invalid regular
            expression or template, with the file, line and key path.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(path, f"cannot read the packaging spec ({exc.strerror})") from exc
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    try:
        doc = yaml.safe_load(text) if is_yaml else tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, f"TOML syntax error: {exc}") from exc
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise SpecError(
            path, f"YAML syntax error: {exc}", line=None if line is None else line + 1
        ) from exc
    if not isinstance(doc, dict):
        raise SpecError(path, "the spec must be a table/mapping at the top level")
    validator = jsonschema.Draft202012Validator(load_schema("packaging"))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        err = errors[0]
        loc = list(err.absolute_path)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise SpecError(
            path, err.message + more, location=_fmt_path(loc), line=_line_of(text, loc, is_yaml)
        )

    def fail(loc: list[str | int], reason: str) -> SpecError:
        return SpecError(path, reason, location=_fmt_path(loc), line=_line_of(text, loc, is_yaml))

    subj = doc["subjects"]
    try:
        pattern = re.compile(subj["pattern"])
    except re.error as exc:
        raise fail(["subjects", "pattern"], f"invalid regular expression: {exc}") from exc
    groups = set(pattern.groupindex)
    for key in ("label", "sample"):
        if key in subj:
            for name in re.findall(r"\{(\w+)\}", subj[key]):
                if name not in groups:
                    raise fail(
                        ["subjects", key], f"template uses {{{name}}}, not a group of pattern"
                    )

    def columns(section: str) -> tuple[Column, ...]:
        cols = []
        for name, c in (subj.get(section) or {}).items():
            if "group" in c and c["group"] not in groups:
                raise fail(["subjects", section, name], f"group {c['group']!r} is not in pattern")
            meta = {k: c[k] for k in ("Description", "Levels", "Units") if k in c}
            cols.append(Column(name, c.get("group"), c.get("value"), dict(c.get("map", {})), meta))
        return tuple(cols)

    channels = []
    folders: set[str] = set()
    for i, ch in enumerate(doc["channels"]):
        ctype = ch.get("type", "raw")
        if ctype == "derivative" and not ch.get("pipeline"):
            raise fail(["channels", i, "type"], "a derivative channel needs 'pipeline'")
        if ctype == "raw" and (ch.get("pipeline") or ch.get("desc")):
            raise fail(["channels", i], "'pipeline' and 'desc' are for derivative channels")
        if ch.get("extras") == "derivative" and ctype != "derivative":
            raise fail(["channels", i, "extras"], "extras = 'derivative' needs a derivative")
        folder = ch["folder"].strip("/")
        select = dict(ch.get("select", {}))
        key = folder + (json.dumps(select, sort_keys=True) if select else "")
        if key in folders:
            raise fail(
                ["channels", i, "folder"],
                f"folder {folder!r} is listed twice" + (" with the same select" if select else ""),
            )
        folders.add(key)
        vs = ch.get("voxel_size")
        voxel = None
        if vs is not None:
            f = UNIT_TO_UM[ch.get("voxel_unit", "um")]
            voxel = (vs["z"] * f, vs["y"] * f, vs["x"] * f)
        for ent in ch.get("entities", {}):
            if ent in ("sub", "subject", "sample", "desc", "description"):
                raise fail(["channels", i, "entities", ent], f"entity {ent!r} is set by bidspack")
        channels.append(
            Channel(
                index=i,
                folder=folder,
                type=ctype,
                pipeline=ch.get("pipeline"),
                desc=ch.get("desc"),
                suffix=ch.get("suffix", "SPIM"),
                entities=dict(ch.get("entities", {})),
                image=ch.get("image", "intensity"),
                voxel_size_um=voxel,
                required=ch.get("required", True),
                sidecar=dict(ch.get("sidecar", {})),
                extras=ch.get("extras", "sourcedata"),
                labels_of=ch["labels_of"].strip("/") if ch.get("labels_of") else None,
                select=select,
                label_name=ch.get("label_name")
                or re.sub(r"[^A-Za-z0-9._-]", "_", ch.get("desc") or folder).lstrip("._-")
                or f"label{i}",
            )
        )
    from bidspack.bids.schema import micr_rule

    for ch in channels:
        if ch.image != "none" and ch.suffix not in micr_rule()["suffixes"]:
            raise fail(
                ["channels", ch.index, "suffix"],
                f"{ch.suffix!r} is not a BIDS microscopy suffix "
                f"({', '.join(micr_rule()['suffixes'])})",
            )
    output = {
        "compression": "zlib",
        "compression_level": 6,
        "tile": 256,
        "formats": ["ome-tiff"],
        "ngff_version": "0.5",
        **doc.get("output", {}),
    }
    by_folder = {ch.folder: ch for ch in channels}
    label_names: dict[tuple[str, str], int] = {}
    for ch in channels:
        if ch.labels_of is None:
            continue
        where: list[str | int] = ["channels", ch.index, "labels_of"]
        if ch.image != "label":
            raise fail(where, "labels_of is for label images (image = 'label')")
        target = by_folder.get(ch.labels_of)
        if target is None or target.image != "intensity":
            raise fail(where, f"{ch.labels_of!r} is not the folder of an intensity channel")
        if "ome-zarr" not in output["formats"]:
            raise fail(where, "NGFF labels need 'ome-zarr' in output.formats")
        assert ch.label_name is not None
        named = (ch.labels_of, ch.label_name)
        if named in label_names:
            raise fail(
                ["channels", ch.index, "label_name"],
                f"channels {label_names[named]} and {ch.index} are both label "
                f"{ch.label_name!r} of {ch.labels_of!r}",
            )
        label_names[named] = ch.index
    dataset = dict(doc["dataset"])
    return PackagingSpec(
        source=path,
        raw=doc,
        text=text,
        dataset=dataset,
        pattern=pattern,
        label_template=subj["label"],
        sanitize=subj.get("sanitize", True),
        sample_template=subj.get("sample", "brain"),
        sample_type=subj.get("sample_type", "tissue"),
        participant_columns=columns("participants"),
        sample_columns=columns("samples"),
        channels=tuple(channels),
        excludes=tuple(
            Exclude(e["path"].strip("/"), e["reason"], _evidence(path, e, i, fail))
            for i, e in enumerate(doc.get("exclude", []))
        ),
        output=output,
    )
