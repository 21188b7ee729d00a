"""``fleet profile ...``"""

from __future__ import annotations

from typing import Annotated

import typer

from fleet.cli import _complete
from fleet.cli._common import print_json, render, table, workspace
from fleet.pki.profiles import find_profile, list_profiles, read_profile

app = typer.Typer(help="List and show certificate profiles.", no_args_is_help=True)


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List the certificate profiles: the workspace's (<home>/profiles) and fleet's own.

    A profile that does not validate is listed with its error.

    Example:

        fleet profile list --json
    """
    entries = list_profiles(workspace(ctx).home)
    if json_out:
        print_json([entry.to_dict() for entry in entries])
        return
    view = table("Name", "Key type", "Description", "File")
    for entry in entries:
        if entry.profile is None:
            view.add_row(entry.name, "-", f"invalid: {entry.error}", str(entry.path))
        else:
            view.add_row(
                entry.name, entry.profile.key_type, entry.profile.description, str(entry.path)
            )
    render(view)


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="Profile name.", autocompletion=_complete.profile_names)
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show what a profile puts in a certificate (validated, as `device add` would load it).

    Example:

        fleet profile show default --json
    """
    path = find_profile(name, workspace(ctx).home)
    profile = read_profile(name, path)
    shown = {**profile.to_dict(), "path": str(path)}
    if json_out:
        print_json(shown)
        return
    view = table("Field", "Value")
    for key, value in shown.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(value)
        view.add_row(key, str(value) if value != "" else "-")
    render(view)
