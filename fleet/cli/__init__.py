"""The ``fleet`` command line: parses options, calls one library function, renders.

Exit codes: 0 ok, 1 other failure, 2 invalid input or usage, 3 not found, 4 conflict,
5 registry or workspace problem, 6 CA passphrase missing or wrong, 7 audit trail broken,
8 drift found (``cloud drift``), 9 a cloud unreachable (``cloud register``/``sync``).
A usage error is one line on stderr (``error: ... (see 'fleet CMD --help')``), exit 2. The
root's ``--home``, ``--db`` and ``--passphrase-file`` are also taken after the command
(:func:`hoist_global_options`).
An unexpected exception (a bug) is one line, ``error: internal error: TYPE: MESSAGE``, and
exit 1; ``FLEET_DEBUG=1`` shows its traceback instead.

Each command's module loads when that command runs (or help lists it): ``fleet --version``
imports no command, ``fleet device list`` only the device commands and what they need.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.core import Command
from typer._click.core import Context as ClickContext
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer._click.formatting import HelpFormatter
from typer._click.shell_completion import CompletionItem
from typer._click.utils import echo
from typer.core import TyperCommand, TyperGroup

from fleet import __version__
from fleet.cli import _common
from fleet.cli._common import fail
from fleet.errors import FleetError, InvalidInput, RegistryError
from fleet.workspace import (
    DATABASE_URL_ENV,
    HOME_ENV,
    PASSPHRASE_FILE_ENV,
    Workspace,
    default_home,
)

DEBUG_ENV = "FLEET_DEBUG"
INTERNAL_ERROR_EXIT = 1

# The root's commands in help order: name -> ("module:attribute", one-line help). The target is
# a typer app (a command group) or a command function; the help is what `fleet --help` and
# completion show without importing the module (a test keeps it equal to the command's own).
COMMANDS: dict[str, tuple[str, str]] = {
    "provision": (
        "fleet.cli.provision_cmds:provision",
        "Provision every device listed in a CSV or JSON Lines file.",
    ),
    "init": (
        "fleet.cli.init_cmd:init",
        "Create the workspace: a migrated registry, a root CA and an issuing CA.",
    ),
    "device": (
        "fleet.cli.device_cmds:app",
        "Add, list, show, update and decommission devices.",
    ),
    "cert": ("fleet.cli.cert_cmds:app", "List, renew and revoke device certificates."),
    "profile": ("fleet.cli.profile_cmds:app", "List and show certificate profiles."),
    "ca": ("fleet.cli.ca_cmds:app", "Inspect the CA, export its chain, publish CRLs."),
    "audit": ("fleet.cli.audit_cmds:app", "Read and verify the hash-chained audit trail."),
    "export": (
        "fleet.cli.export_cmds:app",
        "Export every device with its current certificate, labels, status and clouds.",
    ),
    "db": ("fleet.cli.db_cmds:app", "Registry schema migrations."),
    "cloud": (
        "fleet.cli.cloud_cmds:app",
        "Register devices with cloud IoT platforms (queued, concurrent, rate-limited).",
    ),
    "doctor": (
        "fleet.cli.doctor_cmds:doctor",
        "Find what interrupted `device add`, `cert renew` or `provision` runs left in a bundle "
        "folder, and certificates the CA signed that the registry does not record.",
    ),
    "status": (
        "fleet.cli.status_cmds:app",
        "How the fleet is doing: devices by status and model, certificates expiring within "
        "7/30/90 days and expired ones still active, the CRL's next update, each cloud's "
        "registrations and outbox, the audit trail's head.",
    ),
    "broker": (
        "fleet.cli.broker_cmds:app",
        "Set up an MQTT broker that accepts only fleet's devices.",
    ),
    "watch": (
        "fleet.cli.watch_cmds:watch",
        "Record devices going online and offline, as a Sparkplug B host application.",
    ),
    "onboard": (
        "fleet.cli.onboard_cmds:onboard",
        "Onboard devices at a bench: unlock the CA once, then scan or type each ID and serial.",
    ),
    "firmware": (
        "fleet.cli.firmware_cmds:app",
        "Catalogue signed firmware images; record and check what devices run.",
    ),
    "rollout": (
        "fleet.cli.rollout_cmds:app",
        "Roll firmware out in phases: start, step, pause, resume, abort, retry, status.",
    ),
}


# The root's options that take a value, also accepted after the command (`fleet device list
# --home ws`): parse_args moves them in front of it.
GLOBAL_VALUE_OPTIONS = ("--home", "--db", "--passphrase-file")


def hoist_global_options(args: list[str]) -> list[str]:
    """``args`` with the root's value options found after the command moved before it
    (``device list --home ws`` -> ``--home ws device list``); a ``--`` ends the search."""
    start = 0
    while start < len(args):  # skip the root's own options: the command is the first word
        arg = args[start]
        if arg in GLOBAL_VALUE_OPTIONS:
            start += 2
        elif arg.startswith("-"):
            start += 1
        else:
            break
    if start >= len(args):
        return args
    front, rest = list(args[: start + 1]), []
    tail = args[start + 1 :]
    i = 0
    while i < len(tail):
        arg = tail[i]
        if arg == "--":
            rest.extend(tail[i:])
            break
        name = arg.partition("=")[0]
        if name in GLOBAL_VALUE_OPTIONS and arg.startswith("--"):
            taken = 1 if "=" in arg else 2
            front[start:start] = tail[i : i + taken]
            start += taken
            i += taken
            continue
        rest.append(arg)
        i += 1
    return front + rest


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
    from fleet.cli._help import tidy  # reflowed help, tidy placeholders

    return tidy(typer.main.get_group(holder).commands[name])


class LazyCommands(MutableMapping[str, Command]):
    """A group's commands by name, each loaded from its target on first access. Listing the
    names (usage errors suggest them) loads nothing, nor does :meth:`summary`."""

    def __init__(self, entries: Mapping[str, tuple[str, str]]) -> None:
        # a loaded command, or its target
        self._entries: dict[str, Command | str] = {n: t for n, (t, _) in entries.items()}
        self._short_help = {name: text for name, (_, text) in entries.items()}

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

    def summary(self, name: str) -> Command | None:
        """The command if loaded, else a stand-in carrying only its name and one-line help:
        enough to list it in help and completion."""
        entry = self._entries.get(name)
        if isinstance(entry, str):
            text = self._short_help[name]
            return TyperCommand(name, help=text, short_help=text)
        return entry


def _is_database_error(exc: Exception) -> bool:
    """Whether ``exc`` is SQLAlchemy's ``DatabaseError``. Only a command that loaded SQLAlchemy
    can raise one, so this never imports it: ``--help`` of a group stays light."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    return sa_exc is not None and isinstance(exc, sa_exc.DatabaseError)


class FleetGroup(TyperGroup):
    """The root group: its commands load on use (:data:`COMMANDS`), and a :class:`FleetError`
    becomes one stderr line and its exit code."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = self._lazy = LazyCommands(COMMANDS)
        self._listing = False  # listing commands (help, completion): summaries will do

    def list_commands(self, ctx: ClickContext) -> list[str]:
        return list(self.commands)  # typer's own reads `.items()`, which would load them all

    def get_command(self, ctx: ClickContext, cmd_name: str) -> Command | None:
        if self._listing:
            return self._lazy.summary(cmd_name)
        return super().get_command(ctx, cmd_name)

    @contextmanager
    def _summaries(self) -> Iterator[None]:
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def format_help(self, ctx: ClickContext, formatter: HelpFormatter) -> None:
        # Plain (click's) layout for the root's help: typer's rich panels cost importing and
        # running rich, several times `import typer` itself (bench/startup.py). Commands'
        # help keeps the panels (`cloud add` groups backend options in them).
        with self._summaries():
            Command.format_help(self, ctx, formatter)

    def shell_complete(self, ctx: ClickContext, incomplete: str) -> list[CompletionItem]:
        with self._summaries():
            return super().shell_complete(ctx, incomplete)

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        # Bytes that are not UTF-8 arrive as lone surrogates, which no file or database
        # takes: refuse them here, once, rather than wherever one ends up.
        for arg in args:
            # ASCII is UTF-8: the identifiers module (and what it imports) only when needed
            if arg.isascii():
                continue
            from fleet.identifiers import is_utf8_text

            if not is_utf8_text(arg):
                fail(f"argument {arg!r} is not valid UTF-8 text", InvalidInput.exit_code)
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            # As typer does for a group, but the help is plain text (format_help), which
            # typer's rich error display would drop: print it here, with the same exit code.
            echo(ctx.get_help())
            ctx.exit(NoArgsIsHelpError.exit_code)
        return super().parse_args(ctx, hoist_global_options(args))

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """As typer's, but a usage error is one line on stderr (exit 2), not a box."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError as exc:
            sys.exit(exc.exit_code)  # the help is printed already
        except ClickException as exc:
            from fleet.cli._help import usage_error_line

            words = hoist_global_options(list(sys.argv[1:] if args is None else args))
            while words and words[0].startswith("-"):  # the root's options and their values
                words = words[2 if words[0] in GLOBAL_VALUE_OPTIONS else 1 :]
            print(usage_error_line(exc, words), file=sys.stderr)
            sys.exit(exc.exit_code)
        except typer.Abort:
            print("Aborted!", file=sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except (ClickException, typer.Exit, typer.Abort, KeyboardInterrupt):
            raise  # click's own handling: usage errors (exit 2), exits, Ctrl-C
        except FleetError as exc:
            fail(str(exc), exc.exit_code)
        except Exception as exc:
            if _is_database_error(exc):  # unreachable, locked, not a database file...
                from fleet.registry.db import redact_url

                ws = ctx.obj if isinstance(ctx.obj, Workspace) else None
                where = redact_url(ws.registry_url) if ws else "the registry"
                orig = getattr(exc, "orig", None)
                detail = str(orig).strip().splitlines()[0] if orig else "error"
                fail(f"database error at {where}: {detail}", RegistryError.exit_code)
            # the last resort: a bug, reported in one line
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
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--passphrase-file",
            help="Read the CA passphrase from this file (one trailing newline is dropped; "
            "keep it 0600). Default: $FLEET_CA_PASSPHRASE, else the file "
            f"${PASSPHRASE_FILE_ENV} names, else a prompt.",
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
    _common.passphrase_file = passphrase_file.expanduser() if passphrase_file else None
    ctx.obj = Workspace(home=(home or default_home()).expanduser(), db_url=db)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fleet")
