"""A device's firmware as ``device show`` reads it: kept light (no crypto, no packaging),
since ``device show`` is a start-up-time command (tests/test_startup.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from fleet.firmware.models import DeviceFirmware, Rollout
from fleet.views import FirmwareView

_fw = DeviceFirmware.__table__  # type: ignore[attr-defined]
_rollout = Rollout.__table__  # type: ignore[attr-defined]


def firmware_in(session: Any, device_id: str) -> FirmwareView:
    """``device_id``'s reported, target and pinned firmware, in the caller's session."""
    query = (
        select(_fw, _rollout.c.name.label("rollout_name"))
        .select_from(_fw.outerjoin(_rollout, _rollout.c.id == _fw.c.target_rollout_id))
        .where(_fw.c.device_id == device_id)
    )
    row = session.execute(query).first()
    if row is None:
        return FirmwareView()
    return FirmwareView(
        reported_version=row.reported_version,
        reported_at=row.reported_at,
        reported_source=row.reported_source,
        update_state=row.update_state,
        update_detail=row.update_detail,
        target_version=row.target_version,
        target_rollout=row.rollout_name,
        pinned_version=row.pinned_version,
    )
