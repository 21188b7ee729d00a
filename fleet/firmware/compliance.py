"""``fleet firmware compliance``: what the active fleet runs, per model and version, against
the catalogue.

One aggregate query groups the active devices by (model, reported version), counting those
behind their target in the same pass: SQLite walks ``device`` by its (model, id) index and
finds each device's firmware row by primary key; PostgreSQL hash-joins. The catalogue (small)
then classifies each group: ``catalogued``, ``deprecated`` (the image ``MODEL@VERSION`` names
is deprecated), ``unknown`` (no image for that model at that version), or no report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, or_, select

from fleet.firmware.models import DeviceFirmware, FirmwareImage, FirmwareModel
from fleet.firmware.versions import InvalidFirmwareVersion, parse_version
from fleet.registry.db import read_session
from fleet.registry.models import Device
from fleet.statuses import DeviceStatus

if TYPE_CHECKING:
    from packaging.version import Version

    from fleet.workspace import Workspace

_device = Device.__table__  # type: ignore[attr-defined]
_fw = DeviceFirmware.__table__  # type: ignore[attr-defined]
_image = FirmwareImage.__table__  # type: ignore[attr-defined]
_model = FirmwareModel.__table__  # type: ignore[attr-defined]

CATALOGUED, DEPRECATED, UNKNOWN = "catalogued", "deprecated", "unknown"


@dataclass
class VersionCount:
    """How many devices of one model run one version, and what the catalogue says of it."""

    version: str
    devices: int
    status: str  # catalogued | deprecated | unknown

    def to_dict(self) -> dict[str, Any]:
        """As ``--json`` shows it."""
        return {"version": self.version, "devices": self.devices, "status": self.status}


@dataclass
class ModelCompliance:
    """One model's devices by version, and the counts that need attention."""

    model: str | None
    devices: int = 0
    versions: list[VersionCount] = field(default_factory=list)
    no_report: int = 0
    behind_target: int = 0
    deprecated: int = 0
    unknown: int = 0

    def to_dict(self) -> dict[str, Any]:
        """As ``--json`` shows it."""
        return {
            "model": self.model,
            "devices": self.devices,
            "versions": [v.to_dict() for v in self.versions],
            "no_report": self.no_report,
            "behind_target": self.behind_target,
            "deprecated": self.deprecated,
            "unknown": self.unknown,
        }


@dataclass
class Compliance:
    """The fleet's firmware compliance: per model, and totals."""

    models: list[ModelCompliance]

    def totals(self) -> dict[str, int]:
        """The counts summed over every model."""
        keys = ("devices", "no_report", "behind_target", "deprecated", "unknown")
        return {key: sum(getattr(m, key) for m in self.models) for key in keys}

    def to_dict(self) -> dict[str, Any]:
        """As ``--json`` shows it."""
        return {"models": [m.to_dict() for m in self.models], "totals": self.totals()}


def _order(version: str) -> tuple[int, Version | str]:
    try:
        return (0, parse_version(version))
    except InvalidFirmwareVersion:
        return (1, version)  # what no catalogue version could be: after them, by text


def compliance(ws: Workspace, *, model: str | None = None) -> Compliance:
    """Active devices per model and reported version, with those behind their target, on
    deprecated or uncatalogued versions, or never reported (``model``: that model only)."""
    behind = case(
        (
            and_(
                _fw.c.target_version.is_not(None),
                or_(
                    _fw.c.reported_version.is_(None),
                    _fw.c.reported_version != _fw.c.target_version,
                ),
            ),
            1,
        ),
        else_=0,
    )
    groups = (
        select(_device.c.model, _fw.c.reported_version, func.count(), func.sum(behind))
        .select_from(_device.outerjoin(_fw, _fw.c.device_id == _device.c.id))
        .where(_device.c.status == DeviceStatus.ACTIVE)
        .group_by(_device.c.model, _fw.c.reported_version)
    )
    catalogue = select(_model.c.model, _model.c.version, _image.c.deprecated).join(
        _image, _image.c.id == _model.c.firmware_id
    )
    if model is not None:
        groups = groups.where(_device.c.model == model)
        catalogue = catalogue.where(_model.c.model == model)
    with read_session(ws.open_registry()) as session:
        rows = session.execute(groups).all()
        known = {(m, v): bool(d) for m, v, d in session.execute(catalogue)}
    by_model: dict[str | None, ModelCompliance] = {}
    for device_model, version, count, behind_count in rows:
        entry = by_model.setdefault(device_model, ModelCompliance(device_model))
        entry.devices += count
        entry.behind_target += int(behind_count or 0)
        if version is None:
            entry.no_report += count
            continue
        deprecated = known.get((device_model, version))
        status = UNKNOWN if deprecated is None else DEPRECATED if deprecated else CATALOGUED
        if status == UNKNOWN:
            entry.unknown += count
        elif status == DEPRECATED:
            entry.deprecated += count
        entry.versions.append(VersionCount(version, count, status))
    for entry in by_model.values():
        entry.versions.sort(key=lambda v: _order(v.version))
    ordered = sorted(by_model.values(), key=lambda m: (m.model is None, m.model or ""))
    return Compliance(ordered)
