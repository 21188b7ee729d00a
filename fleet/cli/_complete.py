"""Shell completion of names: device IDs, cloud names, profile names (``autocompletion=``
of the arguments and options that take one). The root's callback does not run while
completing, so the workspace comes from the root's parsed ``--home``/``--db`` (or their
environment variables); :mod:`fleet.completion` reads the names cheaply."""

from __future__ import annotations

from pathlib import Path

import typer

from fleet.workspace import Workspace, default_home


def _workspace(ctx: typer.Context) -> Workspace:
    params = ctx.find_root().params
    home = params.get("home")
    return Workspace(
        home=Path(home).expanduser() if home else default_home(), db_url=params.get("db")
    )


def device_ids(ctx: typer.Context, incomplete: str) -> list[str]:
    """Device IDs starting with what was typed."""
    from fleet.completion import registry_names

    return registry_names(_workspace(ctx).registry_url, "device", incomplete)


def cloud_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Cloud names starting with what was typed."""
    from fleet.completion import registry_names

    return registry_names(_workspace(ctx).registry_url, "cloud", incomplete)


def profile_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Certificate profile names starting with what was typed."""
    from fleet.completion import profile_names as names

    return names(_workspace(ctx).home, incomplete)
