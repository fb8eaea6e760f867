"""The packaging spec: load (TOML or YAML), validate against
``specs/packaging.schema.json``, and expose typed settings.

Errors name the spec file, the line and the key path (``channels[1].voxel_size``)
before anything else runs.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bidspack.bids.schema import entity_name
from bidspack.errors import BidspackError, SpecError, UnsafeInputError
from bidspack.io.voxels import to_um
from bidspack.safety import (
    Matcher,
    check_relpath,
    check_text_field,
    compile_glob,
    compile_pattern,
    entry_kind,
    parse_template,
)

#: Largest spec file bidspack reads (bytes).
MAX_SPEC_BYTES = 1 << 20
#: Deepest nesting of tables/lists in a spec.
MAX_SPEC_DEPTH = 32
#: Most values in a spec after YAML aliases are expanded (alias bombs stop here).
MAX_SPEC_NODES = 100_000
#: participants.tsv / samples.tsv column names bidspack accepts (BIDS: snake_case).
COLUMN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


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

    ``voxel_size_um`` is ``(z, y, x)`` in micrometres (``None`` for an axis the spec
    leaves to the file), or ``None``. ``labels_of`` is the
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
    voxel_size_um: tuple[float | None, float | None, float | None] | None
    required: bool
    sidecar: dict[str, Any]
    extras: str
    labels_of: str | None = None
    label_name: str | None = None
    select: dict[str, Any] = field(default_factory=dict)
    split: tuple[str, ...] = ()
    whole: bool = False


#: BIDS entity (full name) each ``split`` dimension sets.
SPLIT_ENTITIES = {"channel": "stain", "time": "run"}


@dataclass(frozen=True)
class Exclude:
    """Files excluded on purpose: a submission-relative glob, the reason, and optionally
    a hashdiff ``summary.json`` (absolute path, validated) cited as evidence."""

    path: str
    reason: str
    evidence: Path | None = None
    matcher: Matcher | None = field(default=None, compare=False, repr=False)


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
    pattern: Matcher
    label_template: str
    sanitize: bool
    sample_template: str
    sample_type: str
    participant_columns: tuple[Column, ...]
    sample_columns: tuple[Column, ...]
    channels: tuple[Channel, ...]
    excludes: tuple[Exclude, ...]
    output: dict[str, Any]
    exclude_junk: bool = True


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
    """Resolve and check an exclude's hashdiff evidence (a valid summary.json; its
    folder names ``a`` and ``b`` are only ever used as sanitised labels)."""
    if "evidence" not in entry:
        return None
    ev = (spec_path.parent / entry["evidence"]).resolve()
    loc: list[str | int] = ["exclude", i, "evidence"]
    if entry_kind(ev) != "file":  # a FIFO or device would be read without end
        raise fail(loc, f"{entry['evidence']} is not a regular file")
    try:
        if ev.stat().st_size > MAX_SPEC_BYTES:
            raise fail(loc, f"{entry['evidence']} is larger than {MAX_SPEC_BYTES} bytes")
        doc = json.loads(ev.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise fail(loc, f"cannot read hashdiff summary {entry['evidence']}: {exc}") from exc
    errors = list(jsonschema.Draft202012Validator(load_schema("hashdiff")).iter_errors(doc))
    if errors:
        raise fail(loc, f"{entry['evidence']} is not a hashdiff summary: {errors[0].message}")
    return ev


def _check_bounds(doc: Any, fail: Any) -> None:
    """Refuse documents nested deeper than :data:`MAX_SPEC_DEPTH` or with more than
    :data:`MAX_SPEC_NODES` values (iteratively: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SPEC_NODES:
            raise fail([], f"more than {MAX_SPEC_NODES} values (a packaging spec is small)")
        if depth > MAX_SPEC_DEPTH:
            raise fail([], f"nested deeper than {MAX_SPEC_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _yaml_size(node: yaml.Node, path: Path) -> None:
    """Check a composed YAML graph before constructing it: aliases count once per use,
    so an alias bomb (``&a [*b, *b, ...]``) is refused without being expanded; a
    recursive alias is refused too."""
    sizes: dict[int, int] = {}
    depth_of: dict[int, int] = {}
    # iterative post-order walk over the node graph
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    active: set[int] = set()
    while stack:
        n, done = stack.pop()
        key = id(n)
        children: list[yaml.Node] = []
        if isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            depth_of[key] = 1 + max((depth_of[id(c)] for c in children), default=0)
            if sizes[key] > MAX_SPEC_NODES:
                raise SpecError(
                    path,
                    f"more than {MAX_SPEC_NODES} values once YAML aliases are expanded "
                    "(an alias bomb?)",
                    line=n.start_mark.line + 1,
                )
            if depth_of[key] > MAX_SPEC_DEPTH:
                raise SpecError(
                    path, f"nested deeper than {MAX_SPEC_DEPTH} levels", line=n.start_mark.line + 1
                )
            continue
        if key in sizes:
            continue
        if key in active:
            raise SpecError(path, "recursive YAML alias", line=n.start_mark.line + 1)
        active.add(key)
        stack.append((n, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def _plain(value: Any) -> Any:
    """TOML/YAML dates and times as ISO 8601 strings (JSON has no date type)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, _dt.date | _dt.time):
        return value.isoformat()
    return value


def _parse(path: Path, data: bytes, is_yaml: bool) -> tuple[str, Any]:
    """Decode and parse the spec's bytes within the documented bounds."""
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(path, f"larger than {MAX_SPEC_BYTES} bytes; a packaging spec is small")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(path, f"not valid UTF-8 (byte {exc.start})", line=line) from exc
    try:
        if is_yaml:
            loader = yaml.SafeLoader(text)
            try:
                node = loader.get_single_node()
                if node is not None:
                    _yaml_size(node, path)
                doc = loader.construct_document(node) if node is not None else None
            finally:
                loader.dispose()
        else:
            doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, f"TOML syntax error: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(
            path, f"YAML syntax error: {exc}", line=None if mark is None else mark.line + 1
        ) from exc
    except RecursionError as exc:
        raise SpecError(path, f"nested deeper than {MAX_SPEC_DEPTH} levels") from exc
    except ValueError as exc:  # e.g. YAML integers too long to convert
        raise SpecError(path, f"unreadable value: {exc}") from exc
    return text, doc


def _schema_problems(doc: dict[str, Any], path: Path, text: str, is_yaml: bool) -> SpecError | None:
    """Every schema violation, each with its key path and line (one error listing all)."""
    schema = load_schema("packaging")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return None
    found: list[tuple[list[str | int], int | None, str]] = []
    for err in errors:
        loc = list(err.absolute_path)
        message = err.message
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            extra = sorted(k for k in err.instance if k not in allowed)
            if extra:  # point at the unexpected key itself, not its table
                loc = [*loc, extra[0]]
                message = f"unknown key {extra[0]!r}" + (
                    f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
                )
        found.append((loc, _line_of(text, loc, is_yaml), message))
    found.sort(key=lambda f: (f[1] is None, f[1] or 0))
    first_loc, first_line, first_msg = found[0]
    if len(found) == 1:
        return SpecError(path, first_msg, location=_fmt_path(first_loc), line=first_line)
    lines = [f"{len(found)} problems:"]
    for loc, line, message in found:
        where = f"line {line}: " if line else ""
        lines.append(f"  {where}{_fmt_path(loc)}: {message}")
    return SpecError(path, "\n".join(lines), line=first_line)


def load_spec(path: Path) -> PackagingSpec:
    """Read and validate a packaging spec (``.toml``, ``.yaml`` or ``.yml``).

    The file is read within bounds (:data:`MAX_SPEC_BYTES`, :data:`MAX_SPEC_DEPTH`,
    :data:`MAX_SPEC_NODES` after YAML alias expansion); dates become ISO 8601 strings;
    the subject pattern and exclude globs are compiled with RE2 (linear time); label
    and sample templates accept only ``{group}`` fields; folders are safe relative
    paths; voxel sizes finite and > 0; column names ``snake_case``.

    Raises:
        SpecError: unreadable file, syntax error, schema violations (all listed, each
            with its line), invalid regular expression or template, unsafe path, with
            the file, line and key path.
    """
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(path, f"larger than {MAX_SPEC_BYTES} bytes; a packaging spec is small")
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(path, f"cannot read the packaging spec ({exc.strerror})") from exc
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    text, doc = _parse(path, data, is_yaml)
    if not isinstance(doc, dict):
        raise SpecError(path, "the spec must be a table/mapping at the top level")

    def fail(loc: list[str | int], reason: str) -> SpecError:
        return SpecError(path, reason, location=_fmt_path(loc), line=_line_of(text, loc, is_yaml))

    _check_bounds(doc, fail)
    doc = _plain(doc)
    problem = _schema_problems(doc, path, text, is_yaml)
    if problem is not None:
        raise problem
    try:
        return _build(path, doc, text, fail)
    except BidspackError as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(path, exc.reason) from exc


def _build(path: Path, doc: dict[str, Any], text: str, fail: Any) -> PackagingSpec:
    """The typed spec from a schema-valid document (checks beyond the schema)."""

    def guard(loc: list[str | int], func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UnsafeInputError as exc:
            raise fail(loc, exc.reason) from exc

    subj = doc["subjects"]
    pattern = guard(["subjects", "pattern"], compile_pattern, subj["pattern"], what="pattern")
    groups = set(pattern.groupindex)
    for key in ("label", "sample"):
        if key in subj:
            guard(["subjects", key], parse_template, subj[key], groups, what="template")

    def columns(section: str) -> tuple[Column, ...]:
        cols = []
        for name, c in (subj.get(section) or {}).items():
            fixed = {
                "participants": ("participant_id",),
                "samples": ("sample_id", "participant_id", "sample_type"),
            }[section]
            if not COLUMN_NAME.match(name) or name in fixed:
                raise fail(
                    ["subjects", section, name],
                    f"column name {name!r} is not allowed (letters, digits and '_', starting "
                    f"with a letter, at most 64; not {', '.join(fixed)})",
                )
            for key in ("value", "map"):
                values = c.get(key)
                texts = (
                    [values]
                    if isinstance(values, str)
                    else list(values.values())
                    if isinstance(values, dict)
                    else []
                )
                for v in texts:
                    guard(["subjects", section, name, key], check_text_field, str(v), what="value")
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
        folder = guard(["channels", i, "folder"], check_relpath, ch["folder"], what="folder")
        select = dict(ch.get("select", {}))
        key = folder + (json.dumps(select, sort_keys=True) if select else "")
        if key in folders:
            raise fail(
                ["channels", i, "folder"],
                f"folder {folder!r} is listed twice" + (" with the same select" if select else ""),
            )
        folders.add(key)
        if ch.get("whole"):
            if ch.get("split") or "channel" in select or "time" in select:
                raise fail(
                    ["channels", i, "whole"],
                    "whole writes every channel and time point: no split, no select of them",
                )
            if ch.get("labels_of") or ch.get("image") in ("none", "label"):
                raise fail(["channels", i, "whole"], "whole is for intensity images")
        for dim in ch.get("split", ()):
            entity = SPLIT_ENTITIES[dim]
            if dim in select:
                raise fail(
                    ["channels", i, "split"], f"split by {dim} and select {dim} exclude each other"
                )
            if any(entity_name(e) == entity for e in ch.get("entities", {})):
                raise fail(
                    ["channels", i, "split"],
                    f"split by {dim} sets the {entity} entity; remove it from entities",
                )
            if ch.get("labels_of") or ch.get("image") == "none":
                raise fail(
                    ["channels", i, "split"],
                    "split is for intensity/label images, not labels_of or image = 'none'",
                )
        vs = ch.get("voxel_size")
        voxel = None
        if vs is not None:
            unit = ch.get("voxel_unit", "um")
            per_axis: list[float | None] = []
            for axis in ("z", "y", "x"):
                if axis not in vs:
                    per_axis.append(None)
                    continue
                if not math.isfinite(vs[axis]):
                    raise fail(
                        ["channels", i, "voxel_size", axis], f"{vs[axis]} is not a finite number"
                    )
                per_axis.append(to_um(vs[axis], unit))
            voxel = (per_axis[0], per_axis[1], per_axis[2])
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
                labels_of=guard(
                    ["channels", i, "labels_of"], check_relpath, ch["labels_of"], what="folder"
                )
                if ch.get("labels_of")
                else None,
                select=select,
                split=tuple(ch.get("split", ())),
                whole=bool(ch.get("whole", False)),
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
            Exclude(
                e["path"].strip("/"),
                e["reason"],
                _evidence(path, e, i, fail),
                guard(["exclude", i, "path"], compile_glob, e["path"].strip("/"), what="glob"),
            )
            for i, e in enumerate(doc.get("exclude", []))
        ),
        output=output,
        exclude_junk=doc.get("exclude_junk", True),
    )
