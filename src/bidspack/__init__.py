"""bidspack: turn microscopy submissions into validated, reproducible BIDS microscopy datasets.

The library is layered (see ``docs`` in the README): :mod:`bidspack.errors` and
:mod:`bidspack.records` at the bottom, then :mod:`bidspack.bids` (BIDS schema rules,
paths, tables), :mod:`bidspack.io` (readers, OME-TIFF writer, pixel hash),
:mod:`bidspack.txn` (staged, atomic commits), :mod:`bidspack.ops` (operations that
plan, then apply, yielding :class:`~bidspack.records.Record` objects) and
:mod:`bidspack.cli` (thin click commands).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bidspack")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
