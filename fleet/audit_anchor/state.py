"""``fleet audit verify --state``: the live device and certificate tables compared with the
state the audit trail replays to (the ``--as-of`` machinery, :mod:`fleet.export.replay`).

A row edited with direct SQL (a model changed, a certificate un-revoked, a device
un-decommissioned) leaves the trail untouched, so the chain still verifies; replaying the
trail gives the value the last recorded change set, and the difference is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from fleet.export.replay import replayed_devices
from fleet.export.snapshot import read_head, snapshot_connection
from fleet.registry import audit
from fleet.registry.models import Certificate, Device
from fleet.statuses import CertStatus, DeviceStatus
from fleet.workspace import Workspace

# the end of time, for a replay of the whole trail (up to the head read with the tables)
_END = datetime(9999, 12, 31, tzinfo=UTC)
DEVICE_FIELDS = ("model", "serial", "labels", "status", "decommission_reason")


@dataclass(frozen=True)
class Difference:
    """One value the live tables hold that the trail does not account for. ``recorded`` is
    what the trail replays to (``None``: absent), ``live`` what the table holds."""

    kind: str  # "device" or "certificate"
    key: str  # device ID or certificate serial
    field: str
    recorded: Any
    live: Any

    def describe(self) -> str:
        """``device pump-1 model: recorded 'p200', live 'x'``"""
        return (
            f"{self.kind} {self.key} {self.field}: recorded {self.recorded!r}, live {self.live!r}"
        )


def state_differences(ws: Workspace) -> list[Difference]:
    """Every device and certificate value that differs from what the trail replays to."""
    engine = ws.open_registry()
    with snapshot_connection(engine) as conn, conn.begin():
        head_seq, _ = read_head(conn)
        devices = _live_devices(conn)
        certs = _live_certificates(conn)
        found: list[Difference] = []
        for state in replayed_devices(conn, _END, max_seq=head_seq):
            live = devices.pop(state.id, None)
            if live is None:
                found.append(Difference("device", state.id, "row", "present", None))
                continue
            found.extend(_device_differences(state.id, state.fields, live))
            recorded = state.sections.get("certificate", {})
            for serial, cert in recorded.items():
                found.extend(_cert_differences(state.id, serial, cert, certs.pop(serial, None)))
    for device_id in sorted(devices):
        found.append(Difference("device", device_id, "row", None, "present"))
    for serial, row in sorted(certs.items()):
        found.append(Difference("certificate", serial, "row", None, f"of {row['device_id']}"))
    return found


def _live_devices(conn: Connection) -> dict[str, dict[str, Any]]:
    d = Device.__table__  # type: ignore[attr-defined]
    rows = conn.execute(select(d.c.id, *(d.c[name] for name in DEVICE_FIELDS))).mappings()
    return {str(row["id"]): dict(row) for row in rows}


def _live_certificates(conn: Connection) -> dict[str, dict[str, Any]]:
    c = Certificate.__table__  # type: ignore[attr-defined]
    query = select(
        c.c.serial,
        c.c.device_id,
        c.c.fingerprint_sha256,
        c.c.status,
        c.c.revocation_reason,
    )
    return {str(row["serial"]): dict(row) for row in conn.execute(query).mappings()}


def _device_differences(
    device_id: str, fields: dict[str, Any], live: dict[str, Any]
) -> list[Difference]:
    recorded = {
        "model": fields.get("model"),
        "serial": fields.get("serial"),
        "labels": fields.get("labels", "{}"),
        "status": fields.get("status", DeviceStatus.ACTIVE.value),
        "decommission_reason": fields.get("decommission_reason"),
    }
    current = {**{name: live[name] for name in DEVICE_FIELDS}}
    current["labels"] = audit.canonical_json(dict(live["labels"] or {}))
    current["status"] = str(live["status"])
    return [
        Difference("device", device_id, name, recorded[name], current[name])
        for name in DEVICE_FIELDS
        if recorded[name] != current[name]
    ]


def _cert_differences(
    device_id: str, serial: str, cert: dict[str, Any], live: dict[str, Any] | None
) -> list[Difference]:
    if live is None:
        return [Difference("certificate", serial, "row", f"of {device_id}", None)]
    revoked = cert.get("revoked_ts") is not None
    recorded = {
        "device_id": device_id,
        "fingerprint_sha256": cert.get("fingerprint_sha256"),
        "status": CertStatus.REVOKED.value if revoked else CertStatus.ACTIVE.value,
        "revocation_reason": cert.get("revocation_reason") if revoked else None,
    }
    current = {name: live[name] for name in recorded}
    current["status"] = str(current["status"])
    return [
        Difference("certificate", serial, name, recorded[name], current[name])
        for name in recorded
        if recorded[name] != current[name]
    ]
