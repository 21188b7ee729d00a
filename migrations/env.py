"""Alembic environment, driven from code by :func:`fleet.registry.migrations.upgrade` (no ini).

The caller passes an open connection in ``config.attributes["connection"]``; tests and
``fleet db upgrade`` both go through that path. ``render_as_batch`` lets ALTERs work on
SQLite, which rebuilds tables instead.
"""

from alembic import context
from sqlmodel import SQLModel

# every table on SQLModel.metadata: the core ones and those features keep beside their code
import fleet.cloud.models
import fleet.export.models
import fleet.firmware.models
import fleet.registry.models
import fleet.status.models  # noqa: F401

target_metadata = SQLModel.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "fleet's migrations run through fleet.registry.migrations.upgrade(), which passes a "
        "connection"
    )

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
