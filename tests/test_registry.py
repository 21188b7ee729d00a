"""Workspace and registry: migrations, schema checks, settings, concurrency, bad databases."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from helpers import FLEET_DIR, PASSPHRASE, Cli, child_env, modules_under, run_fleet
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from fleet import devices, listing
from fleet.cli import app
from fleet.pki import authority
from fleet.registry import audit, db, migrations
from fleet.workspace import Workspace


def test_schema_head_constant_matches_migrations() -> None:
    assert migrations.script_head() == migrations.SCHEMA_HEAD


def import_every_models_module() -> list[str]:
    """Import each ``models`` module in fleet (core, export, cloud, any new feature's), so
    that ``SQLModel.metadata`` holds every table fleet defines; returns their names."""
    names = [name for name in modules_under(FLEET_DIR) if name.rsplit(".", 1)[-1] == "models"]
    for name in names:
        importlib.import_module(name)
    return names


def test_models_and_migrations_do_not_drift(ws: Workspace) -> None:
    """The migrations build exactly the tables the models describe: every table, column,
    type, index and constraint, on both backends."""
    assert {"fleet.registry.models", "fleet.export.models", "fleet.cloud.models"} <= set(
        import_every_models_module()
    )
    ws.home.mkdir(parents=True)
    migrations.upgrade(ws.engine)
    with ws.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []
    tables = set(inspect(ws.engine).get_table_names()) - {"alembic_version"}
    assert tables == set(SQLModel.metadata.tables)
    assert {"device", "audit_event", "export_row", "cloud_job"} <= tables


def test_db_upgrade_and_current(ws: Workspace, cli: Cli) -> None:
    ws.home.mkdir(parents=True)
    if ws.db_url is None:
        (ws.home / "registry.db").touch()
    current = cli("db", "current", "--json")
    assert current.exit_code == 0, current.stderr
    assert json.loads(current.stdout) == {"current": None, "head": migrations.SCHEMA_HEAD}
    first = cli("db", "upgrade")
    assert first.exit_code == 0, first.stderr
    assert f"upgraded from empty to {migrations.SCHEMA_HEAD}" in first.stderr
    again = cli("db", "upgrade")
    assert "already at revision" in again.stderr
    assert json.loads(cli("db", "current", "--json").stdout)["current"] == migrations.SCHEMA_HEAD


def _older_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations._alembic_config())
    return [r.revision for r in script.walk_revisions() if r.revision != migrations.SCHEMA_HEAD]


def test_older_registry_is_refused_then_upgraded(ws: Workspace, cli: Cli) -> None:
    """A registry at an older revision: commands refuse; `fleet db upgrade` brings it up."""
    authority.init_workspace(ws, passphrase=PASSPHRASE)
    devices.add_device(ws, "keep-me", out_dir=ws.home / "out", passphrase=PASSPHRASE)
    older = _older_revisions()
    assert older, "needs at least two migrations"
    from alembic import command

    with ws.engine.begin() as conn:
        command.downgrade(migrations._alembic_config(conn), older[0])
    refused = cli("device", "list")
    assert refused.exit_code == 5
    assert "run `fleet db upgrade`" in refused.stderr
    assert f"at revision {older[0]}" in refused.stderr
    upgraded = cli("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.stderr
    shown = cli("device", "show", "keep-me", "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == "keep-me"
    assert cli("audit", "verify").exit_code == 0


def test_newer_registry_is_refused(ready_ws: Workspace, cli: Cli) -> None:
    with ready_ws.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    result = cli("device", "list")
    assert result.exit_code == 5
    assert "unknown to this fleet" in result.stderr


def test_missing_workspace_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "nowhere"
    result = Cli(Workspace(home=home))("device", "list")
    assert result.exit_code == 5
    assert f"no fleet workspace at {home}" in result.stderr
    assert not home.exists()


def test_unreachable_database_hides_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://fleet:hunter2secret@127.0.0.1:1/fleet"
    result = run_fleet("--home", str(tmp_path), "--db", url, "device", "list")
    assert result.returncode == 5
    assert result.stderr.startswith(
        "error: cannot reach the registry at postgresql+psycopg://fleet:***@"
    )
    assert result.stderr.count("\n") == 1
    assert "hunter2secret" not in result.stderr + result.stdout


def test_bad_database_url(tmp_path: Path) -> None:
    result = run_fleet("--home", str(tmp_path), "--db", "not a url", "device", "list")
    assert result.returncode == 5
    assert "invalid database URL" in result.stderr


def test_home_and_database_from_environment(tmp_path: Path, db_url: str | None) -> None:
    env = {"FLEET_HOME": str(tmp_path / "envhome")}
    if db_url:
        env["FLEET_DATABASE_URL"] = db_url
    assert run_fleet("init", env=env).returncode == 0
    added = run_fleet("device", "add", "e1", "--out", str(tmp_path), "--json", env=env)
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "envhome" / "ca" / "issuing.cert.pem").is_file()
    assert (tmp_path / "envhome" / "registry.db").is_file() == (db_url is None)
    listed = run_fleet("device", "list", "--json", env=env)
    assert [d["id"] for d in json.loads(listed.stdout)] == ["e1"]


def test_default_home_is_the_user_data_dir(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert run_fleet("init", env=env).returncode == 0
    assert (tmp_path / "xdg" / "fleet" / "ca" / "root.cert.pem").is_file()


def test_sqlite_is_opened_with_wal_foreign_keys_and_busy_timeout(
    ready_sqlite_ws: Workspace,
) -> None:
    with ready_sqlite_ws.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (
            conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_S * 1000
        )


@pytest.mark.parametrize("fails", [False, True])
def test_checked_references_skip_foreign_keys_for_one_transaction_only(
    ready_sqlite_ws: Workspace, fails: bool
) -> None:
    """A writer that checked its references itself (status ingest) runs its transaction
    without SQLite's foreign-key lookups; the connection gets them back when it returns to
    the pool, after a commit or a rollback."""
    from sqlalchemy.exc import IntegrityError

    engine = ready_sqlite_ws.engine
    checked = engine.execution_options(**{db.CHECKED_REFERENCES: True})
    orphan = "INSERT INTO device_label (key, value, device_id) VALUES ('k', 'v', 'nobody')"
    failing = pytest.raises(RuntimeError) if fails else nullcontext()
    with failing, db.write_session(checked) as session:
        conn = session.connection()
        used = conn.connection.dbapi_connection
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
        if fails:
            raise RuntimeError("the writer fails")
    with pytest.raises(IntegrityError, match="FOREIGN KEY"), db.write_session(engine) as session:
        conn = session.connection()
        assert conn.connection.dbapi_connection is used  # the same connection, back
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        conn.exec_driver_sql(orphan)


def test_concurrent_processes_wait_for_each_other(ready_ws: Workspace, tmp_path: Path) -> None:
    """Four `fleet` processes adding devices at once: all succeed, the chain stays intact."""
    base = [sys.executable, "-m", "fleet", "--home", str(ready_ws.home)]
    if ready_ws.db_url:
        base += ["--db", ready_ws.db_url]
    procs = []
    for worker in range(4):
        commands = " && ".join(
            " ".join([*base, "device", "add", f"w{worker}-{n}", "--out", str(tmp_path / "out")])
            for n in range(4)
        )
        procs.append(
            subprocess.Popen(
                ["bash", "-c", commands],
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    assert len(listing.list_devices(ready_ws)) == 16
    verified = audit.verify_audit(ready_ws)
    assert verified.ok and verified.events == 17


def _all_commands(
    group: object, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], object]]:
    found: list[tuple[tuple[str, ...], object]] = []
    for name, command in getattr(group, "commands", {}).items():
        path = (*prefix, name)
        if getattr(command, "commands", None):
            found += _all_commands(command, path)
        else:
            found.append((path, command))
    return found


def test_every_command_help_shows_an_example() -> None:
    import typer.main

    root = typer.main.get_command(app)
    commands = _all_commands(root)
    assert len(commands) >= 16
    runner_cli = Cli(Workspace(home=Path("/nonexistent")))
    for path, _ in commands:
        result = runner_cli.runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example" in result.stdout and "fleet " in result.stdout, path


def test_python_dash_m_and_version() -> None:
    result = run_fleet("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("fleet ")
