"""``fleet device show``: one device as a view built from a few plain queries.

Each part of the view is one query on its own table, its columns named in SQL and typed with
the registry's column types (:mod:`fleet.registry.types`), so showing a device loads none of
the table classes (the SQLModel models cost a large share of a short command's start-up;
``tests/test_startup.py`` checks they stay unloaded). To show more about a device: add a
query here (the ``_DEVICE`` / ``_CERTIFICATES`` / ``_CONNECTION`` pattern), a field on
:class:`fleet.views.DeviceView` (with its ``to_dict`` key), and its line in the CLI's
``render_device``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, text

from fleet import clock
from fleet.errors import NotFound
from fleet.firmware.device import firmware_in
from fleet.registry.db import read_session
from fleet.registry.types import UTCDateTime
from fleet.views import ConnectionView, DeviceView

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from fleet.workspace import Workspace

_DEVICE = text(
    "SELECT id, model, serial, labels, status, created_at, updated_at, decommissioned_at, "
    "decommission_reason FROM device WHERE id = :id"
).columns(
    labels=JSON(),
    created_at=UTCDateTime(),
    updated_at=UTCDateTime(),
    decommissioned_at=UTCDateTime(),
)
# every certificate ever issued to the device (DeviceView puts them newest first)
_CERTIFICATES = text(
    "SELECT serial, device_id, fingerprint_sha256, subject, not_before, not_after, status, "
    "revoked_at, revocation_reason, profile, key_type, key_origin, issued_at "
    "FROM certificate WHERE device_id = :id"
).columns(
    not_before=UTCDateTime(),
    not_after=UTCDateTime(),
    revoked_at=UTCDateTime(),
    issued_at=UTCDateTime(),
)
_CONNECTION = text(
    "SELECT state, since, last_seen, source, reason, firmware FROM connection_state "
    "WHERE device_id = :id"
).columns(since=UTCDateTime(), last_seen=UTCDateTime())

# the clouds it has a registration with: name -> status there
_CLOUDS = text("SELECT cloud, status FROM cloud_registration WHERE device_id = :id ORDER BY cloud")


def show_device(ws: Workspace, device_id: str) -> DeviceView:
    """A device with all its certificates, its connection state, its firmware and its
    clouds, read in one snapshot; :class:`NotFound` if the registry has no such device.

    Example::

        view = show_device(ws, "pump-0042")
        print(view.status, [c.serial for c in view.certificates])
    """
    with read_session(ws.open_registry()) as session:
        connection = session.connection()
        device = connection.execute(_DEVICE, {"id": device_id}).first()
        if device is None:
            raise NotFound(f"no device {device_id!r} in the registry")
        certificates = connection.execute(_CERTIFICATES, {"id": device_id}).all()
        view = DeviceView.from_rows(device, certificates, clock.now())
        return dataclasses.replace(
            view,
            connection=_connection(connection, device_id),
            firmware=firmware_in(connection, device_id),
            clouds={
                cloud: str(status)
                for cloud, status in connection.execute(_CLOUDS, {"id": device_id})
            },
        )


def _connection(connection: Connection, device_id: str) -> ConnectionView:
    """The device's current connection state (never seen: every field ``None``)."""
    row: Any = connection.execute(_CONNECTION, {"id": device_id}).first()
    if row is None:
        return ConnectionView()
    return ConnectionView(row.state, row.since, row.last_seen, row.source, row.reason, row.firmware)
