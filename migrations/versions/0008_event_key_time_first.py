"""Connection event keys start with the event's time (fleet/status/events.py ``event_key``),
so events recorded in time order append to the key index instead of landing on random pages
of it. Re-keys the events already recorded, so that a source re-sending one of them is still
recognised as a duplicate. (``stray_connection_event`` keeps its keys: its rows lack the
session the key covers, and a stray kept twice is only a longer report.)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from hashlib import sha256

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 5000


def _time_text(value: datetime | str) -> str:
    # SQLite hands back the stored text (naive UTC, microseconds); PostgreSQL a datetime
    if isinstance(value, str):
        return datetime.fromisoformat(value).isoformat(" ", "microseconds")[:26]
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def _key(row: sa.Row[tuple[object, ...]]) -> str:
    # a frozen copy of fleet.status.events.event_key as of this revision
    text = _time_text(row.source_time)
    said = (
        f"{row.source}\x1f{row.device_id}\x1f{row.state}\x1f{text}"
        f"\x1f{row.marker or ''}\x1f{row.session or ''}"
    )
    return text + sha256(said.encode("utf-8")).hexdigest()[:38]


def _old_key(row: sa.Row[tuple[object, ...]]) -> str:
    # the key before this revision: a hash of the same fields, the time as aware ISO text
    moment = datetime.fromisoformat(_time_text(row.source_time)).replace(tzinfo=UTC)
    said = "\x1f".join(
        (row.source, row.device_id, row.state, moment.isoformat(), row.marker or "",
         row.session or "")
    )  # fmt: skip
    return sha256(said.encode("utf-8")).hexdigest()


def _rekey(make: Callable[[sa.Row[tuple[object, ...]]], str]) -> None:
    conn = op.get_bind()
    select = sa.text(
        "SELECT id, source, device_id, state, source_time, marker, session "
        "FROM connection_event WHERE id > :after ORDER BY id LIMIT :size"
    )
    update = sa.text("UPDATE connection_event SET key = :key WHERE id = :id")
    after = 0
    while True:
        rows = conn.execute(select, {"after": after, "size": CHUNK}).all()
        if not rows:
            break
        conn.execute(update, [{"key": make(row), "id": row.id} for row in rows])
        after = rows[-1].id


def upgrade() -> None:
    _rekey(_key)


def downgrade() -> None:
    _rekey(_old_key)
