"""The audit key: signs checkpoints of the audit trail's head, outside the registry.

The issuing CA certifies it at ``fleet init`` (or at ``fleet audit checkpoint`` in an older
workspace); the ``audit.key`` audit event records the certificate. Unlike the CA and the
export signer, its key is kept *unencrypted* (0600): every command that writes the registry
(``fleet device update``, ``fleet cert revoke``... which never ask for the CA passphrase)
must be able to sign a checkpoint after its commit. Files::

    <home>/audit/audit.key.pem    (0600, PKCS#8, no passphrase; directory 0700)
    <home>/audit/audit.cert.pem   (end-entity, keyUsage digitalSignature only)

What this protects, and what it does not, is in docs/security.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.errors import RegistryError
from fleet.files import write_new_file
from fleet.pki.issue import issue_certificate
from fleet.pki.issuer import Issuer
from fleet.pki.keys import fingerprint_sha256, verify_issued_by
from fleet.pki.profiles import signer_profile

AUDIT_DIR = "audit"
AUDIT_KEY_FILE = "audit.key.pem"
AUDIT_CERT_FILE = "audit.cert.pem"
AUDIT_VALIDITY = timedelta(days=10 * 365)


def audit_dir(home: Path) -> Path:
    """Where a workspace keeps its audit key and checkpoints."""
    return home / AUDIT_DIR


@dataclasses.dataclass(frozen=True)
class AuditKey:
    """The audit key and its certificate; ``key_id`` is the certificate's SHA-256."""

    key: ec.EllipticCurvePrivateKey = dataclasses.field(repr=False)
    cert: x509.Certificate

    @property
    def key_id(self) -> str:
        """The certificate's SHA-256 fingerprint (what checkpoints name their signer by)."""
        return fingerprint_sha256(self.cert)

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 signature (DER) over ``data``."""
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def create_audit_key(home: Path, issuer: Issuer, now: datetime) -> tuple[AuditKey, bool]:
    """The workspace's audit key: loaded if present, else issued by ``issuer`` and written.

    Returns the key and whether it is new (the caller records a new one: ``audit.key``).
    Files are written beside their final names and renamed in (all or nothing).
    """
    existing = load_audit_key(home)
    if existing is not None and verify_issued_by(existing.cert, issuer.cert):
        return existing, False
    org = issuer.cert.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
    name = str(org[0].value) if org else "fleet"
    profile = signer_profile(
        "audit-checkpoints",
        "fleet audit checkpoint signing (digitalSignature only)",
        AUDIT_VALIDITY.days,
        name,
    )
    issued = issue_certificate(issuer, f"{name} Audit Checkpoints"[:64], profile, now=now)
    assert issued.key_pem is not None  # generated, not from a CSR
    folder = audit_dir(home)
    folder.mkdir(mode=0o700, exist_ok=True)
    key_tmp, cert_tmp = folder / f".{AUDIT_KEY_FILE}.tmp", folder / f".{AUDIT_CERT_FILE}.tmp"
    try:
        key_tmp.unlink(missing_ok=True)
        write_new_file(key_tmp, issued.key_pem, private=True)
        cert_tmp.unlink(missing_ok=True)
        cert_tmp.write_bytes(issued.cert_pem.encode("ascii"))
        os.replace(cert_tmp, folder / AUDIT_CERT_FILE)
        os.replace(key_tmp, folder / AUDIT_KEY_FILE)
    finally:
        key_tmp.unlink(missing_ok=True)
        cert_tmp.unlink(missing_ok=True)
    loaded = load_audit_key(home)
    assert loaded is not None
    return loaded, True


def remove_audit_key(home: Path) -> None:
    """Delete the audit key files (used to undo a failed ``init``)."""
    for name in (AUDIT_KEY_FILE, AUDIT_CERT_FILE):
        (audit_dir(home) / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty (checkpoints), or already gone
        audit_dir(home).rmdir()


_cache: dict[tuple[str, int, int], AuditKey] = {}


def load_audit_key(home: Path) -> AuditKey | None:
    """The audit key, or ``None`` if the workspace has none. Cached per file version (a
    provisioning run signs a checkpoint per batch). Raises :class:`RegistryError` when it
    exists but cannot be read (e.g. a process without access to it)."""
    folder = audit_dir(home)
    key_path, cert_path = folder / AUDIT_KEY_FILE, folder / AUDIT_CERT_FILE
    try:
        stat = key_path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"cannot read the audit key in {folder}: {exc.strerror}") from exc
    cache_key = (str(key_path), stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(cache_key)
    if cached is not None:
        return cached
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise RegistryError(f"cannot read the audit key in {folder}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RegistryError(f"the audit key in {folder} is not an EC key")
    loaded = AuditKey(key, cert)
    _cache.clear()
    _cache[cache_key] = loaded
    return loaded


def load_audit_certificate(home: Path) -> x509.Certificate | None:
    """The audit key's certificate (no private key needed), or ``None``."""
    path = audit_dir(home) / AUDIT_CERT_FILE
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the audit certificate {path}: {exc}") from exc


def check_signature(
    cert: x509.Certificate, issuing: x509.Certificate, data: bytes, signature: bytes
) -> str | None:
    """``None`` if ``cert`` (issued by ``issuing``) signed ``data``; else why not."""
    if not verify_issued_by(cert, issuing):
        return "the audit certificate was not issued by this workspace's issuing CA"
    public: Any = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return "the audit certificate does not hold an EC key"
    try:
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "bad signature"
    return None
