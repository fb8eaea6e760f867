"""Build BIDS file names and dataset-relative paths.

Source: BIDS specification, "Common principles: file name structure" and the
entity table (order of entities is taken from the schema).
"""

from __future__ import annotations

from collections.abc import Mapping

from bidspack.bids.schema import entity_keys, entity_name, entity_order, is_valid_label
from bidspack.errors import PlanError


def bids_name(entities: Mapping[str, str], suffix: str, extension: str) -> str:
    """Return ``sub-<l>_sample-<l>[_stain-<l>]..._<suffix><extension>``.

    Args:
        entities: entity name (long ``subject`` or key ``sub``) -> label.
        suffix: the BIDS suffix, e.g. ``"SPIM"``.
        extension: with the leading dot, e.g. ``".ome.tif"`` or ``".json"``.

    Raises:
        PlanError: unknown entity or invalid label.
    """
    longs = {entity_name(k): v for k, v in entities.items()}
    parts = []
    keys = entity_keys()
    for name in entity_order():
        if name in longs:
            label = longs[name]
            if not is_valid_label(label):
                raise PlanError(None, f"invalid BIDS label {label!r} for entity {name!r}")
            parts.append(f"{keys[name]}-{label}")
    return "_".join([*parts, suffix]) + extension


def micr_path(entities: Mapping[str, str], suffix: str, extension: str) -> str:
    """Dataset-relative path of a microscopy file: ``sub-<l>/[ses-<l>/]micr/<name>``."""
    longs = {entity_name(k): v for k, v in entities.items()}
    if "subject" not in longs:
        raise PlanError(None, "a microscopy file needs the subject entity")
    folder = f"sub-{longs['subject']}"
    if "session" in longs:
        folder += f"/ses-{longs['session']}"
    return f"{folder}/micr/{bids_name(longs, suffix, extension)}"
