"""``fleet export ...`` (and the renderer shared with ``fleet audit export``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fleet.cli._common import ask_passphrase, fail, message, print_json, workspace
from fleet.errors import IntegrityError
from fleet.identifiers import parse_as_of

# No help= here: the callback's docstring (with its examples) is the group's help.
app = typer.Typer(invoke_without_command=True, subcommand_metavar="[verify FILE]")

OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Write FILE (plus FILE.manifest.json and .p7s signatures). Default: stdout.",
        show_default=False,
    ),
]
SignOption = Annotated[
    bool | None,
    typer.Option(
        "--sign/--no-sign",
        help="Write a signed manifest beside --out (the default when --out is given).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


def render_summary(result: dict[str, Any], json_out: bool) -> None:
    """Report where an export went (stderr), or its JSON summary (stdout)."""
    if json_out:
        print_json(result)
        return
    if result.get("file") is None:
        message(f"{result['rows']} row(s) exported")
        return
    message(f"Exported {result['rows']} row(s) to {result['file']} (sha256 {result['sha256']})")
    if result.get("manifest"):
        message(f"  manifest   {result['manifest']}")
        message(f"  signatures {result['signature']}, {result['manifest_signature']}")


@app.callback()
def export_devices(
    ctx: typer.Context,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="Output format: csv, json or jsonl.")
    ] = "csv",
    out: OutOption = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", help="Only devices with KEY=VALUE; repeatable."),
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="Only devices in this state: active, decommissioned.")
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            help="FIELD=VALUE filter; fields: model, serial, status, cert_status, label.KEY.",
        ),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="The registry as it was at this time (ISO 8601 or an age such as 30d; a bare "
            "date is the end of that day, UTC), rebuilt from the audit trail.",
        ),
    ] = None,
    sign: SignOption = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace a signed export already at --out (else exit 4)."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Export every device with its current certificate, labels, status and clouds.

    CSV is flat and formula-safe; JSON and JSONL are nested. With --out the file appears
    whole or not at all, beside FILE.manifest.json and the signatures FILE.p7s and
    FILE.manifest.json.p7s; a signed export already at FILE is kept (exit 4) unless --force.
    --as-of before the first audit event or in the future warns on stderr. An auditor with
    only root.pem (`fleet ca root --out root.pem`) checks them with:

        openssl cms -verify -binary -inform PEM -in FILE.p7s -content FILE
        -CAfile root.pem -purpose any -out /dev/null

    Example:

        fleet export -f csv --out devices.csv --label site=hh --as-of 2026-06-30

        fleet export verify devices.csv --ca root.pem
    """
    from fleet import export

    if ctx.invoked_subcommand is not None:
        return
    filters = export.parse_filters(
        model=model, status=status, labels=label or [], where=where or []
    )
    moment = parse_as_of(as_of) if as_of is not None else None
    result = export.export_devices(
        workspace(ctx),
        fmt=fmt,
        out=out,
        filters=filters,
        as_of=moment,
        sign=sign,
        passphrase=ask_passphrase,
        force=force,
    )
    for warning in result.get("warnings", []):
        message(f"warning: {warning}")
    if out is not None or json_out:
        render_summary(result, json_out)


@app.command("verify")
def verify(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="The exported file (FILE.manifest.json and FILE*.p7s beside it).")
    ],
    ca: Annotated[
        Path | None,
        typer.Option(
            "--ca", help="Trusted root certificate (PEM). Default: this workspace's root CA."
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Check an export's signatures, their chain to the root, the manifest's hash and row count.

    Exits 7 and names every failed check (signature, chain, hash, row count, audit chain).

    Example:

        fleet export verify devices.csv --ca root.pem
    """
    from fleet import export

    report = export.verify_export(file, root=ca, ws=None if ca else workspace(ctx))
    if json_out:
        print_json(report.to_dict())
    else:
        for check in report.checks:
            message(f"{'ok' if check.ok else 'FAILED':6} {check.name}: {check.detail}")
    if not report.ok:
        failed = "; ".join(f"{c.name} ({c.detail})" for c in report.failed())
        fail(f"{file} does not verify: {failed}", IntegrityError.exit_code)
    if not json_out:
        message(f"{file}: verified")
