"""The audit trail's hash chain: the canonical form of an event, its hash, and appending.

An event's hash is the SHA-256 (hex) of its *canonical form*: the JSON object of its fields
``seq, ts, actor, action, target, details, prev_hash`` with keys sorted, no whitespace
(``separators=(",", ":")``), non-ASCII kept as UTF-8 (``ensure_ascii=False``). ``prev_hash`` is
the previous event's hash; the first event's is 64 zeros.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, insert, update
from sqlmodel import Session, select

from fleet import clock
from fleet.registry.models import AuditEvent, AuditHead

GENESIS_HASH = "0" * 64
HASHED_FIELDS = ("seq", "ts", "actor", "action", "target", "details", "prev_hash")
ROW_COLUMNS = ("seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash")
"""An event as a row: :data:`HASHED_FIELDS` plus ``hash`` (verify and the log read these)."""


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
