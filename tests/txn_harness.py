"""A mixed transaction run in a child process by the fault-injection tests.

``python txn_harness.py DATASET``: on the dataset made by :func:`make_dataset`, one
transaction puts a file and a directory tree, replaces a file and a directory,
deletes a file and a directory, and renames a directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bidspack.txn import Transaction, dataset_lock


def make_dataset(root: Path) -> None:
    """The 'before' state."""
    (root / "sub-01/micr").mkdir(parents=True)
    (root / "sub-01/micr/a.json").write_text("old a\n")
    (root / "sub-01/micr/img.ome.zarr/0").mkdir(parents=True)
    (root / "sub-01/micr/img.ome.zarr/zarr.json").write_text("{}\n")
    (root / "sub-01/micr/img.ome.zarr/0/c0").write_bytes(b"\x01" * 1000)
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    (root / "old.txt").write_text("to be deleted\n")
    (root / "olddir/x").mkdir(parents=True)
    (root / "olddir/x/y.txt").write_text("y\n")


def run(root: Path) -> None:
    """The step."""
    with dataset_lock(root):
        txn = Transaction(root)
        try:
            txn.rename("sub-01", "sub-02")
            txn.delete("old.txt")
            txn.delete("olddir")
            txn.stage_path("participants.tsv").write_text("participant_id\nsub-02\n")
            txn.stage_path("new/file.txt").write_text("new\n")
            z = txn.stage_dir("sub-02/micr/new.ome.zarr")
            (z / "0").mkdir()
            (z / "zarr.json").write_text('{"zarr_format": 3}\n')
            (z / "0" / "c0").write_bytes(b"\x02" * 5000)
            zz = txn.stage_dir("sub-02/micr/img.ome.zarr")
            (zz / "zarr.json").write_text('{"replaced": true}\n')
            txn.commit()
        except BaseException:
            txn.abort()
            raise


if __name__ == "__main__":
    run(Path(sys.argv[1]))
