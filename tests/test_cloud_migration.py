"""Migration 0002 (cloud tables): matches the models, upgrades a 0001 registry with data in
it, and SCHEMA_HEAD follows it. On SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import fleet.cloud.models
import fleet.export.models
import fleet.registry.models  # noqa: F401
from fleet import devices
from fleet.registry.migrations import (
    SCHEMA_HEAD,
    check_schema,
    current_revision,
    script_head,
    upgrade,
)
from fleet.workspace import Workspace


def test_schema_head_is_the_newest_migration() -> None:
    assert script_head() == SCHEMA_HEAD


def test_models_match_migrations(ws: Workspace) -> None:
    ws.home.mkdir(parents=True)
    engine = ws.engine
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []
    tables = set(inspect(engine).get_table_names())
    assert {"cloud", "cloud_job", "cloud_registration"} <= tables


def test_upgrade_from_0001_keeps_devices(ready_ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "out"
    devices.add_device(ready_ws, "old-1", out_dir=out)
    engine = ready_ws.engine
    with engine.begin() as conn:
        from alembic import command

        from fleet.registry.migrations import _alembic_config

        command.downgrade(_alembic_config(conn), "0001")
    assert current_revision(engine) == "0001"
    assert "cloud" not in inspect(engine).get_table_names()
    assert upgrade(engine) == ("0001", SCHEMA_HEAD)
    check_schema(engine)
    assert devices.show_device(ready_ws, "old-1")["id"] == "old-1"
