"""Reading connection status: a device's current state and history, stray events, pruning."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, tuple_

from fleet import clock
from fleet.errors import InvalidInput, NotFound
from fleet.registry.db import read_session, write_session
from fleet.registry.models import Device
from fleet.status.models import ConnectionEvent, ConnectionStatus, StrayConnectionEvent
from fleet.views import ConnectionView, iso

if TYPE_CHECKING:
    from fleet.workspace import Workspace

_event = ConnectionEvent.__table__  # type: ignore[attr-defined]
_state = ConnectionStatus.__table__  # type: ignore[attr-defined]
_stray = StrayConnectionEvent.__table__  # type: ignore[attr-defined]
_device = Device.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class EventView:
    """One recorded connection event."""

    id: int
    device_id: str
    state: str
    source: str
    source_time: datetime
    received_at: datetime
    marker: str | None
    session: str | None
    reason: str | None
    firmware: str | None

    def to_dict(self) -> dict[str, Any]:
        """The event as ``--json`` shows it."""
        return {
            "id": self.id,
            "device_id": self.device_id,
            "state": self.state,
            "source": self.source,
            "time": iso(self.source_time),
            "received_at": iso(self.received_at),
            "marker": self.marker,
            "session": self.session,
            "reason": self.reason,
            "firmware": self.firmware,
        }


def connection_of(ws: Workspace, device_id: str) -> ConnectionView:
    """A device's current connection state."""
    with read_session(ws.open_registry()) as session:
        return connection_in(session, device_id)


def connection_in(session: Any, device_id: str) -> ConnectionView:
    """:func:`connection_of` in the caller's session (``device show`` reads it with the
    device)."""
    row = session.execute(select(_state).where(_state.c.device_id == device_id)).first()
    if row is None:
        return ConnectionView()
    return ConnectionView(row.state, row.since, row.last_seen, row.source, row.reason, row.firmware)


def iter_history(
    ws: Workspace,
    device_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int | None = None,
    limit: int | None = None,
) -> Iterator[EventView]:
    """A device's connection events in the sources' time order (then arrival), within
    ``[since, until)``, after event ``after`` (its ``id``), at most ``limit``."""
    engine = ws.open_registry()
    with read_session(engine) as session:
        if session.execute(select(_device.c.id).where(_device.c.id == device_id)).first() is None:
            raise NotFound(f"no device {device_id!r} in the registry")
        query = select(_event).where(*_history_conditions(session, device_id, since, until, after))
        query = query.order_by(_event.c.source_time, _event.c.id)
        if limit is not None:
            query = query.limit(limit)
        for row in session.execute(query.execution_options(yield_per=1000)):
            yield EventView(
                row.id,
                row.device_id,
                row.state,
                row.source,
                row.source_time,
                row.received_at,
                row.marker,
                row.session,
                row.reason,
                row.firmware,
            )


def _history_conditions(
    session: Any, device_id: str, since: datetime | None, until: datetime | None, after: int | None
) -> list[Any]:
    """The WHERE of a device's history within ``[since, until)`` after event ``after``."""
    conditions = [_event.c.device_id == device_id]
    if since is not None:
        conditions.append(_event.c.source_time >= since)
    if until is not None:
        conditions.append(_event.c.source_time < until)
    if after is not None:
        start = session.execute(
            select(_event.c.source_time).where(
                _event.c.id == after, _event.c.device_id == device_id
            )
        ).scalar_one_or_none()
        if start is None:
            raise InvalidInput(f"--after {after}: no such event of {device_id!r}")
        conditions.append(tuple_(_event.c.source_time, _event.c.id) > (start, after))
    return conditions


def count_history(
    ws: Workspace,
    device_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int | None = None,
) -> int:
    """How many events :func:`iter_history` lists with the same arguments."""
    with read_session(ws.open_registry()) as session:
        query = select(func.count()).select_from(_event)
        query = query.where(*_history_conditions(session, device_id, since, until, after))
        return int(session.execute(query).scalar_one())


@dataclass(frozen=True)
class PruneReport:
    """What ``fleet status prune`` removed."""

    before: datetime
    events: int
    stray: int

    def to_dict(self) -> dict[str, Any]:
        """The report as ``--json`` shows it."""
        return {"before": iso(self.before), "events": self.events, "stray": self.stray}


def prune(ws: Workspace, older_than: timedelta) -> PruneReport:
    """Remove connection events (and stray ones) whose source time is older than
    ``older_than`` ago. Each device's current state is kept: it lives in its own row."""
    if older_than <= timedelta(0):
        raise InvalidInput("--older-than must be a positive span, such as 90d")
    cutoff = clock.now() - older_than
    with write_session(ws.open_registry()) as session:
        conn = session.connection()
        events = conn.execute(delete(_event).where(_event.c.source_time < cutoff)).rowcount
        stray = conn.execute(delete(_stray).where(_stray.c.source_time < cutoff)).rowcount
    return PruneReport(cutoff, events, stray)


def stray_summary(ws: Workspace) -> dict[str, int]:
    """Stray events by why they were kept aside (``unknown``, ``decommissioned``)."""
    with read_session(ws.open_registry()) as session:
        rows = session.execute(select(_stray.c.why, func.count()).group_by(_stray.c.why))
        return {str(why): int(count) for why, count in rows}
