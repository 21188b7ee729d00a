"""``--as-of``: the registry as it was at a moment, rebuilt by replaying the audit trail.

Each device's events up to and including that moment are replayed in chain order by the
sections' handlers (:mod:`fleet.export.sections`). Events are read ordered by (target, seq),
so only one device's state is in memory. Past :data:`REPLAY_PART_DEVICES` devices the replay
is split into ID ranges, replayed by worker processes in their own snapshots.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import TextClause, select, text
from sqlalchemy.engine import Connection, Engine

from fleet.export.batches import in_batches, row_batches
from fleet.export.cells import Cells, iso_moment, labels_object
from fleet.export.filters import NO_CERTIFICATE, ExportFilters
from fleet.export.layout import LAYOUT
from fleet.export.render import effective_status, line, render
from fleet.export.section import ReplayContext, ReplayedDevice
from fleet.export.sections import SECTIONS
from fleet.export.snapshot import snapshot_connection
from fleet.export.telemetry import extend_text, firmware_targets
from fleet.registry import audit
from fleet.registry.models import AuditEvent, Device
from fleet.workspace import Workspace

# --as-of replays the trail in parts of this many devices (ID ranges), in worker processes.
REPLAY_PART_DEVICES = 20_000
# the highest audit seq (events are numbered from 1; seq is 32-bit on PostgreSQL)
_LAST_SEQ = 2**31 - 1

# what a worker is asked: (format, filters, as-of moment, audit head seq)
ReplayArgs = tuple[str, ExportFilters, datetime, int]
# an ID range lo <= id < hi (None: unbounded)
Targets = tuple[str | None, str | None]


def replayed_lines(
    ws: Workspace,
    conn: Connection,
    args: ReplayArgs,
    workers: int | None,
) -> Iterator[list[bytes]]:
    """The rows as they were at the as-of moment, as batches of lines: replayed here, or
    by ``workers`` processes (default: one per CPU) once the registry holds more than
    :data:`REPLAY_PART_DEVICES` devices. Any worker is started before this returns."""
    fmt, filters, as_of, _head_seq = args
    workers = workers or os.cpu_count() or 1
    bounds = _part_bounds(conn) if workers > 1 else []
    if bounds:
        return _replayed_parts(ws, args, bounds, workers)
    return in_batches(_replayed_lines(conn, fmt, filters, as_of))


def replayed_cells(
    conn: Connection,
    as_of: datetime,
    *,
    targets: Targets | None = None,
    max_seq: int | None = None,
) -> Iterator[Cells]:
    """Rows' cells as they were at ``as_of``: each device's events up to then, replayed in
    order.

    ``targets`` ``(lo, hi)`` limits the replay to devices with ``lo <= id < hi`` (``None``:
    unbounded), and ``max_seq`` to the events up to that audit head, so that processes
    replaying parts in their own snapshots see the same trail (it is append-only).
    """
    cutoff = audit.format_ts(as_of)
    seq_limit = max_seq if max_seq is not None else _LAST_SEQ
    ctx = _replay_context(conn, cutoff, seq_limit)
    for state in replayed_devices(conn, as_of, targets=targets, max_seq=max_seq):
        yield _replayed(state, ctx)


def replayed_devices(
    conn: Connection,
    as_of: datetime,
    *,
    targets: Targets | None = None,
    max_seq: int | None = None,
) -> Iterator[ReplayedDevice]:
    """Each device's replayed state at ``as_of`` (its fields, and every section's own state:
    all its certificates by serial...), in ``target`` order; see :func:`replayed_cells`."""
    cutoff = audit.format_ts(as_of)
    seq_limit = max_seq if max_seq is not None else _LAST_SEQ
    query = _events_query(conn.dialect.name, cutoff, seq_limit, targets)
    handlers = {
        action: [s.replay[action] for s in SECTIONS if action in s.replay]
        for action in LAYOUT.replay_actions
    }
    state: ReplayedDevice | None = None
    loads = json.loads
    for batch in row_batches(conn, query):
        for seq, target, action, ts, details in batch:
            todo = handlers.get(action)
            if todo is None:
                continue
            if state is None or state.id != target:
                if state is not None and "created_at" in state.fields:
                    yield state
                state = ReplayedDevice(target)
            state.seq = seq
            parsed = loads(details)
            for handler in todo:
                handler(state, parsed, ts)
    if state is not None and "created_at" in state.fields:
        yield state


def _replay_context(conn: Connection, cutoff: str, seq_limit: int) -> ReplayContext:
    """The clouds removed up to ``cutoff`` (and the audit head ``seq_limit``)."""
    e = AuditEvent.__table__  # type: ignore[attr-defined]
    removals = conn.execute(
        select(e.c.seq, e.c.target)
        .where(e.c.action == "cloud.remove", e.c.ts <= cutoff, e.c.seq <= seq_limit)
        .order_by(e.c.seq)
    ).all()
    return ReplayContext(tuple((int(seq), str(target)) for seq, target in removals))


def _events_query(dialect: str, cutoff: str, seq_limit: int, targets: Targets | None) -> TextClause:
    """The events to replay, ordered by (target, seq): one SQL text on every backend."""
    lo, hi = targets or (None, None)
    params: dict[str, Any] = {"cutoff": cutoff, "seq_limit": seq_limit, "lo": lo, "hi": hi}
    where = "ts <= :cutoff AND seq <= :seq_limit"
    where += " AND target >= :lo" if lo is not None else ""
    where += " AND target < :hi" if hi is not None else ""
    # SQLite, the whole trail: read the table in order and sort (walking an index fetches
    # each event from a random page, as a device's events lie scattered through the trail;
    # 2M events: 7.7 s to scan and sort, 12 s to walk). A part of it: walk the target index
    # over just that range, already in (target, seq) order (SQLite would otherwise pick the
    # ts index and sort).
    source = ""
    if dialect == "sqlite":
        source = "NOT INDEXED" if targets is None else "INDEXED BY ix_audit_event_target_seq"
    return text(
        f"SELECT seq, target, action, ts, details FROM audit_event {source} "
        f"WHERE {where} ORDER BY target, seq"
    ).bindparams(**{k: v for k, v in params.items() if f":{k}" in where})


def _replayed(state: ReplayedDevice, ctx: ReplayContext) -> Cells:
    cells: Cells = []
    for section in SECTIONS:
        cells.extend(section.values(state, ctx))
    return cells


def cells_matcher(filters: ExportFilters, moment: str) -> Callable[[Cells], bool] | None:
    """A predicate for the filters on replayed cells (``moment``: :func:`iso_moment` of
    the as-of time, for ``cert_status``), or None if no filter is given."""
    checks: list[tuple[int, str]] = []
    for name in ("model", "serial", "status"):
        value = getattr(filters, name)
        if value is not None:
            checks.append((LAYOUT.cell(None, name), value))
    cert_status = filters.cert_status
    status_at, not_after_at = LAYOUT.cert_status, LAYOUT.cert_not_after
    labels_at = LAYOUT.labels
    wanted = dict(filters.labels)
    if not checks and cert_status is None and not wanted:
        return None

    def matches(cells: Cells) -> bool:
        if any(cells[i] != v for i, v in checks):
            return False
        if cert_status is not None:
            status = effective_status(cells[status_at], cells[not_after_at], moment)
            if (status or NO_CERTIFICATE) != cert_status:
                return False
        if wanted:
            labels = labels_object(cells[labels_at])
            return all(labels.get(k) == v for k, v in wanted.items())
        return True

    return matches


def _replayed_lines(
    conn: Connection,
    fmt: str,
    filters: ExportFilters,
    as_of: datetime,
    *,
    targets: Targets | None = None,
    max_seq: int | None = None,
) -> Iterator[bytes]:
    """The rows' lines at ``as_of``, with the export-time columns: the firmware target as
    the trail says, the reported firmware and connection empty (not audited)."""
    moment = iso_moment(as_of)
    cells: Iterable[list[Any]] = replayed_cells(conn, as_of, targets=targets, max_seq=max_seq)
    matches = cells_matcher(filters, moment)
    if matches is not None:
        cells = filter(matches, cells)
    lo, hi = targets or (None, None)
    seq_limit = max_seq if max_seq is not None else _LAST_SEQ
    firmware = firmware_targets(conn, audit.format_ts(as_of), seq_limit, lo, hi)
    for row in cells:
        text = line(render(row, fmt), fmt, moment)
        values = (None, firmware.get(row[0]), None, None)
        yield extend_text(fmt, text, values).encode()


# --- parallel parts ---------------------------------------------------------------------


def _part_bounds(conn: Connection) -> list[str]:
    """Device IDs splitting the registry into parts of :data:`REPLAY_PART_DEVICES`."""
    d = Device.__table__  # type: ignore[attr-defined]
    bounds: list[str] = []
    seen = 0
    for rows in row_batches(conn, select(d.c.id).order_by(d.c.id)):
        for (device_id,) in rows:
            if seen and seen % REPLAY_PART_DEVICES == 0:
                bounds.append(device_id)
            seen += 1
    return bounds


_worker_registries: dict[tuple[str, str | None], Engine] = {}


def _replay_part(home: str, db_url: str | None, args: ReplayArgs, targets: Targets) -> list[bytes]:
    """In a worker process: one ID range's lines, replayed in the worker's own snapshot (the
    same events as the parent's: the trail is append-only and read up to its head)."""
    fmt, filters, as_of, head_seq = args
    engine = _worker_registries.get((home, db_url))
    if engine is None:
        engine = Workspace(home=Path(home), db_url=db_url).open_registry()
        _worker_registries[(home, db_url)] = engine
    with snapshot_connection(engine) as conn, conn.begin():
        return list(_replayed_lines(conn, fmt, filters, as_of, targets=targets, max_seq=head_seq))


def _replayed_parts(
    ws: Workspace, args: ReplayArgs, bounds: list[str], workers: int
) -> Iterator[list[bytes]]:
    """Each ID range's lines, in ID order, replayed by ``workers`` processes. At most
    ``workers + 1`` parts are in flight, so memory stays flat.

    The workers are forked here, before the caller starts its writer thread (spawning would
    re-import a caller's unguarded main module); they open their own connections and never
    touch the parent's.
    """
    ranges = iter(zip([None, *bounds], [*bounds, None], strict=True))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))

    def submit(part: Targets) -> Future[list[bytes]]:
        return pool.submit(_replay_part, str(ws.home), ws.db_url, args, part)

    try:
        pending = deque(submit(part) for part in itertools.islice(ranges, workers + 1))
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise

    def results() -> Iterator[list[bytes]]:
        try:
            while pending:
                lines = pending.popleft().result()
                pending.extend(submit(part) for part in itertools.islice(ranges, 1))
                yield lines
        finally:
            pool.shutdown(cancel_futures=True)

    return results()


def as_of_warnings(engine: Engine, as_of: datetime, now: datetime) -> list[str]:
    """What is suspicious about looking back at ``as_of``: a moment before the audit trail's
    first event (the registry was empty then) or after ``now`` (it is the current one)."""
    events = AuditEvent.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        first = conn.execute(select(events.c.ts).order_by(events.c.seq).limit(1)).scalar()
    moment = audit.format_ts(as_of)
    if first is not None and moment < first:
        return [
            f"--as-of {moment} is before the audit trail's first event ({first}): "
            "the registry was empty then"
        ]
    if as_of > now:
        return [f"--as-of {moment} is in the future: this is the registry as it is now"]
    return []
