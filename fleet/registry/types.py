"""Column types shared by every table, in a module of their own: a read that names its
columns in plain SQL (``device show``) types them without loading the table classes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, TypeDecorator, func
from sqlalchemy.engine import Dialect


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite keeps no offset, so values are stored as naive UTC there and handed back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_text(column: Any, dialect: str) -> Any:
    """SQL rendering a :class:`UTCDateTime` column as :func:`fleet.views.iso` text (UTC,
    seconds, ``Z``) or NULL: the database formats in C what Python would format row by row."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%dT%H:%M:%SZ", column)
    return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
