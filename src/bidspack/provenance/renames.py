"""The subject renames a dataset remembers: ``code/bidspack/renames.json``.

``bidspack rename-subject`` adds one entry per renamed participant label (old, new),
in the same transaction as the rename (whose provenance record says when and how; the
file holds no ids or times, so the same renames give the same bytes). ``bidspack
package`` reads the file so that re-packaging the same submission maps each subject
folder to its current label instead of re-creating the old one; a label that two
entries or two folders would claim is a planning error. The file is part of the
dataset (tracked by DataLad, copied by export), so clones remember renames too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bidspack.errors import PlanError

RENAMES = "code/bidspack/renames.json"


def read_renames(dataset: Path) -> list[dict[str, str]]:
    """The rename entries of *dataset*, oldest first (``[]`` when none).

    Raises:
        PlanError: the file is not valid JSON of the documented form.
    """
    path = Path(dataset) / RENAMES
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc["renames"]
        out = [{"from": str(e["from"]), "to": str(e["to"])} for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlanError(path, f"unreadable rename record ({exc})") from exc
    return out


def current_labels(dataset: Path) -> dict[str, str]:
    """Map every label a rename replaced to the label it has now (chains followed:
    ``a -> b`` then ``b -> c`` gives ``a -> c`` and ``b -> c``; ``a -> b -> a`` ends
    where it started and maps nothing).

    Raises:
        PlanError: see :func:`read_renames`.
    """
    mapping: dict[str, str] = {}
    for e in read_renames(dataset):
        old, new = e["from"], e["to"]
        for k, v in list(mapping.items()):
            if v == old:
                mapping[k] = new
        mapping.setdefault(old, new)
    return {k: v for k, v in mapping.items() if k != v}


def with_renames(dataset: Path, renames: dict[str, str]) -> str:
    """The text of the rename record after adding *renames* (old label -> new label,
    without ``sub-``)."""
    entries: list[dict[str, Any]] = list(read_renames(dataset))
    entries += [{"from": old, "to": new} for old, new in sorted(renames.items())]
    return json.dumps({"renames": entries}, indent=2, ensure_ascii=False) + "\n"
