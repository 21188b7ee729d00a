"""Verifying the audit trail: re-hash the chain, check it still holds its anchors (heads
recorded outside the registry) and that it ends where the head row says.

Editing, deleting or reordering any row breaks the chain at that row, which :func:`verify`
reports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Sequence
from contextlib import closing
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from sqlalchemy import func
from sqlalchemy import select as core_select
from sqlmodel import Session

from fleet.errors import InvalidInput
from fleet.registry.audit.chain import GENESIS_HASH, ROW_COLUMNS, event_hash
from fleet.registry.db import read_session
from fleet.registry.models import AuditEvent, AuditHead

if TYPE_CHECKING:
    from fleet.workspace import Workspace


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
    """The events from ``first`` on as tuples of :data:`ROW_COLUMNS`, in ``seq`` order, in
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
                f"SELECT {', '.join(ROW_COLUMNS)} FROM audit_event WHERE seq >= {mark} "
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
        core_select(*(table.c[name] for name in ROW_COLUMNS))
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
    """Whether the event (a row of :data:`ROW_COLUMNS`) re-hashes to its hash the slow way:
    its details parsed and re-serialised in canonical form (so details stored as equal but
    differently formatted JSON still verify, as they always have)."""
    fields = dict(zip(ROW_COLUMNS, row, strict=True))
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
