"""``fleet broker ...``"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet.cli._common import ask_passphrase, message, print_json, workspace

app = typer.Typer(
    help="Set up an MQTT broker that accepts only fleet's devices.", no_args_is_help=True
)


@app.command("mosquitto")
def mosquitto(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Folder to write (must not exist, or be empty).", show_default=False
        ),
    ],
    hostname: Annotated[
        list[str] | None,
        typer.Option(
            "--hostname",
            help="A DNS name devices reach the broker by (repeatable; in its certificate).",
            show_default=False,
        ),
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option(
            "--ip",
            help="An IP address devices reach the broker at (repeatable; in its certificate).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="The TLS listener's port.")] = 8883,
    bind: Annotated[
        str | None,
        typer.Option(
            help="Listen on this address only (default: every interface).", show_default=False
        ),
    ] = None,
    host_id: Annotated[
        str,
        typer.Option(help="CN of the host identity (`fleet watch`) and its Sparkplug host ID."),
    ] = "fleet-watch",
    user: Annotated[
        str, typer.Option(help="The user Mosquitto drops to when started as root.")
    ] = "mosquitto",
    owner: Annotated[
        str | None,
        typer.Option(
            help="Give server.key.pem to this user (as root; usually the same as --user).",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(help="Mosquitto's persistence_location (sessions, queued messages).")
    ] = Path("/var/lib/mosquitto"),
    pid_file: Annotated[
        Path, typer.Option(help="Mosquitto's pid_file (for `fleet ca crl --reload-pid`).")
    ] = Path("/run/mosquitto/mosquitto.pid"),
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace a previous output in --out (new keys and certificates)."
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print what was written as JSON.")
    ] = False,
) -> None:
    """Write what a Mosquitto 2.x broker needs to accept only fleet's devices: a server
    certificate (`server` profile), the CA chain, the current CRL, an ACL (each device, by its
    certificate's CN, reads and writes only its own topics; the host identity reads Sparkplug),
    mosquitto.conf, and the client identity of `fleet watch` in host/ (`host` profile).

    Both certificates are recorded in the audit trail (ca.server_cert, ca.host_cert) before
    they are written. The key is 0600: give it to the broker's user with --owner (as root) or
    the chown printed. Keep the CRL current with `fleet ca crl --out DIR/crl.pem --if-due`.

    Example:

        fleet broker mosquitto --out /etc/mosquitto/fleet --hostname mqtt.example --owner mosquitto
    """
    import ipaddress

    from fleet.broker.mosquitto import BrokerRequest, parse_ip_addresses, write_mosquitto
    from fleet.errors import InvalidInput

    try:
        listen = ipaddress.ip_address(bind) if bind is not None else None
    except ValueError:
        raise InvalidInput(f"--bind {bind!r} is not an IP address") from None
    request = BrokerRequest(
        out_dir=out,
        hostnames=tuple(hostname or ()),
        ip_addresses=parse_ip_addresses(ip or ()),
        port=port,
        bind=listen,
        host_id=host_id,
        user=user,
        owner=owner,
        data_dir=data_dir,
        pid_file=pid_file,
        force=force,
    )
    setup = write_mosquitto(workspace(ctx), request, passphrase=ask_passphrase)
    if json_out:
        print_json(setup.to_dict())
    action = "Replaced" if setup.replaced else "Wrote"
    message(f"{action} the Mosquitto configuration in {setup.out_dir}")
    message(f"  server certificate {setup.server.serial} ({setup.server.subject})")
    message(f"  host identity {setup.host.serial} ({setup.host.subject}) in host/")
    message(f"  CRL {setup.crl_number}")
    message("Next:")
    for step in setup.next_steps:
        message(f"  - {step}")
