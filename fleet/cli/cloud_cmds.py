"""``fleet cloud ...``: configure clouds, queue and push registrations, show status, drift.

The group's commands live by responsibility in cloud_config_cmds (add, list, show, remove,
check), cloud_push_cmds (register, sync, status: the outbox) and cloud_drift_cmds (drift);
_cloud holds what they share. Each imports its library functions inside the command: only the
commands that push or read a cloud (register, sync, check, drift) load a backend and with it
httpx.
"""

from __future__ import annotations

import typer

from fleet.cli import cloud_config_cmds, cloud_drift_cmds, cloud_push_cmds

app = typer.Typer(
    help="Register devices with cloud IoT platforms (queued, concurrent, rate-limited).",
    no_args_is_help=True,
)
# Unnamed, each module's commands join this group directly, in this (the help's) order.
app.add_typer(cloud_config_cmds.app)
app.add_typer(cloud_push_cmds.app)
app.add_typer(cloud_drift_cmds.app)
