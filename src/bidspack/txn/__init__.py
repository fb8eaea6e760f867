"""The transaction engine: staged outputs, a journal, a commit point, atomic renames.

Knows files and directories, not BIDS. See :mod:`bidspack.txn.transaction`,
:mod:`bidspack.txn.steps` and :mod:`bidspack.txn.faults`.
"""

from bidspack.txn.transaction import Transaction, dataset_lock, pending, recover

__all__ = ["Transaction", "dataset_lock", "pending", "recover"]
