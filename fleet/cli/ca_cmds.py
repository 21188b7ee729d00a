"""``fleet ca ...``"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fleet.cli._common import ask_passphrase, message, print_json, render, table, workspace
from fleet.errors import InvalidInput
from fleet.files import atomic_write
from fleet.views import iso

app = typer.Typer(help="Inspect the CA, export its chain, publish CRLs.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show the root and issuing CA: subjects, SHA-256 fingerprints, validity.

    Example:

        fleet ca show --json
    """
    from fleet.pki import authority

    info = authority.ca_info(workspace(ctx))
    if json_out:
        print_json(info.to_dict())
        return
    view = table("CA", "Subject", "Not before", "Not after", "SHA-256 fingerprint")
    for role, cert in (("root", info.root), ("issuing", info.issuing)):
        view.add_row(
            role, cert.subject, iso(cert.not_before), iso(cert.not_after), cert.fingerprint_sha256
        )
    render(view)


def _emit(data: bytes, out: Path | None, what: str) -> None:
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        atomic_write(out, data)
        message(f"Wrote {what} to {out}")


@app.command("chain")
def chain(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the CA chain as PEM: the issuing CA, then the root.

    Example:

        fleet ca chain --out chain.pem
    """
    from fleet.pki import authority

    _emit(authority.ca_chain_pem(workspace(ctx)), out, "the CA chain")


@app.command("root")
def root(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the root CA certificate as PEM: what auditors need (`--ca root.pem`,
    `-CAfile root.pem`) to check exports and certificates.

    Example:

        fleet ca root --out root.pem
    """
    from fleet.pki import authority

    _emit(authority.ca_root_pem(workspace(ctx)), out, "the root CA certificate")


@app.command("crl")
def crl(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    if_due: Annotated[
        bool,
        typer.Option(
            "--if-due",
            help="Only re-issue when the CRL in --out is due: missing, another CA's, its next "
            "update within --within (or past), or missing a revocation made since.",
        ),
    ] = False,
    within: Annotated[
        str, typer.Option(help="With --if-due: how close the next update may come (30m, 24h, 2d).")
    ] = "24h",
    reload_pid: Annotated[
        Path | None,
        typer.Option(
            "--reload-pid",
            help="After writing a new CRL to --out, send SIGHUP to the process in this PID "
            "file (Mosquitto re-reads its crlfile; open connections stay open).",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="With --out: print what was done as JSON.")
    ] = False,
) -> None:
    """Sign a new CRL (PEM) listing every revoked certificate; print it or write it to --out.

    A CRL is valid for 7 days: a broker checking it refuses every client after that. Keep it
    current from cron with --if-due, which re-issues only when needed and exits 0 either way
    (stderr says which; --json prints {"issued": ...}).

    Example:

        fleet ca crl --out crl.pem --if-due --reload-pid /run/mosquitto/mosquitto.pid
    """
    from fleet.identifiers import parse_duration
    from fleet.pki.crl import publish_crl, write_crl_file

    if out is None:
        if if_due or reload_pid is not None or json_out:
            raise InvalidInput("--if-due, --reload-pid and --json need --out FILE")
        _emit(publish_crl(workspace(ctx), passphrase=ask_passphrase), None, "the CRL")
        return
    window = parse_duration(within, what="--within") if if_due else None
    result = write_crl_file(
        workspace(ctx),
        out,
        if_due_within=window,
        reload_pidfile=reload_pid,
        passphrase=ask_passphrase,
    )
    if result.issued:
        why = f" ({result.reason})" if if_due else ""
        message(f"Wrote CRL {result.number} to {out}{why}")
        if result.reloaded_pid is not None:
            message(f"Sent SIGHUP to process {result.reloaded_pid} to reload it")
    else:
        message(f"Not re-issued: {result.reason}")
    if json_out:
        print_json(result.to_dict())
