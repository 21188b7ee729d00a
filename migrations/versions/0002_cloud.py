"""Cloud registration: configured clouds, the outbox of jobs, per-device registrations.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cloud",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("rate_per_second", sa.Float(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "cloud_job",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC_DATETIME, nullable=True),
        sa.Column("last_error", sa.String(length=512), nullable=True),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["cloud"], ["cloud.name"]),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index("ix_cloud_job_cloud", "cloud_job", ["cloud"])
    op.create_index("ix_cloud_job_device_id", "cloud_job", ["device_id"])
    op.create_index("ix_cloud_job_state", "cloud_job", ["state"])
    op.create_table(
        "cloud_registration",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("cloud", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("remote", sa.JSON(), nullable=False),
        sa.Column("certificate_serial", sa.String(length=40), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=512), nullable=True),
        sa.Column("connected", sa.Boolean(), nullable=True),
        sa.Column("last_activity", UTC_DATETIME, nullable=True),
        sa.Column("firmware_version", sa.String(length=128), nullable=True),
        sa.Column("status_checked_at", UTC_DATETIME, nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["cloud"], ["cloud.name"]),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("device_id", "cloud"),
    )
    op.create_index("ix_cloud_registration_cloud", "cloud_registration", ["cloud"])
    op.create_index("ix_cloud_registration_status", "cloud_registration", ["status"])


def downgrade() -> None:
    op.drop_table("cloud_registration")
    op.drop_table("cloud_job")
    op.drop_table("cloud")
