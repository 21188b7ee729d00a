"""Database engines, transactions and schema migrations.

SQLite is opened with WAL, foreign keys and a busy timeout, and every write transaction
starts with ``BEGIN IMMEDIATE``: concurrent ``fleet`` processes queue for the write lock
instead of failing halfway with "database is locked".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError
from sqlmodel import Session, create_engine

from fleet.errors import RegistryError

# The newest migration; ``tests/test_migrations.py`` checks it equals Alembic's head, so
# opening a registry needs one SELECT, not a scan of the migration scripts.
SCHEMA_HEAD = "0004"

SQLITE_BUSY_TIMEOUT_S = 60
# The PostgreSQL advisory lock every fleet write transaction holds ("fleet" in ASCII).
WRITE_LOCK_KEY = 0x666C656574


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def create_registry_engine(url: str) -> Engine:
    """An engine for ``url`` with fleet's connection settings (see module docstring)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RegistryError(f"invalid database URL: {redact_url(url)}") from exc
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
        )
        _configure_sqlite(engine)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise RegistryError(
            f"no driver for {parsed.drivername}: install fleet[postgres] ({exc.name} missing)"
        ) from exc


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event own transaction boundaries (pysqlite otherwise
        # defers BEGIN and ignores the IMMEDIATE we ask for).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "DEFERRED" if conn.get_execution_options().get("fleet_readonly") else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose work commits together at the end of the block, or not at all.

    Writers queue for the registry at the start: SQLite's ``BEGIN IMMEDIATE`` takes the
    write lock, and on PostgreSQL a transaction-level advisory lock does the same. Every
    write appends to the audit chain anyway (one head row), so this costs no concurrency, and
    rows locked in different orders (a device, its export row, the chain head) cannot
    deadlock. Before it commits, the export rows of the devices it changed are re-rendered
    in the same transaction (triggers listed them; see :mod:`fleet.export_rows`).
    """
    from fleet.export_rows import refresh_dirty  # imports the models, which import this

    with Session(engine, expire_on_commit=False) as session, session.begin():
        if engine.dialect.name == "postgresql":
            session.connection().exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
        yield session
        session.flush()
        refresh_dirty(session.connection())


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reads; on SQLite it takes no write lock, so writers are not blocked."""
    ro_engine = engine.execution_options(fleet_readonly=True)
    with Session(ro_engine, expire_on_commit=False) as session, session.begin():
        yield session


def current_revision(engine: Engine) -> str | None:
    """The registry's Alembic revision, or ``None`` for an empty database."""
    try:
        with engine.connect() as conn:
            if not _has_table(conn, "alembic_version"):
                return None
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    except OperationalError as exc:
        raise RegistryError(
            f"cannot reach the registry at {redact_url(str(engine.url))}: {_first_line(exc.orig)}"
        ) from exc
    return None if row is None else str(row[0])


def _has_table(conn: Connection, name: str) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(conn).has_table(name))


def _first_line(exc: BaseException | None) -> str:
    return str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "error"


def check_schema(engine: Engine) -> None:
    """Raise :class:`RegistryError` unless the registry is at :data:`SCHEMA_HEAD`."""
    revision = current_revision(engine)
    if revision == SCHEMA_HEAD:
        return
    where = redact_url(str(engine.url))
    if revision is None:
        raise RegistryError(
            f"no fleet registry at {where}: run `fleet init` (or `fleet db upgrade`)"
        )
    if revision in _known_revisions():
        raise RegistryError(
            f"registry schema is at revision {revision}, this fleet needs {SCHEMA_HEAD}: "
            "run `fleet db upgrade`"
        )
    raise RegistryError(
        f"registry schema revision {revision} is unknown to this fleet (created by a newer "
        "version?)"
    )


def _alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic ``Config`` built in code: no ini file, works from an installed wheel."""
    from alembic.config import Config

    from fleet.resources import data_dir

    config = Config()
    config.set_main_option("script_location", str(data_dir("migrations")))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def script_head() -> str | None:
    """The newest revision among the shipped migration scripts."""
    from alembic.script import ScriptDirectory

    head: str | None = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return head


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the registry to ``revision``; returns ``(before, after)`` revisions."""
    from alembic import command

    before = current_revision(engine)
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
    except (OperationalError, ProgrammingError) as exc:
        raise RegistryError(f"migration failed: {_first_line(exc.orig)}") from exc
    after = current_revision(engine)
    if after == SCHEMA_HEAD:
        # Migrations mark export rows stale (a new table, a changed layout): render them now
        # rather than in the next unrelated write.
        with write_session(engine):
            pass
    return before, after
