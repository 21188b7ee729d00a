"""Export cache: each device's rendered export row, and the triggers that mark it stale.

``export_dirty`` receives the ID of every device whose device, certificate or cloud
registration rows change, in the writing transaction; fleet re-renders those rows before
it commits (see fleet/export/cache.py). Every existing device starts dirty, and
``fleet db upgrade`` renders them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, events, the row's device ID column)
WATCHED = (
    ("device", ("INSERT", "UPDATE"), "id"),
    ("certificate", ("INSERT", "UPDATE"), "device_id"),
    ("cloud_registration", ("INSERT", "UPDATE", "DELETE"), "device_id"),
)


def _trigger_name(table: str, event: str) -> str:
    return f"export_dirty_{table}_{event.lower()}"


def upgrade() -> None:
    # One row per (format family, device): "csv" and "json" (JSON and JSONL). WITHOUT ROWID
    # on SQLite stores rows in key order, so an export reads its pages in sequence (a rowid
    # table read in device-ID order jumps around once devices arrive out of ID order: 4x
    # slower at 1M); splitting the formats keeps rows under SQLite's ~1000-byte in-page limit.
    op.create_table(
        "export_row",
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("text_a", sa.Text(), nullable=False),
        sa.Column("text_b", sa.Text(), nullable=False),
        sa.Column("cert_status", sa.String(length=16), nullable=True),
        sa.Column("cert_not_after", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("format", "device_id"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "export_dirty",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION fleet_export_dirty() RETURNS trigger AS $$
            BEGIN
                -- TG_ARGV[0] names the row's device ID column
                INSERT INTO export_dirty (device_id)
                VALUES (to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END)
                        ->> TG_ARGV[0])
                ON CONFLICT DO NOTHING;
                RETURN NULL;
            END
            $$ LANGUAGE plpgsql
            """
        )
        for table, events, column in WATCHED:
            for event in events:
                op.execute(
                    f"CREATE TRIGGER {_trigger_name(table, event)} AFTER {event} ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION fleet_export_dirty('{column}')"
                )
    else:
        for table, events, column in WATCHED:
            for event in events:
                row = "OLD" if event == "DELETE" else "NEW"
                op.execute(
                    f"CREATE TRIGGER {_trigger_name(table, event)} AFTER {event} ON {table} "
                    f"BEGIN INSERT OR IGNORE INTO export_dirty (device_id) "
                    f"VALUES ({row}.{column}); END"
                )
    op.execute("INSERT INTO export_dirty (device_id) SELECT id FROM device")


def downgrade() -> None:
    for table, events, _column in WATCHED:
        for event in events:
            op.execute(
                f"DROP TRIGGER IF EXISTS {_trigger_name(table, event)}"
                + (f" ON {table}" if op.get_bind().dialect.name == "postgresql" else "")
            )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS fleet_export_dirty()")
    op.drop_table("export_dirty")
    op.drop_table("export_row")
