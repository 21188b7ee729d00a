"""Shared fixtures.

Registry tests run against SQLite and a real PostgreSQL. PostgreSQL comes from
``FLEET_TEST_POSTGRES_URL`` (an admin URL: each test gets a database of its own). Without it
the PostgreSQL cases skip on a developer machine, and fail under ``CI=true``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudserver import RegistryServer
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from fleet.cli import app
from fleet.pki.authority import init_workspace
from fleet.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(reason: str) -> None:
    """Skip a test that needs a missing service, except under CI where that is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: service tests must not skip)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own fleet settings; the passphrase is a test one."""
    for name in ("FLEET_HOME", "FLEET_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLEET_CA_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("FLEET_ACTOR", "tester")


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = os.environ.get("FLEET_TEST_POSTGRES_URL")
    if not url:
        require_service("FLEET_TEST_POSTGRES_URL is not set: no PostgreSQL to test against")
    assert url is not None
    return url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"fleet_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # server down, bad credentials
        admin.dispose()
        require_service(f"PostgreSQL at {make_url(pg_admin_url).host} unusable: {exc}")
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """``None`` (the workspace's own SQLite file) or a fresh PostgreSQL database URL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def ws(tmp_path: Path, db_url: str | None) -> Iterator[Workspace]:
    """An empty workspace (not initialised) on each registry backend."""
    workspace = Workspace(home=tmp_path / "home", db_url=db_url)
    yield workspace
    workspace.close()


@pytest.fixture
def sqlite_ws(tmp_path: Path) -> Iterator[Workspace]:
    """An empty SQLite workspace, for tests where the backend does not matter."""
    workspace = Workspace(home=tmp_path / "home")
    yield workspace
    workspace.close()


@pytest.fixture
def ready_ws(ws: Workspace) -> Workspace:
    """An initialised workspace on each registry backend."""
    init_workspace(ws, name="Test Fleet", passphrase=PASSPHRASE)
    return ws


@pytest.fixture
def ready_sqlite_ws(sqlite_ws: Workspace) -> Workspace:
    """An initialised SQLite workspace."""
    init_workspace(sqlite_ws, name="Test Fleet", passphrase=PASSPHRASE)
    return sqlite_ws


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out"


class Cli:
    """Runs ``fleet`` in-process with a workspace's ``--home``/``--db``."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Any:
        base = ["--home", str(self.ws.home)]
        if self.ws.db_url:
            base += ["--db", self.ws.db_url]
        return self.runner.invoke(app, [*base, *args], input=input, catch_exceptions=False)


@pytest.fixture
def cli(ws: Workspace) -> Cli:
    return Cli(ws)


@pytest.fixture
def sqlite_cli(sqlite_ws: Workspace) -> Cli:
    return Cli(sqlite_ws)


def run_fleet(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fleet`` in a child process (real exit codes, real stdio)."""
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args],
        env=child_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def server() -> Iterator[RegistryServer]:
    """A local device-registration HTTP server (tests/cloudserver.py) for the http backend."""
    srv = RegistryServer().start()
    yield srv
    srv.stop()


def snapshot(ws: Workspace, *dirs: Path) -> dict[str, Any]:
    """Everything a failed command must leave untouched: every table's rows, every file."""
    state: dict[str, Any] = {}
    engine = create_engine(ws.registry_url)
    try:
        names = inspect(engine).get_table_names()
        with engine.connect() as conn:
            for name in sorted(names):
                rows = conn.execute(text(f'SELECT * FROM "{name}"')).all()
                state[f"table:{name}"] = sorted(repr(tuple(r)) for r in rows)
    finally:
        engine.dispose()
    for folder in (ws.home / "ca", *dirs):
        state[f"dir:{folder}"] = tree_digest(folder)
    return state


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 (files) or mode (folders), for every entry under ``folder``."""
    if not folder.exists():
        return {}
    result: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_file():
            result[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            result[key] = oct(path.stat().st_mode)
    return result


SnapshotFn = Callable[..., dict[str, Any]]
