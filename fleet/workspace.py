"""A workspace: the home folder (CA, profiles) plus the registry database it points at.

A :class:`Workspace` is a light value until its engine is first asked for: only then does it
load the registry (SQLAlchemy), so the CLI's entry (``fleet --version``) and ``import fleet``
stay light.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import AuthError, RegistryError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

HOME_ENV = "FLEET_HOME"
DATABASE_URL_ENV = "FLEET_DATABASE_URL"
PASSPHRASE_ENV = "FLEET_CA_PASSPHRASE"
PASSPHRASE_FILE_ENV = "FLEET_CA_PASSPHRASE_FILE"
PASSPHRASE_FILE_MAX = 4096  # bytes: a passphrase, not a document


def default_home() -> Path:
    """``$FLEET_HOME``, else the per-user data directory (e.g. ``~/.local/share/fleet``)."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_path

    return user_data_path("fleet", appauthor=False)


@dataclass
class Workspace:
    """Where fleet keeps its state. Library functions take one of these.

    ``db_url`` overrides the registry (any SQLAlchemy URL); by default it is the SQLite file
    ``<home>/registry.db``.
    """

    home: Path = field(default_factory=default_home)
    db_url: str | None = None
    _engine: Engine | None = field(default=None, init=False, repr=False)

    @property
    def registry_url(self) -> str:
        """The registry's SQLAlchemy URL."""
        if self.db_url:
            return self.db_url
        env = os.environ.get(DATABASE_URL_ENV)
        return env or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def engine(self) -> Engine:
        """The registry engine (created on first use)."""
        if self._engine is None:
            from fleet.registry.db import create_registry_engine

            engine = create_registry_engine(self.registry_url)
            # where after-commit hooks (audit checkpoints) find this workspace's files
            engine.update_execution_options(fleet_home=str(self.home))
            self._engine = engine
        return self._engine

    def open_registry(self) -> Engine:
        """The engine, after checking that the registry exists and is at the current schema."""
        from fleet.registry.db import redact_url, sqlite_file
        from fleet.registry.migrations import check_schema

        uses_default_sqlite = not self.db_url and not os.environ.get(DATABASE_URL_ENV)
        # SQLite would silently create an empty file: say what is missing instead.
        if uses_default_sqlite and not (self.home / "registry.db").is_file():
            raise RegistryError(
                f"no fleet workspace at {self.home}: run `fleet init` (or pass --home)"
            )
        path = sqlite_file(self.registry_url)
        if path is not None and not path.is_file():
            raise RegistryError(
                f"no registry at {redact_url(self.registry_url)}: run `fleet init` with it first"
            )

        check_schema(self.engine)
        return self.engine

    def close(self) -> None:
        """Release database connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def read_passphrase_file(path: Path) -> str:
    """The passphrase in the file ``path``: its text less one trailing line break (as
    ``step --password-file`` reads it). Keep the file 0600: fleet does not check its mode.

    Raises :class:`AuthError` when it cannot be read, is empty, or is not UTF-8 text.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(PASSPHRASE_FILE_MAX + 1)
    except OSError as exc:
        raise AuthError(f"cannot read the passphrase file {path}: {exc.strerror}") from None
    if len(data) > PASSPHRASE_FILE_MAX:
        raise AuthError(f"the passphrase file {path} is over {PASSPHRASE_FILE_MAX} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError(f"the passphrase file {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise AuthError(f"the passphrase file {path} is empty")
    return text


def passphrase_from_env() -> str | None:
    """The CA passphrase from ``$FLEET_CA_PASSPHRASE``, else from the file
    ``$FLEET_CA_PASSPHRASE_FILE`` names (:func:`read_passphrase_file`), if either is set."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    path = os.environ.get(PASSPHRASE_FILE_ENV)
    return read_passphrase_file(Path(path).expanduser()) if path else None


Passphrase = str | bytes | Callable[[], str]


def require_passphrase(passphrase: Passphrase | None) -> str | bytes:
    """``passphrase`` (called if it is a prompt function), else ``$FLEET_CA_PASSPHRASE``.

    Raises :class:`AuthError` when neither gives one. Commands pass a prompt function so that
    they ask only once they know the request is otherwise valid.
    """
    value = passphrase() if callable(passphrase) else passphrase
    value = value or passphrase_from_env()
    if not value:
        raise AuthError(
            f"the CA passphrase is needed: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}, "
            "or run on a terminal to be asked"
        )
    return value
