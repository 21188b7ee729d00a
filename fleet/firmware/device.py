"""A device's firmware as ``device show`` reads it: one plain query typed with the registry's
column types, loading no table class, no crypto and no packaging (``device show`` is a
start-up-time command: tests/test_startup.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from fleet.registry.types import UTCDateTime
from fleet.views import FirmwareView

_FIRMWARE = text(
    "SELECT f.reported_version, f.reported_at, f.reported_source, f.update_state, "
    "f.update_detail, f.target_version, r.name AS rollout_name, f.pinned_version "
    "FROM device_firmware AS f LEFT JOIN rollout AS r ON r.id = f.target_rollout_id "
    "WHERE f.device_id = :id"
).columns(reported_at=UTCDateTime())


def firmware_in(connection: Any, device_id: str) -> FirmwareView:
    """``device_id``'s reported, target and pinned firmware, on the caller's connection (or
    session: anything with ``execute``)."""
    row = connection.execute(_FIRMWARE, {"id": device_id}).first()
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
