"""``fleet watch URL``: record connection events from an MQTT broker (Sparkplug B host)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet.cli._common import message, workspace


def watch(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="mqtt://HOST[:1883] or mqtts://HOST[:8883].")],
    cert: Annotated[
        Path | None, typer.Option("--cert", help="Client certificate (PEM), for mqtts://.")
    ] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Its private key (PEM).")] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", help="CA certificates the broker's must chain to.")
    ] = None,
    host_id: Annotated[
        str, typer.Option("--host-id", help="Sparkplug host ID: spBv1.0/STATE/{host-id}.")
    ] = "fleet",
    client_id: Annotated[
        str | None,
        typer.Option(
            "--client-id", help="MQTT client ID (the session). [default: fleet-watch-{host-id}]"
        ),
    ] = None,
    node_id: Annotated[
        str, typer.Option("--node-id", help="Device ID of an edge node: {group}, {node}.")
    ] = "{node}",
    device_id: Annotated[
        str,
        typer.Option(
            "--device-id", help="Device ID of a Sparkplug device: {group}, {node}, {device}."
        ),
    ] = "{node}:{device}",
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Commit after this many messages...")
    ] = 5000,
    batch_ms: Annotated[int, typer.Option("--batch-ms", help="...or this many ms.")] = 200,
    session_expiry: Annotated[
        int, typer.Option("--session-expiry", help="Seconds the broker keeps the session.")
    ] = 7 * 24 * 3600,
    summary: Annotated[
        float, typer.Option("--summary", help="Seconds between summary lines on stderr.")
    ] = 60.0,
) -> None:
    """Record devices going online and offline, as a Sparkplug B host application.

    Subscribes (QoS 1, persistent session) to spBv1.0/+/NBIRTH/+, NDEATH, DBIRTH, DDEATH and
    to fleet/{device_id}/status (payload online/offline, retained: the last-will convention
    for devices that do not speak Sparkplug). A message is acknowledged only once its event
    is committed: killed and restarted, the watcher loses nothing and records nothing twice.
    Runs until SIGTERM or Ctrl-C. Messages go to stderr. Exit 1 when the broker cannot be
    reached or refuses the watcher, 2 on bad options.

    Example:

        fleet watch mqtts://broker.example:8883 --cert host.pem --key host.key --ca ca.pem
    """
    from fleet.status.watch import WatchOptions
    from fleet.status.watch import watch as run

    options = WatchOptions(
        url=url,
        host_id=host_id,
        client_id=client_id,
        cert=cert,
        key=key,
        ca=ca,
        node_id=node_id,
        device_id=device_id,
        batch_size=batch_size,
        batch_ms=batch_ms,
        session_expiry=session_expiry,
        summary_seconds=summary,
    )
    run(workspace(ctx), options, say=message)
