"""The ``fleet`` command line: parses options, calls one library function, renders.

Exit codes: 0 ok, 1 other failure, 2 invalid input or usage, 3 not found, 4 conflict,
5 registry or workspace problem, 6 CA passphrase missing or wrong, 7 audit trail broken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet import __version__
from fleet.cli import (
    audit_cmds,
    ca_cmds,
    cert_cmds,
    cloud_cmds,
    db_cmds,
    device_cmds,
    export_cmds,
    provision_cmds,
)
from fleet.cli._common import FleetGroup, ask_passphrase, message, print_json, workspace
from fleet.pki.authority import init_workspace
from fleet.workspace import DATABASE_URL_ENV, HOME_ENV, Workspace, default_home

app = typer.Typer(
    cls=FleetGroup,
    name="fleet",
    help="Provision and manage device fleets: a local CA, device identities, an audited registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(device_cmds.app, name="device")
app.add_typer(cert_cmds.app, name="cert")
app.add_typer(ca_cmds.app, name="ca")
app.add_typer(audit_cmds.app, name="audit")
app.add_typer(export_cmds.app, name="export")
app.add_typer(db_cmds.app, name="db")
app.add_typer(cloud_cmds.app, name="cloud")
app.command("provision")(provision_cmds.provision)


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


@app.command()
def init(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Organisation name used in the CA subjects.")] = "fleet",
    key_type: Annotated[
        str, typer.Option("--key-type", help="CA key type: ec-p256, ec-p384 or rsa-3072.")
    ] = "ec-p256",
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Create the workspace: a migrated registry, a root CA and an issuing CA.

    The CA keys are encrypted with the passphrase from FLEET_CA_PASSPHRASE, or one you are
    asked for. Refuses to touch an initialised workspace.

    Example:

        fleet --home ./acme init --name "Acme Pumps" --key-type ec-p384
    """
    ws = workspace(ctx)
    result = init_workspace(
        ws, name=name, key_type=key_type, passphrase=lambda: ask_passphrase(confirm=True)
    )
    if json_out:
        print_json(result)
        return
    message(f"Initialised fleet workspace at {result['home']}")
    message(f"  registry    {result['registry']}")
    message(
        f"  root CA     {result['root']['subject']}  sha256 {result['root']['fingerprint_sha256']}"
    )
    message(
        f"  issuing CA  {result['issuing']['subject']}  "
        f"sha256 {result['issuing']['fingerprint_sha256']}"
    )


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fleet")
