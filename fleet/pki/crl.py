"""Revocation: marking certificates revoked in the registry, and the CRLs that publish it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet import clock
from fleet.errors import IntegrityError, InvalidInput
from fleet.pki import ca
from fleet.pki.issuer import Issuer
from fleet.pki.keys import authority_key_identifier
from fleet.registry import audit
from fleet.registry.db import write_session
from fleet.registry.models import AuditEvent, Certificate, CrlRecord
from fleet.statuses import CertStatus
from fleet.workspace import Passphrase, Workspace, require_passphrase

CRL_VALIDITY = timedelta(days=7)
# RFC 5280 §5.3.1 reason names, as the CLI accepts them.
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}


def normalize_reason(reason: str) -> str:
    """Map ``key-compromise``, ``KEY_COMPROMISE``, ``keyCompromise``... to the RFC name."""
    folded = reason.replace("-", "").replace("_", "").lower()
    for name in REVOCATION_REASONS:
        if name.lower() == folded:
            return name
    raise InvalidInput(
        f"unknown revocation reason {reason!r}; use one of {', '.join(REVOCATION_REASONS)}"
    )


def revoke_rows(session: Session, rows: Sequence[Certificate], reason: str, now: datetime) -> None:
    """Mark ``rows`` revoked (used inside a caller's transaction; no audit event)."""
    for row in rows:
        row.status = CertStatus.REVOKED
        row.revoked_at = now
        row.revocation_reason = reason
        session.add(row)


@dataclass(frozen=True)
class RevokedEntry:
    """One line of a CRL."""

    serial: str
    revoked_at: datetime
    reason: str | None


def build_crl(
    issuer: Issuer,
    revoked: list[RevokedEntry],
    number: int,
    *,
    now: datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by the issuing CA listing ``revoked``, with CRL number and AKI."""
    now = now or clock.now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_identifier(issuer.cert), critical=False)
    )
    for entry in revoked:
        item = x509.RevokedCertificateBuilder().serial_number(int(entry.serial, 16))
        item = item.revocation_date(entry.revoked_at)
        # RFC 5280 5.3.1: the reason code "unspecified" SHOULD be absent.
        if entry.reason and entry.reason != "unspecified":
            item = item.add_extension(
                x509.CRLReason(REVOCATION_REASONS[entry.reason]), critical=False
            )
        builder = builder.add_revoked_certificate(item.build())
    return issuer.sign_crl(builder)


# The events that revoke certificates, and where their details name the serials.
_REVOKING_ACTIONS = ("cert.revoke", "cert.renew", "device.decommission")


def recorded_revocations(session: Session) -> dict[str, int]:
    """Serial -> the audit event that revoked it, for every revocation the trail records."""
    events = session.exec(
        select(AuditEvent.seq, AuditEvent.details)
        .where(col(AuditEvent.action).in_(_REVOKING_ACTIONS))
        .order_by(col(AuditEvent.seq))
    ).all()
    revoked: dict[str, int] = {}
    for seq, details_text in events:
        details = json.loads(details_text)
        serials = [details["serial"]] if "serial" in details else details.get("revoked") or []
        for serial in serials:
            revoked.setdefault(str(serial), seq)
    return revoked


def check_revocations_kept(session: Session, listed: set[str], number: int, now: datetime) -> None:
    """Refuse (:class:`IntegrityError`) a CRL that leaves out a certificate the audit trail
    records as revoked, unless that certificate has expired: revocations only ever grow, so
    a row un-revoked behind fleet's back cannot make a revoked device trusted again."""
    for serial, seq in recorded_revocations(session).items():
        if serial in listed:
            continue
        row = session.get(Certificate, serial)
        if row is not None and row.not_after <= now:
            continue
        state = "is missing from the registry" if row is None else f"is {row.status} there"
        raise IntegrityError(
            f"refusing to publish CRL {number}: certificate {serial} was revoked (audit event "
            f"{seq}) but {state}; run `fleet audit verify --state`"
        )


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    """PEM encoding of a CRL."""
    return crl.public_bytes(serialization.Encoding.PEM)


def publish_crl(ws: Workspace, *, passphrase: Passphrase | None = None) -> bytes:
    """Sign a new CRL (next CRL number) listing every revoked certificate; returns PEM."""
    issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        last = session.exec(select(func.max(CrlRecord.number))).one()
        number = (last or 0) + 1
        revoked_query = (
            select(Certificate.serial, Certificate.revoked_at, Certificate.revocation_reason)
            .where(Certificate.status == CertStatus.REVOKED)
            .order_by(col(Certificate.revoked_at))
        )
        entries = [
            RevokedEntry(serial, revoked_at, reason)
            for serial, revoked_at, reason in session.exec(revoked_query).all()
            if revoked_at is not None
        ]
        check_revocations_kept(session, {entry.serial for entry in entries}, number, now)
        crl = build_crl(issuer, entries, number, now=now)
        session.add(
            CrlRecord(
                number=number,
                this_update=now,
                next_update=crl.next_update_utc or now,
                revoked_count=len(entries),
            )
        )
        audit.append(
            session,
            "ca.crl",
            f"crl-{number}",
            {"number": number, "revoked_count": len(entries)},
            at=now,
        )
    return crl_pem(crl)
