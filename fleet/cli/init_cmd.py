"""``fleet init``"""

from __future__ import annotations

from typing import Annotated

import typer

from fleet.cli._common import ask_passphrase, message, print_json, workspace


def init(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Organisation name used in the CA subjects.")] = "fleet",
    key_type: Annotated[
        str, typer.Option("--key-type", help="CA key type: ec-p256, ec-p384 or rsa-3072.")
    ] = "ec-p256",
    allow_weak_passphrase: Annotated[
        bool,
        typer.Option(
            "--allow-weak-passphrase",
            help="Accept a CA passphrase shorter than 12 characters (throwaway workspaces).",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Create the workspace: a migrated registry, a root CA and an issuing CA.

    The CA keys are encrypted with the passphrase from --passphrase-file, FLEET_CA_PASSPHRASE
    or FLEET_CA_PASSPHRASE_FILE, or one you are asked for: at least 12 characters unless
    --allow-weak-passphrase. Refuses to touch an initialised workspace. Ends with the next
    steps: back up ca/ and the passphrase, give auditors the root certificate.

    Example:

        fleet --home ./acme init --name "Acme Pumps" --key-type ec-p384
    """
    from fleet.pki.authority import init_workspace

    ws = workspace(ctx)
    result = init_workspace(
        ws,
        name=name,
        key_type=key_type,
        passphrase=lambda: ask_passphrase(confirm=True),
        allow_weak_passphrase=allow_weak_passphrase,
    )
    if json_out:
        print_json(result.to_dict())
        return
    message(f"Initialised fleet workspace at {result.home}")
    message(f"  registry    {result.registry}")
    root, issuing = result.ca.root, result.ca.issuing
    message(f"  root CA     {root.subject}  sha256 {root.fingerprint_sha256}")
    message(f"  issuing CA  {issuing.subject}  sha256 {issuing.fingerprint_sha256}")
    message("Next steps:")
    message(f"  1. Back up {result.home / 'ca'} and, kept apart from it, the CA passphrase:")
    message("     without both no certificate can be issued, renewed or revoked.")
    message("  2. Give auditors the root certificate: fleet ca root --out root.pem")
