"""``fleet audit ...``"""

from __future__ import annotations

from typing import Annotated

import typer

import fleet.export as export_lib
from fleet.cli import export_cmds
from fleet.cli._common import (
    ask_passphrase,
    fail,
    message,
    print_json_array,
    render,
    table,
    workspace,
)
from fleet.errors import IntegrityError
from fleet.identifiers import parse_timestamp
from fleet.registry import audit

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
    start = parse_timestamp(since) if since is not None else None
    events = audit.iter_audit_events(workspace(ctx), since=start)
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
    result = audit.verify_audit(workspace(ctx))
    if not result.ok:
        fail(
            f"audit trail broken at event {result.bad_seq}: {result.reason}",
            IntegrityError.exit_code,
        )
    message(f"audit trail OK: {result.events} events, head {result.head_hash}")


@app.command("export")
def export_(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="Only events at or after this time (ISO 8601, or an age: 24h, 7d)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only events before this time (ISO 8601, or an age).")
    ] = None,
    out: export_cmds.OutOption = None,
    sign: export_cmds.SignOption = None,
    json_out: export_cmds.JsonOption = False,
) -> None:
    """Export audit events as JSONL with their hashes, signed like `fleet export`.

    Each line is the event's canonical JSON plus its hash, so an auditor can recompute the
    chain without fleet; `fleet export verify FILE` re-hashes it and checks the signatures.

    Example:

        fleet audit export --since 2026-01-01 --until 2026-07-01 --out audit-h1.jsonl
    """
    result = export_lib.export_audit(
        workspace(ctx),
        out=out,
        since=parse_timestamp(since) if since is not None else None,
        until=parse_timestamp(until) if until is not None else None,
        sign=sign,
        passphrase=ask_passphrase,
    )
    if out is not None or json_out:
        export_cmds.render_summary(result, json_out)
