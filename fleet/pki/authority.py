"""The workspace's CA as a whole: creating it with the registry (``init``), its certificates,
and the CRLs it publishes."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from sqlalchemy import func
from sqlmodel import Session, select

from fleet import clock
from fleet.errors import Conflict, InvalidInput
from fleet.pki import audit_key, ca
from fleet.pki.keys import cert_pem, fingerprint_sha256, key_type_of, serial_hex
from fleet.registry import audit, db, migrations
from fleet.registry.db import read_session, write_session
from fleet.registry.models import AuditEvent
from fleet.views import CaCertificateSummary, CaInfo, InitResult
from fleet.workspace import Passphrase, Workspace, require_passphrase

MIN_PASSPHRASE_LENGTH = 12  # characters; `init --allow-weak-passphrase` takes fewer


def init_workspace(
    ws: Workspace,
    *,
    name: str = "fleet",
    key_type: str = "ec-p256",
    passphrase: Passphrase | None = None,
    allow_weak_passphrase: bool = False,
) -> InitResult:
    """Create the registry (migrated to the current schema) and the root and issuing CA.

    Refuses, changing nothing, when the workspace already has a CA or the registry already
    recorded one, and (:class:`InvalidInput`) a passphrase shorter than
    :data:`MIN_PASSPHRASE_LENGTH` characters unless ``allow_weak_passphrase``.
    """
    ca.check_ca_request(name, key_type)  # before anything is created
    secret = require_passphrase(passphrase)
    length = len(secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret)
    if length < MIN_PASSPHRASE_LENGTH and not allow_weak_passphrase:
        raise InvalidInput(
            f"the CA passphrase has {length} characters: use at least {MIN_PASSPHRASE_LENGTH} "
            "(or --allow-weak-passphrase for a throwaway workspace)"
        )
    if ca.ca_dir(ws.home).exists():
        raise Conflict(f"{ws.home} is already initialised (it has a CA in {ca.ca_dir(ws.home)})")
    ws.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    db.create_sqlite_file(ws.registry_url)
    revision = migrations.current_revision(ws.engine)
    if revision is not None:
        migrations.check_schema(ws.engine)
        with read_session(ws.engine) as session:
            recorded = session.exec(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "ca.init")
            ).one()
        if recorded:
            raise Conflict(
                f"the registry at {db.redact_url(ws.registry_url)} already belongs to a CA"
            )
    migrations.upgrade(ws.engine)
    now = clock.now()
    issuer = ca.create_ca(ws.home, name, key_type, secret, now=now)
    try:
        authority = describe_ca(issuer.root, issuer.cert)
        key, _new = audit_key.create_audit_key(ws.home, issuer, now)
        details = {
            "name": name,
            "key_type": key_type,
            **authority.to_dict(),
            "audit_key": summarize_ca_certificate(key.cert).to_dict(),
        }
        with write_session(ws.engine) as session:
            audit.append(session, "ca.init", name, details, at=now)
    except BaseException:
        audit_key.remove_audit_key(ws.home)
        ca.remove_ca(ws.home)
        raise
    return InitResult(
        home=ws.home,
        registry=db.redact_url(ws.registry_url),
        name=name,
        key_type=key_type,
        ca=authority,
    )


def record_audit_key(session: Session, key: audit_key.AuditKey, now: datetime) -> None:
    """The ``audit.key`` event: the issuing CA certified this audit (checkpoint) key (a new
    workspace records it in its ``ca.init`` event instead, as ``audit_key``)."""
    audit.append(
        session, "audit.key", "audit-checkpoints", summarize_ca_certificate(key.cert).to_dict(),
        at=now,
    )  # fmt: skip


def describe_ca(root: x509.Certificate, issuing: x509.Certificate) -> CaInfo:
    """The summaries of the root and the issuing CA certificate."""
    return CaInfo(root=summarize_ca_certificate(root), issuing=summarize_ca_certificate(issuing))


def summarize_ca_certificate(cert: x509.Certificate) -> CaCertificateSummary:
    """Subject, issuer, serial, SHA-256 fingerprint, validity and key type of a CA certificate."""
    return CaCertificateSummary(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=serial_hex(cert.serial_number),
        fingerprint_sha256=fingerprint_sha256(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=key_type_of(cert.public_key()),
    )


def ca_info(ws: Workspace) -> CaInfo:
    """Subjects, fingerprints and validity of the root and issuing CA (no passphrase needed)."""
    issuing, root = ca.load_ca_certificates(ws.home)
    return describe_ca(root, issuing)


def ca_chain_pem(ws: Workspace) -> bytes:
    """The issuing CA certificate followed by the root, PEM."""
    issuing, root = ca.load_ca_certificates(ws.home)
    return cert_pem(issuing) + cert_pem(root)


def ca_root_pem(ws: Workspace) -> bytes:
    """The root CA certificate alone, PEM: the trust anchor auditors check exports with."""
    _issuing, root = ca.load_ca_certificates(ws.home)
    return cert_pem(root)
