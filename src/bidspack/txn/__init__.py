"""The transaction engine: staged outputs, a journal, a commit point, atomic renames.

Knows files and directories, not BIDS. See :mod:`bidspack.txn.transaction`.
"""

from bidspack.txn.transaction import Transaction, dataset_lock, recover

__all__ = ["Transaction", "dataset_lock", "recover"]
