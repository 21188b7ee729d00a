"""``fleet ca ...``"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fleet.cli._common import ask_passphrase, message, print_json, render, table, workspace
from fleet.files import PendingFile, atomic_write
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


@app.command("crl")
def crl(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Sign and print a new CRL (PEM) listing every revoked certificate.

    Example:

        fleet ca crl --out fleet.crl.pem
    """
    from fleet.pki.crl import publish_crl

    if out is None:
        _emit(publish_crl(workspace(ctx), passphrase=ask_passphrase), None, "the CRL")
        return
    # The file is created (empty, under a temporary name) before the CRL number is taken:
    # an unwritable --out fails with nothing recorded.
    with PendingFile(out) as pending:
        pending.write(publish_crl(workspace(ctx), passphrase=ask_passphrase))
        pending.commit()
    message(f"Wrote the CRL to {out}")
