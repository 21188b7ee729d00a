"""``fleet cloud ...``: configure clouds, queue and push registrations, show status."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fleet.cli._common import (
    ask_passphrase,
    message,
    print_json,
    print_json_array,
    render,
    table,
    workspace,
)

if TYPE_CHECKING:
    from types import ModuleType

    from fleet.cloud.outbox import ProgressFn


def _outbox() -> ModuleType:
    # Imported on use: the outbox pulls in httpx, which no other command needs.
    from fleet.cloud import outbox

    return outbox


app = typer.Typer(
    help="Register devices with cloud IoT platforms (queued, concurrent, rate-limited).",
    no_args_is_help=True,
)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
NameArg = Annotated[str, typer.Argument(help="The cloud's name (see `fleet cloud list`).")]


@contextmanager
def progress_bar(label: str) -> Iterator[ProgressFn | None]:
    """A progress bar on stderr when it is a terminal; otherwise no callback at all."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for this cloud, e.g. plant-aws.")],
    type_name: Annotated[
        str, typer.Option("--type", help="Backend: aws-iot or http (or an installed plugin).")
    ],
    region: Annotated[str | None, typer.Option(help="[aws-iot] AWS region.")] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="[aws-iot] API endpoint (emulators).")
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="[aws-iot] IoT policy to attach (created if missing).")
    ] = None,
    thing_group: Annotated[
        str | None, typer.Option("--thing-group", help="[aws-iot] Thing group to add devices to.")
    ] = None,
    data_endpoint_url: Annotated[
        str | None,
        typer.Option("--data-endpoint-url", help="[aws-iot] Shadow endpoint (default: looked up)."),
    ] = None,
    aws_profile: Annotated[
        str | None,
        typer.Option("--profile", help="[aws-iot] AWS profile to take credentials from."),
    ] = None,
    thing_type: Annotated[
        str | None, typer.Option("--thing-type", help="[aws-iot] Thing type (created if missing).")
    ] = None,
    ca_mode: Annotated[
        str | None, typer.Option("--ca-mode", help="[aws-iot] CA registration: default, sni-only.")
    ] = None,
    deregister_mode: Annotated[
        str | None,
        typer.Option(
            "--deregister-mode", help="[aws-iot] Certificate on deregister: inactive, revoke."
        ),
    ] = None,
    delete_thing: Annotated[
        bool, typer.Option("--delete-thing", help="[aws-iot] Also delete the thing on deregister.")
    ] = False,
    shadow_name: Annotated[
        str | None, typer.Option("--shadow-name", help="[aws-iot] Named shadow with the firmware.")
    ] = None,
    firmware_field: Annotated[
        str | None,
        typer.Option(
            "--firmware-field", help="[aws-iot] Reported key holding the firmware version."
        ),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="[http] URL template with {id}, e.g. https://h/devices/{id}.")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="[http] Register method: PUT (default), POST, PATCH.")
    ] = None,
    deregister_method: Annotated[
        str | None,
        typer.Option("--deregister-method", help="[http] Deregister method (default DELETE)."),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            help="[http] NAME=ENV_VAR: send header NAME with the value of $ENV_VAR (read at run "
            "time, never stored); repeatable.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="[http] Per-request timeout in seconds (default 10).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight at once. Default: the backend's.")
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(help="Max operations per second. Default: below the platform's quota."),
    ] = None,
    no_rate_limit: Annotated[
        bool, typer.Option("--no-rate-limit", help="No rate limit (local servers, benches).")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Configure a cloud. No network access: one-time setup runs at the first push.

    Secrets are never given here: AWS credentials come from the standard AWS sources, and
    HTTP headers name an environment variable holding the value.

    Example:

        fleet cloud add plant --type http --url https://reg.example/devices/{id}
        --header Authorization=REG_TOKEN

        fleet cloud add prod --type aws-iot --region eu-central-1 --policy fleet-device
    """
    options: dict[str, Any] = {
        "region": region,
        "endpoint_url": endpoint_url,
        "policy": policy,
        "thing_group": thing_group,
        "data_endpoint_url": data_endpoint_url,
        "profile": aws_profile,
        "thing_type": thing_type,
        "ca_mode": ca_mode,
        "deregister_mode": deregister_mode,
        "delete_thing": True if delete_thing else None,
        "shadow_name": shadow_name,
        "firmware_field": firmware_field,
        "url": url,
        "method": method,
        "deregister_method": deregister_method,
        "header": header,
        "timeout": timeout,
    }
    result = _outbox().add_cloud(
        workspace(ctx),
        name,
        type_name,
        options,
        concurrency=concurrency,
        rate_per_second=rate,
        unlimited_rate=no_rate_limit,
    )
    if json_out:
        print_json(result)
        return
    rate_text = (
        "no rate limit"
        if result["rate_per_second"] is None
        else (f"{result['rate_per_second']:g}/s")
    )
    message(f"Added cloud {name} ({type_name}): concurrency {result['concurrency']}, {rate_text}")


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List configured clouds.

    Example:

        fleet cloud list --json
    """
    clouds = _outbox().list_clouds(workspace(ctx))
    if json_out:
        print_json_array(clouds)
        return
    view = table("Name", "Type", "Prepared", "Concurrency", "Rate/s", "Options")
    for cloud in clouds:
        view.add_row(
            cloud["name"],
            cloud["type"],
            "yes" if cloud["prepared"] else "no",
            str(cloud["concurrency"]),
            "-" if cloud["rate_per_second"] is None else f"{cloud['rate_per_second']:g}",
            _options_text(cloud["options"]),
        )
    render(view)
    message(f"{len(clouds)} cloud(s)")


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))


@app.command("show")
def show(ctx: typer.Context, name: NameArg, json_out: JsonOption = False) -> None:
    """Show a cloud with its job and registration counts.

    Example:

        fleet cloud show plant
    """
    cloud = _outbox().show_cloud(workspace(ctx), name)
    if json_out:
        print_json(cloud)
        return
    view = table("Field", "Value", title=f"Cloud {name}")
    for key in ("name", "type", "prepared", "concurrency", "rate_per_second", "created_at"):
        view.add_row(key, str(cloud[key]))
    view.add_row("options", _options_text(cloud["options"]))
    view.add_row("jobs", _options_text(cloud["jobs"]) or "none")
    view.add_row("registrations", _options_text(cloud["registrations"]) or "none")
    render(view)


@app.command("remove")
def remove(
    ctx: typer.Context,
    name: NameArg,
    force: Annotated[
        bool,
        typer.Option("--force", help="Also forget its queued jobs and registration records."),
    ] = False,
) -> None:
    """Forget a cloud (nothing changes on the platform). Refused while it has queued jobs or
    registered devices unless --force.

    Example:

        fleet cloud remove old-registry --force
    """
    result = _outbox().remove_cloud(workspace(ctx), name, force=force)
    message(
        f"Removed cloud {name} (dropped {result['dropped_jobs']} job(s), "
        f"{result['dropped_registrations']} registration record(s))"
    )


@app.command("check")
def check(ctx: typer.Context, name: NameArg) -> None:
    """Check that the cloud is reachable and the credentials work (exit 1 if not).

    Example:

        fleet cloud check plant
    """
    result = _outbox().check_cloud(workspace(ctx), name)
    if result.ok:
        message(f"ok: {result.message}")
        return
    message(f"error: {result.message}")
    raise typer.Exit(1)


def _render_push(report: dict[str, Any]) -> None:
    if report["error"]:
        message(f"{report['cloud']}: {report['error']}")
    message(
        f"{report['cloud']}: {report['done']} done, {report['failed']} failed, "
        f"{report['left']} still queued"
    )
    for failure in report["failures"][:20]:
        message(f"  failed {failure['action']} {failure['device_id']}: {failure['error']}")
    if len(report["failures"]) > 20:
        message(f"  ... and {len(report['failures']) - 20} more (see `fleet cloud status`)")
    if report["left"]:
        message("  queued jobs are retried by `fleet cloud sync`")


def _exit_code(reports: list[dict[str, Any]]) -> int:
    return 1 if any(r["failed"] or r["error"] for r in reports) else 0


@app.command("register")
def register(
    ctx: typer.Context,
    name: NameArg,
    device_ids: Annotated[
        list[str] | None, typer.Argument(help="Device IDs.", show_default=False)
    ] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="Every active device.")] = False,
    queue_only: Annotated[
        bool, typer.Option("--queue-only", help="Only queue the jobs; push later with sync.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Queue registration of devices on a cloud and push the cloud's queue now.

    Exit code 1 when any job failed; jobs that could not be pushed yet (offline,
    throttled) stay queued for `fleet cloud sync`.

    Example:

        fleet cloud register plant pump-0042 pump-0043

        fleet cloud register plant --all --queue-only
    """
    with progress_bar(f"register on {name}") as progress:
        result = _outbox().register(
            workspace(ctx),
            name,
            device_ids or (),
            all_devices=all_devices,
            queue_only=queue_only,
            progress=progress,
            passphrase=ask_passphrase,
        )
    if json_out:
        print_json(result)
    else:
        message(f"{name}: queued {result['queued']} registration(s)")
        if result["push"] is not None:
            _render_push(result["push"])
    if result["push"] is not None and _exit_code([result["push"]]):
        raise typer.Exit(1)


@app.command("sync")
def sync(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Only this cloud (default: all).", show_default=False)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Push every pending or retryable job, then pull device status from the platform.

    Exit code 1 when any job failed.

    Example:

        fleet cloud sync plant
    """
    ws = workspace(ctx)
    with progress_bar(f"sync {name or 'all clouds'}") as progress:
        results = _outbox().sync(ws, name, progress=progress, passphrase=ask_passphrase)
    data = [r.to_dict() for r in results]
    if json_out:
        print_json(data)
    else:
        for item in data:
            _render_push(item)
            message(f"{item['cloud']}: status updated for {item['status_updated']} device(s)")
            for error in item["status_errors"]:
                message(f"  status: {error}")
        if not data:
            message("no clouds configured")
    if _exit_code(data):
        raise typer.Exit(1)


@app.command("status")
def status(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Only this cloud (default: all).", show_default=False)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Show where each device stands on each cloud: pending, registered, failed (with
    attempts and last error) or deregistered, plus what the platform last reported.

    Example:

        fleet cloud status plant --json
    """
    rows = _outbox().iter_status(workspace(ctx), name)
    if json_out:
        print_json_array(rows)
        return
    view = table(
        "Cloud", "Device", "Status", "Queued", "Attempts", "Connected", "Firmware", "Last error"
    )
    count = 0
    for row in rows:
        count += 1
        queued = row["queued"]
        view.add_row(
            row["cloud"],
            row["device_id"],
            row["status"],
            f"{queued['action']} ({queued['state']})" if queued else "",
            str(row["attempts"]),
            "" if row["connected"] is None else ("yes" if row["connected"] else "no"),
            row["firmware_version"] or "",
            row["last_error"] or "",
        )
    render(view)
    message(f"{count} registration(s)")
