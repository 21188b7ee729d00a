"""Revocation: marking certificates revoked in the registry, and the CRLs that publish it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet.pki import ca
from fleet.registry import audit
from fleet.registry.db import write_session
from fleet.registry.models import Certificate, CrlRecord
from fleet.workspace import Passphrase, Workspace, require_passphrase


def revoke_rows(session: Session, rows: Sequence[Certificate], reason: str, now: datetime) -> None:
    """Mark ``rows`` revoked (used inside a caller's transaction; no audit event)."""
    for row in rows:
        row.status = "revoked"
        row.revoked_at = now
        row.revocation_reason = reason
        session.add(row)


def publish_crl(ws: Workspace, *, passphrase: Passphrase | None = None) -> bytes:
    """Sign a new CRL (next CRL number) listing every revoked certificate; returns PEM."""
    issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))
    now = datetime.now(UTC)
    with write_session(ws.open_registry()) as session:
        last = session.exec(select(func.max(CrlRecord.number))).one()
        number = (last or 0) + 1
        revoked_query = (
            select(Certificate.serial, Certificate.revoked_at, Certificate.revocation_reason)
            .where(Certificate.status == "revoked")
            .order_by(col(Certificate.revoked_at))
        )
        entries = [
            ca.RevokedEntry(serial, revoked_at, reason)
            for serial, revoked_at, reason in session.exec(revoked_query).all()
            if revoked_at is not None
        ]
        crl = ca.build_crl(issuer, entries, number, now=now)
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
    return ca.crl_pem(crl)
