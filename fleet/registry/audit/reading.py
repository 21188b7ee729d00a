"""Reading the audit trail: events in chain order, filtered (``fleet audit log``) and
counted, streamed in batches so memory stays flat."""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, func
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from fleet.registry.audit.chain import ROW_COLUMNS, format_ts
from fleet.registry.db import read_session
from fleet.registry.models import AuditEvent

if TYPE_CHECKING:
    from fleet.workspace import Workspace


def event_to_dict(event: AuditEvent) -> dict[str, Any]:
    """The event as exported: its hashed fields (``details`` parsed) plus ``hash``."""
    return {
        "seq": event.seq,
        "ts": event.ts,
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "details": json.loads(event.details),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def iter_events(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch_size: int = 5000,
) -> Iterator[AuditEvent]:
    """Events in chain order, optionally within ``[since, until)``, streamed in batches."""
    last_seq = 0
    while True:
        query = select(AuditEvent).where(AuditEvent.seq > last_seq)
        if since is not None:
            query = query.where(AuditEvent.ts >= format_ts(since))
        if until is not None:
            query = query.where(AuditEvent.ts < format_ts(until))
        rows = session.exec(query.order_by(col(AuditEvent.seq)).limit(batch_size)).all()
        if not rows:
            return
        yield from rows
        last_seq = rows[-1].seq
        session.expunge_all()


ActionFilter = str | Sequence[str] | None


@dataclass(frozen=True)
class _Filters:
    """``audit log``'s filters, each answered by an index (``actions``: any of them)."""

    since: datetime | None
    until: datetime | None
    target: str | None
    actions: tuple[str, ...]

    def where(self, query: Select[Any], after: int | None) -> Select[Any]:
        table = AuditEvent.__table__  # type: ignore[attr-defined]
        if self.since is not None:
            query = query.where(table.c.ts >= format_ts(self.since))
        if self.until is not None:
            query = query.where(table.c.ts < format_ts(self.until))
        if self.target is not None:
            query = query.where(table.c.target == self.target)
        if len(self.actions) == 1:
            query = query.where(table.c.action == self.actions[0])
        elif self.actions:
            query = query.where(table.c.action.in_(self.actions))
        return query if after is None else query.where(table.c.seq > after)


def _filters(
    since: datetime | None, until: datetime | None, target: str | None, action: ActionFilter
) -> _Filters:
    actions = (action,) if isinstance(action, str) else tuple(action or ())
    return _Filters(since, until, target, actions)


def iter_audit_events(
    ws: Workspace,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    target: str | None = None,
    action: ActionFilter = None,
    after: int | None = None,
    limit: int | None = None,
    batch_size: int = 5000,
) -> Iterator[dict[str, Any]]:
    """Audit events in chain order (``seq``), as exported (hashed fields plus ``hash``).

    Filters: ``ts`` in ``[since, until)``, exactly ``target``, ``action`` (one name or any
    of several), ``seq`` after the keyset cursor ``after``; at most ``limit`` events.
    Streamed in batches of ``batch_size``, so memory stays flat.
    """
    every = _filters(since, until, target, action)
    groups: list[tuple[str, ...]] = [(name,) for name in every.actions] or [()]
    with read_session(ws.open_registry()) as session:
        bounds = _seq_bounds(session, since, until)
        if bounds is None:
            return
        # One keyset stream per action, merged by seq: each is read in index order (an IN
        # list would make the database sort every match to find the first page).
        streams = [
            _stream(session, replace(every, actions=one), bounds, after, limit, batch_size)
            for one in groups
        ]
        merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=itemgetter(0))
        for row in islice(merged, limit):
            event = dict(zip(ROW_COLUMNS, row, strict=True))
            event["details"] = json.loads(event["details"])
            yield event


def _seq_bounds(
    session: Session, since: datetime | None, until: datetime | None
) -> tuple[int | None, int | None] | None:
    """The first and last ``seq`` within ``[since, until)``, found on the ``ts`` index, so a
    scan in ``seq`` order starts and stops there (``None``: no event is in the window)."""
    seq, ts = AuditEvent.__table__.c.seq, AuditEvent.__table__.c.ts  # type: ignore[attr-defined]
    # ``seq + 0``: on the bare key SQLite would walk the table in key order to the first match.
    seq = seq + 0
    low = high = None
    if since is not None:
        low = session.execute(core_select(func.min(seq)).where(ts >= format_ts(since))).scalar()
        if low is None:
            return None
    if until is not None:
        high = session.execute(core_select(func.max(seq)).where(ts < format_ts(until))).scalar()
        if high is None:
            return None
    return low, high


def _stream(
    session: Session,
    filters: _Filters,
    bounds: tuple[int | None, int | None],
    after: int | None,
    limit: int | None,
    batch_size: int,
) -> Iterator[Sequence[Any]]:
    """Rows matching ``filters`` within ``bounds``, in ``seq`` order, a batch at a time."""
    table = AuditEvent.__table__  # type: ignore[attr-defined]
    base = filters.where(core_select(*(table.c[name] for name in ROW_COLUMNS)), None)
    if bounds[0] is not None:
        base = base.where(table.c.seq >= bounds[0])
    if bounds[1] is not None:
        base = base.where(table.c.seq <= bounds[1])
    cursor, left = after, limit
    while left is None or left > 0:
        size = batch_size if left is None else min(batch_size, left)
        query = base if cursor is None else base.where(table.c.seq > cursor)
        rows = session.execute(query.order_by(table.c.seq).limit(size)).all()
        yield from rows
        if len(rows) < size:
            return
        cursor = rows[-1][0]
        left = None if left is None else left - len(rows)


def count_audit_events(
    ws: Workspace,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    target: str | None = None,
    action: ActionFilter = None,
    after: int | None = None,
) -> int:
    """How many events :func:`iter_audit_events` yields with the same filters (no limit)."""
    table = AuditEvent.__table__  # type: ignore[attr-defined]
    query = core_select(func.count()).select_from(table)
    query = _filters(since, until, target, action).where(query, after)
    with read_session(ws.open_registry()) as session:
        return int(session.execute(query).scalar_one())
