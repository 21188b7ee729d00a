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
  ``stray_connection_event`` and counted, never applied;
- a firmware version an applied event carries from a Sparkplug birth or an ingested fleet
  report is also the device's reported firmware (fleet/firmware/reports.py), in the same
  transaction (cloud status pulls record theirs where they are pulled).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from fleet import clock
from fleet.firmware.reports import Report, record_reports
from fleet.registry.bulk import bulk_insert, utc_text
from fleet.registry.db import CHECKED_REFERENCES, write_session
from fleet.registry.models import Device
from fleet.status.models import ConnectionEvent, ConnectionStatus, StrayConnectionEvent
from fleet.status.sqlite_record import EventRow, SqliteRecorder, in_order
from fleet.statuses import ConnectionState, DeviceStatus, EventSource, FirmwareSource

if TYPE_CHECKING:
    from fleet.workspace import Workspace

CHUNK = 2000  # IDs per IN (...) lookup, rows per multi-row INSERT
# a SQLite ingest transaction ends once it holds this many devices' state rows (memory), or
# has run this long (other writers, such as `fleet watch`, wait for it)
TX_DEVICES = 200_000
TX_SECONDS = 30.0
# SQLite records through its driver (fleet/status/sqlite_record.py); tests turn it off to
# compare it with the SQLAlchemy path, which applies the same rules
SQLITE_DRIVER = True
# the firmware source of a version an event carries: births from the watcher, else what
# `fleet status ingest` read (fleet's own shape may name any source), cloud pulls as cloud
FIRMWARE_SOURCES: dict[str, FirmwareSource] = {
    EventSource.SPARKPLUG: FirmwareSource.SPARKPLUG,
    EventSource.HTTP: FirmwareSource.CLOUD,
}

_event = ConnectionEvent.__table__  # type: ignore[attr-defined]
_state = ConnectionStatus.__table__  # type: ignore[attr-defined]
_stray = StrayConnectionEvent.__table__  # type: ignore[attr-defined]
_device = Device.__table__  # type: ignore[attr-defined]


class Seen(NamedTuple):
    """A source saw ``device_id`` go ``state`` at ``source_time`` (a tuple: ingest makes
    millions).

    ``marker``: the source's ordering, comparable as text within that source (fixed width);
    ``session``: what identifies the connection (Sparkplug bdSeq, AWS sessionIdentifier),
    kept for history but not used for ordering; ``firmware``: a version the device reported;
    ``time_text``: ``source_time`` as :func:`~fleet.registry.bulk.utc_text` writes it, when
    the parser already had that text (formatting a time is a large share of recording one).
    """

    device_id: str
    state: ConnectionState
    source: EventSource
    source_time: datetime
    marker: str | None = None
    session: str | None = None
    reason: str | None = None
    firmware: str | None = None
    time_text: str | None = None

    @property
    def key(self) -> str:
        """The event's identity: the same report from the same source is the same event."""
        return event_key(self, self.time_text or utc_text(self.source_time))


def event_key(event: Seen, text: str) -> str:
    """The key of ``event`` whose source time is ``text`` (as
    :func:`~fleet.registry.bulk.utc_text` writes it): that text, then a hash of what the source
    said. Starting with the time, events recorded in time order append to the key index
    instead of landing on random pages of it."""
    # join, not an f-string: it takes the enums' text as it is, without their __format__
    said = "\x1f".join(
        (event.source, event.device_id, event.state, text, event.marker or "", event.session or "")
    )
    return text + sha256(said.encode("utf-8")).hexdigest()[:38]


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


def _in_order(event: Seen) -> tuple[str, datetime, str]:
    """:func:`~fleet.status.sqlite_record.in_order` of an event."""
    return event.device_id, event.source_time, event.marker or ""


def record_in(
    session: Session, events: Sequence[Seen], *, now: datetime | None = None
) -> RecordReport:
    """:func:`record` inside the caller's write transaction (``fleet cloud sync`` records
    the changes it pulls in the transaction that stores them)."""
    report = RecordReport()
    if not events:
        return report
    received = now or clock.now()
    if uses_sqlite_driver(session.connection().engine):
        recorder = SqliteRecorder(session)
        text = utc_text(received)
        report = _record_rows(session, recorder, [event_row(e, text) for e in events], received)
        report.changed = recorder.flush()
        return report
    unique = {event.key: event for event in events}
    report = _record_generic(session, events, unique, received)
    # in the rules' order, as on SQLite: of two reports at one time, the same one wins
    firmware = [
        Report(e.device_id, e.firmware, FIRMWARE_SOURCES.get(e.source, FirmwareSource.INGEST),
               e.source_time)
        for e in sorted(unique.values(), key=_in_order)
        if e.firmware
    ]  # fmt: skip
    if firmware:
        record_reports(session, firmware, now=received)
    return report


def uses_sqlite_driver(engine: Engine) -> bool:
    """Whether events for ``engine`` are recorded through SQLite's driver
    (fleet/status/sqlite_record.py) as :data:`EventRow` tuples."""
    return SQLITE_DRIVER and engine.dialect.name == "sqlite"


def event_row(event: Seen, received: str) -> EventRow:
    """``event`` as ``connection_event`` stores it, received at ``received`` (stored text)."""
    when = event.time_text or utc_text(event.source_time)
    # the enums' plain text: the sqlite3 module binds a str subclass through its slow
    # adaptation path (as it does None), about 1 us a value
    return (
        event_key(event, when), event.device_id, _TEXT[event.state], _TEXT[event.source], when,
        received, event.marker, event.session, event.reason, event.firmware,
    )  # fmt: skip


_TEXT: dict[str, str] = {member: member.value for member in (*ConnectionState, *EventSource)}


def _received_now(events: list[Seen]) -> list[EventRow]:
    """``events`` as rows received now (one clock reading for the batch, as :func:`record`)."""
    text = utc_text(clock.now())
    return [event_row(event, text) for event in events]


def record_row_chunks(
    engine: Engine, chunks: Iterable[list[EventRow]], *, ordered: bool = False
) -> RecordReport:
    """Record chunks of :func:`event_row` tuples on SQLite: one transaction takes chunks
    until it has run :data:`TX_SECONDS` or holds :data:`TX_DEVICES` devices, its
    :class:`~fleet.status.sqlite_record.SqliteRecorder` writing each changed state row once
    when it ends (``changed`` counts a device once per transaction); returns the summed
    report. ``ordered``: each chunk is sorted by
    :func:`~fleet.status.sqlite_record.in_order` already."""

    total = RecordReport()
    # the recorder reads every event's device under the write lock and keeps aside those
    # the registry does not have: SQLite need not look each one up again
    engine = engine.execution_options(**{CHECKED_REFERENCES: True})
    stream = iter(chunks)
    rows = next(stream, None)
    while rows is not None:
        with write_session(engine) as session:
            recorder = SqliteRecorder(session)
            received, ends = clock.now(), time.monotonic() + TX_SECONDS
            while rows is not None:
                total.add(_record_rows(session, recorder, rows, received, ordered=ordered))
                rows = next(stream, None)
                if recorder.devices >= TX_DEVICES or time.monotonic() >= ends:
                    break
            total.changed += recorder.flush()
    return total


def _record_rows(
    session: Session,
    recorder: SqliteRecorder,
    rows: list[EventRow],
    received: datetime,
    *,
    ordered: bool = False,
) -> RecordReport:
    recorded, stray, stray_ids = recorder.record(rows, ordered=ordered)
    # a firmware version the event carries (a Sparkplug birth's property, ingest's field) is
    # the device's reported firmware; reports for unknown or retired devices are dropped there.
    # In the rules' order: record_reports keeps the first of two reports at one time.
    firmware = {
        row[0]: Report(row[1], row[9], FIRMWARE_SOURCES.get(row[3], FirmwareSource.INGEST),
                       datetime.fromisoformat(row[4]).replace(tzinfo=UTC))
        for row in sorted((row for row in rows if row[9]), key=in_order)
    }  # fmt: skip
    if firmware:
        record_reports(session, list(firmware.values()), now=received)
    return RecordReport(recorded, len(rows) - recorded - stray, stray, 0, stray_ids)


def _record_generic(
    session: Session, events: Sequence[Seen], unique: dict[str, Seen], received: datetime
) -> RecordReport:
    """:func:`record_in` through SQLAlchemy Core (PostgreSQL)."""
    report = RecordReport()
    statuses = _device_statuses(session.connection(), sorted({e.device_id for e in events}))
    kept: list[dict[str, Any]] = []
    stray: list[dict[str, Any]] = []
    applied: list[Seen] = []
    for key, event in unique.items():
        status = statuses.get(event.device_id)
        if status == DeviceStatus.ACTIVE:
            kept.append(_event_row(key, event, received))
            applied.append(event)
        else:
            why = "unknown" if status is None else "decommissioned"
            stray.append(_stray_row(key, event, why, received))
    # The unique key drops what was recorded before; re-applying such an event to the
    # state changes nothing (it is not newer than itself).
    report.stray = _insert_new(session, _stray, stray)
    report.recorded = _insert_new(session, _event, kept)
    report.duplicates = len(events) - report.recorded - report.stray
    report.stray_ids = [row["device_id"] for row in stray[:20]]
    report.changed = _advance_states(session, applied)
    return report


def _insert_new(session: Session, table: Any, rows: list[dict[str, Any]]) -> int:
    """Insert ``rows``, skipping those whose ``key`` is already there; how many went in."""
    if not rows:
        return 0
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        statement = (
            insert(table).on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key)
        )
        return len(conn.execute(statement, rows).all())  # the keys that went in
    before = conn.exec_driver_sql("SELECT total_changes()").scalar_one()
    bulk_insert(session, table, rows, verb="INSERT OR IGNORE")
    return int(conn.exec_driver_sql("SELECT total_changes()").scalar_one()) - int(before)


def _device_statuses(conn: Connection, ids: list[str]) -> dict[str, str]:
    statuses: dict[str, str] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        query = select(_device.c.id, _device.c.status).where(_device.c.id.in_(chunk))
        statuses.update((row[0], row[1]) for row in conn.execute(query))
    return statuses


def _event_row(key: str, event: Seen, received: datetime) -> dict[str, Any]:
    return {
        "key": key,
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


def _stray_row(key: str, event: Seen, why: str, received: datetime) -> dict[str, Any]:
    return {
        "key": key,
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
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        upsert = insert(_state)
        fresh = {c.name: upsert.excluded[c.name] for c in _state.columns if c.name != "device_id"}
        for start in range(0, len(updated), CHUNK):
            statement = upsert.on_conflict_do_update(index_elements=["device_id"], set_=fresh)
            conn.execute(statement, updated[start : start + CHUNK])
    else:
        bulk_insert(session, _state, updated, verb="INSERT OR REPLACE")
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
    """Record a long stream of events ``batch`` at a time (memory stays flat); returns the
    summed report. PostgreSQL commits each batch; SQLite as :func:`record_row_chunks`."""
    engine = ws.open_registry()
    stream = iter(events)
    if uses_sqlite_driver(engine):
        chunks = map(_received_now, iter(lambda: list(islice(stream, batch)), []))
        return record_row_chunks(engine, chunks)
    total = RecordReport()
    while pending := list(islice(stream, batch)):
        total.add(record(engine, pending))
    return total
