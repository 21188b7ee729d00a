"""Connection status: events from MQTT, the clouds and ingested files, and each device's
current state derived from them (fleet/status/models.py). Events are telemetry: they are not
in the audit trail.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def _event_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_time", UTC_DATETIME, nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.Column("marker", sa.String(length=80), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "connection_event",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        *_event_columns(),
        sa.Column("session", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.String(length=256), nullable=True),
        sa.Column("firmware", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index(
        "ix_connection_event_device_time", "connection_event", ["device_id", "source_time"]
    )
    op.create_index("ix_connection_event_received_at", "connection_event", ["received_at"])
    op.create_table(
        "connection_state",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("since", UTC_DATETIME, nullable=False),
        sa.Column("last_seen", UTC_DATETIME, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_time", UTC_DATETIME, nullable=False),
        sa.Column("marker", sa.String(length=80), nullable=True),
        sa.Column("reason", sa.String(length=256), nullable=True),
        sa.Column("firmware", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_index("ix_connection_state_state_device", "connection_state", ["state", "device_id"])
    op.create_index("ix_connection_state_state_since", "connection_state", ["state", "since"])
    op.create_table(
        "stray_connection_event",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("why", sa.String(length=16), nullable=False),
        *_event_columns(),
        sa.Column("reason", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_stray_connection_event_device_id", "stray_connection_event", ["device_id"])
    op.create_index(
        "ix_stray_connection_event_received_at", "stray_connection_event", ["received_at"]
    )


def downgrade() -> None:
    op.drop_table("stray_connection_event")
    op.drop_table("connection_state")
    op.drop_table("connection_event")
