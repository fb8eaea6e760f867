"""``bidspack derive select``: a subset of patches, chosen by a query, materialised as a
derived dataset of its own.

``SOURCE`` is a classification (``derive classify``) or a patch dataset (``derive
patches``, or an earlier ``derive select``). The query is evaluated on one table per
patch (:func:`query_table`): for a classification, its own columns (``score``,
``decision``, ``reason``, ``dedup_kept``, ``source``, ``plane``, ...) plus every column of
the parent patch index it does not have (``z0`` ... ``x1``, ``pixel_hash``, ``dhash``,
``height`` ...); for a patch dataset, its index. Either way the duplicate decision of
``derive patches`` (``kept``, ``reason``) is named ``dedup_kept`` and ``dedup_reason``,
so a selection's index has no ``kept`` column and every selected row is loaded.

The query language (:func:`parse_query`) is small and evaluated without ``eval``:
comparisons ``column op literal`` (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``; strings
only ``==``/``!=``), ``column in (v1, v2, ...)``, ``column not in (...)``, a bare boolean
column, joined by ``and``, ``or``, ``not`` and parentheses (``not`` binds tightest, then
``and``, then ``or``). Literals: numbers, ``'strings'`` or ``"strings"`` (backslash
escapes the quote), ``true``/``false``. Unknown columns and type mismatches are errors.

Output (``OUT``)::

    dataset_description.json  README.md  .bidsignore (patches, index.parquet, index.tsv)
    patches/<same path as the parent array>.zarr   the selected patches, (n, size, size) uint8
    index.parquet (+ index.tsv)   one row per selected patch: patch_id, array, row (here),
                                  parent_array, parent_row, then the query table's columns

``SourceDatasets`` names both parents (the classification and its patch dataset). The
``bidspack.training`` loader reads the selection like a patch dataset (``patch_id``,
``array``, ``row``; there is no ``kept`` column: every row is selected).

The classification's patch dataset is the one its ``SourceDatasets`` URL names (a
``file://`` URL, or ``sourcedata/<name>`` relative to the classification when it was
made with ``--datalad``), or the folder given as ``patches`` (``--patches``), checked
against the manifest sha256 the classification recorded.

DataLad (``datalad=True``, :mod:`bidspack.ops.derive.yoda`): *out* is a DataLad
dataset with both parents installed as subdatasets pinned at their commits, the
classification at ``sourcedata/<name>`` and its patch dataset at
``sourcedata/<name>`` (``<name>-patches`` if both folders have one name); the query
table and the selected arrays are fetched; each step is saved with a run record whose
command is ``bidspack derive select sourcedata/<cls> . --patches sourcedata/<patches>
--query ...``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import xxhash

from bidspack.bids.tables import json_text, tsv_text, write_text
from bidspack.errors import PlanError
from bidspack.ops.derive.classify import (
    INDEX_PARQUET,
    TABLE_PARQUET,
    PatchDataset,
    read_rows,
)
from bidspack.ops.derive.classify import (
    OPERATION as CLASSIFY_OPERATION,
)
from bidspack.ops.derive.dataset import (
    DerivedDataset,
    DerivedStep,
    bidsignore_text,
    check_roots,
    derived_description,
)
from bidspack.ops.derive.source import SourceDataset
from bidspack.ops.derive.yoda import adopt_source, input_name, record_steps, source_url
from bidspack.records import Record
from bidspack.txn import Transaction
from bidspack.txn.steps import record_path, text_xxh3

OPERATION = "derive-select"
INDEX_TSV = "index.tsv"
#: Patches per shard of a selected array (as ``derive patches``).
SHARD_PATCHES = 256
#: The first columns of a selection's index.
LEAD_COLUMNS = ("patch_id", "array", "row", "parent_array", "parent_row")
#: Patch-index columns renamed in the query table (the duplicate decision).
RENAMED = {"kept": "dedup_kept", "reason": "dedup_reason"}
#: Longest query accepted (characters).
MAX_QUERY = 4000

ProgressFn = Callable[[str, int, int], None]

# -- the query language ------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<comma>,)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}


@dataclass(frozen=True)
class Token:
    """A query token: kind (``num``, ``str``, ``op``, ``lp``, ``rp``, ``comma``,
    ``name``, ``kw``, ``end``), its value and its character position."""

    kind: str
    value: Any
    pos: int


def _bad(query: str, pos: int, what: str) -> PlanError:
    return PlanError(None, f"query {query!r}: {what} at character {pos + 1}")


def tokenize(query: str) -> list[Token]:
    """The tokens of a query (spaces dropped, an ``end`` token last).

    Raises:
        PlanError: an unexpected character, an unterminated string, a query longer than
            :data:`MAX_QUERY` characters.
    """
    if len(query) > MAX_QUERY:
        raise PlanError(None, f"query of {len(query)} characters: at most {MAX_QUERY}")
    out: list[Token] = []
    pos = 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if m is None:
            raise _bad(query, pos, f"unexpected character {query[pos]!r}")
        kind = m.lastgroup or ""
        text = m.group()
        if kind == "num":
            value: Any = float(text) if any(c in text for c in ".eE") else int(text)
            out.append(Token("num", value, pos))
        elif kind == "str":
            out.append(Token("str", re.sub(r"\\(.)", r"\1", text[1:-1]), pos))
        elif kind == "name":
            low = text.lower()
            if low in _KEYWORDS:
                out.append(Token("kw", low, pos))
            else:
                out.append(Token("name", text, pos))
        elif kind != "space":
            out.append(Token(kind, text, pos))
        pos = m.end()
    out.append(Token("end", None, len(query)))
    return out


class _Parser:
    def __init__(self, query: str):
        self.query = query
        self.tokens = tokenize(query)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def at_kw(self, word: str, ahead: int = 0) -> bool:
        tok = self.tokens[min(self.i + ahead, len(self.tokens) - 1)]
        return tok.kind == "kw" and tok.value == word

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, kind: str, value: Any = None) -> Token:
        tok = self.take()
        if tok.kind != kind or (value is not None and tok.value != value):
            want = value or kind
            got = "the end" if tok.kind == "end" else repr(tok.value)
            raise _bad(self.query, tok.pos, f"expected {want}, found {got}")
        return tok

    def parse(self) -> tuple[Any, ...]:
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            raise _bad(self.query, tok.pos, f"unexpected {tok.value!r}")
        return node

    def or_(self) -> tuple[Any, ...]:
        node = self.and_()
        while self.at_kw("or"):
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self) -> tuple[Any, ...]:
        node = self.not_()
        while self.at_kw("and"):
            self.take()
            node = ("and", node, self.not_())
        return node

    def not_(self) -> tuple[Any, ...]:
        if self.at_kw("not"):
            self.take()
            return ("not", self.not_())
        return self.atom()

    def literal(self) -> Any:
        tok = self.take()
        if tok.kind in ("num", "str"):
            return tok.value
        if tok.kind == "kw" and tok.value in ("true", "false"):
            return tok.value == "true"
        got = "the end" if tok.kind == "end" else repr(tok.value)
        raise _bad(self.query, tok.pos, f"expected a number, 'string', true or false, found {got}")

    def atom(self) -> tuple[Any, ...]:
        tok = self.peek()
        if tok.kind == "lp":
            self.take()
            node = self.or_()
            self.expect("rp")
            return node
        name = self.expect("name")
        nxt = self.peek()
        if nxt.kind == "op":
            op = self.take().value
            return ("cmp", name.value, op, self.literal(), name.pos)
        negate = False
        if self.at_kw("not") and self.at_kw("in", 1):
            self.take()
            negate = True
            nxt = self.peek()
        if self.at_kw("in"):
            self.take()
            self.expect("lp")
            values = [self.literal()]
            while self.peek().kind == "comma":
                self.take()
                values.append(self.literal())
            self.expect("rp")
            return ("in", name.value, tuple(values), negate, name.pos)
        return ("col", name.value, name.pos)


def parse_query(query: str) -> tuple[Any, ...]:
    """Parse a query into a tree of tuples: ``("or", a, b)``, ``("and", a, b)``,
    ``("not", a)``, ``("cmp", column, op, literal, pos)``, ``("in", column, literals,
    negated, pos)``, ``("col", column, pos)``. Nothing is evaluated.

    Raises:
        PlanError: a syntax error, naming the character position.
    """
    if not query.strip():
        raise PlanError(None, "the query is empty")
    return _Parser(query).parse()


def _kind(values: np.ndarray) -> str:
    if values.dtype == bool:
        return "bool"
    if values.dtype.kind in "iuf":
        return "number"
    return "string"


def _lit_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string"


def evaluate_query(
    tree: tuple[Any, ...], columns: dict[str, np.ndarray], query: str = ""
) -> np.ndarray:
    """The rows a parsed query selects: a ``(n,)`` bool mask.

    *columns*: column name -> ``(n,)`` array (bool, numbers, or strings as objects).

    Raises:
        PlanError: an unknown column (the known ones are listed), a literal of another
            type than its column, an order comparison of strings or booleans, a bare
            column that is not boolean.
    """

    def column(name: str, pos: int) -> np.ndarray:
        if name not in columns:
            known = ", ".join(sorted(columns))
            raise _bad(query, pos, f"unknown column {name!r} (columns: {known})")
        return columns[name]

    def check(name: str, values: np.ndarray, lit: Any, pos: int) -> None:
        ck, lk = _kind(values), _lit_kind(lit)
        if ck != lk:
            raise _bad(query, pos, f"column {name!r} holds {ck}s, compared with {lit!r}")

    def ev(node: tuple[Any, ...]) -> np.ndarray:
        head = node[0]
        if head == "or":
            return ev(node[1]) | ev(node[2])
        if head == "and":
            return ev(node[1]) & ev(node[2])
        if head == "not":
            return ~ev(node[1])
        if head == "col":
            values = column(node[1], node[2])
            if _kind(values) != "bool":
                raise _bad(query, node[2], f"column {node[1]!r} is not true/false; compare it")
            return values.astype(bool)
        if head == "in":
            _, name, lits, negate, pos = node
            values = column(name, pos)
            for lit in lits:
                check(name, values, lit, pos)
            mask = np.zeros(len(values), bool)
            for lit in lits:
                mask |= np.asarray(values == lit, bool)
            return ~mask if negate else mask
        _, name, op, lit, pos = node
        values = column(name, pos)
        check(name, values, lit, pos)
        if op in ("<", "<=", ">", ">=") and _kind(values) != "number":
            raise _bad(query, pos, f"{op} compares numbers; column {name!r} is not numeric")
        ops: dict[str, Callable[[Any, Any], Any]] = {
            "==": np.equal,
            "!=": np.not_equal,
            "<": np.less,
            "<=": np.less_equal,
            ">": np.greater,
            ">=": np.greater_equal,
        }
        if _kind(values) == "string":
            return np.asarray([(v == lit) == (op == "==") for v in values.tolist()], bool)
        return np.asarray(ops[op](values, lit), bool)

    return ev(tree)


# -- the source -------------------------------------------------------------------------------


def _url_path(url: str, base: Path | None = None) -> Path | None:
    """The folder a ``SourceDatasets`` URL names: a ``file://`` URL, or a relative path
    (``sourcedata/<name>``: a ``--datalad`` dataset's installed input) below *base*;
    ``None`` for anything else (remote URLs, absolute or climbing paths)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    rel = Path(url)
    if parsed.scheme or base is None or not url or rel.is_absolute() or ".." in rel.parts:
        return None
    return Path(base) / rel


@dataclass
class SelectionSource:
    """What a selection reads: the query table, the patch dataset holding the patches,
    and the classification (``None`` when selecting from a patch dataset directly)."""

    table: Any  # pyarrow.Table, one row per patch of `patches`, in its index order
    patches: PatchDataset
    classification: SourceDataset | None
    classification_path: Path | None


def open_selection_source(path: Path, patches_path: Path | None = None) -> SelectionSource:
    """Open SOURCE: a classification (its patch dataset found through its
    ``SourceDatasets`` URL, or *patches_path* if given, and checked against the
    recorded manifest sha256) or a patch dataset.

    Raises:
        PlanError: neither; the classification's patch dataset is missing or changed
            since it was classified; the classification does not list the same patches;
            *patches_path* given for a patch dataset.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        desc = json.loads((path / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(path, f"not a derived dataset (dataset_description.json: {exc})") from exc
    operation = (desc.get("bidspack") or {}).get("operation") if isinstance(desc, dict) else None
    if operation != CLASSIFY_OPERATION:
        if patches_path is not None:
            raise PlanError(
                path,
                "is a patch dataset, not a classification: --patches names a "
                "classification's patch dataset",
            )
        patches = PatchDataset(path)
        names = [RENAMED.get(n, n) for n in patches.table.column_names]
        if len(set(names)) != len(names):
            raise PlanError(path, "the patch index has both 'kept' and 'dedup_kept' columns")
        return SelectionSource(patches.table.rename_columns(names), patches, None, None)
    cls = SourceDataset(path)
    block = desc["bidspack"].get("source") or {}
    parent_path = (
        Path(patches_path)
        if patches_path is not None
        else _url_path(str(block.get("URL", "")), path)
    )
    if parent_path is None or not parent_path.is_dir():
        raise PlanError(
            path,
            f"the classified patch dataset {block.get('URL')!r} is not found"
            + (f" (--patches {patches_path})" if patches_path is not None else ""),
            hint="select from a classification whose patch dataset is on this machine, "
            "or name it with --patches",
        )
    patches = PatchDataset(parent_path)
    if patches.source.manifest_sha256 != block.get("manifest_sha256"):
        raise PlanError(
            parent_path,
            "the patch dataset changed since it was classified (manifest sha256 differs)",
            hint="re-run 'bidspack derive classify'",
        )
    table = pq.read_table(path / TABLE_PARQUET)
    ids = [str(v) for v in table.column("patch_id").to_pylist()]
    if ids != patches.ids:
        raise PlanError(path, "the classification does not list the patch dataset's patches")
    names = list(table.column_names)
    arrays = [table.column(n) for n in names]
    for name in patches.table.column_names:
        new = RENAMED.get(name, name)
        if new in names:
            continue
        names.append(new)
        arrays.append(patches.table.column(name))
    return SelectionSource(pa.table(arrays, names=names), patches, cls, path)


def query_table(source: SelectionSource) -> dict[str, np.ndarray]:
    """The query's columns as numpy arrays (strings as objects)."""
    out: dict[str, np.ndarray] = {}
    for name in source.table.column_names:
        col = source.table.column(name)
        values = col.to_numpy(zero_copy_only=False)
        if values.dtype.kind not in "biuf":
            values = np.asarray(col.to_pylist(), dtype=object)
        out[name] = values
    return out


# -- the verb -------------------------------------------------------------------------------


def _create_array(path: Path, n: int, size: int, attributes: dict[str, Any]) -> Any:
    import zarr
    from zarr.codecs import ZstdCodec

    return zarr.create_array(
        store=zarr.storage.LocalStore(str(path)),
        shape=(n, size, size),
        chunks=(1, size, size),
        shards=(max(1, min(SHARD_PATCHES, n)), size, size),
        dtype="uint8",
        fill_value=0,
        compressors=ZstdCodec(level=3),
        dimension_names=("patch", "y", "x"),
        attributes=attributes,
        zarr_format=3,
    )


def _copy_stage(
    txn: Transaction,
    patches: PatchDataset,
    rel: str,
    rows: np.ndarray,
    attrs: dict[str, Any],
    progress: Callable[[int], None] | None,
) -> Iterator[Record]:
    """Stage the array of the selected *rows* of parent array *rel* (same path here),
    written shard by shard (each shard encoded once)."""
    src = patches.open_array(rel)
    size = int(src.shape[1])
    dst = _create_array(txn.stage_path(rel), len(rows), size, attrs)
    for start in range(0, len(rows), SHARD_PATCHES):
        block = read_rows(src, rows[start : start + SHARD_PATCHES])
        dst[start : start + len(block)] = block
        if progress is not None:
            progress(len(block))
    yield Record(
        "select",
        rel,
        "ok",
        f"{len(rows)} of {src.shape[0]} patches of the parent's {rel}",
        {"array": rel, "patches": len(rows), "step": rel.removesuffix(".zarr")},
    )


def _tsv_cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return "n/a" if value is None else value


def parquet_bytes(table: Any) -> bytes:
    """A pyarrow Table as Parquet bytes (zstd, no pandas metadata, no timestamp: the same
    table gives the same bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=1 << 20)
    return bytes(sink.getvalue().to_pybytes())


def _index_stage(
    txn: Transaction, table: Any, data: bytes, texts: dict[str, str], tsv: bool
) -> Iterator[Record]:
    path = txn.stage_path(INDEX_PARQUET)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if tsv:
        data = table.to_pydict()
        names = list(table.column_names)
        rows = [{c: _tsv_cell(data[c][i]) for c in names} for i in range(table.num_rows)]
        write_text(txn.stage_path(INDEX_TSV), tsv_text(names, rows))
    for rel, text in texts.items():
        write_text(txn.stage_path(rel), text)
    yield Record(
        "index",
        INDEX_PARQUET,
        "ok",
        f"{table.num_rows} patches selected",
        {"patches": table.num_rows, "step": "index"},
    )


def _parent_entry(ds: SourceDataset, out: Path | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"URL": source_url(ds.path, out)}
    if ds.version:
        entry["Version"] = ds.version
    return entry


@dataclass
class SelectionPlan:
    """What :func:`derive_select` will write, computed before anything is written.

    Attributes:
        src: the opened source (:func:`open_selection_source`).
        mask: ``(n,)`` bool, the query's rows of the query table (parent index order).
        picked: ``(k,)`` int64 positions of the selected rows.
        by_array: parent array -> positions of its selected rows (index order).
        arrays_all: the parent index's ``array`` column.
        rows_all: ``(n,)`` int64, the parent index's ``row`` column.
    """

    src: SelectionSource
    mask: np.ndarray
    picked: np.ndarray
    by_array: dict[str, list[int]]
    arrays_all: list[str]
    rows_all: np.ndarray


def plan_select(
    source: Path, out: Path, query: str, patches_path: Path | None = None
) -> SelectionPlan:
    """Parse and evaluate *query* on SOURCE (reads tables only).

    Raises:
        PlanError: a bad query, a query selecting no patch, a bad source (see
            :func:`open_selection_source`).
        OutputError: *out* inside a parent (or a parent inside it).
    """
    tree = parse_query(query)
    src = open_selection_source(source, patches_path)
    check_roots(source, out)
    check_roots(src.patches.path, out)
    mask = evaluate_query(tree, query_table(src), query)
    picked = np.nonzero(mask)[0]
    if picked.size == 0:
        raise PlanError(source, f"the query {query!r} selects no patch of {len(mask)}")
    patches = src.patches
    arrays_all = [str(v) for v in patches.table.column("array").to_pylist()]
    rows_all = np.asarray(patches.table.column("row").to_numpy(), np.int64)
    by_array: dict[str, list[int]] = {}
    for i in picked.tolist():
        by_array.setdefault(arrays_all[i], []).append(i)
    return SelectionPlan(src, mask, picked, by_array, arrays_all, rows_all)


def command_line(
    source: Path,
    query: str,
    *,
    tsv: bool,
    patches_path: Path | None = None,
    out: Path | None = None,
) -> str:
    """The command as recorded (``GeneratedBy.Description``; with ``--datalad`` the run
    record's command): SOURCE and ``--patches`` as
    :func:`~bidspack.ops.derive.yoda.source_url` names them (``sourcedata/<name>`` for
    *out*'s installed inputs, else ``file://`` URLs), the output as ``.``."""
    args = ["bidspack", "derive", "select", source_url(source, out), "."]
    if patches_path is not None:
        args += ["--patches", source_url(patches_path, out)]
    args += ["--query", query]
    return shlex.join(args + ([] if tsv else ["--no-tsv"]))


def _adopt_parents(
    source: Path, out: Path, plan: SelectionPlan
) -> tuple[list[Record], Path, Path | None, list[str]]:
    """Install the parents in *out* (``--datalad``): the classification (or the patch
    dataset) SOURCE, then the classification's patch dataset under a name of its own.

    Returns:
        (records, installed SOURCE, installed patch dataset or ``None``, the run
        record's inputs).
    """
    src = plan.src
    records: list[Record] = []
    arrays = sorted(plan.by_array)
    if src.classification is None:
        adopted = adopt_source(source, out, [INDEX_PARQUET, *arrays])
        records += adopted.records
        inputs = [f"{adopted.rel}/{INDEX_PARQUET}", *(f"{adopted.rel}/{a}" for a in arrays)]
        return records, adopted.path, None, inputs
    cls = adopt_source(source, out, [TABLE_PARQUET])
    records += cls.records
    name = input_name(src.patches.path)
    if name == Path(cls.rel).name:
        name = f"{name}-patches"
    pat = adopt_source(src.patches.path, out, [INDEX_PARQUET, *arrays], name=name)
    records += pat.records
    inputs = [
        f"{cls.rel}/{TABLE_PARQUET}",
        f"{pat.rel}/{INDEX_PARQUET}",
        *(f"{pat.rel}/{a}" for a in arrays),
    ]
    return records, cls.path, pat.path, inputs


def derive_select(
    source: Path,
    out: Path,
    query: str,
    *,
    patches: Path | None = None,
    tsv: bool = True,
    dry_run: bool = False,
    validate: bool = True,
    recover_first: bool = True,
    progress: ProgressFn | None = None,
    datalad: bool = False,
) -> Iterator[Record]:
    """Materialise the patches of *source* that *query* selects as the derived dataset
    *out* (see the module docstring).

    *patches*: the classification's patch dataset (default: the folder its
    ``SourceDatasets`` URL names). With *datalad*, *out* is a DataLad dataset with
    both parents installed under ``sourcedata/`` (pinned at their commits) and every
    step saved with a run record.

    Plan first (query, source, parents), then apply. Yields ``select`` records
    (``planned`` in a dry run), with *datalad* the ``datalad`` records, ``step``
    records, the ``index`` record, then the validation records.

    Raises:
        PlanError: a bad query (syntax, unknown column, type), a query selecting no
            patch, a source that is neither a classification nor a patch dataset, *out*
            inside a parent, *patches* for a patch dataset or not the classified one.
        OutputError: *out* is not new, empty or a bidspack dataset; locked.
        SourceError: an unreadable patch array; with *datalad*, a parent that is not a
            clean DataLad/git dataset.
        ToolError: datalad or git failed.
    """
    source, out = Path(source), Path(out)
    plan = plan_select(source, out, query, patches)
    derived = DerivedDataset(out)
    if dry_run:
        for rel, members in plan.by_array.items():
            yield Record(
                "select",
                rel,
                "planned",
                f"{len(members)} of {len(plan.src.patches.positions(rel))} patches of {rel}",
                {"array": rel, "patches": len(members), "step": rel.removesuffix(".zarr")},
            )
        return
    inputs: list[str] = []
    if datalad:
        records, source, patches, inputs = _adopt_parents(source, out, plan)
        yield from records
        plan = plan_select(source, out, query, patches)
    command = command_line(source, query, tsv=tsv, patches_path=patches, out=out)
    if datalad:
        record_steps(derived, summary="bidspack derive select", command=command, inputs=inputs)
    yield from _apply(derived, source, out, query, plan, command, tsv, recover_first, progress)
    if validate:
        from bidspack.ops.validate import validate_dataset

        yield from validate_dataset(out, recursive=False)


def _apply(
    derived: DerivedDataset,
    source: Path,
    out: Path,
    query: str,
    plan: SelectionPlan,
    command: str,
    tsv: bool,
    recover_first: bool,
    progress: ProgressFn | None,
) -> Iterator[Record]:
    """The writing part of :func:`derive_select`: one step per selected parent array,
    then the index step."""
    import pyarrow as pa

    src, mask, picked = plan.src, plan.mask, plan.picked
    by_array, arrays_all, rows_all = plan.by_array, plan.arrays_all, plan.rows_all
    patches = src.patches
    # the selection index: lead columns, then the query table's other columns
    new_row = np.zeros(len(mask), np.int64)
    for members in by_array.values():
        new_row[members] = np.arange(len(members))
    order = np.array([i for members in by_array.values() for i in members], np.int64)
    order = np.sort(order)  # parent index order
    taken = src.table.take(pa.array(order))
    lead = {
        "patch_id": pa.array([patches.ids[i] for i in order.tolist()], pa.string()),
        "array": pa.array([arrays_all[i] for i in order.tolist()], pa.string()),
        "row": pa.array(new_row[order], pa.int64()),
        "parent_array": pa.array([arrays_all[i] for i in order.tolist()], pa.string()),
        "parent_row": pa.array(rows_all[order], pa.int64()),
    }
    names = list(LEAD_COLUMNS) + [c for c in taken.column_names if c not in LEAD_COLUMNS]
    cols = [lead[c] if c in lead else taken.column(c) for c in names]
    index = pa.table(cols, names=names).replace_schema_metadata(None)
    parents = [src.classification, patches.source] if src.classification else [patches.source]
    parents_block = [
        {
            "URL": source_url(p.path, out),
            "operation": (CLASSIFY_OPERATION if p is src.classification else patches.operation),
            "version": p.version,
            "manifest_sha256": p.manifest_sha256,
        }
        for p in parents
        if p is not None
    ]
    description = json.loads(
        derived_description(
            name="Patch selection from " + source.absolute().name,
            operation=OPERATION,
            command=command,
            parameters={
                "query": query,
                "selected": int(picked.size),
                "of": len(mask),
                "tsv": tsv,
                "parents": parents_block,
            },
            source=parents[0] if parents[0] is not None else patches.source,
            out=out,
        )
    )
    if src.classification is not None:
        description["SourceDatasets"].append(_parent_entry(patches.source, out))
    texts = {
        "dataset_description.json": json_text(description),
        "README.md": _readme(source, query, int(picked.size), len(mask), parents_block, out),
        ".bidsignore": bidsignore_text("patches", INDEX_PARQUET, *([INDEX_TSV] if tsv else [])),
    }
    total = int(picked.size)
    done = [0]
    with derived.session(recover_first=recover_first) as recovered:
        yield from recovered
        for rel, members in by_array.items():
            rows = rows_all[np.asarray(members, np.int64)]
            attrs = {
                "bidspack": {
                    "operation": OPERATION,
                    "parent": source_url(patches.path, out),
                    "parent_array": rel,
                    "axes": ["patch", "y", "x"],
                    "index": INDEX_PARQUET,
                }
            }

            def tick(b: int, rel: str = rel) -> None:
                done[0] += b
                if progress is not None:
                    progress(rel, done[0], total)

            step = DerivedStep(
                name=rel.removesuffix(".zarr"),
                operation=OPERATION,
                outputs=[rel],
                parameters={
                    "parent_array": rel,
                    "selected": len(rows),
                    "rows_xxh3": text_xxh3(",".join(str(int(r)) for r in rows)),
                },
                inputs={f"parent-array:{rel}": patches.array_digest(rel)},
                used=[{"path": f"parent:{rel}", "xxh3_128": patches.array_digest(rel)}],
                stage=lambda txn, rel=rel, rows=rows, attrs=attrs, tick=tick: _copy_stage(  # type: ignore[misc]
                    txn, patches, rel, rows, attrs, tick
                ),
            )
            yield from derived.run_step(step)
        current = {rel.removesuffix(".zarr") for rel in by_array} | {"index"}
        retired: list[str] = []
        for name, rec in derived.step_records(OPERATION).items():
            if name not in current:
                retired += [*rec.get("outputs", []), record_path(name)]
        index_bytes = parquet_bytes(index)
        step = DerivedStep(
            name="index",
            operation=OPERATION,
            outputs=[INDEX_PARQUET, *([INDEX_TSV] if tsv else []), *texts],
            parameters={
                "query": query,
                "tsv": tsv,
                "index": xxhash.xxh3_128(index_bytes).hexdigest(),
                "texts": {k: text_xxh3(v) for k, v in sorted(texts.items())},
            },
            inputs={"patches-index": patches.index_xxh3},
            used=[{"path": f"parent:{INDEX_PARQUET}", "xxh3_128": patches.index_xxh3}],
            stage=lambda txn: _index_stage(txn, index, index_bytes, texts, tsv),
            delete=sorted(set(retired)),
        )
        yield from derived.run_step(step)


def _readme(
    source: Path,
    query: str,
    selected: int,
    total: int,
    parents: list[dict[str, Any]],
    out: Path | None = None,
) -> str:
    lines = [
        "# Patch selection (bidspack derive select)",
        "",
        f"{selected} of {total} patches of `{source_url(source, out)}` chosen by the query",
        "",
        f"    {query}",
        "",
        "Parents:",
        "",
        *[f"- `{p['URL']}` ({p['operation']}, version {p['version'] or 'none'})" for p in parents],
        "",
        "## Layout",
        "",
        "- `patches/.../plane-<p>.zarr`: Zarr v3 arrays (n, size, size) uint8 of the selected",
        "  patches, at the same paths as in the patch dataset.",
        "- `index.parquet` (and `index.tsv`): one row per selected patch: `patch_id`, `array`",
        "  and `row` here, `parent_array` and `parent_row` in the patch dataset, then the",
        "  columns the query was evaluated on. See bidspack's docs/classification.md.",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "LEAD_COLUMNS",
    "SelectionPlan",
    "command_line",
    "derive_select",
    "evaluate_query",
    "open_selection_source",
    "parse_query",
    "plan_select",
    "query_table",
    "tokenize",
]
