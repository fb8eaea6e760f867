"""The derived-dataset layer shared by every ``bidspack derive`` verb.

A derived dataset is a standalone BIDS derivative dataset (BIDS 1.11.1,
"Derivatives": ``dataset_description.json`` with ``DatasetType`` ``derivative``,
``GeneratedBy`` and ``SourceDatasets``), written with the machinery of
``bidspack package``:

- the dataset lock (:func:`bidspack.txn.dataset_lock`) is held for the whole run and
  unfinished transactions are recovered first
  (:func:`bidspack.ops.package.recover_records`);
- each unit of work (one source image, then the dataset-level files) is a
  :class:`DerivedStep`, committed in one :class:`~bidspack.txn.Transaction` together
  with its step record (``.bidspack/steps/<key>.json``, :mod:`bidspack.txn.steps`),
  the updated manifest and a provenance record
  (:func:`bidspack.provenance.record.stage`), so ``bidspack verify`` and
  ``bidspack log`` work on it;
- a step whose fingerprint (its parameters and the digests of its inputs: source
  pixel hashes, file digests, seed) is unchanged and whose outputs are all present is
  ``notneeded``;
- a run that fails before its first commit removes what it created.

The source is recorded in ``dataset_description.json``: ``SourceDatasets`` holds its
``file://`` URL and ``Version`` (the release tag, else the commit, when it is a
git/DataLad dataset), and the ``bidspack`` key holds the source manifest's sha256,
commit, tag and whether the work tree was dirty.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidspack import __version__
from bidspack.bids.metadata import GENERATED_BY
from bidspack.bids.schema import BIDS_VERSION
from bidspack.bids.tables import json_text
from bidspack.errors import OutputError
from bidspack.ops.derive.source import SourceDataset
from bidspack.ops.derive.yoda import is_input, source_url
from bidspack.ops.session import check_output, locked_output
from bidspack.provenance.record import StepProvenance
from bidspack.provenance.record import stage as stage_provenance
from bidspack.records import Record
from bidspack.safety import is_within
from bidspack.txn import Transaction
from bidspack.txn.steps import fingerprint, load_record, record_path
from bidspack.txn.transaction import STATE_DIR

#: Written by every derive verb (the validator must not look into arrays and tables).
BIDSIGNORE_BASE: tuple[str, ...] = ()

StageFn = Callable[[Transaction], Iterator[Record]]


@dataclass
class DerivedStep:
    """One transactional step of a derive verb.

    Attributes:
        name: step id, e.g. ``patches/sub-1_SPIM`` (its record is
            ``.bidspack/steps/<key>.json``).
        operation: the verb, e.g. ``derive-patches`` (manifest ``step`` column prefix
            and provenance activity label).
        outputs: dataset-relative paths the step writes (files or folders).
        parameters: JSON parameters; part of the fingerprint and the provenance.
        inputs: input label -> digest (source pixel hash, file xxh3-128 ...); part of
            the fingerprint.
        used: provenance inputs (``{"path": ..., "xxh3_128": ...}``).
        stage: writes every output into the transaction (``txn.stage_path(rel)``) and
            yields records.
        delete: further dataset paths removed at commit (outputs of retired steps,
            their step records).
    """

    name: str
    operation: str
    outputs: list[str]
    parameters: dict[str, Any]
    inputs: dict[str, str]
    used: list[dict[str, Any]]
    stage: StageFn
    delete: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """xxh3-128 of the parameters, outputs and input digests
        (:func:`bidspack.txn.steps.fingerprint`)."""
        described = [{"operation": self.operation, "outputs": self.outputs, **self.parameters}]
        return fingerprint(described, {k: {"xxh3": v} for k, v in self.inputs.items()})


def check_roots(source: Path, out: Path) -> None:
    """Refuse an output folder inside the source dataset, or a source inside it.

    Raises:
        OutputError: naming both folders.

    A source installed as the derived dataset's input (``OUT/sourcedata/<name>``, a
    DataLad subdataset: :func:`bidspack.ops.derive.yoda.is_input`) is accepted.
    """
    if is_input(source, out):
        return
    if is_within(out, source) or is_within(source, out):
        raise OutputError(
            out,
            f"and the source dataset {source} are inside one another; a derived dataset "
            "is a folder of its own",
            hint="choose an output folder outside the source dataset",
        )


class DerivedDataset:
    """The output folder of a derive verb.

    Args:
        out: the folder: absent, empty (but for ``.git``/``.datalad`` housekeeping),
            or a bidspack dataset (re-run, resume).

    Raises:
        OutputError: *out* exists and is neither a folder, empty, nor a bidspack
            dataset.
    """

    def __init__(self, out: Path):
        self.path = Path(out)
        check_output(self.path)  # a folder with unfinished transactions is accepted
        #: called with each step right after it is committed (``--datalad``: one
        #: ``datalad save`` with a run record, :func:`bidspack.ops.derive.yoda.record_steps`)
        self.on_commit: Callable[[DerivedStep], None] | None = None

    @contextlib.contextmanager
    def session(self, *, recover_first: bool = True) -> Iterator[list[Record]]:
        """Hold the dataset lock for the block; recover unfinished transactions first
        (their records are in the yielded list), then check the folder. If the block
        fails before any step was committed, what this run created (state folder, new
        output folder) is removed again.

        Raises:
            OutputError: another process holds the lock; unfinished transactions and
                not *recover_first*; the folder is not a bidspack dataset.
        """
        with locked_output(self.path, recover_first=recover_first) as session:
            yield session.recovered

    def step_records(self, operation: str) -> dict[str, dict[str, Any]]:
        """Committed step records of *operation*, by step name."""
        folder = self.path / STATE_DIR / "steps"
        out: dict[str, dict[str, Any]] = {}
        if not folder.is_dir():
            return out
        for p in sorted(folder.glob("*.json")):
            try:
                rec = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict) and rec.get("operation") == operation:
                out[str(rec.get("step"))] = rec
        return out

    def is_current(self, step: DerivedStep) -> bool:
        """Whether *step* is committed with its fingerprint and all its outputs exist."""
        previous = load_record(self.path, step.name)
        return bool(
            previous
            and previous.get("fingerprint") == step.fingerprint()
            and all((self.path / t).exists() for t in step.outputs)
        )

    def run_step(self, step: DerivedStep) -> Iterator[Record]:
        """Commit *step* in one transaction (or report it ``notneeded``).

        The transaction holds the step's outputs, the deletion of outputs its previous
        record listed and it no longer writes (and of ``step.delete``), its step
        record, the updated manifest and a provenance record. Yields the stage
        function's records, then a ``step`` record (``ok`` or ``notneeded``).

        Raises:
            BidspackError: any error of the stage function (the transaction is
                aborted: the dataset is as before the step).
        """
        fp = step.fingerprint()
        previous = load_record(self.path, step.name)
        if self.is_current(step) and not any((self.path / d).exists() for d in step.delete):
            yield Record(
                "step",
                step.name,
                "notneeded",
                "inputs and parameters unchanged",
                {"fingerprint": fp, "outputs": len(step.outputs)},
            )
            return
        txn = Transaction(self.path)
        prov = StepProvenance(
            step.operation,
            step.name,
            parameters={**step.parameters, "fingerprint": fp},
            used=step.used,
        )
        try:
            records = list(step.stage(txn))
            missing = [t for t in step.outputs if t not in txn.staged]
            if missing:
                raise OutputError(missing[0], "a planned output of the step was not written")
            stale = [o for o in (previous or {}).get("outputs", []) if o not in step.outputs]
            for rel in sorted({*stale, *step.delete}):
                if (self.path / rel).exists():
                    txn.delete(rel)
            txn.stage_path(record_path(step.name)).write_text(
                json_text(
                    {
                        "step": step.name,
                        "operation": step.operation,
                        "fingerprint": fp,
                        "outputs": step.outputs,
                        "inputs": step.inputs,
                    }
                ),
                encoding="utf-8",
            )
            stage_provenance(txn, prov)
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        if self.on_commit is not None:
            self.on_commit(step)
        yield from records
        yield Record(
            "step",
            step.name,
            "ok",
            f"committed {len(step.outputs)} output(s)",
            {"fingerprint": fp, "transaction": txn.id},
        )


def source_block(source: SourceDataset, out: Path | None = None) -> dict[str, Any]:
    """What the derived dataset records about its source (the ``bidspack.source`` key
    of ``dataset_description.json``): URL (:func:`bidspack.ops.derive.yoda.source_url`:
    relative for the installed input of *out*), commit, tag, dirty flag, manifest
    sha256."""
    return {
        "URL": source_url(source.path, out),
        "commit": source.commit,
        "tag": source.tag,
        "dirty": source.dirty,
        "manifest": "code/bidspack/manifest.tsv",
        "manifest_sha256": source.manifest_sha256,
    }


def derived_description(
    *,
    name: str,
    operation: str,
    command: str,
    parameters: dict[str, Any],
    source: SourceDataset,
    out: Path | None = None,
) -> str:
    """``dataset_description.json`` text of a derived dataset (BIDS 1.11.1
    "Derivatives": ``DatasetType`` derivative, ``GeneratedBy``, ``SourceDatasets``).

    ``GeneratedBy[0].Description`` holds the command (paths relative to the derived
    dataset, the output as ``.``); the ``bidspack`` key holds the operation, its
    parameters and the source block (:func:`source_block`). No timestamp: the same
    inputs give the same bytes. A source installed as *out*'s input
    (``sourcedata/<name>``) is named by that relative path.
    """
    src: dict[str, Any] = {"URL": source_url(source.path, out)}
    if source.version:
        src["Version"] = source.version
    described = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "bidspack",
                "Version": __version__,
                "CodeURL": GENERATED_BY["CodeURL"],
                "Description": command,
            }
        ],
        "SourceDatasets": [src],
        "bidspack": {
            "operation": operation,
            "parameters": parameters,
            "source": source_block(source, out),
        },
    }
    return json_text(described)


def bidsignore_text(*entries: str) -> str:
    """``.bidsignore`` lines: *entries* (top-level names such as ``patches``,
    ``index.parquet``) plus :data:`BIDSIGNORE_BASE`. A folder is listed by its bare
    name: bids-validator-deno 3.0.2 does not ignore ``patches/`` or ``patches/**``
    (measured), but does ignore ``patches``."""
    return "".join(f"{e}\n" for e in sorted({*entries, *BIDSIGNORE_BASE}))


__all__ = [
    "DerivedDataset",
    "DerivedStep",
    "bidsignore_text",
    "check_roots",
    "derived_description",
    "source_block",
]
