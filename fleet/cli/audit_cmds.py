"""``fleet audit ...``"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet.cli import export_cmds
from fleet.cli._common import (
    ask_passphrase,
    fail,
    message,
    print_json,
    print_json_array,
    render,
    table,
    workspace,
)
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
    from fleet.registry import audit

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
def verify(
    ctx: typer.Context,
    against: Annotated[
        list[Path] | None,
        typer.Option(
            "--against",
            help="Also check the head an earlier signed export, audit export or checkpoint "
            "file recorded (repeatable).",
        ),
    ] = None,
    state: Annotated[
        bool,
        typer.Option(
            "--state", help="Also compare the device and certificate tables with the trail."
        ),
    ] = False,
) -> None:
    """Recompute the hash chain and check it against its signed checkpoints; fail (exit 7)
    and name the first bad event if history was altered, cut off or rewritten.

    Example:

        fleet audit verify --against audit-2026q3.jsonl --state
    """
    from fleet.audit_anchor.anchored import verify_anchored

    ws = workspace(ctx)
    anchored = verify_anchored(ws, against or [])
    result = anchored.result
    if not result.ok:
        fail(
            f"audit trail broken at event {result.bad_seq}: {result.reason}",
            IntegrityError.exit_code,
        )
    if state:
        from fleet.audit_anchor.state import state_differences

        differences = state_differences(ws)
        for difference in differences[1:]:
            message(f"differs: {difference.describe()}")
        if differences:
            fail(
                f"registry differs from its audit trail ({len(differences)} values): "
                f"{differences[0].describe()}",
                IntegrityError.exit_code,
            )
    message(f"audit trail OK: {result.events} events, head {result.head_hash}")
    if anchored.newest is not None:
        message(
            f"checked against {anchored.checkpoints} checkpoints (newest: event "
            f"{anchored.newest.seq} at {anchored.newest.ts})"
            + (f" and {anchored.files} files" if anchored.files else "")
        )


@app.command("checkpoint")
def checkpoint(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Sign a checkpoint of the audit trail's head now (every write makes one by itself).

    A workspace made before checkpoints existed gets its audit key here (the CA passphrase
    is asked for once). Copy <home>/audit/checkpoints.jsonl elsewhere to bound what anyone
    with access to the registry and the workspace can rewrite (docs/security.md).

    Example:

        fleet audit checkpoint --json
    """
    from fleet.audit_anchor.anchored import checkpoint_now

    result = checkpoint_now(workspace(ctx), passphrase=ask_passphrase)
    if json_out:
        print_json(result)
        return
    message(f"checkpoint of event {result['seq']} ({result['hash']}) written to {result['file']}")


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
    import fleet.export as export_lib

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
