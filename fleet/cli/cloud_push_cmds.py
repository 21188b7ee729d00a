"""``fleet cloud register/sync/status``: queue and push registrations (the outbox), pull
device status, show where each device stands on each cloud.

Library functions are imported inside each command: only register and sync load a backend and
with it httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from fleet.cli import _complete
from fleet.cli._cloud import JsonOption, NameArg, progress_bar
from fleet.cli._common import ask_passphrase, message, print_json, render, table, workspace
from fleet.cli._listing import (
    AfterOption,
    AllOption,
    CountOption,
    JsonlOption,
    LimitOption,
    Listing,
    ListOptions,
    emit,
)
from fleet.cli._listing import JsonOption as JsonListOption

if TYPE_CHECKING:
    from fleet.cloud.push import PushReport
    from fleet.cloud.views import RegistrationView

app = typer.Typer()  # its commands join `fleet cloud` (fleet/cli/cloud_cmds.py)


def _render_push(report: PushReport) -> None:
    if report.unreachable is not None:
        message(
            f"{report.cloud}: cloud unreachable: {report.left} jobs stay queued "
            f"({report.unreachable}); retry with `fleet cloud sync` once it is back"
        )
        return
    if report.error:
        message(f"{report.cloud}: {report.error}")
    message(
        f"{report.cloud}: {report.done} done, {report.failed} failed, {report.left} still queued"
    )
    for failure in report.failures[:20]:
        message(f"  failed {failure['action']} {failure['device_id']}: {failure['error']}")
    if len(report.failures) > 20:
        message(f"  ... and {len(report.failures) - 20} more (see `fleet cloud status`)")
    if report.left:
        message("  queued jobs are retried by `fleet cloud sync`")


def _exit_code(reports: list[PushReport]) -> int:
    from fleet.errors import CLOUD_UNREACHABLE_EXIT

    if any(r.unreachable is not None for r in reports):
        return CLOUD_UNREACHABLE_EXIT
    return 1 if any(r.failed or r.error for r in reports) else 0


@app.command("register")
def register(
    ctx: typer.Context,
    name: NameArg,
    device_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Device IDs.", show_default=False, autocompletion=_complete.device_ids),
    ] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="Every active device.")] = False,
    queue_only: Annotated[
        bool, typer.Option("--queue-only", help="Only queue the jobs; push later with sync.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Queue registration of devices on a cloud and push the cloud's queue now.

    Exit code 1 when any job failed, 8 when the cloud could not be reached at all
    (connection refused: the push stops at once); jobs that could not be pushed yet
    (offline, throttled) stay queued for `fleet cloud sync`.

    Example:

        fleet cloud register plant pump-0042 pump-0043

        fleet cloud register plant --all --queue-only
    """
    from fleet.cloud.push import register as register_devices

    with progress_bar(f"register on {name}") as progress:
        result = register_devices(
            workspace(ctx),
            name,
            device_ids or (),
            all_devices=all_devices,
            queue_only=queue_only,
            progress=progress,
            passphrase=ask_passphrase,
        )
    if json_out:
        print_json(result.to_dict())
    else:
        message(f"{name}: queued {result.queued} registration(s)")
        if result.skipped:
            shown = ", ".join(result.skipped[:20])
            more = f" and {len(result.skipped) - 20} more" if len(result.skipped) > 20 else ""
            message(
                f"{name}: skipped {len(result.skipped)} device(s) without an active "
                f"certificate: {shown}{more}"
            )
        if result.push is not None:
            _render_push(result.push)
    code = 0 if result.push is None else _exit_code([result.push])
    if code:
        raise typer.Exit(code)


@app.command("sync")
def sync(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Only this cloud (default: all).", show_default=False)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Push every pending or retryable job, then pull device status from the platform.

    Exit code 1 when any job failed, 8 when a cloud could not be reached at all (its push
    stops at once; its jobs stay queued).

    Example:

        fleet cloud sync plant
    """
    from fleet.cloud.status import sync as sync_clouds

    ws = workspace(ctx)
    with progress_bar(f"sync {name or 'all clouds'}") as progress:
        results = sync_clouds(ws, name, progress=progress, passphrase=ask_passphrase)
    if json_out:
        print_json([r.to_dict() for r in results])
    else:
        for report in results:
            _render_push(report.push)
            message(f"{report.push.cloud}: status updated for {report.status_updated} device(s)")
            for error in report.status_errors:
                message(f"  status: {error}")
        if not results:
            message("no clouds configured")
    code = _exit_code([r.push for r in results])
    if code:
        raise typer.Exit(code)


@app.command("status")
def status(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Only this cloud (default: all).", show_default=False)
    ] = None,
    limit: LimitOption = None,
    after: AfterOption = None,
    all_rows: AllOption = False,
    json_out: JsonListOption = False,
    jsonl: JsonlOption = False,
    count: CountOption = False,
) -> None:
    """Show where each device stands on each cloud: pending, registered, failed (with
    attempts and last error) or deregistered, plus what the platform last reported.
    Ordered by cloud and device; a table shows the first 100 (the cursor is the device ID,
    or CLOUD/DEVICE across clouds).

    Example:

        fleet cloud status plant --json

        fleet cloud status plant --limit 500 --after pump-0500 --jsonl
    """
    from fleet.cloud.status import count_status, iter_status, status_cursor

    ws = workspace(ctx)
    one_cloud = name is not None
    emit(
        Listing(
            fetch=lambda n: iter_status(ws, name, after=after, limit=n),
            cursor=lambda row: status_cursor(row, one_cloud=one_cloud),
            to_dict=lambda row: row.to_dict(),
            count=lambda: count_status(ws, name, after=after),
            count_after=lambda key: count_status(ws, name, after=key),
            noun="registrations",
        ),
        ListOptions(
            limit=limit, after=after, all=all_rows, json=json_out, jsonl=jsonl, count=count
        ),
        _status_table,
    )


def _status_table(rows: list[RegistrationView]) -> None:
    view = table(
        "Cloud", "Device", "Status", "Queued", "Attempts", "Connected", "Firmware", "Last error"
    )
    for row in rows:
        queued = row.queued
        view.add_row(
            row.cloud,
            row.device_id,
            row.status,
            f"{queued.action} ({queued.state})" if queued else "",
            str(row.attempts),
            "" if row.connected is None else ("yes" if row.connected else "no"),
            row.firmware_version or "",
            row.last_error or "",
        )
    render(view)
