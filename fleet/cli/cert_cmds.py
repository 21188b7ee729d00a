"""``fleet cert ...``"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleet.cli import _complete
from fleet.cli._bundle import P12_PASSWORD_ENV, FormatOption, P12EnvOption, bundle_format
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
from fleet.identifiers import parse_duration
from fleet.statuses import CertStatus
from fleet.views import iso

if TYPE_CHECKING:
    from fleet.views import CertificateView

app = typer.Typer(help="List, renew and revoke device certificates.", no_args_is_help=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


@app.command("list")
def list_(
    ctx: typer.Context,
    device: Annotated[
        str | None,
        typer.Option(help="Only this device's certificates.", autocompletion=_complete.device_ids),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            help=f"{CertStatus.ACTIVE}, {CertStatus.REVOKED} or {CertStatus.EXPIRED}.",
            show_default=False,
        ),
    ] = None,
    expiring_within: Annotated[
        str | None,
        typer.Option(
            "--expiring-within",
            metavar="SPAN",
            help="Only valid ones expiring within SPAN: 30d, 12h, or days (30).",
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
    """List certificates in serial order (lowercase hex); a table shows the first 100.

    Example:

        fleet cert list --expiring-within 30d --json

        fleet cert list --status revoked --limit 50 --after 5f3a9c
    """
    from fleet import listing

    ws = workspace(ctx)
    options = ListOptions(
        limit=limit, after=after, all=all_rows, json=json_out, jsonl=jsonl, count=count
    )
    span = (
        parse_duration(expiring_within, what="--expiring-within")
        if expiring_within is not None
        else None
    )
    certificates_of = partial(
        listing.iter_certificates, ws, device_id=device, status=status, expiring_within=span
    )
    count_of = partial(
        listing.count_certificates, ws, device_id=device, status=status, expiring_within=span
    )
    emit(
        Listing(
            fetch=lambda n: certificates_of(after=after, limit=n),
            cursor=lambda cert: cert.serial,
            to_dict=lambda cert: cert.to_dict(),
            count=lambda: count_of(after=after),
            count_after=lambda key: count_of(after=key),
            noun="certificates",
        ),
        options,
        _certificate_table,
    )


def _certificate_table(rows: list[CertificateView]) -> None:
    view = table("Serial", "Device", "Status", "Not before", "Not after", "Profile")
    for cert in rows:
        view.add_row(
            cert.serial,
            cert.device_id,
            cert.status,
            iso(cert.not_before),
            iso(cert.not_after),
            cert.profile,
        )
    render(view)


@app.command("renew")
def renew(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(autocompletion=_complete.device_ids)],
    csr: Annotated[Path | None, typer.Option(help="Sign this CSR instead of a new key.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Replace the bundle in OUT/DEVICE_ID/. Default: current dir."),
    ] = None,
    revoke_old: Annotated[
        bool, typer.Option("--revoke-old", help="Revoke the previous certificates (superseded).")
    ] = False,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Profile; default: the newest certificate's.",
            autocompletion=_complete.profile_names,
        ),
    ] = None,
    key_type: Annotated[str | None, typer.Option("--key-type", help="Key type override.")] = None,
    fmt: FormatOption = "pem",
    p12_password_env: P12EnvOption = P12_PASSWORD_ENV,
    json_out: JsonOption = False,
) -> None:
    """Issue a new certificate for a device and replace its bundle.

    Example:

        fleet cert renew pump-0042 --out ids --revoke-old

        FLEET_P12_PASSWORD=... fleet cert renew pump-0042 --out ids --format p12
    """
    from fleet import certs

    cert = certs.renew_certificate(
        workspace(ctx),
        device_id,
        csr=csr,
        out_dir=out,
        revoke_old=revoke_old,
        profile=profile,
        key_type=key_type,
        passphrase=ask_passphrase,
        bundle_format=bundle_format(fmt, p12_password_env),
    )
    if json_out:
        print_json(cert.to_dict())
        return
    message(f"Renewed {device_id}: certificate {cert.serial}, valid until {iso(cert.not_after)}")


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(help="Certificate serial (hex).")],
    reason: Annotated[
        str,
        typer.Option(help="RFC 5280 reason: keyCompromise, superseded, cessationOfOperation..."),
    ] = "unspecified",
    json_out: JsonOption = False,
) -> None:
    """Revoke a certificate; the next `fleet ca crl` lists it.

    Example:

        fleet cert revoke 3f9a0c... --reason keyCompromise
    """
    from fleet import certs

    cert = certs.revoke_certificate(workspace(ctx), serial, reason=reason)
    if json_out:
        print_json(cert.to_dict())
        return
    message(f"Revoked certificate {cert.serial} of {cert.device_id} ({cert.revocation_reason})")
