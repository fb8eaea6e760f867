"""Plans: the list of actions an operation will carry out, built before anything runs.

A plan holds dataset-relative target paths and submission-relative source paths only,
so it can be printed (``--dry-run``), stored and compared between runs. Every input
file of the submission appears in exactly one action: ``convert`` (image slices,
stacks or vendor files to OME-TIFF / OME-Zarr), ``copy`` (non-image files) or
``exclude`` (with a reason) -- except a vendor file whose channels several spec entries
``select``: it feeds one ``convert`` per entry.
``write`` actions create metadata files (sidecars, tables, dataset_description.json).
``refuse`` actions list submission entries that are never read: symbolic links (unless
followed on request and inside the submission), FIFOs, sockets and devices, with why.
The JSON form is described by ``specs/plan.schema.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

ActionKind = Literal["convert", "copy", "write", "exclude", "skip", "refuse"]


@dataclass(frozen=True)
class Action:
    """One thing a plan will do.

    Attributes:
        kind: ``convert``, ``copy``, ``write``, ``exclude``, ``skip`` or ``refuse``.
        target: dataset-relative output path (``None`` for exclude/skip/refuse).
        sources: submission-relative input paths (POSIX), in Z order for slices.
        params: parameters that determine the output (shape, voxel size, codec ...).
        reason: why (exclude/skip), or a note.
        step: the step this action belongs to (``sub-<label>/<folder>`` or ``dataset``).
        content: the text of a ``write`` action.
    """

    kind: ActionKind
    target: str | None
    sources: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    step: str = "dataset"
    content: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (see ``specs/plan.schema.json``); ``content`` is left out."""
        out: dict[str, Any] = {"kind": self.kind, "target": self.target, "step": self.step}
        if self.sources:
            out["sources"] = list(self.sources)
        if self.params:
            out["params"] = self.params
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class Plan:
    """An ordered list of actions plus what the plan was built from.

    Attributes:
        operation: e.g. ``"package"``.
        parameters: operation parameters (spec file name, options).
        actions: the actions, in the order they will be applied.
    """

    operation: str
    parameters: dict[str, Any]
    actions: list[Action] = field(default_factory=list)

    def __iter__(self) -> Iterator[Action]:
        return iter(self.actions)

    def of_kind(self, kind: ActionKind) -> list[Action]:
        """The actions of one kind, in plan order."""
        return [a for a in self.actions if a.kind == kind]

    def targets(self) -> list[str]:
        """Every output path of the plan."""
        return [a.target for a in self.actions if a.target is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, valid against ``specs/plan.schema.json``."""
        return {
            "plan_version": 1,
            "operation": self.operation,
            "parameters": self.parameters,
            "actions": [a.to_dict() for a in self.actions],
        }
