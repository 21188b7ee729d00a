"""Firmware: the signed catalogue, each device's reported/target/pinned version, and phased
rollouts (fleet/firmware/models.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "firmware_image",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=True),
        sa.Column("stored_path", sa.String(length=512), nullable=True),
        sa.Column("signature_pem", sa.Text(), nullable=False),
        sa.Column("signer_serial", sa.String(length=40), nullable=False),
        sa.Column("requires_min", sa.String(length=64), nullable=True),
        sa.Column("notes", sa.String(length=1024), nullable=True),
        sa.Column("deprecated", sa.Boolean(), nullable=False),
        sa.Column("deprecated_at", UTC_DATETIME, nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version", "sha256", name="uq_firmware_image_version"),
    )
    op.create_index("ix_firmware_image_version", "firmware_image", ["version"])
    op.create_table(
        "firmware_model",
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("firmware_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["firmware_id"], ["firmware_image.id"]),
        sa.PrimaryKeyConstraint("model", "version"),
    )
    op.create_index("ix_firmware_model_firmware_id", "firmware_model", ["firmware_id"])
    op.create_table(
        "rollout",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("firmware_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("selector", sa.Text(), nullable=False),
        sa.Column("phases", sa.String(length=256), nullable=False),
        sa.Column("max_failure_rate", sa.Float(), nullable=False),
        sa.Column("min_executed", sa.Integer(), nullable=False),
        sa.Column("max_per_minute", sa.Integer(), nullable=True),
        sa.Column("timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("dynamic", sa.Boolean(), nullable=False),
        sa.Column("cloud", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("current_phase", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=True),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["firmware_id"], ["firmware_image.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_rollout_state", "rollout", ["state"])
    op.create_table(
        "rollout_device",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),  # "already-installed": 17
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("notified_at", UTC_DATETIME, nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollout.id"]),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    )
    op.create_index(
        "ix_rollout_device_state", "rollout_device", ["rollout_id", "state", "device_id"]
    )
    op.create_index(
        "ix_rollout_device_phase_state", "rollout_device", ["rollout_id", "phase", "state"]
    )
    op.create_table(
        "device_firmware",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("reported_version", sa.String(length=64), nullable=True),
        sa.Column("reported_at", UTC_DATETIME, nullable=True),
        sa.Column("reported_source", sa.String(length=16), nullable=True),
        sa.Column("update_state", sa.String(length=16), nullable=True),
        sa.Column("update_detail", sa.String(length=512), nullable=True),
        sa.Column("target_version", sa.String(length=64), nullable=True),
        sa.Column("target_rollout_id", sa.Integer(), nullable=True),
        sa.Column("pinned_version", sa.String(length=64), nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.ForeignKeyConstraint(["target_rollout_id"], ["rollout.id"]),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_index(
        "ix_device_firmware_reported", "device_firmware", ["reported_version", "device_id"]
    )
    op.create_index("ix_device_firmware_target", "device_firmware", ["target_version", "device_id"])


def downgrade() -> None:
    op.drop_table("device_firmware")
    op.drop_table("rollout_device")
    op.drop_table("rollout")
    op.drop_table("firmware_model")
    op.drop_table("firmware_image")
