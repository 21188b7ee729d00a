"""``fleet audit ...``"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleet.cli import _listing, export_cmds
from fleet.cli._common import (
    ask_passphrase,
    fail,
    message,
    print_json,
    render,
    table,
    workspace,
)
from fleet.errors import IntegrityError, InvalidInput
from fleet.identifiers import parse_timestamp

if TYPE_CHECKING:
    from fleet.registry.audit import ProgressCallback

app = typer.Typer(help="Read and verify the hash-chained audit trail.", no_args_is_help=True)


@app.command("log")
def log(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="Only events at or after this time (ISO 8601, or an age: 24h, 7d)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only events before this time (ISO 8601, or an age).")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Only events about this target (a device ID, ...).")
    ] = None,
    action: Annotated[
        list[str] | None,
        typer.Option(help="Only events of this action, e.g. device.add (repeatable)."),
    ] = None,
    limit: _listing.LimitOption = None,
    after: _listing.AfterOption = None,
    all_rows: _listing.AllOption = False,
    json_out: _listing.JsonOption = False,
    jsonl_out: _listing.JsonlOption = False,
    count: _listing.CountOption = False,
) -> None:
    """Show who did what, oldest first (in chain order), a page at a time.

    Example:

        fleet audit log --target dev-0042 --action cert.renew --since 30d --limit 20
    """
    from fleet.registry import audit

    options = _listing.ListOptions(limit, after, all_rows, json_out, jsonl_out, count)
    filters: dict[str, Any] = {
        "since": parse_timestamp(since) if since is not None else None,
        "until": parse_timestamp(until) if until is not None else None,
        "target": target,
        "action": action or None,
    }
    ws, start = workspace(ctx), _seq_cursor(after)

    def fetch(page: int | None) -> Iterator[dict[str, Any]]:
        return audit.iter_audit_events(ws, after=start, limit=page, **filters)

    listing = _listing.Listing(
        fetch=fetch,
        cursor=lambda event: str(event["seq"]),
        to_dict=lambda event: event,
        count=lambda: audit.count_audit_events(ws, after=start, **filters),
        count_after=lambda cursor: audit.count_audit_events(
            ws, after=_seq_cursor(cursor), **filters
        ),
        noun="events",
    )

    def table_of(events: list[dict[str, Any]]) -> None:
        view = table("#", "Time (UTC)", "Actor", "Action", "Target")
        for event in events:
            view.add_row(
                str(event["seq"]), event["ts"], event["actor"], event["action"], event["target"]
            )
        render(view)

    _listing.emit(listing, options, table_of)


def _seq_cursor(text: str | None) -> int | None:
    """``--after``'s event number."""
    if text is None:
        return None
    try:
        seq = int(text)
    except ValueError:
        seq = -1
    if seq < 0:
        raise InvalidInput(f"--after takes an event number (seq), not {text!r}")
    return seq


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
    start: Annotated[
        int,
        typer.Option(
            "--from",
            metavar="SEQ",
            help="Verify from event SEQ through the head (the link into SEQ is still checked).",
        ),
    ] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Recompute the hash chain and check it against its signed checkpoints; fail (exit 7)
    and name the first bad event if history was altered, cut off or rewritten.

    A progress bar is shown on stderr when it is a terminal.

    Example:

        fleet audit verify --against audit-2026q3.jsonl --state
    """
    from fleet.audit_anchor.anchored import verify_anchored

    ws = workspace(ctx)
    with _progress_bar() as progress:
        anchored = verify_anchored(ws, against or [], start=start, progress=progress)
    result = anchored.result
    outcome: dict[str, Any] = {
        "ok": result.ok,
        "events": result.events,
        "head": result.head_hash,
        "bad_seq": result.bad_seq,
        "reason": result.reason,
    }
    differences = []
    if result.ok and state:
        from fleet.audit_anchor.state import state_differences

        differences = state_differences(ws)
        outcome["ok"] = not differences
        outcome["state_differences"] = [difference.describe() for difference in differences]
    if json_out:
        print_json(outcome)
        if not outcome["ok"]:
            raise typer.Exit(IntegrityError.exit_code)
        return
    if not result.ok:
        fail(
            f"audit trail broken at event {result.bad_seq}: {result.reason}",
            IntegrityError.exit_code,
        )
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


@contextmanager
def _progress_bar() -> Iterator[ProgressCallback | None]:
    """A progress callback drawing a bar on stderr, or ``None`` when stderr is no terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("verifying", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


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
