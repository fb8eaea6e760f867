"""The one exception hierarchy of bidspack.

Every error that a user can cause (a bad spec, a broken input file, an output folder
that is not empty) is a :class:`BidspackError`. It names the file concerned (a path as
the user gave it, or a dataset-relative path) and says what is wrong; the CLI prints
``Error: <path>: <reason>`` and exits non-zero without a traceback (``--debug`` shows
one). Anything else that escapes is a bug in bidspack.
"""

from __future__ import annotations

from pathlib import Path


class BidspackError(Exception):
    """Base class of all errors that bidspack reports to a user.

    Args:
        path: the file or folder the error is about (``None`` only when no single
            path is concerned).
        reason: what is wrong, as one sentence a curator understands.
        hint: optional advice on how to fix it.
    """

    exit_code: int = 1

    def __init__(self, path: str | Path | None, reason: str, *, hint: str | None = None):
        self.path = None if path is None else str(path)
        self.reason = reason
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """``<path>: <reason>`` (plus the hint, when given)."""
        text = f"{self.path}: {self.reason}" if self.path else self.reason
        if self.hint:
            text += f" ({self.hint})"
        return text


class SpecError(BidspackError):
    """The packaging spec is malformed or inconsistent with the submission.

    ``location`` is the key path inside the spec (e.g. ``channels[2].voxel_size``)
    and ``line`` the 1-based line in the spec file where it was found, if known.
    """

    def __init__(
        self,
        path: str | Path | None,
        reason: str,
        *,
        location: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ):
        self.location = location
        self.line = line
        where = str(path) if path is not None else None
        if where is not None and line is not None:
            where = f"{where}:{line}"
        if location:
            reason = f"{location}: {reason}"
        super().__init__(where, reason, hint=hint)


class SourceError(BidspackError):
    """An input image (slice folder, TIFF, OME-TIFF) is unreadable or inconsistent."""


class PlanError(BidspackError):
    """The plan cannot be built: two inputs map to one output, a label is invalid, ..."""


class OutputError(BidspackError):
    """The output location cannot be written as asked (not empty, not a dataset, ...)."""


class IntegrityError(BidspackError):
    """Written data does not match its source (pixel hash mismatch, truncated file)."""


class ValidationFailed(BidspackError):
    """The dataset has validation errors (BIDS validator or bidspack's own checks)."""


class UnsafeInputError(BidspackError):
    """An untrusted value (a spec key, a journal entry, an evidence file, a file name of
    the submission) is refused: a path leaving its root, a symlink, a FIFO, a template
    with attribute access, a pattern that needs backtracking ... (see
    :mod:`bidspack.safety`)."""


class ResourceLimitError(BidspackError):
    """An input would exceed a documented resource budget (pixels to decode, spec size,
    nesting depth, index range); the message states the budget and how to raise it."""


class ToolError(BidspackError):
    """An external tool (bids-validator-deno, git-annex, ...) is missing or failed."""
