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
import heapq
import json
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice
from json.encoder import encode_basestring
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, Table, func, insert, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from fleet import clock
from fleet.errors import InvalidInput
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


ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: events verified so far, and how many the head says there are."""

PROGRESS_EVERY = 10_000
_ROW_COLUMNS = ("seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash")


def verify(
    session: Session,
    anchors: Sequence[Anchor] = (),
    *,
    start: int = 1,
    progress: ProgressCallback | None = None,
) -> VerifyResult:
    """Re-hash the chain from event ``start`` on; report the first event that was edited,
    removed or moved.

    Each of ``anchors`` (from event ``start - 1`` on) must still be in the chain: an event
    missing or hashing differently means the history before it was rewritten (even if
    consistently re-hashed) or cut off. A broken link is reported first: it names the first
    edited event more precisely. With ``start > 1`` the link into ``start`` is still checked:
    event ``start - 1`` must exist and match its own hash, and ``start`` must point at it.
    ``VerifyResult.events`` then counts the events from ``start`` on.

    Rows are streamed in one ordered query (a server-side cursor on PostgreSQL), so memory
    stays flat; ``progress`` is called after every :data:`PROGRESS_EVERY` events. Hashes are
    computed around the stored details text (canonical as fleet writes it), a mismatch again
    over the re-serialised details: equal but reformatted details verify as they always did.
    """
    if start < 1:
        raise InvalidInput(f"--from must be at least 1, not {start}")
    event_table = AuditEvent.__table__  # type: ignore[attr-defined]
    head_seq, _ = _head(session)
    last = max(head_seq, session.execute(core_select(func.max(event_table.c.seq))).scalar() or 0)
    if start > max(last, 1):
        raise InvalidInput(f"--from {start} is beyond the chain's head (event {last})")
    pinned: dict[int, list[Anchor]] = {}
    for anchor in anchors:
        if anchor.seq >= start - 1:
            pinned.setdefault(anchor.seq, []).append(anchor)
    chain = _Chain(start, pinned, progress, max(head_seq - start + 1, 0))
    linked = start == 1
    with closing(_row_batches(session, start - 1 if start > 1 else 1)) as batches:
        for rows in batches:
            if not linked:
                linked, broken = True, chain.link_into_start(rows[0])
                if broken is not None:
                    return broken
                rows = rows[1:]
            broken = chain.check(rows)
            if broken is not None:
                return broken
    broken = chain.rewritten if linked else chain.link_into_start(None)
    if broken is not None:
        return broken
    return _check_end(session, anchors, start, chain.count, chain.prev)


def _row_batches(session: Session, first: int) -> Generator[Sequence[Any], None, None]:
    """The events from ``first`` on as tuples of :data:`_ROW_COLUMNS`, in ``seq`` order, in
    batches: one query, streamed (a server-side cursor on PostgreSQL)."""
    connection = session.connection()
    dialect = connection.dialect
    if dialect.name == "sqlite" or dialect.driver == "psycopg":
        # The driver's cursor (psycopg: server-side): SQLAlchemy's rows cost ~15% of the time.
        driver = connection.connection.dbapi_connection
        assert driver is not None
        named = dialect.name != "sqlite"
        cursor = driver.cursor(name="fleet_audit_verify") if named else driver.cursor()
        try:
            mark = "%s" if named else "?"
            cursor.execute(
                f"SELECT {', '.join(_ROW_COLUMNS)} FROM audit_event WHERE seq >= {mark} "
                "ORDER BY seq",
                (first,),
            )
            while rows := cursor.fetchmany(PROGRESS_EVERY):
                yield rows
        finally:
            cursor.close()
        return
    table = AuditEvent.__table__  # type: ignore[attr-defined]
    query = (
        core_select(*(table.c[name] for name in _ROW_COLUMNS))
        .where(table.c.seq >= first)
        .order_by(table.c.seq)
    )
    result = connection.execute(query, execution_options={"yield_per": PROGRESS_EVERY})
    try:
        yield from result.partitions()
    finally:
        result.close()


class _Chain:
    """The running state of :func:`verify`: where the chain got to, and its first anchor
    mismatch."""

    def __init__(
        self,
        start: int,
        pinned: dict[int, list[Anchor]],
        progress: ProgressCallback | None,
        total: int,
    ) -> None:
        self.expected, self.prev, self.count = start, GENESIS_HASH, 0
        self.pinned, self.progress, self.total = pinned, progress, total
        self.rewritten: VerifyResult | None = None

    def link_into_start(self, row: Any) -> VerifyResult | None:
        """Check event ``start - 1`` (its own hash and anchors); it becomes the link's parent."""
        before = self.expected - 1
        if row is None or row[0] != before:
            after = "none" if row is None else str(row[0])
            reason = f"event {before} is missing (next event is {after})"
            return VerifyResult(False, 0, self.prev, before, reason)
        if not _hash_matches(row):
            return VerifyResult(
                False, 0, self.prev, before, "content does not match its hash (edited)"
            )
        self._check_anchors(before, row[7])
        self.prev = row[7]
        return None

    def check(self, rows: Sequence[Any]) -> VerifyResult | None:
        """Continue the chain through ``rows``; the first broken link, if any."""
        # The hot loop: locals only. Each event's canonical form is assembled around its
        # stored details text; only a mismatch is re-hashed the slow way (see _hash_matches).
        expected, prev, count, pinned = self.expected, self.prev, self.count, self.pinned
        sha256, quote = hashlib.sha256, encode_basestring
        # action, actor and ts repeat within a batch (one per append): the text before the
        # details and the text after the target are built once per value, in caches kept per
        # batch so they stay small. The bytes hashed are the canonical form, as before.
        heads: dict[tuple[str, str], str] = {}
        tails: dict[str, str] = {}

        for seq, ts, actor, action, target, details, prev_hash, digest in rows:
            count += 1
            if seq != expected:
                problem: str | None = f"event {expected} is missing (next event is {seq})"
            elif prev_hash != prev:
                problem = (
                    "prev_hash does not match the previous event's hash (reordered or removed)"
                )
            else:
                head = heads.get((action, actor))
                if head is None:
                    head = heads[action, actor] = (
                        f'{{"action":{quote(action)},"actor":{quote(actor)},"details":'
                    )
                tail = tails.get(ts)
                if tail is None:
                    tail = tails[ts] = f',"ts":{quote(ts)}}}'
                # prev_hash equals the previous event's hash here, checked to be a hex digest.
                text = (
                    f'{head}{details},"prev_hash":"{prev_hash}","seq":{seq},'
                    f'"target":{quote(target)}{tail}'
                )
                if sha256(text.encode()).hexdigest() == digest or _hash_matches(
                    (seq, ts, actor, action, target, details, prev_hash, digest)
                ):
                    problem = None
                else:
                    problem = "content does not match its hash (edited)"
            if problem is not None:
                return VerifyResult(False, count, prev, seq, problem)
            if seq in pinned:
                self.count, self.prev = count, prev
                self._check_anchors(seq, digest)
            prev = digest
            expected += 1
        self.expected, self.prev, self.count = expected, prev, count
        if self.progress is not None:
            self.progress(count, max(self.total, count))
        return None

    def _check_anchors(self, seq: int, digest: str) -> None:
        for anchor in self.pinned.get(seq, ()):
            if anchor.hash != digest and self.rewritten is None:
                self.rewritten = VerifyResult(
                    False,
                    self.count,
                    self.prev,
                    seq,
                    f"{anchor.source} recorded event {seq} as {anchor.hash[:12]}…, "
                    f"the registry holds {digest[:12]}… (history rewritten)",
                )


def _hash_matches(row: Sequence[Any]) -> bool:
    """Whether the event (a row of :data:`_ROW_COLUMNS`) re-hashes to its hash the slow way:
    its details parsed and re-serialised in canonical form (so details stored as equal but
    differently formatted JSON still verify, as they always have)."""
    fields = dict(zip(_ROW_COLUMNS, row, strict=True))
    try:
        return bool(event_hash(fields) == fields["hash"])
    except ValueError:  # details that are not JSON at all: edited
        return False


def _head(session: Session) -> tuple[int, str]:
    """The head row's ``(seq, hash)``, read afresh; genesis when there is none."""
    head_table = AuditHead.__table__  # type: ignore[attr-defined]
    row = session.execute(
        core_select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1)
    ).one_or_none()
    return (0, GENESIS_HASH) if row is None else (int(row.seq), str(row.hash))


def _check_end(
    session: Session, anchors: Sequence[Anchor], start: int, count: int, prev: str
) -> VerifyResult:
    """The chain ending in ``prev`` (``count`` events from ``start``) against the anchors
    beyond it and the head row."""
    last_seq = start - 1 + count
    beyond = [a for a in anchors if a.seq > last_seq]
    if beyond:
        last = max(beyond, key=lambda a: a.seq)
        return VerifyResult(
            False,
            count,
            prev,
            last_seq + 1,
            f"the chain ends at event {last_seq} but {last.source} recorded event {last.seq} "
            "(events removed from the end)",
        )
    head_seq, head_hash = _head(session)
    if (head_seq, head_hash) != (last_seq, prev):
        return VerifyResult(
            False,
            count,
            prev,
            last_seq + 1 if head_seq > last_seq else head_seq,
            f"chain head says {head_seq} events ending in {head_hash[:12]}…, "
            f"the table holds {last_seq} ending in {prev[:12]}… (events removed from the end?)",
        )
    return VerifyResult(True, count, prev)


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
            event = dict(zip(_ROW_COLUMNS, row, strict=True))
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
    base = filters.where(core_select(*(table.c[name] for name in _ROW_COLUMNS)), None)
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


def verify_audit(
    ws: Workspace,
    anchors: Sequence[Anchor] = (),
    *,
    start: int = 1,
    progress: ProgressCallback | None = None,
) -> VerifyResult:
    """Re-hash the audit trail from event ``start`` on (and check it still holds
    ``anchors``), calling ``progress(done, total)`` as it goes; see :func:`verify`."""
    with read_session(ws.open_registry()) as session:
        return verify(session, anchors, start=start, progress=progress)
