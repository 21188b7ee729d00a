"""Shared fixtures (helpers that are not fixtures live in ``tests/helpers``).

Registry tests run against SQLite and a real PostgreSQL. PostgreSQL comes from
``FLEET_TEST_POSTGRES_URL`` (an admin URL: each test gets a database of its own). Without it
the PostgreSQL cases skip on a developer machine, and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cloudserver import RegistryServer
from helpers import PASSPHRASE, REPO, Cli, FrozenClock, require_service
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from fleet import clock
from fleet.pki.authority import init_workspace
from fleet.workspace import Workspace


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own fleet settings; the passphrase is a test one."""
    for name in ("FLEET_HOME", "FLEET_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLEET_CA_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("FLEET_ACTOR", "tester")


@pytest.fixture(autouse=True, scope="session")
def _hooks_of_this_checkout() -> None:
    """The commit hooks this checkout's pyproject.toml declares, even when the installed
    package metadata (entry points) predates them."""
    import tomllib
    from importlib import import_module

    from fleet.registry import db

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    adders = {
        db.HOOK_GROUP: db.add_before_commit_hook,
        db.AFTER_HOOK_GROUP: db.add_after_commit_hook,
    }
    for group, add in adders.items():
        for target in declared.get(group, {}).values():
            module, _, name = target.partition(":")
            add(getattr(import_module(module), name))


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


@pytest.fixture
def cli(ws: Workspace) -> Cli:
    return Cli(ws)


@pytest.fixture
def sqlite_cli(sqlite_ws: Workspace) -> Cli:
    return Cli(sqlite_ws)


@pytest.fixture
def server() -> Iterator[RegistryServer]:
    """A local device-registration HTTP server (tests/cloudserver.py) for the http backend."""
    srv = RegistryServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def fleet_clock() -> Iterator[FrozenClock]:
    """Simulated time for everything fleet records (``fleet.clock.now()``), from a fixed
    moment; the test moves it with ``fleet_clock.advance(days=3)``."""
    frozen = FrozenClock(datetime(2027, 3, 1, 9, 0, 0, 250000, tzinfo=UTC))
    with clock.frozen(frozen):
        yield frozen
