"""Drop the index on ``connection_event.received_at``: no query reads events by the time they
were received (history pages by device and source time, pruning goes by source time), and
each recorded event paid for it (ingest records about 10% faster without it).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_connection_event_received_at", table_name="connection_event")


def downgrade() -> None:
    op.create_index("ix_connection_event_received_at", "connection_event", ["received_at"])
