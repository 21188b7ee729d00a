"""Helpers for tests: lint certificates/CRLs with pkilint and verify them with OpenSSL.

This is a plain helper module (not a test file). Import it as
``from tests.pkitools import ...`` or ``from pkitools import ...``.

pkilint CLI facts (pkilint 0.13.3):

* ``lint_pkix_cert lint -s NOTICE -f JSON FILE``
* ``lint_pkix_signer_signee_cert_chain lint -s NOTICE -f JSON ISSUER SUBJECT``
* ``lint_crl lint -t CRL -p PKIX -s NOTICE -f JSON FILE``

Input is auto-detected (PEM, DER or base64). The exit code is the number of
findings at or above the threshold (clamped to 255); 1 with a message on
stderr also means "failed to load". We therefore ask for JSON output and parse
it: anything that is not a well-formed report is treated as a linter crash and
raises :class:`PkilintError`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = [
    "PkilintError",
    "find_tool",
    "openssl_verify",
    "openssl_verify_crl",
    "pkilint_cert",
    "pkilint_chain",
    "pkilint_crl",
]

LINT_TIMEOUT = 120
OPENSSL_TIMEOUT = 60
SEVERITY = "NOTICE"


class PkilintError(RuntimeError):
    """The linter itself failed (crash, unreadable input, unparsable output)."""


def find_tool(name: str) -> str:
    """Locate a console script, preferring the one next to this interpreter."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} not found next to {sys.executable} nor on PATH")


def _run_pkilint(tool: str, args: list[str]) -> list[str]:
    cmd = [find_tool(tool), *args]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=LINT_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    try:
        report = json.loads(proc.stdout)
        results = report["results"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PkilintError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        ) from exc

    findings: list[str] = []
    for result in results:
        path = result.get("node_path", "")
        validator = result.get("validator", "")
        for desc in result.get("finding_descriptions", []):
            line = f"{desc['severity']} {desc['code']} @ {path} [{validator}]"
            if desc.get("message"):
                line += f": {desc['message']}"
            findings.append(line)

    if proc.returncode != min(len(findings), 255):
        raise PkilintError(
            f"{' '.join(cmd)}: exit code {proc.returncode} does not match "
            f"{len(findings)} finding(s)\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return findings


def pkilint_cert(pem_path: Path | str) -> list[str]:
    """RFC 5280 lint of one certificate at NOTICE; empty list means clean."""
    return _run_pkilint("lint_pkix_cert", ["lint", "-s", SEVERITY, "-f", "JSON", str(pem_path)])


def pkilint_chain(issuer_pem: Path | str, subject_pem: Path | str) -> list[str]:
    """Issuer/subject checks (name chaining, AKI==SKI, signature, policies)."""
    return _run_pkilint(
        "lint_pkix_signer_signee_cert_chain",
        ["lint", "-s", SEVERITY, "-f", "JSON", str(issuer_pem), str(subject_pem)],
    )


def pkilint_crl(crl_pem: Path | str, crl_type: str = "CRL") -> list[str]:
    """RFC 5280 lint of a CRL (PEM or DER) at NOTICE; ``crl_type`` is CRL or ARL."""
    return _run_pkilint(
        "lint_crl",
        ["lint", "-t", crl_type, "-p", "PKIX", "-s", SEVERITY, "-f", "JSON", str(crl_pem)],
    )


def _openssl(args: list[str]) -> subprocess.CompletedProcess[str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl not found on PATH")
    return subprocess.run(
        [openssl, *args],
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def openssl_verify(
    root: Path | str, untrusted: Path | str | None, leaf: Path | str, *extra: str
) -> tuple[bool, str]:
    """``openssl verify -x509_strict``; returns (ok, combined output).

    ``untrusted`` may be None (leaf issued directly by root). ``extra`` is
    passed through, e.g. ``"-purpose", "sslclient"`` or ``"-crl_check", "-CRLfile", crl``.
    """
    args = ["verify", "-x509_strict", "-CAfile", str(root)]
    if untrusted is not None:
        args += ["-untrusted", str(untrusted)]
    args += [*extra, str(leaf)]
    proc = _openssl(args)
    output = (proc.stdout + proc.stderr).strip()
    ok = proc.returncode == 0 and output.endswith(": OK")
    return ok, output


def openssl_verify_crl(crl: Path | str, ca_file: Path | str) -> tuple[bool, str]:
    """Check a CRL's signature against ``ca_file`` (the issuer, or a chain bundle)."""
    proc = _openssl(["crl", "-in", str(crl), "-CAfile", str(ca_file), "-noout"])
    output = (proc.stdout + proc.stderr).strip()
    ok = proc.returncode == 0 and "verify OK" in output
    return ok, output
