"""The bundle-format options shared by the issuing commands (`device add`, `cert renew`,
`provision`, `onboard`): ``--format pem|p12`` and where the PKCS#12 password comes from."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from fleet.errors import InvalidInput

if TYPE_CHECKING:
    from fleet.pki.bundles import BundleFormat

P12_PASSWORD_ENV = "FLEET_P12_PASSWORD"

FormatOption = Annotated[
    str,
    typer.Option(
        "--format",
        "--bundle-format",
        metavar="pem|p12",
        help="Bundle format: pem (key.pem, cert.pem, chain.pem) or p12 (bundle.p12 with key, "
        "certificate and chain, password-protected, instead of key.pem).",
    ),
]
P12EnvOption = Annotated[
    str,
    typer.Option(
        "--p12-password-env",
        metavar="NAME",
        help="With --format p12: read the PKCS#12 password from this environment variable; "
        "unset: ask on the terminal.",
    ),
]


def p12_password_from(env_name: str) -> Callable[[], str]:
    """A function giving the PKCS#12 password: ``$env_name``, else a hidden prompt (typed
    twice) on a terminal, else a clear error. Called once the request is known valid."""

    def ask() -> str:
        value = os.environ.get(env_name)
        if value:
            return value
        if not sys.stdin.isatty():
            raise InvalidInput(f"the p12 password is needed: set {env_name} (no terminal)")
        typed: str = typer.prompt(
            "PKCS#12 password", hide_input=True, confirmation_prompt=True, err=True
        )
        return typed

    return ask


def bundle_format(kind: str, password_env: str) -> BundleFormat | None:
    """The :class:`~fleet.pki.bundles.BundleFormat` of ``--format`` (None: PEM, the default)."""
    from fleet.pki.bundles import BundleFormat

    if kind == "pem":
        return None
    if kind != "p12":
        raise InvalidInput(f"--format {kind!r}: use pem or p12")
    return BundleFormat("p12", p12_password_from(password_env))
