"""The hash-chained audit trail.

Every registry mutation appends one event inside the transaction that makes the change.
An event's hash is the SHA-256 (hex) of its *canonical form*: the JSON object of its fields
``seq, ts, actor, action, target, details, prev_hash`` with keys sorted, no whitespace
(``separators=(",", ":")``), non-ASCII kept as UTF-8 (``ensure_ascii=False``). ``prev_hash`` is
the previous event's hash; the first event's is 64 zeros. Editing, deleting or reordering any
row breaks the chain at that row, which :func:`verify` reports.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, insert, update
from sqlmodel import Session, col, select

from fleet import clock
from fleet.registry.db import read_session
from fleet.registry.models import AuditEvent, AuditHead

if TYPE_CHECKING:
    from fleet.workspace import Workspace

GENESIS_HASH = "0" * 64
HASHED_FIELDS = ("seq", "ts", "actor", "action", "target", "details", "prev_hash")


def current_actor() -> str:
    """Who is acting: ``$FLEET_ACTOR``, else the OS user name."""
    actor = os.environ.get("FLEET_ACTOR")
    if actor:
        return actor[:128]
    try:
        return getpass.getuser()[:128]
    except (KeyError, OSError):  # no passwd entry, e.g. in a bare container
        return "unknown"


def format_ts(moment: datetime) -> str:
    """The audit trail's timestamp text: UTC, microseconds, ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    """JSON text in fleet's canonical form (sorted keys, compact, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(fields: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical form of an event given as a dict of :data:`HASHED_FIELDS`.

    ``details`` may be given parsed (an object) or as its canonical JSON text.
    """
    body = {name: fields[name] for name in HASHED_FIELDS}
    if isinstance(body["details"], str):
        body["details"] = json.loads(body["details"])
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PendingEvent:
    """An event to append: what happened, to what, with which (secret-free) details."""

    action: str
    target: str
    details: dict[str, Any]


RowInserter = Callable[[Table, list[dict[str, Any]]], None]


def append(
    session: Session,
    action: str,
    target: str,
    details: dict[str, Any],
    *,
    actor: str | None = None,
    at: datetime | None = None,
) -> str:
    """Append one event in ``session``'s transaction; returns its hash."""
    return append_many(session, [PendingEvent(action, target, details)], actor=actor, at=at)


def append_many(
    session: Session,
    events: Sequence[PendingEvent],
    *,
    actor: str | None = None,
    at: datetime | None = None,
    insert_rows: RowInserter | None = None,
) -> str:
    """Append events in order, in ``session``'s transaction; returns the new head hash.

    The head row is read ``FOR UPDATE`` (PostgreSQL); on SQLite the write transaction already
    holds the database's write lock. Either way two writers never link to the same parent.
    Rows go in with one Core executemany (bulk provisioning appends thousands per batch);
    ``insert_rows(table, rows)`` may replace that insert, e.g. with a driver-level one.
    """
    head_table, event_table = AuditHead.__table__, AuditEvent.__table__  # type: ignore[attr-defined]
    head = session.execute(
        select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1).with_for_update()
    ).one_or_none()
    seq, prev = (0, GENESIS_HASH) if head is None else (head.seq, head.hash)
    if not events:
        return str(prev)
    who, ts = actor or current_actor(), format_ts(at or clock.now())
    # The canonical form is assembled around each event's details JSON, encoded once; the
    # keys below are in sorted order, as canonical_json would put them (verify() re-derives
    # every hash the slow way, from scratch).
    tail = f',"ts":{canonical_json(ts)}}}'
    actor_json = canonical_json(who)
    rows: list[dict[str, Any]] = []
    for pending in events:
        seq += 1
        details = canonical_json(pending.details)
        text = (
            f'{{"action":{canonical_json(pending.action)},"actor":{actor_json},'
            f'"details":{details},"prev_hash":"{prev}","seq":{seq},'
            f'"target":{canonical_json(pending.target)}{tail}'
        )
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        rows.append(
            {
                "seq": seq,
                "ts": ts,
                "actor": who,
                "action": pending.action,
                "target": pending.target,
                "details": details,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    if insert_rows is None:
        session.execute(insert(event_table), rows)
    else:
        insert_rows(event_table, rows)
    if head is None:
        session.execute(insert(head_table).values(id=1, seq=seq, hash=prev))
    else:
        session.execute(update(head_table).where(head_table.c.id == 1).values(seq=seq, hash=prev))
    return prev


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


@dataclass(frozen=True)
class Anchor:
    """A head the chain once had, recorded outside the registry (a signed checkpoint, an
    export's manifest): event ``seq`` must still exist and still hash to ``hash``.
    ``source`` names the record in messages."""

    seq: int
    hash: str
    source: str


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`. ``bad_seq`` names the first event that fails, if any."""

    ok: bool
    events: int
    head_hash: str
    bad_seq: int | None = None
    reason: str | None = None


def verify(session: Session, anchors: Sequence[Anchor] = ()) -> VerifyResult:
    """Re-hash the whole chain; report the first event that was edited, removed or moved.

    Each of ``anchors`` must still be in the chain: an event missing or hashing differently
    means the history before it was rewritten (even if consistently re-hashed) or cut off.
    A broken link is reported first: it names the first edited event more precisely.
    """
    pinned: dict[int, list[Anchor]] = {}
    for anchor in anchors:
        pinned.setdefault(anchor.seq, []).append(anchor)
    expected_seq, prev = 1, GENESIS_HASH
    count = 0
    rewritten: VerifyResult | None = None
    for event in iter_events(session):
        count += 1
        problem = _link_problem(event, expected_seq, prev)
        if problem is not None:
            return VerifyResult(False, count, prev, event.seq, problem)
        for anchor in pinned.get(event.seq, ()):
            if anchor.hash != event.hash and rewritten is None:
                rewritten = VerifyResult(
                    False,
                    count,
                    prev,
                    event.seq,
                    f"{anchor.source} recorded event {event.seq} as {anchor.hash[:12]}…, "
                    f"the registry holds {event.hash[:12]}… (history rewritten)",
                )
        prev = event.hash
        expected_seq += 1
    if rewritten is not None:
        return rewritten
    return _check_end(session, anchors, count, prev)


def _link_problem(event: AuditEvent, expected_seq: int, prev: str) -> str | None:
    """Why ``event`` does not continue a chain ending in event ``expected_seq - 1`` (hash
    ``prev``), or ``None``."""
    if event.seq != expected_seq:
        return f"event {expected_seq} is missing (next event is {event.seq})"
    if event.prev_hash != prev:
        return "prev_hash does not match the previous event's hash (reordered or removed)"
    if event_hash(event.model_dump()) != event.hash:
        return "content does not match its hash (edited)"
    return None


def _check_end(session: Session, anchors: Sequence[Anchor], count: int, prev: str) -> VerifyResult:
    """The chain of ``count`` events ending in ``prev`` against the anchors beyond it and
    the head row."""
    beyond = [a for a in anchors if a.seq > count]
    if beyond:
        last = max(beyond, key=lambda a: a.seq)
        return VerifyResult(
            False,
            count,
            prev,
            count + 1,
            f"the chain ends at event {count} but {last.source} recorded event {last.seq} "
            "(events removed from the end)",
        )
    head = session.get(AuditHead, 1)
    head_seq, head_hash = (0, GENESIS_HASH) if head is None else (head.seq, head.hash)
    if (head_seq, head_hash) != (count, prev):
        return VerifyResult(
            False,
            count,
            prev,
            count + 1 if head_seq > count else head_seq,
            f"chain head says {head_seq} events ending in {head_hash[:12]}…, "
            f"the table holds {count} ending in {prev[:12]}… (events removed from the end?)",
        )
    return VerifyResult(True, count, prev)


def iter_audit_events(
    ws: Workspace, *, since: datetime | None = None, until: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Audit events in order, as exported (hashed fields plus ``hash``)."""
    with read_session(ws.open_registry()) as session:
        for event in iter_events(session, since=since, until=until):
            yield event_to_dict(event)


def verify_audit(ws: Workspace, anchors: Sequence[Anchor] = ()) -> VerifyResult:
    """Re-hash the audit trail (and check it still holds ``anchors``); see :func:`verify`."""
    with read_session(ws.open_registry()) as session:
        return verify(session, anchors)
