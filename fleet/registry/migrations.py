"""The registry's schema: its Alembic revision, checks, and upgrades (scripts in migrations/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from fleet.errors import RegistryError
from fleet.registry.db import redact_url, write_session

if TYPE_CHECKING:
    from fleet.workspace import Workspace

# The newest migration; ``tests/test_registry.py`` checks it equals Alembic's head, so
# opening a registry needs one SELECT, not a scan of the migration scripts.
SCHEMA_HEAD = "0009"


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


# The two views below live here, not in fleet.views: the registry layer imports no higher one.


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    """What ``fleet db upgrade`` did: the revision before (``None``: an empty database),
    after, and this fleet's head."""

    before: str | None
    after: str | None
    head: str

    @property
    def changed(self) -> bool:
        """Whether any migration ran."""
        return self.before != self.after

    def to_dict(self) -> dict[str, str | None]:
        """``{"from": ..., "to": ..., "head": ...}``."""
        return {"from": self.before, "to": self.after, "head": self.head}


@dataclass(frozen=True, slots=True)
class SchemaRevision:
    """The registry's schema revision (``None``: an empty database) and this fleet's head."""

    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        """Whether the registry is at the revision this fleet needs."""
        return self.current == self.head

    def to_dict(self) -> dict[str, str | None]:
        """``{"current": ..., "head": ...}``, as ``fleet db current --json`` prints it."""
        return {"current": self.current, "head": self.head}


def upgrade_registry(ws: Workspace) -> UpgradeResult:
    """Migrate the registry to this fleet's schema; returns the revisions before and after."""
    ws.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    before, after = upgrade(ws.engine)
    return UpgradeResult(before=before, after=after, head=SCHEMA_HEAD)


def current_schema(ws: Workspace) -> SchemaRevision:
    """The registry's schema revision and the one this fleet expects."""
    return SchemaRevision(current=current_revision(ws.engine), head=SCHEMA_HEAD)
