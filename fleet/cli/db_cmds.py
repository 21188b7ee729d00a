"""``fleet db ...``"""

from __future__ import annotations

from typing import Annotated

import typer

from fleet.cli._common import message, print_json, workspace

app = typer.Typer(help="Registry schema migrations.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Migrate the registry to this fleet's schema (creates it if empty).

    Example:

        fleet --db postgresql+psycopg://fleet@db/fleet db upgrade
    """
    from fleet.registry import migrations

    result = migrations.upgrade_registry(workspace(ctx))
    if result.changed:
        message(f"registry upgraded from {result.before or 'empty'} to {result.after}")
    else:
        message(f"registry already at revision {result.after}")


@app.command("current")
def current(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show the registry's schema revision and the one this fleet needs.

    Example:

        fleet db current
    """
    from fleet.registry import migrations

    result = migrations.current_schema(workspace(ctx))
    if json_out:
        print_json(result.to_dict())
        return
    state = "up to date" if result.up_to_date else "run `fleet db upgrade`"
    print(f"current {result.current or 'empty'}, head {result.head} ({state})")
