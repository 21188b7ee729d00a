"""Migration 0002 (cloud tables) upgrades a 0001 registry with data in it, on SQLite and
PostgreSQL. (Models against migrations, every table: ``test_registry.py``.)"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import inspect

from fleet import devices
from fleet.registry.migrations import (
    SCHEMA_HEAD,
    _alembic_config,
    check_schema,
    current_revision,
    upgrade,
)
from fleet.workspace import Workspace


def test_upgrade_from_0001_keeps_devices(ready_ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "out"
    devices.add_device(ready_ws, "old-1", out_dir=out)
    engine = ready_ws.engine
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0001")
    assert current_revision(engine) == "0001"
    assert "cloud" not in inspect(engine).get_table_names()
    assert upgrade(engine) == ("0001", SCHEMA_HEAD)
    check_schema(engine)
    assert devices.show_device(ready_ws, "old-1").id == "old-1"
