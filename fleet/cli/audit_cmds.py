"""``fleet audit ...``"""

from __future__ import annotations

from typing import Annotated

import typer

from fleet import registry
from fleet.cli._common import fail, message, print_json_array, render, table, workspace
from fleet.errors import IntegrityError
from fleet.identifiers import parse_timestamp

app = typer.Typer(help="Read and verify the hash-chained audit trail.", no_args_is_help=True)


@app.command("log")
def log(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="Only events at or after this time (ISO 8601, or an age: 24h, 7d)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show who did what, oldest first.

    Example:

        fleet audit log --since 7d --json
    """
    start = parse_timestamp(since) if since else None
    events = registry.iter_audit_events(workspace(ctx), since=start)
    if json_out:
        print_json_array(events)
        return
    view = table("#", "Time (UTC)", "Actor", "Action", "Target")
    for event in events:
        view.add_row(
            str(event["seq"]), event["ts"], event["actor"], event["action"], event["target"]
        )
    render(view)


@app.command("verify")
def verify(ctx: typer.Context) -> None:
    """Recompute the hash chain; fail and name the first bad event if history was altered.

    Example:

        fleet audit verify
    """
    result = registry.verify_audit(workspace(ctx))
    if not result.ok:
        fail(
            f"audit trail broken at event {result.bad_seq}: {result.reason}",
            IntegrityError.exit_code,
        )
    message(f"audit trail OK: {result.events} events, head {result.head_hash}")
