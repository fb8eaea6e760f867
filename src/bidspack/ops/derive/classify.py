"""``bidspack derive classify`` and ``bidspack derive train-classifier``: patch quality
decisions recorded as a derived dataset.

After the CEM500K curation (Conrad & Narayan, eLife 2021; ``volume-em/cem-dataset``
``dataset/classify_patches.py``), which kept the patches a ResNet34 classified as
informative and dropped the rest with their scores: here the classification itself is
a derived dataset (:mod:`bidspack.ops.derive.dataset`) pointing at its parent patches
dataset, with every patch's score, decision and reason, and the model (kind, sha256,
threshold, device, library versions) in its provenance. ``docs/classification.md``
describes it all; the models are in :mod:`bidspack.ops.derive.models`.

Output (``OUT``)::

    dataset_description.json  README.md  .bidsignore (scores, classification.parquet/.tsv)
    classification.parquet    one row per patch of the parent
                              (specs/classification-index.schema.json)
    classification.tsv        the same table as TSV (unless --no-tsv)
    scores/<parent array path without .zarr>.parquet   one part per parent patch array
    code/bidspack/ (manifest, provenance), .bidspack/ (state)

Steps: one per parent patch array (``scores/...``: reads the array's patches in batches,
chunk by chunk, scores them with a reader thread preparing the next batch while the
current one is scored), then ``index`` (the table, the evaluation on ``--labels``,
``dataset_description.json``, ``README.md``, ``.bidsignore``).

Dask (kinds ``rules`` and ``sklearn``, :class:`DaskSettings`): with ``workers`` or a
``scheduler`` address each batch of ``batch_size`` patches is one Dask task (read,
features, score, decision: :func:`score_chunk`), on Dask's local threaded scheduler or
a ``dask.distributed`` cluster; at most ``2 x workers`` tasks are in flight
(:func:`dask_batches`), and results are taken in patch order, so the tables are the
same bytes whatever the worker count or scheduler. The settings are recorded in each
scores step's provenance (``execution``), never in the data files or the step
fingerprint. Kind ``torch`` keeps its own batched path (``threads``, ``device``); Dask
settings are refused for it at planning.

DataLad (``datalad=True``, :mod:`bidspack.ops.derive.yoda`): *out* is a DataLad
dataset, the patch dataset (a clean DataLad/git dataset) is installed at
``sourcedata/<name>`` pinned at its commit, its index and arrays fetched, and every
step saved with a run record whose command names it by that relative path; a model or
labels file is named by its absolute path (a rerun needs it at the same place).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shlex
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bidspack.bids.tables import json_text, tsv_text, write_text
from bidspack.errors import OutputError, PlanError, SourceError
from bidspack.ops.derive.dataset import (
    DerivedDataset,
    DerivedStep,
    bidsignore_text,
    check_roots,
    derived_description,
)
from bidspack.ops.derive.models import (
    BaseClassifier,
    RuleThresholds,
    decide,
    evaluate_scores,
    load_classifier,
    patch_features,
    threshold_decisions,
    train_linear,
)
from bidspack.ops.derive.source import SourceDataset
from bidspack.ops.derive.yoda import adopt_source, record_steps, source_url
from bidspack.records import Record
from bidspack.safety import is_within
from bidspack.txn import Transaction
from bidspack.txn.steps import file_xxh3, fingerprint, record_path, text_xxh3

OPERATION = "derive-classify"
#: Derived datasets whose ``index.parquet`` lists patches (``patch_id``, ``array``, ``row``).
PARENT_OPERATIONS = ("derive-patches", "derive-select")
TABLE_PARQUET = "classification.parquet"
TABLE_TSV = "classification.tsv"
SCORES_DIR = "scores"
INDEX_PARQUET = "index.parquet"
DECISIONS = ("kept", "rejected")

#: Columns of ``classification.parquet`` (specs/classification-index.schema.json).
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("patch_id", "string"),
    ("array", "string"),
    ("row", "int64"),
    ("source", "string"),
    ("plane", "string"),
    ("slice_index", "int64"),
    ("dedup_kept", "bool"),
    ("score", "float64"),
    ("decision", "string"),
    ("reason", "string"),
)
#: Columns of a part ``scores/<array>.parquet``.
PART_COLUMNS: tuple[tuple[str, str], ...] = (
    ("patch_id", "string"),
    ("array", "string"),
    ("row", "int64"),
    ("score", "float64"),
    ("decision", "string"),
    ("reason", "string"),
)

ProgressFn = Callable[[str, int, int], None]

#: Model kinds scored as Dask tasks when Dask settings are given.
DASK_KINDS = ("rules", "sklearn")
#: Tasks in flight per worker thread (the bounded submission window).
WINDOW_PER_WORKER = 2


@dataclass(frozen=True)
class DaskSettings:
    """Where the rules and sklearn kinds score their patches.

    Attributes:
        workers: Dask worker threads; with *scheduler* ``None``, Dask's local threaded
            scheduler with this many threads. ``None`` and no scheduler: no Dask (one
            reader thread prepares the next batch while one is scored).
        scheduler: a ``dask.distributed`` scheduler address (``tcp://host:8786``), or a
            ``distributed.Client`` (API only); *workers* then sizes the submission
            window (default: the cluster's worker threads), not the cluster. The
            patch dataset must be readable at the same path on the workers.

    Neither setting changes a byte of the output: they are recorded in the provenance
    of each scores step (``execution``), not in the data files or fingerprints.
    """

    workers: int | None = None
    scheduler: object = None

    @property
    def enabled(self) -> bool:
        """Whether the scoring runs as Dask tasks."""
        return self.workers is not None or self.scheduler is not None

    def check(self) -> None:
        """Raises:
        PlanError: *workers* below 1; a scheduler string that is not an address with
            ``://``.
        """
        if self.workers is not None and self.workers < 1:
            raise PlanError(None, f"derive classify: workers {self.workers}: at least 1")
        if isinstance(self.scheduler, str) and "://" not in self.scheduler:
            raise PlanError(
                None,
                f"derive classify: scheduler {self.scheduler!r} is not an address",
                hint="give a dask.distributed scheduler address such as tcp://host:8786",
            )


@dataclass(frozen=True)
class ClassifyParams:
    """Parameters of ``derive classify`` (all recorded).

    Attributes:
        model: ``"rules"`` or the path of a model file.
        kind: ``rules``, ``sklearn`` or ``torch``; ``None``: from *model*
            (:func:`bidspack.ops.derive.models.infer_kind`).
        threshold: kept when ``score > threshold``; ``None``: the model's (0.5).
        batch_size: patches scored at once.
        threads: torch CPU threads (``None``: 4, at most the CPU count).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` (torch only).
        rules: the thresholds of kind ``rules``.
        tsv: also write ``classification.tsv``.
        dask: Dask settings of the kinds ``rules`` and ``sklearn`` (:class:`DaskSettings`;
            recorded in the provenance, never changing the output bytes).
    """

    model: str = "rules"
    kind: str | None = None
    threshold: float | None = None
    batch_size: int = 64
    threads: int | None = None
    device: str | None = None
    rules: RuleThresholds = field(default_factory=RuleThresholds)
    tsv: bool = True
    dask: DaskSettings = field(default_factory=DaskSettings)

    def check(self) -> None:
        """Raises:
        PlanError: a batch size or thread count below 1, a non-finite threshold, bad
            rule thresholds, bad Dask settings (:meth:`DaskSettings.check`).
        """
        if self.batch_size < 1:
            raise PlanError(None, f"derive classify: batch size {self.batch_size}: at least 1")
        if self.threads is not None and self.threads < 1:
            raise PlanError(None, f"derive classify: threads {self.threads}: at least 1")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise PlanError(None, f"derive classify: threshold {self.threshold}: a finite number")
        self.rules.check()
        self.dask.check()

    def check_kind(self, kind: str) -> None:
        """Raises:
        PlanError: Dask settings with a kind that does not score as Dask tasks (torch:
            its own batched path, ``threads`` and ``device``).
        """
        if self.dask.enabled and kind not in DASK_KINDS:
            raise PlanError(
                None,
                f"derive classify: --workers/--scheduler apply to the rules and sklearn "
                f"kinds, not {kind}",
                hint="kind torch scores in its own batches: use --threads and --device",
            )


# -- the parent: a derived dataset of patch arrays ----------------------------------------------


class PatchDataset:
    """A derived dataset whose ``index.parquet`` lists patches by ``patch_id``,
    ``array`` (a Zarr v3 array ``(n, size, size)`` uint8 in the dataset) and ``row``:
    a ``derive patches`` or ``derive select`` output, opened read-only.

    Attributes:
        path: the folder.
        source: the dataset as a :class:`~bidspack.ops.derive.source.SourceDataset`
            (version, manifest sha256, manifest rows).
        description: ``dataset_description.json``.
        operation: ``derive-patches`` or ``derive-select``.
        table: ``index.parquet`` as a pyarrow Table.
        ids: patch ids in index order.

    Raises:
        PlanError: not a bidspack derived patch dataset, no index, a table without
            ``patch_id``/``array``/``row``, repeated patch ids, an array path outside
            the dataset.
    """

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.source = SourceDataset(self.path)
        desc_path = self.path / "dataset_description.json"
        try:
            self.description = json.loads(desc_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PlanError(self.path, f"cannot read dataset_description.json ({exc})") from exc
        block = self.description.get("bidspack") if isinstance(self.description, dict) else None
        self.operation = str((block or {}).get("operation"))
        if self.operation not in PARENT_OPERATIONS:
            raise PlanError(
                self.path,
                f"not a patch dataset (operation {self.operation!r}, expected one of "
                f"{', '.join(PARENT_OPERATIONS)})",
                hint="classify the output of 'bidspack derive patches' or 'derive select'",
            )
        index = self.path / INDEX_PARQUET
        if not index.is_file():
            raise PlanError(self.path, f"no {INDEX_PARQUET}: the patch dataset is incomplete")
        try:
            self.table = pq.read_table(index)
        except Exception as exc:  # pyarrow raises several types
            raise PlanError(index, f"cannot read the patch index ({exc})") from exc
        for col in ("patch_id", "array", "row"):
            if col not in self.table.column_names:
                raise PlanError(index, f"the patch index has no {col!r} column")
        self.ids: list[str] = [str(v) for v in self.table.column("patch_id").to_pylist()]
        seen: set[str] = set()
        for pid in self.ids:
            if pid in seen:
                raise PlanError(index, f"patch id {pid!r} is listed twice")
            seen.add(pid)
        self._arrays = [str(v) for v in self.table.column("array").to_pylist()]
        self._rows = np.asarray(self.table.column("row").to_numpy(), np.int64)
        for rel in sorted(set(self._arrays)):
            if not is_within(self.path / rel, self.path) or rel.startswith("/") or ".." in rel:
                raise PlanError(index, f"array {rel!r} is not inside the dataset")
        self.index_xxh3 = file_xxh3(index)

    def column(self, name: str) -> list[Any] | None:
        """A column of the index as a list, ``None`` if absent."""
        if name not in self.table.column_names:
            return None
        return self.table.column(name).to_pylist()

    def arrays(self) -> list[str]:
        """The arrays, in order of first appearance in the index."""
        return list(dict.fromkeys(self._arrays))

    def positions(self, rel: str) -> np.ndarray:
        """Index positions of the patches of array *rel* (index order)."""
        return np.nonzero(np.asarray(self._arrays, dtype=object) == rel)[0]

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Array rows of the patches at index *positions*."""
        return self._rows[positions]

    def array_digest(self, rel: str) -> str:
        """xxh3-128 over the manifest rows (path, xxh3-128) of the array's files.

        Raises:
            SourceError: the manifest lists no file of the array.
        """
        prefix = rel.rstrip("/") + "/"
        rows = sorted(
            (p, r.get("xxh3_128") or r.get("sha256") or "")
            for p, r in self.source.manifest.items()
            if p.startswith(prefix)
        )
        if not rows:
            raise SourceError(self.path / rel, "the dataset's manifest lists no file of the array")
        return text_xxh3("\n".join(f"{p} {d}" for p, d in rows))

    def open_array(self, rel: str) -> Any:
        """The patch array *rel*, read-only.

        Raises:
            SourceError: missing, or not ``(n, size, size)`` uint8.
        """
        return open_patch_array(self.path / rel)


def open_patch_array(path: Path) -> Any:
    """A Zarr v3 patch array ``(n, size, size)`` uint8, opened read-only.

    Raises:
        SourceError: missing or not a patch array.
    """
    import zarr

    try:
        arr = zarr.open_array(zarr.storage.LocalStore(str(path), read_only=True), mode="r")
    except Exception as exc:  # zarr raises several types
        raise SourceError(path, f"cannot open the patch array ({exc})") from exc
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.dtype != np.uint8:
        raise SourceError(path, f"not a patch array (n, size, size) uint8: {arr.shape} {arr.dtype}")
    return arr


def read_rows(arr: Any, rows: np.ndarray) -> np.ndarray:
    """Rows of a patch array as ``(len(rows), size, size)`` uint8, in the given order;
    one contiguous read when the rows are dense (whole shards), else an orthogonal
    selection.

    Raises:
        SourceError: a row outside the array, or undecodable data.
    """
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return np.zeros((0, arr.shape[1], arr.shape[2]), np.uint8)
    lo, hi = int(rows.min()), int(rows.max())
    if lo < 0 or hi >= arr.shape[0]:
        raise SourceError(None, f"row {hi if hi >= arr.shape[0] else lo} is outside the array")
    try:
        if hi - lo + 1 <= 4 * rows.size:
            return np.asarray(arr[lo : hi + 1])[rows - lo]
        order = np.argsort(rows, kind="stable")
        got = np.asarray(arr.get_orthogonal_selection((rows[order], slice(None), slice(None))))
        out = np.empty_like(got)
        out[order] = got
        return out
    except Exception as exc:  # zarr/codecs raise several types
        raise SourceError(None, f"cannot decode patches ({exc})") from exc


def iter_batches(arr: Any, rows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """``(b, size, size)`` uint8 batches of the given rows, in order (the last smaller)."""
    for start in range(0, len(rows), batch_size):
        yield read_rows(arr, rows[start : start + batch_size])


def run_pipeline(
    classifier: Any, batches: Iterable[np.ndarray]
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """``(scores, kept, reasons)`` per batch, with reading and preparation (features,
    tensors) of the next batch in a reader thread while the current one is scored.

    *classifier*: a :class:`~bidspack.ops.derive.models.BaseClassifier` (its
    ``prepare``/``infer``/``explain``) or any object with ``score(batch)`` and
    ``threshold`` (kept when ``score > threshold``).
    """
    it = iter(batches)
    if isinstance(classifier, BaseClassifier):
        prepare: Callable[[np.ndarray], Any] = classifier.prepare
        infer: Callable[[Any], np.ndarray] = classifier.infer
        explain: Callable[[Any, np.ndarray], tuple[np.ndarray, list[str]]] = classifier.explain
    else:

        def prepare(b: np.ndarray) -> Any:
            return b

        infer = classifier.score

        def explain_default(_p: Any, s: np.ndarray) -> tuple[np.ndarray, list[str]]:
            return threshold_decisions(s, float(classifier.threshold))

        explain = explain_default

    def load() -> Any:
        batch = next(it, None)
        return None if batch is None else prepare(batch)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bidspack-reader") as pool:
        pending = pool.submit(load)
        while True:
            prepared = pending.result()
            if prepared is None:
                return
            pending = pool.submit(load)
            scores = np.asarray(infer(prepared), np.float64)
            kept, reasons = explain(prepared, scores)
            yield scores, np.asarray(kept, bool), reasons


# -- Dask -------------------------------------------------------------------------------------


def score_chunk(
    classifier: Any, array: str, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read *rows* of the patch array at path *array* and score them.

    Returns:
        ``(scores (b,) float64, kept (b,) bool, reasons)`` in the order of *rows*, as
        :func:`bidspack.ops.derive.models.decide` computes them.

    Raises:
        SourceError: the array cannot be opened or decoded (naming the array).
    """
    arr = open_patch_array(Path(array))
    try:
        batch = read_rows(arr, rows)
    except SourceError as exc:
        if exc.path is not None:
            raise
        raise SourceError(array, exc.reason, hint=exc.hint) from exc
    scores, kept, reasons = decide(classifier, batch)
    return np.asarray(scores, np.float64), np.asarray(kept, bool), list(reasons)


@dataclass(frozen=True)
class TaskFailure:
    """A :class:`~bidspack.errors.BidspackError` of a Dask task, returned as a value
    (bidspack's errors do not pickle, and a ``distributed`` worker sends its results
    pickled); :func:`dask_batches` raises it again in the caller."""

    kind: str
    path: str | None
    reason: str
    hint: str | None

    def error(self) -> Exception:
        """The error, of its original class."""
        import bidspack.errors as errors

        cls = getattr(errors, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, errors.BidspackError)):
            cls = errors.SourceError
        try:
            return cls(self.path, self.reason, hint=self.hint)
        except TypeError:  # an error class with other arguments
            return errors.SourceError(self.path, self.reason, hint=self.hint)


def score_task(
    classifier: Any, array: str, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]] | TaskFailure:
    """One Dask task: :func:`score_chunk`, a bidspack error returned as a
    :class:`TaskFailure` (the task pickles small: the array is named by its path)."""
    from bidspack.errors import BidspackError

    try:
        return score_chunk(classifier, array, rows)
    except BidspackError as exc:
        return TaskFailure(type(exc).__name__, exc.path, exc.reason, exc.hint)


def _unwrap(
    result: tuple[np.ndarray, np.ndarray, list[str]] | TaskFailure,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if isinstance(result, TaskFailure):
        raise result.error()
    return result


class DaskScorer:
    """Runs :func:`score_chunk` tasks with Dask (:class:`DaskSettings`).

    A scheduler address is connected when the scorer is made (so an unreachable
    scheduler stops the run at planning); :meth:`close` disconnects.

    Attributes:
        runner: the :class:`bidspack.io.omezarr.runner.TaskRunner` (local threads, or a
            ``distributed.Client``).
        window: tasks in flight at most (``2 x workers``).

    Raises:
        ToolError: the scheduler cannot be reached.
    """

    def __init__(self, settings: DaskSettings):
        from bidspack.io.omezarr.runner import TaskRunner

        self.settings = settings
        self.runner = TaskRunner(settings.scheduler, settings.workers)
        self.window = max(1, WINDOW_PER_WORKER * self.runner.workers)

    def describe(self) -> dict[str, Any]:
        """What is recorded in the provenance: mode (``dask-threads`` or
        ``dask-distributed``), workers, scheduler address, window."""
        client = self.runner.client
        address = None
        if client is not None:
            address = (
                self.settings.scheduler
                if isinstance(self.settings.scheduler, str)
                else str(getattr(getattr(client, "scheduler", None), "address", None))
            )
        return {
            "mode": "dask-distributed" if client is not None else "dask-threads",
            "workers": self.runner.workers,
            "scheduler": address,
            "window": self.window,
        }

    def batches(
        self, classifier: Any, array: Path, rows: np.ndarray, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """:func:`dask_batches` with this scorer's runner and window."""
        return dask_batches(self.runner, classifier, array, rows, batch_size, self.window)

    def close(self) -> None:
        """Disconnect from a scheduler this scorer connected to."""
        self.runner.close()


def dask_batches(
    runner: Any,
    classifier: Any,
    array: Path,
    rows: np.ndarray,
    batch_size: int,
    window: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """``(scores, kept, reasons)`` per batch of *batch_size* of *rows*, in order, each
    batch scored as one Dask task (:func:`score_task`) by *runner* (a
    :class:`~bidspack.io.omezarr.runner.TaskRunner`).

    Memory is bounded by *window*: with a ``distributed`` client at most *window*
    tasks are submitted and not yet taken (a sliding window, results taken in order);
    with the local threaded scheduler the batches are computed *window* at a time.
    Pending tasks are cancelled when the caller stops early or a task fails.

    Raises:
        SourceError: (or another bidspack error) a task could not read its patches.
    """
    chunks = [rows[s : s + batch_size] for s in range(0, len(rows), batch_size)]
    path = str(Path(array).absolute())
    client = runner.client
    if client is None:
        for start in range(0, len(chunks), window):
            jobs = [(classifier, path, c) for c in chunks[start : start + window]]
            for result in runner.map(score_task, jobs):
                yield _unwrap(result)
        return
    pending: deque[Any] = deque()
    todo = iter(chunks)
    try:
        for chunk in todo:
            pending.append(client.submit(score_task, classifier, path, chunk, pure=False))
            if len(pending) >= window:
                break
        while pending:
            result = _unwrap(pending.popleft().result())
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(client.submit(score_task, classifier, path, nxt, pure=False))
            yield result
    finally:
        for fut in pending:
            fut.cancel()


# -- labels ----------------------------------------------------------------------------------

#: Label words (case-insensitive) and their value: 1 = good (keep), 0 = bad.
LABEL_VALUES = {
    "1": 1,
    "0": 0,
    "true": 1,
    "false": 0,
    "good": 1,
    "bad": 0,
    "keep": 1,
    "kept": 1,
    "reject": 0,
    "rejected": 0,
    "informative": 1,
    "uninformative": 0,
}


def read_labels(path: Path, known: Sequence[str]) -> dict[str, int]:
    """Labels from a CSV file with a header and the columns ``patch_id`` and ``label``
    (``1``/``0``, ``true``/``false``, ``good``/``bad`` as CEM's labelling notebook
    writes, ``keep``/``reject``; case-insensitive; other columns ignored). Rows with an
    empty label or ``none`` (CEM's unlabelled) are skipped.

    Returns:
        patch id -> 0/1, for ids in *known*.

    Raises:
        SourceError: unreadable, no such columns, an unknown label word, a patch id that
            is not in the patch dataset, the same id with two labels, no label at all.
    """
    path = Path(path)
    known_set = set(known)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if "patch_id" not in fields or "label" not in fields:
                raise SourceError(
                    path, f"a labels CSV needs the columns patch_id and label (has {fields})"
                )
            out: dict[str, int] = {}
            for n, row in enumerate(reader, start=2):
                pid = (row.get("patch_id") or "").strip()
                word = (row.get("label") or "").strip().lower()
                if word in ("", "none"):
                    continue
                if word not in LABEL_VALUES:
                    raise SourceError(
                        path,
                        f"line {n}: label {word!r} is not one of {', '.join(sorted(LABEL_VALUES))}",
                    )
                if pid not in known_set:
                    raise SourceError(path, f"line {n}: patch id {pid!r} is not in the patches")
                value = LABEL_VALUES[word]
                if out.get(pid, value) != value:
                    raise SourceError(
                        path, f"line {n}: patch {pid!r} is labelled twice, differently"
                    )
                out[pid] = value
    except OSError as exc:
        raise SourceError(path, f"cannot read the labels ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(path, f"not a CSV text file ({exc})") from exc
    if not out:
        raise SourceError(path, "no labelled patch")
    return out


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


# -- writing ---------------------------------------------------------------------------------


def _write_parquet(path: Path, columns: Sequence[tuple[str, str]], data: dict[str, Any]) -> None:
    """A Parquet file with exactly *columns* (pyarrow, zstd, no pandas metadata, no
    timestamp: the same data gives the same bytes)."""
    from bidspack.ops.derive.patches import _write_parquet as write

    write(path, columns, data)


def _tsv_cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return value


def part_path(array: str) -> str:
    """The part of a parent array: ``scores/<array without .zarr>.parquet``."""
    return f"{SCORES_DIR}/{array.removesuffix('.zarr')}.parquet"


def step_name(array: str) -> str:
    """The step of a parent array: ``scores/<array without .zarr>``."""
    return f"{SCORES_DIR}/{array.removesuffix('.zarr')}"


#: ``execution`` of a run without Dask settings.
_PIPELINE: dict[str, Any] = {"mode": "reader-thread", "workers": None, "scheduler": None}

#: Step parameters that describe how a step ran, not what it computes: recorded in its
#: provenance, left out of its fingerprint.
EXECUTION_KEYS = ("execution",)


@dataclass
class ScoresStep(DerivedStep):
    """A scores step: its ``execution`` parameter (the Dask settings) is recorded in the
    provenance but is not part of the fingerprint (it changes no output byte), so a
    re-run with other settings is ``notneeded``."""

    def fingerprint(self) -> str:
        """xxh3-128 of the parameters (without :data:`EXECUTION_KEYS`), outputs and input
        digests."""
        params = {k: v for k, v in self.parameters.items() if k not in EXECUTION_KEYS}
        described = [{"operation": self.operation, "outputs": self.outputs, **params}]
        return fingerprint(described, {k: {"xxh3": v} for k, v in self.inputs.items()})


def _classify_array(
    txn: Transaction,
    parent: PatchDataset,
    rel: str,
    classifier: Any,
    batch_size: int,
    progress: Callable[[int], None] | None,
    scorer: DaskScorer | None = None,
) -> Iterator[Record]:
    """Stage the part of one parent array: every patch scored, decided, explained
    (batches as Dask tasks with *scorer*, else the reader-thread pipeline)."""
    positions = parent.positions(rel)
    rows = parent.rows(positions)
    arr = parent.open_array(rel)
    cols: dict[str, list[Any]] = {name: [] for name, _ in PART_COLUMNS}
    done = 0
    if scorer is not None:
        results: Iterable[tuple[np.ndarray, np.ndarray, list[str]]] = scorer.batches(
            classifier, parent.path / rel, rows, batch_size
        )
    else:
        results = run_pipeline(classifier, iter_batches(arr, rows, batch_size))
    for scores, kept, reasons in results:
        b = len(scores)
        cols["score"].extend(float(s) for s in scores)
        cols["decision"].extend("kept" if k else "rejected" for k in kept.tolist())
        cols["reason"].extend(reasons)
        done += b
        if progress is not None:
            progress(b)
    if done != len(rows):  # pragma: no cover - the pipeline yields every batch
        raise AssertionError(f"{rel}: {done} patches scored, {len(rows)} listed")
    cols["patch_id"] = [parent.ids[int(i)] for i in positions]
    cols["array"] = [rel] * len(rows)
    cols["row"] = [int(r) for r in rows]
    _write_parquet(txn.stage_path(part_path(rel)), PART_COLUMNS, cols)
    n_kept = cols["decision"].count("kept")
    yield Record(
        "classify",
        part_path(rel),
        "ok",
        f"{len(rows)} patches of {rel}: {n_kept} kept, {len(rows) - n_kept} rejected",
        {
            "array": rel,
            "patches": len(rows),
            "kept": n_kept,
            "step": step_name(rel),
            "execution": scorer.describe() if scorer is not None else _PIPELINE,
        },
    )


def _table(parent: PatchDataset, out: Path, parts: list[str]) -> dict[str, list[Any]]:
    """The classification table: parts joined to the parent index, in index order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    got = pa.concat_tables([pq.read_table(out / p) for p in parts]).to_pydict()
    where = {pid: i for i, pid in enumerate(got["patch_id"])}
    if len(where) != len(parent.ids) or set(where) != set(parent.ids):
        raise OutputError(out, "the parts do not cover the parent's patches (re-run)")
    order = [where[pid] for pid in parent.ids]
    n = len(order)
    data: dict[str, list[Any]] = {k: [got[k][i] for i in order] for k in got}
    kept = parent.column("kept")
    if kept is None:
        kept = parent.column("dedup_kept")
    data["dedup_kept"] = [bool(v) for v in kept] if kept is not None else [True] * n
    for name in ("source", "plane"):
        col = parent.column(name)
        data[name] = [str(v) for v in col] if col is not None else [""] * n
    col = parent.column("slice_index")
    data["slice_index"] = [int(v) for v in col] if col is not None else [-1] * n
    return data


def _index_stage(
    txn: Transaction,
    parent: PatchDataset,
    out: Path,
    parts: list[str],
    texts: dict[str, str],
    tsv: bool,
) -> Iterator[Record]:
    data = _table(parent, out, parts)
    _write_parquet(txn.stage_path(TABLE_PARQUET), TABLE_COLUMNS, data)
    n = len(data["patch_id"])
    if tsv:
        names = [c for c, _ in TABLE_COLUMNS]
        rows = [{c: _tsv_cell(data[c][i]) for c in names} for i in range(n)]
        write_text(txn.stage_path(TABLE_TSV), tsv_text(names, rows))
    for rel, text in texts.items():
        write_text(txn.stage_path(rel), text)
    kept = data["decision"].count("kept")
    yield Record(
        "index",
        TABLE_PARQUET,
        "ok",
        f"{n} patches: {kept} kept, {n - kept} rejected",
        {"patches": n, "kept": kept, "rejected": n - kept, "step": "index"},
    )


def readme_text(parent: PatchDataset, model: dict[str, Any], out: Path | None = None) -> str:
    """``README.md`` of a classification dataset (the parent named as in
    :func:`bidspack.ops.derive.yoda.source_url`: relative when it is *out*'s input)."""
    version = parent.source.version or "not under version control"
    return "\n".join(
        [
            "# Patch classification (bidspack derive classify)",
            "",
            "A BIDS derivative dataset recording a quality decision for every patch of a",
            "bidspack patch dataset: score, decision (kept/rejected) and reason.",
            "",
            f"- Parent patch dataset: `{source_url(parent.path, out)}`, version {version}",
            "- Parent manifest (code/bidspack/manifest.tsv) sha256: "
            f"{parent.source.manifest_sha256}",
            f"- Model: kind {model['kind']}, sha256 {model['sha256']}, "
            f"threshold {model['threshold']} (kept when score > threshold)",
            "",
            "## Layout",
            "",
            "- `classification.parquet` (and `classification.tsv`): one row per patch of the",
            "  parent, same patch ids: where it is (array, row), score, decision, reason.",
            "- `scores/`: the same rows, one file per parent patch array.",
            "- `code/bidspack/`: manifest and provenance records.",
            "",
            "`dataset_description.json` records the model (kind, sha256, threshold, device,",
            "library versions) and, when labels were given, the evaluation on them.",
            "See bidspack's docs/classification.md.",
            "",
        ]
    )


def _file_arg(path: Path | str, runnable: bool) -> str:
    """A file outside the dataset in the recorded command: its absolute path (a run
    record replays it) or its ``file://`` URL."""
    return str(Path(path).absolute()) if runnable else Path(path).absolute().as_uri()


def command_line(
    parent: Path,
    params: ClassifyParams,
    kind: str,
    labels: Path | None,
    out: Path | None = None,
    *,
    runnable: bool = False,
) -> str:
    """The command as recorded (``GeneratedBy.Description``), the output as ``.``: the
    parent as :func:`~bidspack.ops.derive.yoda.source_url` names it (``sourcedata/<name>``
    when it is *out*'s installed input, else its ``file://`` URL); a model or labels
    file as a ``file://`` URL, or (*runnable*, ``--datalad``: the run record's command)
    its absolute path. The Dask settings are not part of it (they change no byte)."""
    model = params.model if params.model == "rules" else _file_arg(params.model, runnable)
    args = ["bidspack", "derive", "classify", source_url(parent, out), ".", "--model", model]
    args += ["--kind", kind, "--batch-size", str(params.batch_size)]
    if params.threshold is not None:
        args += ["--threshold", repr(float(params.threshold))]
    if kind == "rules":
        r = params.rules
        args += ["--min-contrast", f"{r.min_contrast:g}", "--min-entropy", f"{r.min_entropy:g}"]
        args += ["--max-saturated", f"{r.max_saturated:g}", "--max-empty", f"{r.max_empty:g}"]
        args += ["--empty-level", str(r.empty_level)]
    if kind == "torch":
        args += ["--device", params.device or "auto"]
        if params.threads:
            args += ["--threads", str(params.threads)]
    if labels is not None:
        args += ["--labels", _file_arg(labels, runnable)]
    if not params.tsv:
        args.append("--no-tsv")
    return shlex.join(args)


def derive_classify(
    patches: Path,
    out: Path,
    params: ClassifyParams,
    *,
    labels: Path | None = None,
    dry_run: bool = False,
    validate: bool = True,
    recover_first: bool = True,
    progress: ProgressFn | None = None,
    datalad: bool = False,
) -> Iterator[Record]:
    """Classify every patch of the patch dataset *patches* into the derived dataset
    *out* (see the module docstring).

    Plan first (parameters, parent, labels, model, Dask scheduler connection), then
    apply. Yields ``classify`` records (``planned`` in a dry run), with *datalad* the
    ``datalad`` records (dataset created, parent installed and fetched), ``step``
    records (``ok`` / ``notneeded``), the ``index`` record, an ``evaluate`` record when
    *labels* are given, then the validation records.

    With *datalad*, *out* is a DataLad dataset in the YODA layout: *patches* (a clean
    DataLad/git dataset) is installed at ``sourcedata/<name>`` pinned at its commit,
    the patches are read from there, and every step is saved with a run record
    (:mod:`bidspack.ops.derive.yoda`).

    *progress*, if given, is called as ``progress(array, patches done, patches total)``.

    Raises:
        PlanError: bad parameters, Dask settings with kind ``torch``, not a patch
            dataset, *out* inside it.
        SourceError: a bad model or labels file, an unreadable patch array; with
            *datalad*, a parent that is not a clean DataLad/git dataset.
        ToolError: kind ``torch`` without PyTorch/torchvision (``pip install
            'bidspack[classify]'``); the Dask scheduler cannot be reached; datalad or
            git failed.
        OutputError: *out* is not new, empty or a bidspack dataset; locked.
    """
    from bidspack.ops.derive.models import infer_kind

    patches, out = Path(patches), Path(out)
    params.check()
    parent = PatchDataset(patches)
    check_roots(patches, out)
    kind = params.kind or infer_kind(params.model)
    params.check_kind(kind)
    label_map = read_labels(labels, parent.ids) if labels is not None else None
    classifier = load_classifier(
        params.model,
        kind=kind,
        threshold=params.threshold,
        rules=params.rules,
        device=params.device,
        threads=params.threads,
    )
    model = classifier.describe()
    arrays = parent.arrays()
    derived = DerivedDataset(out)
    if dry_run:
        execution = (
            {"mode": "dask", "workers": params.dask.workers, "scheduler": _address(params)}
            if params.dask.enabled
            else _PIPELINE
        )
        for rel in arrays:
            n = len(parent.positions(rel))
            yield Record(
                "classify",
                part_path(rel),
                "planned",
                f"{n} patches of {rel} in {math.ceil(n / params.batch_size)} batches of "
                f"{params.batch_size}, model {kind} {model['sha256'][:12]}, threshold "
                f"{model['threshold']}, device {model.get('device')}"
                + (f", on Dask ({_dask_text(params)})" if params.dask.enabled else ""),
                {
                    "array": rel,
                    "patches": n,
                    "model": model,
                    "batch_size": params.batch_size,
                    "step": step_name(rel),
                    "execution": execution,
                },
            )
        return
    scorer = DaskScorer(params.dask) if params.dask.enabled else None
    try:
        if datalad:
            adopted = adopt_source(patches, out, [INDEX_PARQUET, *arrays])
            yield from adopted.records
            patches = adopted.path
            parent = PatchDataset(patches)  # the same commit: the same patches
        yield from _apply(
            derived,
            parent,
            patches,
            out,
            params,
            kind=kind,
            classifier=classifier,
            model=model,
            labels=labels,
            label_map=label_map,
            scorer=scorer,
            recover_first=recover_first,
            progress=progress,
            datalad=datalad,
        )
    finally:
        if scorer is not None:
            scorer.close()
    if validate:
        from bidspack.ops.validate import validate_dataset

        yield from validate_dataset(out, recursive=False)


def _address(params: ClassifyParams) -> str | None:
    sched = params.dask.scheduler
    if sched is None:
        return None
    return sched if isinstance(sched, str) else "client"


def _dask_text(params: ClassifyParams) -> str:
    address = _address(params)
    workers = params.dask.workers
    if address is None:
        return f"{workers} local thread(s)"
    return f"scheduler {address}" + (f", window of {2 * workers} tasks" if workers else "")


def _apply(
    derived: DerivedDataset,
    parent: PatchDataset,
    patches: Path,
    out: Path,
    params: ClassifyParams,
    *,
    kind: str,
    classifier: Any,
    model: dict[str, Any],
    labels: Path | None,
    label_map: dict[str, int] | None,
    scorer: DaskScorer | None,
    recover_first: bool,
    progress: ProgressFn | None,
    datalad: bool,
) -> Iterator[Record]:
    """The writing part of :func:`derive_classify`: one scores step per parent array,
    then the index step (each saved with a run record when *datalad*)."""
    arrays = parent.arrays()
    total = len(parent.ids)
    labels_block = None
    if labels is not None and label_map is not None:
        labels_block = {
            "URL": labels.absolute().as_uri(),
            "sha256": file_sha256(labels),
            "labelled": len(label_map),
        }
    command = command_line(patches, params, kind, labels, out, runnable=datalad)
    if datalad:
        rel_parent = source_url(patches, out)
        record_steps(
            derived,
            summary="bidspack derive classify",
            command=command,
            inputs=[f"{rel_parent}/{INDEX_PARQUET}", *(f"{rel_parent}/{a}" for a in arrays)],
        )
    execution = scorer.describe() if scorer is not None else _PIPELINE
    done = [0]
    with derived.session(recover_first=recover_first) as recovered:
        yield from recovered
        for rel in arrays:
            positions = parent.positions(rel)
            pairs = "\n".join(
                f"{parent.ids[int(i)]} {int(r)}"
                for i, r in zip(positions, parent.rows(positions), strict=True)
            )

            def tick(b: int, rel: str = rel) -> None:
                done[0] += b
                if progress is not None:
                    progress(rel, done[0], total)

            step = ScoresStep(
                name=step_name(rel),
                operation=OPERATION,
                outputs=[part_path(rel)],
                parameters={
                    "array": rel,
                    "patches": len(positions),
                    "model": model,
                    "batch_size": params.batch_size if kind == "torch" else None,
                    "execution": execution,
                },
                inputs={
                    f"parent-array:{rel}": parent.array_digest(rel),
                    f"parent-rows:{rel}": text_xxh3(pairs),
                },
                used=[{"path": f"parent:{rel}", "xxh3_128": parent.array_digest(rel)}],
                stage=lambda txn, rel=rel, tick=tick: _classify_array(  # type: ignore[misc]
                    txn, parent, rel, classifier, params.batch_size, tick, scorer
                ),
            )
            before = done[0]
            for rec in derived.run_step(step):
                if rec.action == "step" and rec.status == "notneeded":
                    done[0] = before + len(positions)
                    if progress is not None:
                        progress(rel, done[0], total)
                yield rec
        parts = [part_path(rel) for rel in arrays]
        evaluation = None
        if label_map is not None:
            evaluation = _evaluate(parent, out, parts, label_map, float(model["threshold"]))
            yield Record(
                "evaluate",
                TABLE_PARQUET,
                "ok",
                f"on {evaluation['n']} labelled patches: AUROC "
                f"{'n/a' if evaluation['auroc'] is None else format(evaluation['auroc'], '.4f')}, "
                f"precision {evaluation['precision']:.4f}, recall {evaluation['recall']:.4f}",
                {"evaluation": evaluation},
            )
        parameters = {
            "model": model,
            "threshold": model["threshold"],
            "batch_size": params.batch_size,
            "labels": labels_block,
            "evaluation": evaluation,
            "parent": {
                "operation": parent.operation,
                "index_xxh3": parent.index_xxh3,
                "patches": total,
            },
        }
        description = derived_description(
            name="Patch classification of " + patches.absolute().name,
            operation=OPERATION,
            command=command,
            parameters=parameters,
            source=parent.source,
            out=out,
        )
        texts = {
            "dataset_description.json": description,
            "README.md": readme_text(parent, model, out),
            ".bidsignore": bidsignore_text(
                SCORES_DIR, TABLE_PARQUET, *([TABLE_TSV] if params.tsv else [])
            ),
        }
        yield from _final_step(derived, parent, parts, texts, params.tsv, evaluation)


def _evaluate(
    parent: PatchDataset, out: Path, parts: list[str], labels: dict[str, int], threshold: float
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    got = pa.concat_tables([pq.read_table(out / p) for p in parts]).to_pydict()
    score = dict(zip(got["patch_id"], got["score"], strict=True))
    ids = [i for i in parent.ids if i in labels]
    return evaluate_scores([labels[i] for i in ids], [score[i] for i in ids], threshold)


def _final_step(
    derived: DerivedDataset,
    parent: PatchDataset,
    parts: list[str],
    texts: dict[str, str],
    tsv: bool,
    evaluation: dict[str, Any] | None,
) -> Iterator[Record]:
    current = {p.removesuffix(".parquet") for p in parts} | {"index"}
    retired: list[str] = []
    for name, rec in derived.step_records(OPERATION).items():
        if name not in current:
            retired += [*rec.get("outputs", []), record_path(name)]
    outputs = [TABLE_PARQUET, *([TABLE_TSV] if tsv else []), *texts]
    step = DerivedStep(
        name="index",
        operation=OPERATION,
        outputs=outputs,
        parameters={
            "parts": parts,
            "tsv": tsv,
            "texts": {k: text_xxh3(v) for k, v in sorted(texts.items())},
            "evaluation": evaluation,
        },
        inputs={
            **{p: file_xxh3(derived.path / p) for p in parts},
            "parent-index": parent.index_xxh3,
        },
        used=[{"path": f"parent:{INDEX_PARQUET}", "xxh3_128": parent.index_xxh3}],
        stage=lambda txn: _index_stage(txn, parent, derived.path, parts, texts, tsv),
        delete=sorted(set(retired)),
    )
    yield from derived.run_step(step)


# -- train-classifier ----------------------------------------------------------------------------


def labelled_features(
    parent: PatchDataset, labels: dict[str, int], *, empty_level: int = 10, batch_size: int = 256
) -> tuple[list[str], np.ndarray, list[int]]:
    """``(ids, features (n, F) float64, labels)`` of the labelled patches, in index order
    (:func:`bidspack.ops.derive.models.patch_features`), read array by array."""
    ids = [i for i in parent.ids if i in labels]
    pos = {pid: k for k, pid in enumerate(parent.ids)}
    feats = np.zeros((len(ids), 10), np.float64)
    by_array: dict[str, list[int]] = {}
    arrays = [str(v) for v in parent.table.column("array").to_pylist()]
    for k, pid in enumerate(ids):
        by_array.setdefault(arrays[pos[pid]], []).append(k)
    for rel, ks in by_array.items():
        arr = parent.open_array(rel)
        rows = parent.rows(np.array([pos[ids[k]] for k in ks], np.int64))
        order = np.argsort(rows, kind="stable")
        for start in range(0, len(ks), batch_size):
            sel = order[start : start + batch_size]
            batch = read_rows(arr, rows[sel])
            feats[np.asarray(ks)[sel]] = patch_features(batch, empty_level=empty_level)
    return ids, feats, [labels[i] for i in ids]


def sidecar_path(model: Path) -> Path:
    """``<name>.training.json`` beside the model file ``<name>.json``."""
    return model.with_name(model.name.removesuffix(".json") + ".training.json")


def train_classifier(
    patches: Path,
    labels: Path,
    output: Path,
    *,
    seed: int = 1227,
    test_size: float = 0.15,
    c: float = 1.0,
    threshold: float = 0.5,
    empty_level: int = 10,
) -> Iterator[Record]:
    """Train a linear classifier (kind ``sklearn``) on the labelled patches of a patch
    dataset and write it to *output* (``.json``) with its training sidecar
    (:func:`sidecar_path`).

    The model file holds the feature standardisation, coefficients, intercept,
    threshold and the held-out metrics; the sidecar adds the model's sha256, the seed,
    the split (held-out patch ids), the metrics (AUROC, precision, recall, confusion
    matrix), the labels file's sha256, the patch dataset (URL, version, manifest
    sha256) and library versions. Each file is written beside its final name and
    renamed into place (never half-written).

    Raises:
        PlanError: *output* not ending in ``.json`` or inside the patch dataset, bad
            seed/test size/C/threshold, too few labels of a class.
        SourceError: not a patch dataset, bad labels.
    """
    from bidspack.txn.beside import staged_beside

    patches, labels, output = Path(patches), Path(labels), Path(output)
    if not output.name.endswith(".json") or output.name == ".json":
        raise PlanError(output, "the model file name must end in .json")
    if is_within(output, patches):
        raise PlanError(
            output,
            "is inside the patch dataset (its manifest would no longer match)",
            hint="write the model outside the dataset",
        )
    if seed < 0 or not 0 < test_size < 1 or not (math.isfinite(c) and c > 0):
        raise PlanError(None, f"train: seed {seed} >= 0, test size in (0, 1), C {c} > 0 needed")
    if not math.isfinite(threshold):
        raise PlanError(None, f"train: threshold {threshold}: a finite number")
    parent = PatchDataset(patches)
    label_map = read_labels(labels, parent.ids)
    ids, feats, ys = labelled_features(parent, label_map, empty_level=empty_level)
    trained = train_linear(
        ids,
        feats,
        ys,
        seed=seed,
        test_size=test_size,
        c=c,
        threshold=threshold,
        empty_level=empty_level,
    )
    text = json.dumps(trained.model, indent=2, sort_keys=True) + "\n"
    data = text.encode("utf-8")
    sha = hashlib.sha256(data).hexdigest()
    sidecar = {
        "model": output.name,
        "model_sha256": sha,
        "patches": {
            "URL": patches.absolute().as_uri(),
            "version": parent.source.version,
            "manifest_sha256": parent.source.manifest_sha256,
            "index_xxh3": parent.index_xxh3,
        },
        "labels": {"URL": labels.absolute().as_uri(), "sha256": file_sha256(labels)},
        **trained.sidecar,
    }
    with staged_beside(output, create=None) as tmp:
        tmp.write_bytes(data)
    side = sidecar_path(output)
    with staged_beside(side, create=None) as tmp:
        tmp.write_text(json_text(sidecar), encoding="utf-8")
    m = trained.metrics
    yield Record(
        "train",
        str(output),
        "ok",
        f"logistic regression on {len(ids)} labelled patches ({sidecar['n_train']} train, "
        f"{sidecar['n_held_out']} held out, seed {seed}): held-out AUROC "
        f"{'n/a' if m['auroc'] is None else format(m['auroc'], '.4f')}, precision "
        f"{m['precision']:.4f}, recall {m['recall']:.4f}",
        {"sha256": sha, "sidecar": str(side), "metrics": m, "seed": seed},
    )


__all__ = [
    "PART_COLUMNS",
    "TABLE_COLUMNS",
    "ClassifyParams",
    "DaskScorer",
    "DaskSettings",
    "PatchDataset",
    "ScoresStep",
    "dask_batches",
    "derive_classify",
    "iter_batches",
    "read_labels",
    "read_rows",
    "run_pipeline",
    "score_chunk",
    "score_task",
    "train_classifier",
]
