"""The export-signing certificate: the key that signs exports, issued by the issuing CA.

The issuing CA issues it on first use (an audit event ``ca.export_signer`` records it). It
is an end-entity certificate with keyUsage digitalSignature only, so it can never sign
devices or CRLs. Files, beside the CA's::

    <home>/ca/export-signing.key.pem   (0600, PKCS#8, encrypted with the CA passphrase)
    <home>/ca/export-signing.cert.pem

The firmware-signing certificate (``firmware-signing.{key,cert}.pem``, audit event
``ca.firmware_signer``, keyUsage digitalSignature and extendedKeyUsage codeSigning only, from
``certs/profiles/firmware-signing.toml``) is made and kept the same way: :data:`FIRMWARE_SIGNER`.

The signatures themselves are :mod:`fleet.pki.cms`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from fleet import clock, faults
from fleet.errors import RegistryError
from fleet.files import write_new_file
from fleet.pki import ca
from fleet.pki.authority import summarize_ca_certificate
from fleet.pki.cms import Signer
from fleet.pki.issue import issue_certificate
from fleet.pki.keys import (
    load_private_key_pem,
    passphrase_bytes,
    private_key_pem,
    verify_issued_by,
)
from fleet.pki.profiles import Profile, read_profile, signer_profile
from fleet.registry import audit
from fleet.registry.db import write_session
from fleet.resources import data_dir
from fleet.workspace import Passphrase, Workspace, require_passphrase

SIGNER_KEY_FILE = "export-signing.key.pem"
SIGNER_CERT_FILE = "export-signing.cert.pem"
SIGNER_VALIDITY = timedelta(days=3 * 365)
# Re-issue a signer this close to expiry, so a fresh signature stays verifiable for a while.
SIGNER_RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class SignerSpec:
    """One of fleet's own signing certificates: its files, profile and audit action."""

    name: str  # file stem under <home>/ca/ and the audit target, e.g. "export-signing"
    title: str  # the common name's suffix after the CA's organization, and in messages
    audit_action: str
    profile: Callable[[str], Profile]  # the organization -> the profile it is issued from

    @property
    def key_file(self) -> str:
        """The key's file name under ``<home>/ca/``."""
        return f"{self.name}.key.pem"

    @property
    def cert_file(self) -> str:
        """The certificate's file name under ``<home>/ca/``."""
        return f"{self.name}.cert.pem"


def _export_profile(organization: str) -> Profile:
    return signer_profile(
        "export-signing",
        "fleet export signing (digitalSignature only)",
        SIGNER_VALIDITY.days,
        organization,
    )


def _firmware_profile(organization: str) -> Profile:
    # fleet's own file, never a workspace override: this certificate signs what devices run
    name = "firmware-signing"
    profile = read_profile(name, data_dir("certs") / "profiles" / f"{name}.toml")
    return dataclasses.replace(profile, subject={**profile.subject, "organization": organization})


EXPORT_SIGNER = SignerSpec("export-signing", "Export Signing", "ca.export_signer", _export_profile)
FIRMWARE_SIGNER = SignerSpec(
    "firmware-signing", "Firmware Signing", "ca.firmware_signer", _firmware_profile
)


def load_signer(
    ws: Workspace, passphrase: Passphrase | None = None, spec: SignerSpec = EXPORT_SIGNER
) -> Signer:
    """The workspace's export signer (or ``spec``'s), issued by the issuing CA (and audited)
    if missing, expired, expiring within 30 days, or issued by a previous issuing CA."""
    secret = passphrase_bytes(require_passphrase(passphrase))
    folder = ca.ca_dir(ws.home)
    issuing, root = ca.load_ca_certificates(ws.home)
    now = clock.now()
    key_path, cert_path = folder / spec.key_file, folder / spec.cert_file
    if key_path.is_file() and cert_path.is_file():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key_pem = key_path.read_bytes()
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read the {spec.name} signer in {folder}: {exc}") from exc
        key = load_private_key_pem(key_pem, secret, what=f"the {spec.name} key")
        fresh = cert.not_valid_after_utc - SIGNER_RENEW_BEFORE > now
        # (a key without its certificate is a run killed between the two renames below)
        if fresh and verify_issued_by(cert, issuing) and key.public_key() == cert.public_key():
            return Signer(key, cert, issuing, root)
    return _issue_signer(ws, secret, now, spec)


def _issue_signer(ws: Workspace, secret: bytes, now: datetime, spec: SignerSpec) -> Signer:
    issuer = ca.load_issuer(ws.home, secret)
    org = issuer.cert.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
    name = str(org[0].value) if org else "fleet"
    profile = spec.profile(name)
    issued = issue_certificate(issuer, f"{name} {spec.title}"[:64], profile, now=now)
    assert issued.key_pem is not None  # generated, not from a CSR
    key = load_private_key_pem(issued.key_pem, None, what=f"the new {spec.name} key")
    cert = issued.certificate()
    folder = ca.ca_dir(ws.home)
    key_path, cert_path = folder / spec.key_file, folder / spec.cert_file
    key_tmp, cert_tmp = folder / f".{spec.key_file}.tmp", folder / f".{spec.cert_file}.tmp"
    try:
        for path in (key_tmp, cert_tmp):
            path.unlink(missing_ok=True)  # left by a killed run: never recorded, or superseded
        write_new_file(key_tmp, private_key_pem(key, secret), private=True)
        faults.hit("after-stage")
        # Recorded first: the certificate reaches the disk only once the audit trail holds it
        # (a run killed before the files are renamed leaves a recorded signer nobody has).
        with write_session(ws.open_registry()) as session:
            audit.append(
                session,
                spec.audit_action,
                spec.name,
                summarize_ca_certificate(cert).to_dict(),
                at=now,
            )
            session.flush()
            faults.hit("before-commit")
        faults.hit("after-commit")
        cert_tmp.write_bytes(issued.cert_pem.encode("ascii"))
        os.replace(key_tmp, key_path)
        os.replace(cert_tmp, cert_path)
    except BaseException:
        for path in (key_tmp, cert_tmp):
            path.unlink(missing_ok=True)
        raise
    return Signer(key, cert, issuer.cert, issuer.root)
