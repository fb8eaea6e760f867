"""Result records: the one output type of every operation (after DataLad's result records).

An operation is a generator of :class:`Record`. The CLI's rich table, its ``--json``
lines and the provenance of a step are renderings of these records; no operation
prints anything itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

Status = Literal["ok", "planned", "excluded", "notneeded", "impossible", "error"]
#: Every status, in the order summaries list them.
STATUSES: tuple[Status, ...] = get_args(Status)


@dataclass(frozen=True)
class Record:
    """The outcome of one action of an operation.

    Attributes:
        action: what was done, e.g. ``"convert"``, ``"copy"``, ``"exclude"``,
            ``"validate"``.
        path: the dataset-relative path concerned (POSIX separators), or the
            submission-relative input path for actions that write nothing.
        status: ``ok`` (done), ``planned`` (a dry run: would be done),
            ``excluded`` (an input left out on purpose, with its reason),
            ``notneeded`` (already done, nothing written), ``impossible`` (could not
            be attempted) or ``error`` (attempted, failed).
        message: one human-readable sentence.
        details: JSON-serialisable extra fields (sources, hashes, counts ...).
    """

    action: str
    path: str
    status: Status
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (the ``--json`` line format)."""
        return asdict(self)

    def to_json(self) -> str:
        """One JSON line, keys sorted, non-ASCII kept."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)


def count_statuses(records: Iterable[Record]) -> dict[str, int]:
    """Count records per status; every status of :data:`STATUSES` is present in the
    result (in that order), so ``counts["error"]`` always works."""
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for rec in records:
        counts[rec.status] = counts.get(rec.status, 0) + 1
    return counts
