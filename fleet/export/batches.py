"""Rows in batches: every export source reads, renders and hands lines on
:data:`BATCH_ROWS` at a time (one Python call per batch, not per row, where it can)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy.engine import Connection

BATCH_ROWS = 5000


def row_batches(conn: Connection, query: Any) -> Iterator[Sequence[Any]]:
    """The query's rows as plain tuples, in batches of :data:`BATCH_ROWS`, streamed.

    On SQLite straight from the DBAPI cursor, which reads lazily (SQLAlchemy's Row objects
    cost ~1 us a row in the export's hot loops, and there is no result processing to skip);
    elsewhere through a server-side cursor.
    """
    if conn.dialect.name != "sqlite":
        options = {"stream_results": True, "yield_per": BATCH_ROWS}
        yield from conn.execute(query, execution_options=options).partitions()
        return
    result = conn.execute(query)
    cursor = result.cursor
    try:
        while rows := cursor.fetchmany(BATCH_ROWS):
            yield rows
    finally:
        result.close()


def in_batches(lines: Iterable[bytes]) -> Iterator[list[bytes]]:
    """``lines`` in lists of :data:`BATCH_ROWS` (the last one short, perhaps empty)."""
    batch: list[bytes] = []
    for item in lines:
        batch.append(item)
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    yield batch
