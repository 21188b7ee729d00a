"""Per-device firmware changes from the command line: pins (``fleet device pin|unpin``,
audited registry changes: rollouts skip a pinned device) and manual reports (``fleet firmware
report``: telemetry, recorded like every other source's, not audited)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlmodel import Session

from fleet import clock
from fleet.errors import Conflict, InvalidInput, NotFound
from fleet.firmware.models import DeviceFirmware
from fleet.firmware.reports import UPDATE_STATES, RecordedReports, Report, record_reports
from fleet.firmware.versions import parse_version
from fleet.identifiers import validate_text_field
from fleet.registry import audit
from fleet.registry.db import write_session
from fleet.registry.models import Device
from fleet.statuses import DeviceStatus, FirmwareSource

if TYPE_CHECKING:
    from fleet.workspace import Workspace

_fw = DeviceFirmware.__table__  # type: ignore[attr-defined]
_device = Device.__table__  # type: ignore[attr-defined]


def _active_device(session: Session, device_id: str) -> None:
    status = session.execute(
        select(_device.c.status).where(_device.c.id == device_id)
    ).scalar_one_or_none()
    if status is None:
        raise NotFound(f"no device {device_id!r} in the registry")
    if status != DeviceStatus.ACTIVE:
        raise Conflict(f"device {device_id!r} is decommissioned")


def _set_pin(session: Session, device_id: str, version: str | None, now: datetime) -> str | None:
    """Set ``device_id``'s pin (creating its firmware row); returns the previous pin."""
    previous = session.execute(
        select(_fw.c.pinned_version).where(_fw.c.device_id == device_id)
    ).first()
    if previous is None:
        session.execute(
            _fw.insert().values(device_id=device_id, pinned_version=version, updated_at=now)
        )
        return None
    session.execute(
        update(_fw)
        .where(_fw.c.device_id == device_id)
        .values(pinned_version=version, updated_at=now)
    )
    return str(previous[0]) if previous[0] is not None else None


def pin_device(ws: Workspace, device_id: str, version: str) -> str | None:
    """Pin ``device_id`` to ``version``: rollouts skip it (and say so). Audited
    (``device.pin``, with the previous pin); returns the previous pin."""
    parse_version(version)
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        _active_device(session, device_id)
        previous = _set_pin(session, device_id, version, now)
        if previous == version:
            return previous
        audit.append(
            session, "device.pin", device_id, {"version": version, "previous": previous}, at=now
        )
        return previous


def unpin_device(ws: Workspace, device_id: str) -> str | None:
    """Remove ``device_id``'s pin. Audited (``device.unpin``) when there was one; returns
    the pin removed (``None``: it had none, and nothing changed)."""
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        _active_device(session, device_id)
        current = session.execute(
            select(_fw.c.pinned_version).where(_fw.c.device_id == device_id)
        ).scalar_one_or_none()
        if current is None:
            return None
        _set_pin(session, device_id, None, now)
        audit.append(session, "device.unpin", device_id, {"previous": current}, at=now)
        return str(current)


def report_manual(
    ws: Workspace,
    device_id: str,
    version: str | None,
    *,
    state: str | None = None,
    detail: str | None = None,
    at: datetime | None = None,
) -> RecordedReports:
    """Record that ``device_id`` runs ``version`` (and/or an update ``state``), source
    ``manual``, as of now. Not audited: a report is telemetry (docs/firmware.md)."""
    if version is None and state is None:
        raise InvalidInput("give the VERSION the device runs, or --state")
    if version is not None:
        parse_version(version)
    if state is not None and state not in UPDATE_STATES:
        raise InvalidInput(f"invalid --state {state!r}: expected {' or '.join(UPDATE_STATES)}")
    validate_text_field("detail", detail, 512)
    report = Report(
        device_id,
        version,
        FirmwareSource.MANUAL,
        at or clock.now(),
        state,  # type: ignore[arg-type]
        detail,
    )
    with write_session(ws.open_registry()) as session:
        _active_device(session, device_id)
        return record_reports(session, [report])
