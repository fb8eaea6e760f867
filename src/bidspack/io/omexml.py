"""OME-XML for bidspack's OME-TIFF files, built and parsed with ome-types.

Source: OME Data Model and File Formats, schema 2016-06
(https://www.openmicroscopy.org/Schemas/OME/2016-06). Units are written explicitly
as ``µm`` (U+00B5), the OME default unit, so readers never have to assume one.
No UUID, no acquisition date, no timestamp: the XML depends only on the inputs.
"""

from __future__ import annotations

import numpy as np
from ome_types import OME, from_xml, to_xml
from ome_types.model import (
    Channel,
    Image,
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


def build_omexml(
    *,
    name: str,
    shape_zyx: tuple[int, int, int],
    dtype: np.dtype,
    physical_size_zyx_um: tuple[float, float, float],
    channel_name: str | None = None,
    origin_zyx_um: tuple[float, float, float] | None = None,
) -> str:
    """OME-XML for one single-channel Z-stack stored as consecutive IFDs from IFD 0.

    Args:
        name: the ``Image`` name (bidspack uses the BIDS file name without extension).
        shape_zyx: ``(z, y, x)`` in pixels.
        dtype: pixel dtype; must be one of :data:`OME_PIXEL_TYPES`.
        physical_size_zyx_um: voxel size in micrometres, ``(z, y, x)``.
        channel_name: optional ``Channel`` name (e.g. the stain).
        origin_zyx_um: optional position in micrometres of the first voxel, written as
            one ``Plane`` (``TheZ``/``TheC``/``TheT`` 0) with ``PositionZ/Y/X`` in ``µm``
            (one Plane, not one per Z, keeps the XML small; :func:`origin_um` reads it).

    Raises:
        ValueError: unsupported dtype.
    """
    dname = np.dtype(dtype).name
    if dname not in OME_PIXEL_TYPES:
        raise ValueError(f"dtype {dname} cannot be written to OME-TIFF")
    z, y, x = shape_zyx
    pz, py, px = (float(v) for v in physical_size_zyx_um)
    channel = Channel(id="Channel:0:0", samples_per_pixel=1, name=channel_name)
    pixels = Pixels(
        id="Pixels:0",
        dimension_order=Pixels_DimensionOrder.XYZCT,
        type=PixelType(OME_PIXEL_TYPES[dname]),
        size_x=x,
        size_y=y,
        size_z=z,
        size_c=1,
        size_t=1,
        physical_size_x=px,
        physical_size_x_unit=UnitsLength.MICROMETER,
        physical_size_y=py,
        physical_size_y_unit=UnitsLength.MICROMETER,
        physical_size_z=pz,
        physical_size_z_unit=UnitsLength.MICROMETER,
        big_endian=False,
        channels=[channel],
        tiff_data_blocks=[TiffData(ifd=0, plane_count=z)],
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
    ome = OME(images=[Image(id="Image:0", name=name, pixels=pixels)], creator="bidspack")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + to_xml(ome)


def parse_omexml(xml: str) -> OME:
    """Parse OME-XML (any schema version ome-types can convert) into an ``OME`` object."""
    return from_xml(xml)


def physical_size_um(xml: str) -> tuple[float, float, float] | None:
    """``(z, y, x)`` physical voxel size in micrometres of the first image, or ``None``.

    ``None`` when any of PhysicalSizeX/Y/Z is absent. Units default to µm when the
    attribute is missing (as the OME schema says).

    Raises:
        ValueError: the XML cannot be parsed or a unit is not a length unit we know.
    """
    try:
        ome = parse_omexml(xml)
    except Exception as exc:
        raise ValueError(f"invalid OME-XML: {exc}") from exc
    if not ome.images:
        return None
    px = ome.images[0].pixels
    sizes = []
    for axis in ("z", "y", "x"):
        value = getattr(px, f"physical_size_{axis}")
        if value is None:
            return None
        unit = getattr(px, f"physical_size_{axis}_unit")
        unit_s = getattr(unit, "value", unit) or "µm"
        if unit_s not in UNIT_TO_UM:
            raise ValueError(f"unsupported PhysicalSize{axis.upper()}Unit {unit_s!r}")
        sizes.append(float(value) * UNIT_TO_UM[unit_s])
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
