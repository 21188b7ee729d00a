"""``fleet status``: how the fleet is doing, on one screen or as JSON.

A group whose callback runs when no subcommand is given, so later subcommands
(``fleet status ...``) can sit beside the summary. The library (and with it SQLAlchemy) is
imported inside the callback: ``fleet status --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleet.cli._common import message, print_json, render, table, workspace

if TYPE_CHECKING:
    from rich.console import RenderableType

    from fleet.status.summary import FleetStatus

app = typer.Typer()


@app.callback(invoke_without_command=True)
def status(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    top: Annotated[
        int, typer.Option("--top", metavar="N", help="Models to list; the rest show as other.")
    ] = 10,
    crl_warn: Annotated[
        str,
        typer.Option(
            "--crl-warn",
            metavar="DURATION",
            help="Warn when the CRL's next update is closer than this (24h, 2d; a bare "
            "number is days).",
        ),
    ] = "24h",
) -> None:
    """How the fleet is doing: devices by status and model, certificates expiring within
    7/30/90 days and expired ones still active, the CRL's next update, each cloud's
    registrations and outbox, the audit trail's head.

    A CRL never published, expiring within --crl-warn or expired is a warning
    (on stderr too): brokers reject every client once a CRL expires.
    Answered from indexes: well under a second at a million devices.

    Example:

        fleet status --top 5 --crl-warn 2d
    """
    if ctx.invoked_subcommand is not None:
        return
    from fleet.identifiers import parse_duration
    from fleet.status.summary import fleet_status

    warn = parse_duration(crl_warn, what="--crl-warn")
    result = fleet_status(workspace(ctx), top=top, crl_warn=warn)
    if json_out:
        print_json(result.to_dict())
    else:
        render(_screen(result))
    for warning in result.warnings:
        message(f"warning: {warning}")


def _screen(result: FleetStatus) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    from fleet.status.summary import format_span
    from fleet.views import iso

    devices, certs = result.devices, result.certificates
    parts: list[RenderableType] = [Text(f"Fleet status at {iso(result.at)}", style="bold")]

    states = ", ".join(f"{n} {name}" for name, n in devices.by_status.items())
    parts.append(Text(f"\nDevices: {devices.total} ({states})"))
    if devices.by_model:
        models = table("Model", "Devices")
        for entry in devices.by_model:
            models.add_row("(none)" if entry.model is None else entry.model, str(entry.count))
        if devices.other_models:
            models.add_row(f"other ({devices.other_models} models)", str(devices.other_devices))
        parts.append(models)

    windows = ", ".join(f"{n} within {d}d" for d, n in certs.expiring_within_days.items())
    parts.append(Text(f"\nCertificates: {certs.active} active, {certs.revoked} revoked"))
    parts.append(Text(f"  expiring: {windows}"))
    expired = Text(f"  expired but still active: {certs.expired_active}")
    if certs.expired_active:
        expired.stylize("bold yellow")
    parts.append(expired)

    crl = result.crl
    if crl is None:
        parts.append(Text("\nCRL: none published"))
    else:
        left = crl.next_update_in_seconds
        due = f"in {format_span(left)}" if left > 0 else f"{format_span(left)} ago"
        parts.append(
            Text(f"\nCRL: number {crl.number}, next update {iso(crl.next_update)} ({due})")
        )
    for warning in result.warnings:
        parts.append(Text(f"WARNING: {warning}", style="bold red"))

    if result.clouds:
        clouds = table(
            "Cloud", "Type", "Registered", "Pending", "Failed", "Open jobs", "Failed jobs",
            "Oldest open job", title="Clouds",
        )  # fmt: skip
        for cloud in result.clouds:
            regs, age = cloud.registrations, cloud.oldest_open_job_age_seconds
            clouds.add_row(
                cloud.name,
                cloud.type,
                str(regs["registered"]),
                str(regs["pending"]),
                str(regs["failed"]),
                str(cloud.open_jobs),
                str(cloud.failed_jobs),
                "-" if age is None else format_span(age),
            )
        parts.append(Text(""))
        parts.append(clouds)
    else:
        parts.append(Text("\nClouds: none configured"))

    links = result.connections
    if links is not None:
        never = max(0, devices.by_status.get("active", 0) - links.online - links.offline)
        parts.append(
            Text(
                f"\nConnections: {links.online} online, {links.offline} offline, "
                f"{never} active never seen"
            )
        )
        for device_id, since in links.longest_offline:
            gone = format_span((result.at - since).total_seconds())
            parts.append(Text(f"  offline {gone}: {device_id} (since {iso(since)})"))

    audit = result.audit
    head = audit.head_hash or "-"
    parts.append(Text(f"\nAudit trail: {audit.events} events, head {head}"))
    return Group(*parts)


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="JSON Lines; - reads stdin.")],
    report: Annotated[
        Path | None,
        typer.Option(help="Write refused lines here (CSV line,error).", show_default=False),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Record connection events from JSON Lines: AWS IoT lifecycle events, Azure IoT Hub
    DeviceConnected/DeviceDisconnected (Event Grid), or fleet's own
    {"device_id", "state": "online"|"offline", "time"}. Bad lines are reported with their
    number; the others are recorded (once: a re-run records nothing new).

    Example:

        fleet status ingest presence.jsonl --report bad-lines.csv

        aws-export-events | fleet status ingest - --json
    """
    import sys

    from fleet.errors import InvalidInput
    from fleet.status.ingest import ingest as ingest_events

    ws = workspace(ctx)
    if source == "-":
        result = ingest_events(ws, sys.stdin.buffer, report_path=report)
    else:
        try:
            stream = open(source, "rb")  # noqa: SIM115  (closed below)
        except OSError as exc:
            raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None
        with stream:
            result = ingest_events(ws, stream, report_path=report)
    if json_out:
        print_json(result.to_dict())
    else:
        recorded = result.recorded
        message(
            f"{result.lines} line(s): {recorded.recorded} event(s) recorded, "
            f"{recorded.duplicates} already known, {recorded.stray} for unknown or "
            f"decommissioned devices (kept aside), {result.bad_count} bad; "
            f"{recorded.changed} device(s) changed state"
        )
        for number, error in result.bad[:5]:
            message(f"  line {number}: {error}")
    if result.bad_count:
        raise typer.Exit(1)


@app.command("prune")
def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option("--older-than", metavar="SPAN", help="Remove events older than SPAN (90d)."),
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Remove old connection history; each device's current state is kept.

    Example:

        fleet status prune --older-than 90d
    """
    from fleet.identifiers import parse_duration
    from fleet.status.history import prune as prune_history

    result = prune_history(workspace(ctx), parse_duration(older_than, what="--older-than"))
    if json_out:
        print_json(result.to_dict())
        return
    message(
        f"Removed {result.events} connection event(s) and {result.stray} stray one(s) "
        f"from before {result.to_dict()['before']}"
    )
