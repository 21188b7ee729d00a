"""Alembic environment, driven from code by :func:`fleet.db.upgrade` (no alembic.ini).

The caller passes an open connection in ``config.attributes["connection"]``; tests and
``fleet db upgrade`` both go through that path. ``render_as_batch`` lets ALTERs work on
SQLite, which rebuilds tables instead.
"""

from alembic import context
from sqlmodel import SQLModel

import fleet.models  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "fleet's migrations run through fleet.db.upgrade(), which passes a connection"
    )

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
