"""Recording connection events on SQLite at driver speed: the rules of fleet/status/events.py
over rows as the driver returns them.

A :class:`SqliteRecorder` lives for one write transaction. It records the events handed to
it chunk by chunk: each device's registry status and state row are read once per
transaction (one ``json_each`` lookup for a chunk's new devices, not thousands of
parameters), events go in by one executemany a chunk, the state rows stay in memory as the rules
move them, and :meth:`~SqliteRecorder.flush` writes each changed row once, before the
transaction commits. Ingest records a million events in a few transactions this way instead
of rewriting the same state rows after every chunk.

Times are compared as the text SQLite stores (naive UTC, fixed width, microseconds: text order
is time order), so rows go from the driver to the rules and back without conversions.
"""

from __future__ import annotations

import json
from operator import itemgetter
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
# a row whose state and `since` stay leaves the (state, ...) indexes alone
_STATE_UPDATE = (
    "UPDATE connection_state SET state = ?, since = ?, last_seen = ?, source = ?, "
    "source_time = ?, marker = ?, reason = ?, firmware = ? WHERE device_id = ?"
)
_STATE_TOUCH = (
    "UPDATE connection_state SET last_seen = ?, source = ?, source_time = ?, marker = ?, "
    "reason = ?, firmware = ? WHERE device_id = ?"
)
_time = itemgetter(4)


def _time_then_marker(row: EventRow) -> tuple[str, str]:
    return row[4], row[6] or ""


_ACTIVE = DeviceStatus.ACTIVE.value


class SqliteRecorder:
    """Records events in the caller's SQLite write transaction; :meth:`flush` before it
    commits. Example (what :func:`~fleet.status.events.record_rows` does)::

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
        self._rows: dict[str, list[Any]] = {}  # device -> its state row, as the rules move it
        self._new: set[str] = set()  # state rows to insert
        self._moved: set[str] = set()  # rows the rules changed
        self._changed: set[str] = set()  # devices whose state changed, or got its first one

    @property
    def devices(self) -> int:
        """How many devices it has looked up and holds (callers bound memory by it)."""
        return len(self._statuses)

    def record(self, rows: list[EventRow]) -> tuple[int, int, list[str]]:
        """Store the events ``rows`` that are new (by key) and move the state rows: how many
        events were new, how many were stray (kept aside), and the first 20 stray device
        IDs."""
        recorded = stray_count = 0
        unique = {row[0]: row for row in rows}
        self._look_up({row[1] for row in unique.values()})
        statuses = self._statuses
        kept: list[EventRow] = []
        stray: list[tuple[Any, ...]] = []
        for row in unique.values():
            status = statuses[row[1]]
            if status == _ACTIVE:
                kept.append(row)
            else:
                key, device_id, state, source, when, received, marker, _, reason, _ = row
                why = "unknown" if status is None else "decommissioned"
                stray.append(
                    (key, device_id[:128], why, state, source, when, received, marker, reason)
                )
        if stray:
            stray_count = self._insert_many("stray_connection_event", _STRAY_COLUMNS, stray)
        if kept:
            recorded = self._insert_many("connection_event", _EVENT_COLUMNS, kept)
            # the rules take events in (time, marker) order; one text key when none has a
            # marker (ingest's usual case) spares a tuple per event
            if any(row[6] for row in kept):
                kept.sort(key=_time_then_marker)
            else:
                kept.sort(key=_time)
            self._advance(kept)
        return recorded, stray_count, [row[1] for row in stray[:20]]

    def flush(self) -> int:
        """Write the state rows the rules changed; how many devices changed state (or got
        their first one) since the recorder began. Call once, before the commit."""
        rows, new, moved = self._rows, self._new, self._moved
        if new:
            fresh = [rows[device_id] for device_id in sorted(new)]
            self._insert_many("connection_state", _STATE_COLUMNS, fresh, verb="INSERT")
        old = sorted(moved - new)
        changed = self._changed
        # device_id goes last, for the WHERE
        full = [(*rows[d][1:], d) for d in old if d in changed]
        touched = [(*rows[d][3:], d) for d in old if d not in changed]
        if full:
            self._cursor.executemany(_STATE_UPDATE, full)
        if touched:
            self._cursor.executemany(_STATE_TOUCH, touched)
        self._cursor.close()
        return len(changed)

    def _look_up(self, device_ids: set[str]) -> None:
        """Read the registry status and state row of each device not read before."""
        unseen = [device_id for device_id in device_ids if device_id not in self._statuses]
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
        if active:
            self._rows.update(
                (row[0], list(row))
                for row in cursor.execute(
                    f"SELECT {', '.join(_STATE_COLUMNS)} FROM connection_state "
                    "WHERE device_id IN (SELECT value FROM json_each(?))",
                    (json.dumps(active),),
                )
            )

    def _insert_many(
        self,
        table: str,
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]] | list[list[Any]],
        *,
        verb: str = "INSERT OR IGNORE",
    ) -> int:
        """Insert ``rows`` by one executemany; how many went in."""
        marks = ", ".join("?" * len(columns))
        self._cursor.executemany(
            f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
        )
        return max(self._cursor.rowcount, 0)

    def _advance(self, kept: list[EventRow]) -> None:
        """:func:`~fleet.status.events.is_newer` and the state rules, over event rows in
        (time, marker) order."""
        rows, new, moved, changed = self._rows, self._new, self._moved, self._changed
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
                moved.add(device_id)
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
            moved.add(device_id)
