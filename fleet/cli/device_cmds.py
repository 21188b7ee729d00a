"""``fleet device ...``"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleet.cli import _complete
from fleet.cli._bundle import P12_PASSWORD_ENV, FormatOption, P12EnvOption, bundle_format
from fleet.cli._common import (
    ask_passphrase,
    message,
    print_columns,
    print_fields,
    print_json,
    render,
    short_labels,
    table,
    workspace,
)
from fleet.cli._listing import (
    MORE_CAP,
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
from fleet.errors import InvalidInput
from fleet.identifiers import parse_duration, parse_labels, parse_timestamp
from fleet.statuses import CertStatus, DeviceStatus
from fleet.views import iso

if TYPE_CHECKING:
    from fleet.status.history import EventView
    from fleet.views import DeviceView, FirmwareView

app = typer.Typer(help="Add, list, show, update and decommission devices.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
LabelOption = Annotated[
    list[str] | None,
    typer.Option("--label", "-l", help="KEY=VALUE label; repeat for several.", show_default=False),
]


@app.command("add")
def add(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(help="The device's ID (its CN).")],
    model: Annotated[str | None, typer.Option(help="Hardware model.")] = None,
    serial: Annotated[str | None, typer.Option(help="Hardware serial number.")] = None,
    label: LabelOption = None,
    profile: Annotated[
        str,
        typer.Option(help="Certificate profile name.", autocompletion=_complete.profile_names),
    ] = "default",
    key_type: Annotated[
        str | None, typer.Option("--key-type", help="Override the profile's key type.")
    ] = None,
    csr: Annotated[
        Path | None,
        typer.Option(help="Sign this CSR (PEM or DER) instead of generating a key."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the bundle to OUT/DEVICE_ID/. Default: current dir.")
    ] = None,
    cloud: Annotated[
        list[str] | None,
        typer.Option(
            "--cloud",
            help="Queue its registration on this cloud (same transaction); repeatable. "
            "Pushed by `fleet cloud sync`.",
            show_default=False,
            autocompletion=_complete.cloud_names,
        ),
    ] = None,
    fmt: FormatOption = "pem",
    p12_password_env: P12EnvOption = P12_PASSWORD_ENV,
    json_out: JsonOption = False,
) -> None:
    """Register a device and issue its X.509 identity in one step.

    Writes OUT/DEVICE_ID/key.pem (0600), cert.pem and chain.pem; with --csr the key stays on
    the device and no key.pem is written; with --format p12, bundle.p12 (0600) instead of
    key.pem.

    Example:

        fleet device add pump-0042 --model p200 --serial SN123 --label site=hamburg --out ids

        fleet device add pump-0043 --cloud plant-registry && fleet cloud sync plant-registry

        FLEET_P12_PASSWORD=... fleet device add pump-0044 --format p12 --out ids
    """
    from fleet import devices

    ws = workspace(ctx)
    result = devices.add_device(
        ws,
        device_id,
        model=model,
        serial=serial,
        labels=parse_labels(label or []),
        profile=profile,
        key_type=key_type,
        csr=csr,
        out_dir=out,
        passphrase=ask_passphrase,
        clouds=cloud or (),
        bundle_format=bundle_format(fmt, p12_password_env),
    )
    if json_out:
        print_json(result.to_dict())
        return
    cert = result.certificates[0]
    bundle = (out or Path.cwd()) / device_id
    message(
        f"Added device {device_id}: certificate {cert.serial}, valid until {iso(cert.not_after)}"
    )
    message(f"  identity bundle: {bundle}/")
    if cloud:
        names = ", ".join(dict.fromkeys(cloud))
        message(f"  registration queued on {names}: run `fleet cloud sync` to push it")


@app.command("list")
def list_(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    label: LabelOption = None,
    status: Annotated[
        str | None, typer.Option(help=f"Only devices in this state: {', '.join(DeviceStatus)}.")
    ] = None,
    online: Annotated[
        bool, typer.Option("--online", help="Only devices whose last connection event is online.")
    ] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Only devices whose last event is offline.")
    ] = False,
    offline_for: Annotated[
        str | None,
        typer.Option(
            "--offline-for",
            metavar="SPAN",
            help="Only devices offline at least SPAN (24h, 7d); implies --offline.",
            show_default=False,
        ),
    ] = None,
    limit: LimitOption = None,
    after: AfterOption = None,
    all_rows: AllOption = False,
    json_out: JsonListOption = False,
    jsonl: JsonlOption = False,
    count: CountOption = False,
) -> None:
    """List devices in ID order, optionally filtered; a table shows the first 100. Devices
    never seen by any source are neither --online nor --offline.

    Example:

        fleet device list --model p200 --label site=hamburg --limit 50

        fleet device list --status active --jsonl | jq -r .id

        fleet device list --label site=hamburg --count

        fleet device list --offline-for 24h --jsonl
    """
    from fleet import listing

    ws = workspace(ctx)
    options = ListOptions(
        limit=limit, after=after, all=all_rows, json=json_out, jsonl=jsonl, count=count
    )
    if online and (offline or offline_for is not None):
        raise InvalidInput("--online excludes --offline and --offline-for")
    where: dict[str, Any] = {
        "model": model,
        "labels": parse_labels(label or []),
        "status": status,
        "connection": "online" if online else "offline" if offline else None,
        "offline_for": None if offline_for is None else parse_duration(offline_for),
    }
    devices_of = partial(listing.iter_device_dicts, ws, **where)
    count_of = partial(listing.count_devices, ws, **where)
    json_of = partial(listing.iter_device_json, ws, **where)
    emit(
        Listing(
            fetch=lambda n: devices_of(after=after, limit=n),
            cursor=lambda device: str(device["id"]),
            to_dict=lambda device: device,
            count=lambda: count_of(after=after),
            count_after=lambda key: count_of(after=key, at_most=MORE_CAP),
            noun="devices",
            fetch_json=lambda n: json_of(after=after, limit=n),
        ),
        options,
        _device_table,
    )


def _device_table(rows: list[dict[str, Any]]) -> None:
    view = table("ID", "Model", "Serial", "Status", "Labels", "Certificate expires")
    for device in rows:
        active = [c for c in device["certificates"] if c["status"] == CertStatus.ACTIVE]
        view.add_row(
            device["id"],
            device["model"] or "",
            device["serial"] or "",
            device["status"],
            short_labels(device["labels"]),
            active[0]["not_after"] if active else "-",
        )
    render(view)


@app.command("show")
def show(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(autocompletion=_complete.device_ids)],
    wide: Annotated[
        bool,
        typer.Option("--wide", help="Full certificate serials and fingerprints (else shortened)."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Show one device with all its certificates and the clouds it is registered with.

    Serials and SHA-256 fingerprints are shortened to fit 80 columns; --wide (and --json)
    shows them whole.

    Example:

        fleet device show pump-0042 --json
    """
    from fleet.device_show import show_device

    device = show_device(workspace(ctx), device_id)
    if json_out:
        print_json(device.to_dict())
        return
    render_device(device, wide=wide)


SHORT_HEX = 12  # hex digits of a serial or fingerprint `device show` keeps without --wide


def short_hex(value: str, wide: bool) -> str:
    """``value`` whole with ``wide``, else its first :data:`SHORT_HEX` digits and an ellipsis."""
    return value if wide or len(value) <= SHORT_HEX + 1 else value[:SHORT_HEX] + "…"


def render_device(device: DeviceView, *, wide: bool = True) -> None:
    """A device as aligned ``field  value`` lines plus its certificates, in plain text
    (serials and fingerprints shortened unless ``wide``)."""
    fields = [
        ("id", device.id),
        ("model", device.model or ""),
        ("serial", device.serial or ""),
        ("status", device.status),
        ("created_at", iso(device.created_at) or ""),
        ("updated_at", iso(device.updated_at) or ""),
        ("labels", short_labels(dict(device.labels))),
    ]
    if device.decommissioned_at:
        fields.append(("decommissioned_at", iso(device.decommissioned_at) or ""))
        fields.append(("decommission_reason", device.decommission_reason or ""))
    if device.connection is not None:
        link = device.connection
        fields.append(("connection", link.state or "never seen"))
        if link.state is not None:
            fields.append(("since", f"{iso(link.since)} ({link.source})"))
            fields.append(("last_seen", iso(link.last_seen) or ""))
            if link.reason:
                fields.append(("reason", link.reason))
            if link.reported_firmware:
                fields.append(("reported_firmware", link.reported_firmware))
    if device.firmware is not None:
        _firmware_rows(fields, device.firmware)
    if device.clouds is not None:
        shown = ", ".join(f"{name} ({state})" for name, state in device.clouds.items())
        fields.append(("clouds", shown or "-"))
    print_fields(f"Device {device.id}", fields)
    print_columns(
        "Certificates",
        ("Serial", "Status", "Not after", "Profile", "SHA-256"),
        (
            (
                short_hex(c.serial, wide),
                c.status,
                iso(c.not_after) or "",
                c.profile,
                short_hex(c.fingerprint_sha256, wide),
            )
            for c in device.certificates
        ),
    )


def _firmware_rows(fields: list[tuple[str, str]], firmware: FirmwareView) -> None:
    reported = firmware.reported_version or ("-" if firmware.reported_at else "never reported")
    if firmware.reported_at:
        reported += f" ({iso(firmware.reported_at)}, {firmware.reported_source})"
    fields.append(("firmware", reported))
    if firmware.update_state:
        detail = f": {firmware.update_detail}" if firmware.update_detail else ""
        fields.append(("firmware_update", f"{firmware.update_state}{detail}"))
    if firmware.target_version:
        rollout = f" (rollout {firmware.target_rollout})" if firmware.target_rollout else ""
        fields.append(("firmware_target", f"{firmware.target_version}{rollout}"))
    if firmware.pinned_version:
        fields.append(("firmware_pin", firmware.pinned_version))


@app.command("pin")
def pin(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID")],
    version: Annotated[str, typer.Argument(metavar="VERSION")],
) -> None:
    """Pin a device to a firmware version: rollouts skip it and say so (audited).

    Example:

        fleet device pin pump-0042 1.3.2
    """
    from fleet.firmware.pins import pin_device

    previous = pin_device(workspace(ctx), device_id, version)
    if previous == version:
        message(f"{device_id} is already pinned to {version}: nothing changed")
    else:
        message(f"pinned {device_id} to {version}")


@app.command("unpin")
def unpin(ctx: typer.Context, device_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Remove a device's firmware pin (audited): rollouts include it again.

    Example:

        fleet device unpin pump-0042
    """
    from fleet.firmware.pins import unpin_device

    previous = unpin_device(workspace(ctx), device_id)
    if previous is None:
        message(f"{device_id} is not pinned: nothing changed")
    else:
        message(f"unpinned {device_id} (was {previous})")


@app.command("history")
def history(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(autocompletion=_complete.device_ids)],
    since: Annotated[
        str | None, typer.Option(help="From this time on (ISO 8601, or an age: 24h, 7d).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Before this time (ISO 8601 or an age).")
    ] = None,
    limit: LimitOption = None,
    after: AfterOption = None,
    all_rows: AllOption = False,
    json_out: JsonListOption = False,
    jsonl: JsonlOption = False,
    count: CountOption = False,
) -> None:
    """A device's connection events (online/offline, from MQTT, the clouds or ingested
    files), oldest first.

    Example:

        fleet device history pump-0042 --since 7d

        fleet device history pump-0042 --jsonl | jq -r '.time + " " + .state'
    """
    from fleet.status.history import count_history, iter_history

    ws = workspace(ctx)
    start = parse_timestamp(since) if since is not None else None
    end = parse_timestamp(until) if until is not None else None
    first = _event_cursor(after)
    emit(
        Listing(
            fetch=lambda n: iter_history(
                ws, device_id, since=start, until=end, after=first, limit=n
            ),
            cursor=lambda event: str(event.id),
            to_dict=lambda event: event.to_dict(),
            count=lambda: count_history(ws, device_id, since=start, until=end),
            count_after=lambda key: count_history(
                ws, device_id, since=start, until=end, after=int(key)
            ),
            noun="events",
        ),
        ListOptions(
            limit=limit, after=after, all=all_rows, json=json_out, jsonl=jsonl, count=count
        ),
        _history_table,
    )


def _event_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    if not after.isdigit():
        raise InvalidInput(f"--after {after!r}: give an event ID (a number)")
    return int(after)


def _history_table(rows: list[EventView]) -> None:
    view = table("ID", "Time (UTC)", "State", "Source", "Session", "Reason")
    for event in rows:
        view.add_row(
            str(event.id),
            iso(event.source_time) or "",
            event.state,
            event.source,
            event.session or "",
            event.reason or "",
        )
    render(view)


@app.command("update")
def update(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(autocompletion=_complete.device_ids)],
    model: Annotated[str | None, typer.Option(help="New model.")] = None,
    serial: Annotated[str | None, typer.Option(help="New hardware serial.")] = None,
    label: LabelOption = None,
    remove_label: Annotated[
        list[str] | None, typer.Option("--remove-label", help="Label key to remove; repeatable.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Change a device's model, serial or labels (recorded in the audit trail).

    Example:

        fleet device update pump-0042 --label site=bremen --remove-label rack
    """
    from fleet import devices

    device = devices.update_device(
        workspace(ctx),
        device_id,
        model=model,
        serial=serial,
        set_labels=parse_labels(label or []),
        remove_labels=remove_label or [],
    )
    if json_out:
        print_json(device.to_dict())
        return
    message(f"Updated device {device_id}")


@app.command("decommission")
def decommission(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(autocompletion=_complete.device_ids)],
    reason: Annotated[str | None, typer.Option(help="Why, for the audit trail.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Retire a device: revoke its active certificates; its row and history are kept.

    Example:

        fleet device decommission pump-0042 --reason "replaced after flood damage"
    """
    from fleet import devices

    device = devices.decommission_device(workspace(ctx), device_id, reason=reason)
    if json_out:
        print_json(device.to_dict())
        return
    revoked = [c.serial for c in device.certificates_in(CertStatus.REVOKED)]
    message(f"Decommissioned {device_id}; revoked certificates: {', '.join(revoked) or 'none'}")
    message("Publish a new CRL with `fleet ca crl` so relying parties learn of it.")


@app.command("label")
def label(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument()],
    out: Annotated[
        Path | None,
        typer.Option(help="Write ID-label.png, .svg and .txt here. Default: current dir."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Make a device's label: a QR code with its ID, serial and certificate fingerprint,
    shown here and written as PNG and SVG (the text beside the code) and text.

    Example:

        fleet device label pump-0042 --out labels
    """
    from fleet.onboard.labels import make_label

    made, files = make_label(workspace(ctx), device_id, out)
    if json_out:
        print_json({**made.to_dict(), "files": files.to_dict()})
        return
    message(made.terminal().rstrip("\n"))
    message(f"Label for {device_id}: {files.png}, {files.svg}, {files.text}")
