"""The ``fleet`` command line: parses options, calls one library function, renders.

Exit codes: 0 ok, 1 other failure, 2 invalid input or usage, 3 not found, 4 conflict,
5 registry or workspace problem, 6 CA passphrase missing or wrong, 7 audit trail broken.
An unexpected exception (a bug) is one line, ``error: internal error: TYPE: MESSAGE``, and
exit 1; ``FLEET_DEBUG=1`` shows its traceback instead.

Each command's module loads when that command runs (or help lists it): ``fleet --version``
imports no command, ``fleet device list`` only the device commands and what they need.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.core import Command
from typer._click.core import Context as ClickContext
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from fleet import __version__
from fleet.cli._common import fail
from fleet.errors import FleetError, InvalidInput, RegistryError
from fleet.identifiers import is_utf8_text
from fleet.workspace import DATABASE_URL_ENV, HOME_ENV, Workspace, default_home

DEBUG_ENV = "FLEET_DEBUG"
INTERNAL_ERROR_EXIT = 1

# The root's commands in help order: name -> "module:attribute", a typer app (a command group)
# or a command function.
COMMANDS = {
    "provision": "fleet.cli.provision_cmds:provision",
    "init": "fleet.cli.init_cmd:init",
    "device": "fleet.cli.device_cmds:app",
    "cert": "fleet.cli.cert_cmds:app",
    "profile": "fleet.cli.profile_cmds:app",
    "ca": "fleet.cli.ca_cmds:app",
    "audit": "fleet.cli.audit_cmds:app",
    "export": "fleet.cli.export_cmds:app",
    "db": "fleet.cli.db_cmds:app",
    "cloud": "fleet.cli.cloud_cmds:app",
    "doctor": "fleet.cli.doctor_cmds:doctor",
    "watch": "fleet.cli.watch_cmds:watch",
}


def load_command(name: str, target: str) -> Command:
    """The click command for ``target`` (``"module:attribute"``), named ``name``: built the way
    ``add_typer``/``command`` on the root app would build it."""
    module, _, attribute = target.partition(":")
    found = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer()
    if isinstance(found, typer.Typer):
        holder.add_typer(found, name=name)
    else:
        holder.command(name)(found)
    return typer.main.get_group(holder).commands[name]


class LazyCommands(MutableMapping[str, Command]):
    """A group's commands by name, each loaded from its target on first access. Listing the
    names (usage errors suggest them) loads nothing."""

    def __init__(self, targets: Mapping[str, str]) -> None:
        self._entries: dict[str, Command | str] = dict(targets)  # a command, or its target

    def __getitem__(self, name: str) -> Command:
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = self._entries[name] = load_command(name, entry)
        return entry

    def __setitem__(self, name: str, command: Command) -> None:
        self._entries[name] = command

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class FleetGroup(TyperGroup):
    """The root group: its commands load on use (:data:`COMMANDS`), and a :class:`FleetError`
    becomes one stderr line and its exit code."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(COMMANDS)

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        # Bytes that are not UTF-8 arrive as lone surrogates, which no file or database
        # takes: refuse them here, once, rather than wherever one ends up.
        for arg in args:
            if not is_utf8_text(arg):
                fail(f"argument {arg!r} is not valid UTF-8 text", InvalidInput.exit_code)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: ClickContext) -> Any:
        # Imported here, not at the top: `fleet --version` and `--help` never get this far.
        from sqlalchemy.exc import DatabaseError

        from fleet.registry.db import redact_url

        try:
            return super().invoke(ctx)
        except (ClickException, typer.Exit, typer.Abort, KeyboardInterrupt):
            raise  # click's own handling: usage errors (exit 2), exits, Ctrl-C
        except FleetError as exc:
            fail(str(exc), exc.exit_code)
        except DatabaseError as exc:  # unreachable, locked, not a database file...
            ws = ctx.obj if isinstance(ctx.obj, Workspace) else None
            where = redact_url(ws.registry_url) if ws else "the registry"
            detail = str(exc.orig).strip().splitlines()[0] if exc.orig else "error"
            fail(f"database error at {where}: {detail}", RegistryError.exit_code)
        except Exception as exc:  # the last resort: a bug, reported in one line
            if os.environ.get(DEBUG_ENV):
                raise
            detail = " ".join(str(exc).split())[:300]
            fail(
                f"internal error: {type(exc).__name__}: {detail} "
                f"(set {DEBUG_ENV}=1 for the traceback)",
                INTERNAL_ERROR_EXIT,
            )


app = typer.Typer(
    cls=FleetGroup,
    name="fleet",
    help="Provision and manage device fleets: a local CA, device identities, an audited registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"fleet {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar=HOME_ENV,
            help="Workspace folder (registry.db, ca/, profiles/). Default: the user data dir.",
            show_default=False,
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar=DATABASE_URL_ENV,
            help="Registry database URL (SQLAlchemy), e.g. postgresql+psycopg://u@host/fleet.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """fleet: provision device identities and keep an auditable registry of your fleet.

    Example:

        fleet init --name "Acme Pumps" && fleet device add pump-0001 --model p200
    """
    ctx.obj = Workspace(home=(home or default_home()).expanduser(), db_url=db)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fleet")
