"""OME-XML for bidspack's OME-TIFF files, built and parsed with ome-types.

Source: OME Data Model and File Formats, schema 2016-06
(https://www.openmicroscopy.org/Schemas/OME/2016-06). Units are written explicitly
as ``µm`` (U+00B5), the OME default unit, so readers never have to assume one.
No UUID, no acquisition date, no timestamp: the XML depends only on the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ome_types import OME, from_xml, to_xml
from ome_types.model import (
    Channel,
    Image,
    Instrument,
    Microscope,
    Objective,
    ObjectiveSettings,
    Pixels,
    Pixels_DimensionOrder,
    PixelType,
    Plane,
    TiffData,
    UnitsLength,
)

from bidspack.io.sources import UNIT_TO_UM

#: OME Pixels Type for each NumPy dtype we write.
OME_PIXEL_TYPES = {
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "float32": "float",
    "float64": "double",
}


#: BIDS ``Immersion`` values (free text) -> OME ``Objective_Immersion``.
OME_IMMERSION = {
    "oil": "Oil",
    "water": "Water",
    "waterdipping": "WaterDipping",
    "water dipping": "WaterDipping",
    "air": "Air",
    "multi": "Multi",
    "glycerol": "Glycerol",
    "glycerin": "Glycerol",
}


def build_omexml(
    *,
    name: str,
    shape_zyx: tuple[int, int, int],
    dtype: np.dtype,
    physical_size_zyx_um: tuple[float | None, float, float],
    channel_name: str | None = None,
    origin_zyx_um: tuple[float, float, float] | None = None,
    instrument: Mapping[str, Any] | None = None,
    sizes_tc: tuple[int, int] = (1, 1),
    channel_metadata: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """OME-XML for one image stored as consecutive IFDs from IFD 0: a single-channel
    Z-stack, or (*sizes_tc*) T time points of C channels of Z planes in ``XYZCT``
    order.

    Args:
        name: the ``Image`` name (bidspack uses the BIDS file name without extension).
        shape_zyx: ``(z, y, x)`` in pixels.
        dtype: pixel dtype; must be one of :data:`OME_PIXEL_TYPES`.
        physical_size_zyx_um: voxel size in micrometres, ``(z, y, x)``; ``z`` ``None``
            for a 2D image (no ``PhysicalSizeZ`` is written).
        channel_name: optional ``Channel`` name (e.g. the stain).
        origin_zyx_um: optional position in micrometres of the first voxel, written as
            one ``Plane`` (``TheZ``/``TheC``/``TheT`` 0) with ``PositionZ/Y/X`` in ``µm``
            (one Plane, not one per Z, keeps the XML small; :func:`origin_um` reads it).
        instrument: what the source file says of its acquisition, keyed by BIDS
            sidecar field names (``Manufacturer``, ``ManufacturersModelName``,
            ``NumericalAperture``, ``Magnification``, ``Immersion``) plus
            ``ExcitationWavelength`` / ``EmissionWavelength`` (nm, this channel),
            ``ChannelName`` and ``ChannelColor`` (``#RRGGBB``); written as an OME
            ``Instrument`` (``Microscope``, ``Objective``) referenced by the image, and
            as ``Channel`` attributes.
            Keys that are absent are not written.
        sizes_tc: ``(t, c)``, the OME ``SizeT`` and ``SizeC``.
        channel_metadata: for C channels, each channel's mapping (``ChannelName``,
            ``ExcitationWavelength``, ``EmissionWavelength``); default *instrument* for
            a single channel.

    Raises:
        ValueError: unsupported dtype.
    """
    dname = np.dtype(dtype).name
    if dname not in OME_PIXEL_TYPES:
        raise ValueError(f"dtype {dname} cannot be written to OME-TIFF")
    z, y, x = shape_zyx
    pz, py, px = physical_size_zyx_um
    meta = dict(instrument or {})
    nt, nc = (int(v) for v in sizes_tc)
    per_channel = list(channel_metadata) if channel_metadata else [meta]
    if len(per_channel) != nc:
        per_channel = (per_channel + [{}] * nc)[:nc]
    channels = []
    for ci, cmeta in enumerate(per_channel):
        ch_kw: dict[str, Any] = {}
        if cmeta.get("ExcitationWavelength") is not None:
            ch_kw["excitation_wavelength"] = float(cmeta["ExcitationWavelength"])
            ch_kw["excitation_wavelength_unit"] = UnitsLength.NANOMETER
        if cmeta.get("EmissionWavelength") is not None:
            ch_kw["emission_wavelength"] = float(cmeta["EmissionWavelength"])
            ch_kw["emission_wavelength_unit"] = UnitsLength.NANOMETER
        if cmeta.get("ChannelColor"):
            ch_kw["color"] = str(cmeta["ChannelColor"])
        cname = (channel_name if nc == 1 else None) or cmeta.get("ChannelName") or None
        channels.append(Channel(id=f"Channel:0:{ci}", samples_per_pixel=1, name=cname, **ch_kw))
    z_kw: dict[str, Any] = {}
    if pz is not None:
        z_kw = {"physical_size_z": float(pz), "physical_size_z_unit": UnitsLength.MICROMETER}
    pixels = Pixels(
        id="Pixels:0",
        dimension_order=Pixels_DimensionOrder.XYZCT,
        type=PixelType(OME_PIXEL_TYPES[dname]),
        size_x=x,
        size_y=y,
        size_z=z,
        size_c=nc,
        size_t=nt,
        physical_size_x=float(px),
        physical_size_x_unit=UnitsLength.MICROMETER,
        physical_size_y=float(py),
        physical_size_y_unit=UnitsLength.MICROMETER,
        big_endian=False,
        channels=channels,
        tiff_data_blocks=[TiffData(ifd=0, plane_count=z * nc * nt)],
        **z_kw,
    )
    if origin_zyx_um is not None:
        oz, oy, ox = (float(v) for v in origin_zyx_um)
        um = UnitsLength.MICROMETER
        pixels.planes = [
            Plane(
                the_z=0,
                the_c=0,
                the_t=0,
                position_x=ox,
                position_x_unit=um,
                position_y=oy,
                position_y_unit=um,
                position_z=oz,
                position_z_unit=um,
            )
        ]
    image = Image(id="Image:0", name=name, pixels=pixels)
    instruments = []
    scope = {
        k: meta[k] for k in ("Manufacturer", "ManufacturersModelName") if meta.get(k) is not None
    }
    obj: dict[str, Any] = {}
    if meta.get("NumericalAperture") is not None:
        obj["lens_na"] = float(meta["NumericalAperture"])
    if meta.get("Magnification") is not None:
        obj["nominal_magnification"] = float(meta["Magnification"])
    immersion = OME_IMMERSION.get(str(meta.get("Immersion", "")).strip().lower())
    if immersion is not None:
        obj["immersion"] = immersion
    if scope or obj:
        inst = Instrument(id="Instrument:0")
        if scope:
            inst.microscope = Microscope(
                manufacturer=scope.get("Manufacturer"), model=scope.get("ManufacturersModelName")
            )
        if obj:
            inst.objectives = [Objective(id="Objective:0:0", **obj)]
            image.objective_settings = ObjectiveSettings(id="Objective:0:0")
        instruments.append(inst)
        image.instrument_ref = {"id": "Instrument:0"}  # type: ignore[assignment]
    ome = OME(images=[image], instruments=instruments, creator="bidspack")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + to_xml(ome)


def instrument_of(xml: str) -> dict[str, Any]:
    """Acquisition metadata of the first image of an OME-XML document, keyed by BIDS
    microscopy sidecar field names: ``Manufacturer`` and ``ManufacturersModelName``
    (``Microscope``), ``NumericalAperture`` (``Objective/@LensNA``), ``Magnification``
    (``@NominalMagnification``), ``Immersion`` (of the objective the image's
    ``ObjectiveSettings`` names, else the instrument's only objective), plus
    ``ChannelNames`` and ``ExcitationWavelengths`` / ``EmissionWavelengths`` (nm, one
    per channel, ``None`` where absent) and ``AcquisitionDateTime`` (ISO 8601). Only
    what the XML holds; an XML that cannot be parsed gives ``{}`` (the physical sizes
    are checked elsewhere).

    Source: OME Data Model 2016-06 (``Instrument``, ``Objective``, ``Channel``).
    """
    try:
        ome = parse_omexml(xml)
    except Exception:
        return {}
    if not ome.images:
        return {}
    image = ome.images[0]
    out: dict[str, Any] = {}
    ref = getattr(image.instrument_ref, "id", None)
    inst = next((i for i in ome.instruments if i.id == ref), None)
    if inst is None and len(ome.instruments) == 1:
        inst = ome.instruments[0]
    if inst is not None:
        scope = inst.microscope
        if scope is not None and scope.manufacturer:
            out["Manufacturer"] = scope.manufacturer
        if scope is not None and scope.model:
            out["ManufacturersModelName"] = scope.model
        obj_id = getattr(image.objective_settings, "id", None)
        obj = next((o for o in inst.objectives if o.id == obj_id), None)
        if obj is None and len(inst.objectives) == 1:
            obj = inst.objectives[0]
        if obj is not None:
            if obj.lens_na is not None:
                out["NumericalAperture"] = float(obj.lens_na)
            if obj.nominal_magnification is not None:
                m = float(obj.nominal_magnification)
                out["Magnification"] = int(m) if m.is_integer() else m
            immersion = getattr(obj.immersion, "value", obj.immersion)
            if immersion and immersion != "Other":
                out["Immersion"] = str(immersion)
    channels = image.pixels.channels
    if any(c.name for c in channels):
        out["ChannelNames"] = [c.name for c in channels]

    def nm(value: Any, unit: Any) -> float | None:
        if value is None:
            return None
        u = getattr(unit, "value", unit) or "nm"
        factor = {"nm": 1.0, "µm": 1000.0, "pm": 0.001, "Å": 0.1}.get(str(u))
        return None if factor is None else float(f"{float(value) * factor:.15g}")

    ex = [nm(c.excitation_wavelength, c.excitation_wavelength_unit) for c in channels]
    em = [nm(c.emission_wavelength, c.emission_wavelength_unit) for c in channels]
    if any(v is not None for v in ex):
        out["ExcitationWavelengths"] = ex
    if any(v is not None for v in em):
        out["EmissionWavelengths"] = em
    if image.acquisition_date is not None:
        out["AcquisitionDateTime"] = image.acquisition_date.isoformat()
    return out


def parse_omexml(xml: str) -> OME:
    """Parse OME-XML (any schema version ome-types can convert) into an ``OME`` object."""
    return from_xml(xml)


def physical_size_um(xml: str) -> tuple[float, float, float] | None:
    """``(z, y, x)`` physical voxel size in micrometres of the first image, or ``None``.

    ``None`` when any of PhysicalSizeX/Y/Z is absent (see :func:`physical_sizes_um` for
    the axes one by one). Units default to µm when the attribute is missing (as the
    OME schema says).

    Raises:
        ValueError: the XML cannot be parsed or a unit is not a length unit we know.
    """
    z, y, x = physical_sizes_um(xml)
    if z is None or y is None or x is None:
        return None
    return (z, y, x)


def physical_sizes_um(xml: str) -> tuple[float | None, float | None, float | None]:
    """``(z, y, x)`` PhysicalSizeZ/Y/X of the first image in micrometres, each ``None``
    when absent; converted exactly (:func:`bidspack.io.voxels.to_um`: 11.4 Å ->
    0.00114 µm). Units default to µm (OME 2016-06 ``Pixels``).

    Raises:
        ValueError: the XML cannot be parsed or a unit is not a length unit we know.
    """
    from bidspack.io.voxels import VoxelSizeError, to_um

    try:
        ome = parse_omexml(xml)
    except Exception as exc:
        raise ValueError(f"invalid OME-XML: {exc}") from exc
    if not ome.images:
        return (None, None, None)
    px = ome.images[0].pixels
    sizes: list[float | None] = []
    for axis in ("z", "y", "x"):
        value = getattr(px, f"physical_size_{axis}")
        if value is None:
            sizes.append(None)
            continue
        unit = getattr(px, f"physical_size_{axis}_unit")
        unit_s = getattr(unit, "value", unit) or "µm"
        try:
            sizes.append(to_um(value, unit_s))
        except VoxelSizeError as exc:
            raise ValueError(f"PhysicalSize{axis.upper()}: {exc}") from exc
    return (sizes[0], sizes[1], sizes[2])


def origin_um(xml: str) -> tuple[float, float, float] | None:
    """``(z, y, x)`` position in micrometres of the first voxel of the first image, or
    ``None``.

    From the ``Plane`` with ``TheZ``, ``TheC`` and ``TheT`` 0 (or the first ``Plane``):
    its ``PositionZ``/``PositionY``/``PositionX`` (OME 2016-06 ``Plane``). ``None`` when
    a position is missing or its unit is not a length (e.g. ``reference frame``, the
    unit many instruments write for stage coordinates): such a position cannot be put
    in micrometres.

    Raises:
        ValueError: the XML cannot be parsed.
    """
    try:
        ome = parse_omexml(xml)
    except Exception as exc:
        raise ValueError(f"invalid OME-XML: {exc}") from exc
    if not ome.images or not ome.images[0].pixels.planes:
        return None
    planes = ome.images[0].pixels.planes
    first = next(
        (p for p in planes if (p.the_z, p.the_c, p.the_t) == (0, 0, 0)),
        planes[0],
    )
    out = []
    for axis in ("z", "y", "x"):
        value = getattr(first, f"position_{axis}")
        unit = getattr(first, f"position_{axis}_unit")
        unit_s = getattr(unit, "value", unit) or "reference frame"
        if value is None or unit_s not in UNIT_TO_UM:
            return None
        out.append(float(value) * UNIT_TO_UM[unit_s])
    return (out[0], out[1], out[2])
