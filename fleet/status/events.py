"""Recording connection events and deriving each device's current state from them.

Every source (the MQTT watcher, cloud status pulls, ingested files) hands :func:`record` a batch
of :class:`Seen` events; one transaction stores the new ones and moves each device's
``connection_state`` forward. The rules:

- an event is recorded once: its ``key`` hashes its content, so a redelivered MQTT message or
  a re-ingested file adds nothing;
- an older or duplicate event never overrides a newer one: within one source that has an
  ordering marker (AWS ``versionNumber``, Azure ``sequenceNumber``) the marker decides, else the
  source's own time (a later event wins; a tie changes nothing);
- ``last_seen`` is the newest moment any source saw the device, whatever its order;
- an event for a device the registry does not know, or has decommissioned, is kept aside in
  ``stray_connection_event`` and counted, never applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from fleet import clock
from fleet.registry.bulk import bulk_insert
from fleet.registry.db import write_session
from fleet.registry.models import Device
from fleet.status.models import ConnectionEvent, ConnectionStatus, StrayConnectionEvent
from fleet.statuses import ConnectionState, DeviceStatus, EventSource

if TYPE_CHECKING:
    from fleet.workspace import Workspace

CHUNK = 500  # IDs per IN (...) lookup

_event = ConnectionEvent.__table__  # type: ignore[attr-defined]
_state = ConnectionStatus.__table__  # type: ignore[attr-defined]
_stray = StrayConnectionEvent.__table__  # type: ignore[attr-defined]
_device = Device.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Seen:
    """A source saw ``device_id`` go ``state`` at ``source_time``.

    ``marker``: the source's ordering, comparable as text within that source (fixed width);
    ``session``: what identifies the connection (Sparkplug bdSeq, AWS sessionIdentifier),
    kept for history but not used for ordering; ``firmware``: a version the device reported.
    """

    device_id: str
    state: ConnectionState
    source: EventSource
    source_time: datetime
    marker: str | None = None
    session: str | None = None
    reason: str | None = None
    firmware: str | None = None

    @property
    def key(self) -> str:
        """The event's identity: the same report from the same source is the same event."""
        text = "\x1f".join(
            (
                self.source,
                self.device_id,
                self.state,
                self.source_time.astimezone(UTC).isoformat(),
                self.marker or "",
                self.session or "",
            )
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class RecordReport:
    """What one :func:`record` call did."""

    recorded: int = 0  # new events stored
    duplicates: int = 0  # already recorded (same key)
    stray: int = 0  # for unknown or decommissioned devices, kept aside
    changed: int = 0  # devices whose state changed (online <-> offline, or first seen)
    stray_ids: list[str] = field(default_factory=list)

    def add(self, other: RecordReport) -> None:
        """Fold another report into this one."""
        self.recorded += other.recorded
        self.duplicates += other.duplicates
        self.stray += other.stray
        self.changed += other.changed
        self.stray_ids += other.stray_ids[: max(0, 20 - len(self.stray_ids))]

    def to_dict(self) -> dict[str, Any]:
        """The report as ``--json`` shows it."""
        return {
            "recorded": self.recorded,
            "duplicates": self.duplicates,
            "stray": self.stray,
            "changed": self.changed,
        }


def record(
    ws: Workspace | Engine, events: Sequence[Seen], *, now: datetime | None = None
) -> RecordReport:
    """Store ``events`` and update the devices' states, in one transaction."""
    engine = ws if isinstance(ws, Engine) else ws.open_registry()
    with write_session(engine) as session:
        return record_in(session, events, now=now)


def record_in(
    session: Session, events: Sequence[Seen], *, now: datetime | None = None
) -> RecordReport:
    """:func:`record` inside the caller's write transaction (``fleet cloud sync`` records
    the changes it pulls in the transaction that stores them)."""
    report = RecordReport()
    if not events:
        return report
    received = now or clock.now()
    conn = session.connection()
    unique = {event.key: event for event in events}
    report.duplicates = len(events) - len(unique)
    known = _known_keys(conn, list(unique))
    report.duplicates += len(known)
    fresh = [event for key, event in unique.items() if key not in known]
    statuses = _device_statuses(conn, sorted({event.device_id for event in fresh}))
    kept: list[Seen] = []
    stray: list[dict[str, Any]] = []
    for event in fresh:
        status = statuses.get(event.device_id)
        if status == DeviceStatus.ACTIVE:
            kept.append(event)
        else:
            why = "unknown" if status is None else "decommissioned"
            stray.append(_stray_row(event, why, received))
    report.stray, report.stray_ids = len(stray), [row["device_id"] for row in stray[:20]]
    bulk_insert(session, _stray, stray)
    bulk_insert(session, _event, [_event_row(event, received) for event in kept])
    report.recorded = len(kept)
    report.changed = _advance_states(session, kept)
    return report


def _known_keys(conn: Connection, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for table in (_event, _stray):
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            found.update(conn.execute(select(table.c.key).where(table.c.key.in_(chunk))).scalars())
    return found


def _device_statuses(conn: Connection, ids: list[str]) -> dict[str, str]:
    statuses: dict[str, str] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        query = select(_device.c.id, _device.c.status).where(_device.c.id.in_(chunk))
        statuses.update({row.id: row.status for row in conn.execute(query)})
    return statuses


def _event_row(event: Seen, received: datetime) -> dict[str, Any]:
    return {
        "key": event.key,
        "device_id": event.device_id,
        "state": event.state,
        "source": event.source,
        "source_time": event.source_time,
        "received_at": received,
        "marker": event.marker,
        "session": event.session,
        "reason": event.reason,
        "firmware": event.firmware,
    }


def _stray_row(event: Seen, why: str, received: datetime) -> dict[str, Any]:
    return {
        "key": event.key,
        "device_id": event.device_id[:128],
        "why": why,
        "state": event.state,
        "source": event.source,
        "source_time": event.source_time,
        "received_at": received,
        "marker": event.marker,
        "reason": event.reason,
    }


def is_newer(event: Seen, current: dict[str, Any]) -> bool:
    """Whether ``event`` is newer than the one that decided ``current`` (a state row): by
    the source's marker where both have one from the same source, else by source time."""
    if event.source == current["source"] and event.marker and current["marker"]:
        return bool(event.marker > current["marker"])
    return bool(event.source_time > current["source_time"])


def _advance_states(session: Session, events: list[Seen]) -> int:
    """Apply ``events`` to their devices' state rows; returns how many devices changed
    state (or got their first one)."""
    if not events:
        return 0
    conn = session.connection()
    ids = sorted({event.device_id for event in events})
    current: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        for row in conn.execute(select(_state).where(_state.c.device_id.in_(chunk))):
            current[row.device_id] = dict(row._mapping)
    before = {device_id: dict(row) for device_id, row in current.items()}
    changed: set[str] = set()
    for event in sorted(events, key=lambda e: (e.source_time, e.marker or "")):
        state = current.get(event.device_id)
        if state is None:
            current[event.device_id] = _state_row(event, since=event.source_time)
            changed.add(event.device_id)
            continue
        state["last_seen"] = max(state["last_seen"], event.source_time)
        if not is_newer(event, state):
            continue
        if event.state != state["state"]:
            state["since"] = event.source_time
            changed.add(event.device_id)
        state.update(
            state=event.state,
            source=event.source,
            source_time=event.source_time,
            marker=event.marker,
            reason=event.reason,
            firmware=event.firmware or state["firmware"],
        )
    updated = [row for device_id, row in current.items() if before.get(device_id) != row]
    old = [row["device_id"] for row in updated if row["device_id"] in before]
    for start in range(0, len(old), CHUNK):
        conn.execute(delete(_state).where(_state.c.device_id.in_(old[start : start + CHUNK])))
    bulk_insert(session, _state, updated)
    return len(changed)


def _state_row(event: Seen, *, since: datetime) -> dict[str, Any]:
    return {
        "device_id": event.device_id,
        "state": event.state,
        "since": since,
        "last_seen": event.source_time,
        "source": event.source,
        "source_time": event.source_time,
        "marker": event.marker,
        "reason": event.reason,
        "firmware": event.firmware,
    }


def record_batches(ws: Workspace, events: Iterable[Seen], *, batch: int = 5000) -> RecordReport:
    """Record a long stream of events in transactions of ``batch`` events (memory stays
    flat); returns the summed report."""
    engine = ws.open_registry()
    total = RecordReport()
    pending: list[Seen] = []
    for event in events:
        pending.append(event)
        if len(pending) >= batch:
            total.add(record(engine, pending))
            pending = []
    if pending:
        total.add(record(engine, pending))
    return total
