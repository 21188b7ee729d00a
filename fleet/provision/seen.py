"""The IDs of the file seen so far, kept on disk so memory stays flat however long the file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from fleet.provision.source import Row

Earlier = tuple[int, str]
"""Where an ID appeared first: ``(line, digest of the row)``."""
Issued = tuple[str, str, str, str]
"""A certificate this run committed: ``(serial, fingerprint, not_after, device id)``."""
ManifestRow = tuple[str, str | None, str, str]
"""``(device id, serial, fingerprint, not_after)``; serial ``None`` for earlier runs' rows."""


class SeenIds:
    """Every ID of the file so far, in a private temporary SQLite database.

    An on-disk scratch database (deleted when closed, or by the OS after a crash) keeps
    memory flat however long the file is.
    """

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute(
            "CREATE TABLE seen (id TEXT PRIMARY KEY, line INTEGER NOT NULL, "
            "digest TEXT NOT NULL, ok INTEGER NOT NULL DEFAULT 0, "
            "serial TEXT, fingerprint TEXT, not_after TEXT) WITHOUT ROWID"
        )

    def claim(self, rows: list[Row]) -> list[tuple[Row, Earlier | None]]:
        """Pair each row with the earlier occurrence of its ID, if any."""
        ids = list({r.device_id for r in rows})
        marks = ",".join("?" * len(ids))
        earlier: dict[str, Earlier] = {
            i: (line, digest)
            for i, line, digest in self.db.execute(
                f"SELECT id, line, digest FROM seen WHERE id IN ({marks})", ids
            )
        }
        fresh: dict[str, Earlier] = {}
        paired: list[tuple[Row, Earlier | None]] = []
        for row in rows:
            before = earlier.get(row.device_id) or fresh.get(row.device_id)
            if before is None:
                fresh[row.device_id] = (row.line, row.digest())
            paired.append((row, before))
        self.db.executemany(
            "INSERT INTO seen (id, line, digest) VALUES (?, ?, ?)",
            [(i, line, digest) for i, (line, digest) in fresh.items()],
        )
        return paired

    def mark_ok(self, ids: list[str]) -> None:
        """These IDs were provisioned earlier: they belong in the manifest."""
        self.db.executemany("UPDATE seen SET ok = 1 WHERE id = ?", [(i,) for i in ids])

    def mark_issued(self, issued: list[Issued]) -> None:
        """Certificates this run committed: their IDs belong in the manifest."""
        self.db.executemany(
            "UPDATE seen SET ok = 1, serial = ?, fingerprint = ?, not_after = ? WHERE id = ?",
            issued,
        )

    def ok_rows(self, page: int = 1000) -> Iterator[list[ManifestRow]]:
        """The provisioned IDs in file order, a page at a time."""
        cursor = self.db.execute(
            "SELECT id, serial, fingerprint, not_after FROM seen WHERE ok = 1 ORDER BY line"
        )
        while rows := cursor.fetchmany(page):
            yield rows

    def contains(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` the file lists (provisioned or not)."""
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                i for (i,) in self.db.execute(f"SELECT id FROM seen WHERE id IN ({marks})", chunk)
            )
        return found

    def close(self) -> None:
        """Drop the scratch database."""
        self.db.close()
