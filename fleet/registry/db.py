"""Database engines and transactions (schema migrations: :mod:`fleet.registry.migrations`).

SQLite is opened with WAL, foreign keys and a busy timeout, and every write transaction
starts with ``BEGIN IMMEDIATE``: concurrent ``fleet`` processes queue for the write lock
instead of failing halfway with "database is locked".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlmodel import Session, create_engine

from fleet.errors import RegistryError

SQLITE_BUSY_TIMEOUT_S = 60
# The PostgreSQL advisory lock every fleet write transaction holds ("fleet" in ASCII).
WRITE_LOCK_KEY = 0x666C656574


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite ``url``; ``None`` for other databases, in-memory SQLite
    and ``file:`` URIs."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    return Path(database)


def create_sqlite_file(url: str) -> None:
    """Create the (empty) database file of a SQLite ``url`` with mode 0600 if it does not exist
    yet: the registry is private, and SQLite gives its -wal and -shm files the same mode."""
    path = sqlite_file(url)
    if path is None or path.exists():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except OSError as exc:
        raise RegistryError(f"cannot create the registry {path}: {exc.strerror}") from exc


def create_registry_engine(url: str) -> Engine:
    """An engine for ``url`` with fleet's connection settings (see module docstring)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RegistryError(f"invalid database URL: {redact_url(url)}") from exc
    try:
        parsed.get_dialect()
    except NoSuchModuleError as exc:
        raise RegistryError(
            f"unknown database kind {parsed.drivername!r} in {redact_url(url)} "
            "(use sqlite:///FILE or postgresql+psycopg://...)"
        ) from exc
    except ModuleNotFoundError as exc:
        raise RegistryError(
            f"no driver for {parsed.drivername}: install fleet[postgres] ({exc.name} missing)"
        ) from exc
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
        options = conn.get_execution_options()
        if options.get(CHECKED_REFERENCES):
            # before BEGIN: inside a transaction SQLite ignores this pragma
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.info[CHECKED_REFERENCES] = True
        mode = "DEFERRED" if options.get("fleet_readonly") else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn: Any, record: Any) -> None:
        if record.info.pop(CHECKED_REFERENCES, False) and dbapi_conn is not None:
            dbapi_conn.execute("PRAGMA foreign_keys=ON")  # for whoever takes it next


# An engine option (``engine.execution_options(fleet_checked_references=True)``) for a writer
# that has checked every row it writes refers to an existing parent, under the write lock:
# SQLite then skips its own foreign-key lookups in that writer's transactions (one B-tree search
# per row; status ingest's recorder does it for a million events). The connection gets them
# back when it returns to the pool.
CHECKED_REFERENCES = "fleet_checked_references"


BeforeCommitHook = Callable[[Connection], object]
# (engine, audit head seq, audit head hash) as the transaction committed them
AfterCommitHook = Callable[[Engine, int, str], object]
HOOK_GROUP = "fleet.before_commit"
AFTER_HOOK_GROUP = "fleet.after_commit"
_hooks: list[BeforeCommitHook] | None = None
_after_hooks: list[AfterCommitHook] | None = None


def before_commit_hooks() -> list[BeforeCommitHook]:
    """What runs at the end of every write transaction, before it commits.

    Features keep derived tables current this way without the registry knowing them: they
    declare a hook in the ``fleet.before_commit`` entry-point group (fleet's own export cache
    does, in pyproject.toml), or call :func:`add_before_commit_hook`. Loaded once per process.
    """
    global _hooks
    if _hooks is None:
        from importlib.metadata import entry_points

        _hooks = [ep.load() for ep in sorted(entry_points(group=HOOK_GROUP), key=_ep_name)]
    return _hooks


def _ep_name(ep: Any) -> str:
    return str(ep.name)


def add_before_commit_hook(hook: BeforeCommitHook) -> None:
    """Run ``hook(connection)`` before every write transaction commits (idempotent)."""
    hooks = before_commit_hooks()
    if hook not in hooks:
        hooks.append(hook)


def after_commit_hooks() -> list[AfterCommitHook]:
    """What runs after every write transaction has committed, with the audit head it left.

    Declared in the ``fleet.after_commit`` entry-point group (fleet's audit checkpoints do)
    or added with :func:`add_after_commit_hook`. A hook runs once the change is durable, so
    it must not fail the command: it reports its own problems. Loaded once per process.
    """
    global _after_hooks
    if _after_hooks is None:
        from importlib.metadata import entry_points

        found = sorted(entry_points(group=AFTER_HOOK_GROUP), key=_ep_name)
        _after_hooks = [ep.load() for ep in found]
    return _after_hooks


def add_after_commit_hook(hook: AfterCommitHook) -> None:
    """Run ``hook(engine, head_seq, head_hash)`` after every write transaction (idempotent)."""
    hooks = after_commit_hooks()
    if hook not in hooks:
        hooks.append(hook)


def _read_head(conn: Connection) -> tuple[int, str] | None:
    # plain SQL: opening a registry (a read such as ``device show``) loads no table classes
    row = conn.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).first()
    return None if row is None else (int(row[0]), str(row[1]))


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose work commits together at the end of the block, or not at all.

    Writers queue for the registry at the start: SQLite's ``BEGIN IMMEDIATE`` takes the
    write lock, and on PostgreSQL a transaction-level advisory lock does the same. Every
    write appends to the audit chain anyway (one head row), so this costs no concurrency, and
    rows locked in different orders (a device, its export row, the chain head) cannot
    deadlock. Before it commits, every before-commit hook runs in the same transaction
    (see :func:`before_commit_hooks`; the export cache re-renders the rows it keeps); after
    it committed, every after-commit hook (:func:`after_commit_hooks`; audit checkpoints).
    """
    hooks, after = before_commit_hooks(), after_commit_hooks()
    head: tuple[int, str] | None = None
    with Session(engine, expire_on_commit=False) as session, session.begin():
        if engine.dialect.name == "postgresql":
            session.connection().exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
        yield session
        session.flush()
        for hook in hooks:
            hook(session.connection())
        if after:
            head = _read_head(session.connection())
    if head is not None:
        for after_hook in after:
            after_hook(engine, *head)


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reads; on SQLite it takes no write lock, so writers are not blocked."""
    ro_engine = engine.execution_options(fleet_readonly=True)
    with Session(ro_engine, expire_on_commit=False) as session, session.begin():
        yield session
