"""Recording connection events on SQLite at driver speed: the rules of fleet/status/events.py
over rows as the driver returns them.

A :class:`SqliteRecorder` lives for one write transaction. It records the events handed to
it chunk by chunk: each device's registry status and state row are read once per
transaction (one ``json_each`` lookup for a chunk's new devices, not thousands of
parameters), events go in by executemany (an empty value written into the statement as
NULL, not bound), the state rows stay in memory as the rules move them, and
:meth:`~SqliteRecorder.flush` writes each changed row once, before the transaction commits.
Ingest records a million events in a few transactions this way instead of rewriting the same
state rows after every chunk.

Times are compared as the text SQLite stores (naive UTC, fixed width, microseconds: text order
is time order), so rows go from the driver to the rules and back without conversions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from sqlmodel import Session

from fleet.statuses import DeviceStatus

# an event as connection_event stores it: key, device_id, state, source, source_time and
# received_at (stored text), marker, session, reason, firmware
EventRow = tuple[str, str, str, str, str, str, str | None, str | None, str | None, str | None]

# a page cache that holds the hot pages of the event indexes: bounded memory
CACHE_KIB = 32 * 1024

_STATE_COLUMNS = (
    "device_id",
    "state",
    "since",
    "last_seen",
    "source",
    "source_time",
    "marker",
    "reason",
    "firmware",
)
_EVENT_COLUMNS = (
    '"key"',
    "device_id",
    "state",
    "source",
    "source_time",
    "received_at",
    "marker",
    "session",
    "reason",
    "firmware",
)
_STRAY_COLUMNS = (
    '"key"',
    "device_id",
    "why",
    "state",
    "source",
    "source_time",
    "received_at",
    "marker",
    "reason",
)
_EVENT_NULLABLE = range(6, 10)  # marker, session, reason, firmware
_STRAY_NULLABLE = range(7, 9)  # marker, reason
_STATE_NULLABLE = range(6, 9)  # marker, reason, firmware
# an UPDATE's rows: these columns' values, then device_id (for the WHERE)
_STATE_SET = _STATE_COLUMNS[1:]
# a row whose state and `since` stay leaves the (state, ...) indexes alone
_STATE_TOUCH = _STATE_COLUMNS[3:]


def in_order(row: EventRow) -> tuple[str, str, str]:
    """The order the state rules take events in: each device's own, by (time, marker) as
    :func:`~fleet.status.events.is_newer` compares them (a device's state row moves by its
    own events only). Device first also puts neighbouring inserts on the same pages of the
    ``(device_id, source_time)`` index."""
    return row[1], row[4], row[6] or ""


_ACTIVE = DeviceStatus.ACTIVE.value


class SqliteRecorder:
    """Records events in the caller's SQLite write transaction; :meth:`flush` before it
    commits. Example (what :func:`~fleet.status.events.record_row_chunks` does)::

        with write_session(engine) as session:
            recorder = SqliteRecorder(session)
            for rows in chunks:  # EventRow tuples
                recorded, stray, stray_ids = recorder.record(rows)
            changed = recorder.flush()
    """

    def __init__(self, session: Session) -> None:
        driver = session.connection().connection.dbapi_connection
        assert driver is not None
        self._cursor = driver.cursor()
        self._cursor.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._statuses: dict[str, str | None] = {}  # device -> registry status (None: unknown)
        self._inactive: set[str] = set()  # devices whose events are stray
        self._rows: dict[str, list[Any]] = {}  # device -> its state row, as the rules move it
        self._read: dict[str, tuple[Any, ...]] = {}  # device -> its state row as read
        self._new: set[str] = set()  # state rows to insert
        self._changed: set[str] = set()  # devices whose state changed, or got its first one

    @property
    def devices(self) -> int:
        """How many devices it has looked up and holds (callers bound memory by it)."""
        return len(self._statuses)

    def record(self, rows: list[EventRow], *, ordered: bool = False) -> tuple[int, int, list[str]]:
        """Store the events ``rows`` that are new (by key) and move the state rows: how many
        events were new, how many were stray (kept aside), and the first 20 stray device
        IDs. ``ordered``: the rows come in :func:`in_order` (ingest's worker sorts them),
        so they are not sorted again."""
        recorded = stray_count = 0
        unique = {row[0]: row for row in rows}
        devices = {row[1] for row in unique.values()}
        self._look_up(devices)
        stray: list[tuple[Any, ...]] = []
        if devices.isdisjoint(self._inactive):
            kept = list(unique.values())
        else:
            kept, stray = self._split(unique.values())
        if stray:
            insert = _insert("stray_connection_event", _STRAY_COLUMNS)
            stray_count = self._execute(insert, stray, _STRAY_NULLABLE)
        if kept:
            recorded = self._execute(
                _insert("connection_event", _EVENT_COLUMNS), kept, _EVENT_NULLABLE
            )
            if not ordered:
                kept.sort(key=in_order)
            self._advance(kept)
        return recorded, stray_count, [row[1] for row in stray[:20]]

    def _split(self, rows: Iterable[EventRow]) -> tuple[list[EventRow], list[tuple[Any, ...]]]:
        """``rows`` of active devices, and the others as stray rows (why they are kept aside)."""
        kept: list[EventRow] = []
        stray: list[tuple[Any, ...]] = []
        for row in rows:
            status = self._statuses[row[1]]
            if status == _ACTIVE:
                kept.append(row)
            else:
                key, device_id, state, source, when, received, marker, _, reason, _ = row
                why = "unknown" if status is None else "decommissioned"
                stray.append(
                    (key, device_id[:128], why, state, source, when, received, marker, reason)
                )
        return kept, stray

    def flush(self) -> int:
        """Write the state rows the rules changed; how many devices changed state (or got
        their first one) since the recorder began. Call once, before the commit."""
        rows, changed = self._rows, self._changed
        if self._new:
            fresh = [tuple(rows[device_id]) for device_id in sorted(self._new)]
            insert = _insert("connection_state", _STATE_COLUMNS, verb="INSERT")
            self._execute(insert, fresh, _STATE_NULLABLE)
        # the rows that moved (they differ from what was read), device_id last for the WHERE
        moved = sorted(d for d, row in self._read.items() if tuple(rows[d]) != row)
        full = [(*rows[d][1:], d) for d in moved if d in changed]
        touched = [(*rows[d][3:], d) for d in moved if d not in changed]
        if full:
            self._execute(_update(_STATE_SET), full, _shifted(_STATE_NULLABLE, 1))
        if touched:
            self._execute(_update(_STATE_TOUCH), touched, _shifted(_STATE_NULLABLE, 3))
        self._cursor.close()
        return len(changed)

    def _look_up(self, device_ids: set[str]) -> None:
        """Read the registry status and state row of each device not read before."""
        unseen = list(device_ids - self._statuses.keys())
        if not unseen:
            return
        cursor = self._cursor
        found = dict(
            cursor.execute(
                "SELECT id, status FROM device WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(unseen)),),
            ).fetchall()
        )
        self._statuses.update((device_id, found.get(device_id)) for device_id in unseen)
        active = [device_id for device_id in unseen if found.get(device_id) == _ACTIVE]
        self._inactive.update(set(unseen).difference(active))
        if active:
            read = cursor.execute(
                f"SELECT {', '.join(_STATE_COLUMNS)} FROM connection_state "
                "WHERE device_id IN (SELECT value FROM json_each(?))",
                (json.dumps(active),),
            ).fetchall()
            self._read.update((row[0], row) for row in read)
            self._rows.update((row[0], list(row)) for row in read)

    def _execute(self, sql: Callable[[list[str]], str], rows: list[Any], nullable: range) -> int:
        """Run the statement ``sql(marks)`` over ``rows`` (executemany); how many rows it
        changed. A None among the ``nullable`` positions is written as NULL into the
        statement rather than bound, one statement per pattern of NULLs: the sqlite3 module
        binds None through its adaptation path, at four times the cost of a string."""
        low, high = nullable.start, nullable.stop
        nones = (None,) * (high - low)
        width = len(rows[0])
        groups: dict[tuple[bool, ...], list[tuple[Any, ...]]] = {}
        bare = groups[(True,) * len(nones)] = []
        for row in rows:
            values = row[low:high]
            if values == nones:
                bare.append(row[:low] + row[high:])
            else:
                mask = tuple(value is None for value in values)
                kept = tuple(value for value in values if value is not None)
                groups.setdefault(mask, []).append(row[:low] + kept + row[high:])
        count = 0
        for mask, bound in groups.items():
            if bound:
                marks = ["?"] * width
                for offset, null in enumerate(mask):
                    if null:
                        marks[low + offset] = "NULL"
                self._cursor.executemany(sql(marks), bound)
                count += max(self._cursor.rowcount, 0)
        return count

    def _advance(self, kept: list[EventRow]) -> None:
        """:func:`~fleet.status.events.is_newer` and the state rules, over event rows in
        (time, marker) order."""
        rows, new, changed = self._rows, self._new, self._changed
        # a state row: (device_id, state, since, last_seen, source, source_time, marker,
        # reason, firmware)
        for _, device_id, state, source, when, _, marker, _, reason, firmware in kept:
            row = rows.get(device_id)
            if row is None:
                rows[device_id] = [
                    device_id, state, when, when, source, when, marker, reason, firmware
                ]  # fmt: skip
                new.add(device_id)
                changed.add(device_id)
                continue
            if when > row[3]:
                row[3] = when
            if source == row[4] and marker and row[6]:
                if not marker > row[6]:
                    continue
            elif not when > row[5]:
                continue
            if state != row[1]:
                row[2] = when
                changed.add(device_id)
            row[1], row[4], row[5], row[6], row[7] = state, source, when, marker, reason
            if firmware:
                row[8] = firmware


def _insert(
    table: str, columns: tuple[str, ...], *, verb: str = "INSERT OR IGNORE"
) -> Callable[[list[str]], str]:
    """An INSERT of ``columns`` into ``table``, given each value's mark (``?`` or ``NULL``)."""
    names = ", ".join(columns)
    return lambda marks: f"{verb} INTO {table} ({names}) VALUES ({', '.join(marks)})"


def _update(columns: tuple[str, ...]) -> Callable[[list[str]], str]:
    """An UPDATE of a state row's ``columns``, given each value's mark and ``?`` for the
    device_id last."""

    def sql(marks: list[str]) -> str:
        pairs = ", ".join(f"{name} = {mark}" for name, mark in zip(columns, marks, strict=False))
        return f"UPDATE connection_state SET {pairs} WHERE device_id = ?"

    return sql


def _shifted(positions: range, by: int) -> range:
    return range(positions.start - by, positions.stop - by)
