"""Everyday commands at fleet scale: a label index and indexes that page in key order.

``device_label`` holds one row per device label, kept by triggers from ``device.labels`` in
the writing transaction (whichever path writes the device: ``device add``, ``provision``'s
bulk insert, ``device update``), so ``--label site=hh`` is an index range, not a JSON scan of
every device. Existing labels are carried over.

Composite indexes put each filter before the key lists are ordered by, so a filtered page
(``--model p200 --limit 100 --after X``) reads 100 index entries: (model, id) and (status, id)
on devices, (status, not_after) on certificates (expiring soon), (cloud, device_id) and
(cloud, status) on cloud registrations, (action, seq) and (target, seq) on audit events,
(state, cloud, created_at) on cloud jobs. They replace the single-column indexes they start
with.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (old single-column index, new composite index, table, columns)
REPLACED = (
    ("ix_device_model", "ix_device_model_id", "device", ["model", "id"]),
    ("ix_device_status", "ix_device_status_id", "device", ["status", "id"]),
    (
        "ix_certificate_status",
        "ix_certificate_status_not_after",
        "certificate",
        ["status", "not_after"],
    ),
    (
        "ix_cloud_registration_cloud",
        "ix_cloud_registration_cloud_device_id",
        "cloud_registration",
        ["cloud", "device_id"],
    ),
    (
        "ix_cloud_job_state",
        "ix_cloud_job_state_cloud_created",
        "cloud_job",
        ["state", "cloud", "created_at"],
    ),
    ("ix_audit_event_action", "ix_audit_event_action_seq", "audit_event", ["action", "seq"]),
    ("ix_audit_event_target", "ix_audit_event_target_seq", "audit_event", ["target", "seq"]),
    (
        "ix_cloud_registration_status",
        "ix_cloud_registration_cloud_status",
        "cloud_registration",
        ["cloud", "status"],
    ),
)

SQLITE_TRIGGERS = (
    """CREATE TRIGGER device_label_insert AFTER INSERT ON device BEGIN
        INSERT INTO device_label (key, value, device_id)
        SELECT key, value, NEW.id FROM json_each(NEW.labels);
    END""",
    """CREATE TRIGGER device_label_update AFTER UPDATE OF labels ON device BEGIN
        DELETE FROM device_label WHERE device_id = NEW.id;
        INSERT INTO device_label (key, value, device_id)
        SELECT key, value, NEW.id FROM json_each(NEW.labels);
    END""",
)

POSTGRES_FUNCTION = """
CREATE FUNCTION fleet_device_label() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM device_label WHERE device_id = NEW.id;
    END IF;
    INSERT INTO device_label (key, value, device_id)
    SELECT key, value, NEW.id FROM json_each_text(NEW.labels);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
POSTGRES_TRIGGERS = (
    "CREATE TRIGGER device_label_insert AFTER INSERT ON device "
    "FOR EACH ROW EXECUTE FUNCTION fleet_device_label()",
    "CREATE TRIGGER device_label_update AFTER UPDATE OF labels ON device "
    "FOR EACH ROW EXECUTE FUNCTION fleet_device_label()",
)


def upgrade() -> None:
    for old, new, table, columns in REPLACED:
        op.drop_index(old, table_name=table)
        op.create_index(new, table, columns)
    op.create_table(
        "device_label",
        sa.Column("key", sa.String(length=63), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("key", "value", "device_id"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_device_label_device_id", "device_label", ["device_id"])
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute(POSTGRES_FUNCTION)
    for statement in POSTGRES_TRIGGERS if postgres else SQLITE_TRIGGERS:
        op.execute(statement)
    each = "json_each_text(device.labels)" if postgres else "json_each(device.labels)"
    op.execute(
        f"INSERT INTO device_label (key, value, device_id) SELECT key, value, device.id "
        f"FROM device, {each}"
    )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name in ("device_label_insert", "device_label_update"):
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON device" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS fleet_device_label()")
    op.drop_index("ix_device_label_device_id", table_name="device_label")
    op.drop_table("device_label")
    for old, new, table, columns in reversed(REPLACED):
        op.drop_index(new, table_name=table)
        op.create_index(old, table, columns[:1])
