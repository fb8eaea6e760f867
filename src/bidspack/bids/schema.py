"""Rules taken from the BIDS schema, pinned to the schema the validator embeds.

bids-validator-deno 3.0.2 embeds BIDS 1.11.1 (schema 1.2.7); ``bidsschematools`` is
pinned to 1.2.7 in ``pyproject.toml`` so that entity order, label formats and the
microscopy suffixes used here are exactly those the validator checks against.
Source: BIDS specification, "Entities" appendix and "Microscopy" section;
the schema's ``objects.entities``, ``objects.formats`` and ``rules.files.raw.micr``.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from bidsschematools import schema as _bst

from bidspack.errors import PlanError

#: BIDSVersion written to dataset_description.json: the version the pinned validator knows.
BIDS_VERSION = "1.11.1"
#: The BIDS schema version that goes with :data:`BIDS_VERSION`.
SCHEMA_VERSION = "1.2.7"


@cache
def load() -> Any:
    """Load the BIDS schema bundled with bidsschematools (a ``Namespace``)."""
    return _bst.load_schema()


@cache
def label_pattern() -> re.Pattern[str]:
    """The compiled full-match pattern of a BIDS ``label`` (schema ``objects.formats.label``)."""
    return re.compile(rf"^{load()['objects']['formats']['label']['pattern']}$")


@cache
def entity_order() -> tuple[str, ...]:
    """Long entity names (``subject``, ``sample``, ...) in the order BIDS file names use."""
    return tuple(load()["rules"]["entities"])


@cache
def entity_keys() -> dict[str, str]:
    """Map long entity names to their file-name keys (``subject`` -> ``sub``)."""
    ents = load()["objects"]["entities"]
    return {name: ents[name]["name"] for name in entity_order()}


def entity_name(key_or_name: str) -> str:
    """Return the long entity name for a key or long name (``sub`` or ``subject``).

    Raises:
        PlanError: if the name is no BIDS entity.
    """
    keys = entity_keys()
    if key_or_name in keys:
        return key_or_name
    for name, key in keys.items():
        if key == key_or_name:
            return name
    raise PlanError(None, f"{key_or_name!r} is not a BIDS entity")


@cache
def micr_rule() -> dict[str, Any]:
    """The raw microscopy file rule: suffixes, extensions and entity requirement levels."""
    rule = load()["rules"]["files"]["raw"]["micr"]["microscopy"]
    return {
        "suffixes": tuple(rule["suffixes"]),
        "extensions": tuple(rule["extensions"]),
        "entities": dict(rule["entities"]),
    }


def is_valid_label(label: str) -> bool:
    """True if *label* matches the BIDS label format (alphanumerics and ``+``)."""
    return bool(label_pattern().match(label))


def sanitize_label(raw: str) -> str:
    """Make a valid BIDS label from *raw* by dropping every character the label format forbids.

    ``"45670-ko"`` -> ``"45670ko"``; ``"A_1 b"`` -> ``"A1b"``.

    Raises:
        PlanError: if nothing valid remains.
    """
    allowed = re.compile(r"[0-9a-zA-Z+]")
    label = "".join(ch for ch in raw if allowed.match(ch))
    if not label or not is_valid_label(label):
        raise PlanError(None, f"cannot make a BIDS label from {raw!r}")
    return label
