"""Physical voxel sizes: what the file says, what the spec or command line says, and
which one is used, axis by axis, with the origin of every value recorded.

The rules (issue 16; BIDS microscopy ``PixelSize``, OME ``PhysicalSizeX/Y/Z``):

- an axis the file gives and the spec does not: the file's value (origin ``"file"``);
- an axis the spec gives and the file does not: the spec's value (origin ``"spec"``);
- an axis both give: they must agree (relative tolerance 1e-6; origin ``"file"``, the spec
  agreeing); a contradiction is an error naming both values unless the caller passes an
  explicit *override* (origin ``"spec (overrides file V um)"``, recorded);
- an axis neither gives: an error naming that axis (and saying which axes the file does
  carry), except Z of a single-plane (2D) image, which stays unset: a 2D image gets a
  two-value ``PixelSize`` and no ``PhysicalSizeZ``.

Conversions to micrometres are exact to the printed precision (``11.4 Å`` ->
``0.00114``, not ``0.0011400000000000002``): see :func:`to_um`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

AXES = ("z", "y", "x")

#: Length units (OME ``UnitsLength`` symbols and common spellings) in micrometres,
#: as exact decimals.
UM_PER_UNIT: dict[str, Decimal] = {
    **dict.fromkeys(("um", "µm", "μm", "micrometer", "micrometre", "micron"), Decimal(1)),
    **dict.fromkeys(("nm", "nanometer", "nanometre"), Decimal("0.001")),
    **dict.fromkeys(("mm", "millimeter", "millimetre"), Decimal(1000)),
    **dict.fromkeys(("cm", "centimeter", "centimetre"), Decimal(10000)),
    **dict.fromkeys(("m", "meter", "metre"), Decimal(1000000)),
    **dict.fromkeys(("Å", "angstrom"), Decimal("0.0001")),
    **dict.fromkeys(("pm", "picometer", "picometre"), Decimal("0.000001")),
}

#: Placeholder Z scale of a 2D image in an OME-Zarr, whose NGFF axes are ``(z, y, x)``
#: (as bioformats2raw writes for images without a Z size); never written to a sidecar
#: or an OME-XML.
PLACEHOLDER_Z_UM = 1.0


def zarr_zyx(zyx_um: Sequence[float | None]) -> tuple[float, float, float]:
    """``(z, y, x)`` micrometres for an NGFF ``scale``: a 2D image's missing Z becomes
    :data:`PLACEHOLDER_Z_UM`.

    Raises:
        ValueError: Y or X missing.
    """
    z, y, x = zyx_um
    if y is None or x is None:
        raise ValueError(f"voxel size {list(zyx_um)} lacks y or x")
    return (PLACEHOLDER_Z_UM if z is None else float(z), float(y), float(x))


class VoxelSizeError(ValueError):
    """The voxel size cannot be decided: an axis is missing, or a given value
    contradicts the file's. The message names the axis and both values."""


def to_um(value: Any, unit: str) -> float:
    """*value* in *unit* as micrometres, exact to the decimal digits of *value*
    (``to_um(11.4, "Å") == 0.00114``).

    The value's shortest decimal form (``repr`` of a float) is multiplied by the unit's
    exact decimal factor and the exact decimal product rounded once to the nearest
    float, so binary floating-point noise never reaches a sidecar; micrometres are
    returned unchanged.

    Raises:
        VoxelSizeError: an unknown unit or a value that is not a finite number.
    """
    factor = UM_PER_UNIT.get(unit)
    if factor is None:
        raise VoxelSizeError(f"unit {unit!r} is not a length unit bidspack knows")
    try:
        d = Decimal(repr(float(value)))
    except (TypeError, ValueError, InvalidOperation) as exc:
        raise VoxelSizeError(f"{value!r} is not a number") from exc
    if not d.is_finite():
        raise VoxelSizeError(f"{value!r} is not a finite number")
    return float(value) if factor == 1 else float(d * factor)


def _fmt(v: float) -> str:
    return f"{v:g}" if v == float(f"{v:g}") else repr(v)


@dataclass(frozen=True)
class VoxelSize:
    """The voxel size used for an image.

    Attributes:
        zyx_um: ``(z, y, x)`` micrometres; ``z`` is ``None`` for a 2D image whose file
            and spec give no Z size.
        origin: axis -> ``"file"``, ``"spec"``, ``"spec (overrides file V um)"`` or
            ``"none (2D image)"``.
        overridden: axis -> ``[file value, spec value]`` for values the caller's
            explicit override replaced.
    """

    zyx_um: tuple[float | None, float, float]
    origin: dict[str, str]
    overridden: dict[str, list[float]] = field(default_factory=dict)

    @property
    def is_2d(self) -> bool:
        """No Z size: a 2D image."""
        return self.zyx_um[0] is None

    @property
    def for_zarr(self) -> tuple[float, float, float]:
        """``(z, y, x)`` for NGFF ``scale``: Z of a 2D image is :data:`PLACEHOLDER_Z_UM`."""
        return zarr_zyx(self.zyx_um)

    def to_json(self) -> dict[str, Any]:
        """The provenance form: ``voxel_size_zyx_um``, ``voxel_size_origin`` and (when
        the user overrode file values) ``voxel_size_overridden``."""
        out: dict[str, Any] = {
            "voxel_size_zyx_um": list(self.zyx_um),
            "voxel_size_origin": dict(self.origin),
        }
        if self.overridden:
            out["voxel_size_overridden"] = {k: list(v) for k, v in self.overridden.items()}
        return out


def resolve_voxel_size(
    found: Sequence[float | None] | None,
    given: Sequence[float | None] | None,
    shape_zyx: Sequence[int],
    *,
    override: bool = False,
    given_as: str = "the spec's voxel_size",
    override_flag: str = "--override-voxel-size",
) -> VoxelSize:
    """Decide the ``(z, y, x)`` voxel size in micrometres of an image, axis by axis.

    Args:
        found: ``(z, y, x)`` sizes the file carries (``None`` per missing axis, or
            ``None`` for none at all).
        given: ``(z, y, x)`` sizes from the spec or command line, same convention.
        shape_zyx: the image's shape; Z may stay unset only when ``shape_zyx[0] == 1``.
        override: the user's explicit choice to let *given* replace contradicting file
            values (recorded in :attr:`VoxelSize.overridden`).
        given_as: how messages name *given* (``"the spec's voxel_size"``, ``"--voxel-size"``).
        override_flag: the option messages suggest for an override.

    Raises:
        VoxelSizeError: a missing axis (naming the axes the file carries), a
            contradiction (naming both values), or a size that is not positive.
    """
    f = list(found) if found is not None else [None, None, None]
    g = list(given) if given is not None else [None, None, None]
    values: list[float | None] = []
    origin: dict[str, str] = {}
    overridden: dict[str, list[float]] = {}
    missing: list[str] = []
    conflicts: list[str] = []
    for axis, fv, gv in zip(AXES, f, g, strict=True):
        if gv is not None and not (math.isfinite(gv) and gv > 0):
            raise VoxelSizeError(f"{given_as} {axis} = {gv} um is not a positive number")
        if fv is not None and gv is not None:
            if math.isclose(fv, gv, rel_tol=1e-6):
                values.append(fv)
                origin[axis] = "file"
            elif override:
                values.append(gv)
                origin[axis] = f"spec (overrides file {_fmt(fv)} um)"
                overridden[axis] = [fv, gv]
            else:
                conflicts.append(f"{axis}: {given_as} says {_fmt(gv)} um, the file {_fmt(fv)} um")
                values.append(None)
        elif fv is not None:
            if not (math.isfinite(fv) and fv > 0):
                raise VoxelSizeError(f"the file's {axis} size {fv} um is not a positive number")
            values.append(fv)
            origin[axis] = "file"
        elif gv is not None:
            values.append(gv)
            origin[axis] = "spec"
        elif axis == "z" and int(shape_zyx[0]) == 1:
            values.append(None)
            origin[axis] = "none (2D image)"
        else:
            values.append(None)
            missing.append(axis)
    if conflicts:
        raise VoxelSizeError(
            "voxel size contradicts the file ("
            + "; ".join(conflicts)
            + f"); correct it, or pass {override_flag} to use the given value"
        )
    if missing:
        carried = [f"{a}={_fmt(v)} um" for a, v in zip(AXES, f, strict=True) if v is not None]
        what = (
            f"the file carries {', '.join(carried)} but no {'/'.join(missing)} size"
            if carried
            else "the file carries no physical voxel size"
        )
        raise VoxelSizeError(f"{what}; give {'/'.join(missing)} in {given_as}")
    z, y, x = values
    assert y is not None and x is not None
    return VoxelSize((z, y, x), origin, overridden)
