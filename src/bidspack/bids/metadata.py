"""Content of BIDS metadata files: dataset_description.json, sidecars, tables.

Sources: BIDS specification 1.11.1, "Modality agnostic files" (dataset_description,
participants, samples), "Microscopy" (sidecar PixelSize / PixelSizeUnits, samples.tsv),
"Derivatives: common data types" (derivative dataset_description: GeneratedBy,
SourceDatasets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bidspack import __version__
from bidspack.bids.schema import BIDS_VERSION
from bidspack.bids.tables import json_text, tsv_text

GENERATED_BY = {
    "Name": "bidspack",
    "Version": __version__,
    "CodeURL": "https://pypi.org/project/bidspack/",
}


def dataset_description(fields: Mapping[str, Any]) -> str:
    """Raw dataset_description.json text: spec fields plus BIDSVersion, DatasetType,
    GeneratedBy (bidspack with its version). ``README`` is not a field and is dropped."""
    out: dict[str, Any] = {
        "Name": fields["Name"],
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
    }
    for key, value in fields.items():
        if key not in ("Name", "README"):
            out[key] = value
    out["GeneratedBy"] = [dict(GENERATED_BY)]
    return json_text(out)


def derivative_description(
    pipeline: str,
    *,
    name: str,
    generated_by: Sequence[Mapping[str, Any]] | None = None,
    authors: Sequence[str] | None = None,
    license: str | None = None,
) -> str:
    """dataset_description.json of ``derivatives/<pipeline>/`` (DatasetType derivative).

    ``GeneratedBy`` names the pipeline that made the files (the lab's, as declared in
    the spec) followed by bidspack, which packaged them; ``SourceDatasets`` points to
    the raw dataset two levels up (``DatasetLinks`` ``raw`` -> ``../../``, cited as the
    BIDS URI ``bids:raw:``). *authors* and *license* are the raw dataset's (from the
    spec), so the derivative is citable on its own.
    """
    gen = list(generated_by or [{"Name": pipeline, "Description": "Submitted by the lab"}])
    gen.append(dict(GENERATED_BY))
    out = {
        "Name": f"{name} - {pipeline}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": gen,
        "SourceDatasets": [{"URL": "bids:raw:"}],
        "DatasetLinks": {"raw": "../../"},
    }
    if authors:
        out["Authors"] = list(authors)
    if license:
        out["License"] = license
    return json_text(out)


#: Microscopy sidecar fields (BIDS 1.10 microscopy, "Microscopy-specific fields" and
#: hardware fields) bidspack fills from a source file's acquisition metadata
#: (``ImageSource.instrument``: OME-XML ``Instrument``/``Objective``, the CZI XML).
SIDECAR_FROM_FILE = (
    "Manufacturer",
    "ManufacturersModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
    "NumericalAperture",
    "Magnification",
    "Immersion",
)

#: Keys of a source's ``instrument`` that go to the output OME-XML
#: (:func:`bidspack.io.omexml.build_omexml`) but have no microscopy sidecar field.
OMEXML_ONLY = ("ChannelName", "ExcitationWavelength", "EmissionWavelength", "ChannelColor")


def omexml_metadata(instrument: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a source's ``instrument`` mapping the output OME-XML carries:
    microscope, objective and this image's channel (name, excitation/emission
    wavelengths in nm). Per-channel lists (``ChannelNames``, ``ExcitationWavelengths``,
    ``EmissionWavelengths``) of a source holding one channel become single values;
    values ``None`` are dropped."""
    if not instrument:
        return {}
    out: dict[str, Any] = {}
    for key in (*SIDECAR_FROM_FILE, *OMEXML_ONLY):
        value = instrument.get(key)
        if value is None:
            plural = instrument.get(key + "s")
            if isinstance(plural, list | tuple) and len(plural) == 1:
                value = plural[0]
        if value is not None and value != "":
            out[key] = value
    return out


def micr_sidecar(
    voxel_size_zyx_um: tuple[float | None, float, float], *extra: Mapping[str, Any]
) -> str:
    """Microscopy JSON sidecar: ``PixelSize`` ``[x, y, z]`` in ``um`` (``[x, y]`` for a 2D
    image, whose Z is ``None``) plus *extra* fields (later mappings win). BIDS
    microscopy orders PixelSize X, Y, Z and allows 2 or 3 values."""
    z, y, x = voxel_size_zyx_um
    size = [_num(x), _num(y)] + ([] if z is None else [_num(z)])
    out: dict[str, Any] = {"PixelSize": size, "PixelSizeUnits": "um"}
    for fields in extra:
        out.update(fields)
    return json_text(out)


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else float(v)


def table_files(
    id_columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    extra_columns: Mapping[str, Mapping[str, Any]],
) -> tuple[str, str]:
    """(TSV text, JSON data dictionary text) of participants.tsv or samples.tsv.

    Args:
        id_columns: leading columns, e.g. ``("participant_id",)``.
        rows: one mapping per row, sorted by the caller.
        extra_columns: column name -> BIDS column description (``Description``,
            ``Levels``, ``Units``) for every further column, in order.
    """
    cols = [*id_columns, *extra_columns]
    data = {name: dict(meta) for name, meta in extra_columns.items()}
    for name, meta in data.items():
        meta.setdefault("Description", name)
    return tsv_text(cols, rows), json_text(data)
