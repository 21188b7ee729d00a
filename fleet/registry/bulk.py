"""Bulk inserts at driver speed: what provisioning and connection-event ingest write by the
thousand per transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine
from sqlmodel import Session

from fleet.registry.models import UTCDateTime


def bulk_insert(
    session: Session, table: Table, rows: list[dict[str, Any]], *, verb: str = "INSERT"
) -> None:
    """Insert ``rows`` (each giving the same columns) in one executemany; ``verb`` may be
    SQLite's ``INSERT OR IGNORE`` or ``INSERT OR REPLACE`` (other backends: plain INSERT).

    On SQLite the values go through the column types' own bind processing (what the ORM
    would store) and straight to the driver: SQLAlchemy's per-row parameter handling around
    it cost about 40 us a row per table. Other backends go through SQLAlchemy Core.
    """
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        session.execute(insert(table), rows)
        return
    given = rows[0].keys()  # a column left out (an autoincrement ID) gets its default
    columns = [
        (c.name, bind_converter(c.type, connection.dialect))
        for c in table.columns
        if c.name in given
    ]
    values = [
        tuple(row[name] if convert is None else convert(row[name]) for name, convert in columns)
        for row in rows
    ]
    names = ", ".join(f'"{name}"' for name, _ in columns)
    marks = ", ".join("?" * len(columns))
    connection.exec_driver_sql(f'{verb} INTO "{table.name}" ({names}) VALUES ({marks})', values)


def bind_converter(column_type: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """What SQLAlchemy does to a value of ``column_type`` before handing it to ``dialect``'s
    driver (``None``: nothing). A UTC datetime for SQLite becomes the text SQLAlchemy stores
    (``YYYY-MM-DD HH:MM:SS.ffffff``, naive UTC) by ``isoformat``, in C: its own formatting
    costs several microseconds a value, and ingest binds millions."""
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    if process is None or not isinstance(column_type, UTCDateTime):
        return process
    if dialect.name == "sqlite":
        return _sqlite_utc_text
    texts: dict[datetime, Any] = {}

    def convert(value: datetime | None) -> Any:
        if value is None:
            return None
        text = texts.get(value)
        if text is None:
            text = texts[value] = process(value)
        return text

    return convert


def utc_text(value: datetime) -> str:
    """``value`` as SQLite stores a UTC column: naive UTC text with microseconds
    (``2026-11-01 00:00:00.250000``), fixed width, so text order is time order."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_utc_text(value: datetime | None) -> str | None:
    return None if value is None else utc_text(value)
