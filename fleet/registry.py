"""Workspace-level operations: init, schema upgrades, CA views, CRLs, the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from fleet import audit, ca, db
from fleet.db import read_session, write_session
from fleet.errors import Conflict
from fleet.models import AuditEvent, Certificate, CrlRecord
from fleet.workspace import Passphrase, Workspace, require_passphrase


def init_workspace(
    ws: Workspace,
    *,
    name: str = "fleet",
    key_type: str = "ec-p256",
    passphrase: Passphrase | None = None,
) -> dict[str, Any]:
    """Create the registry (migrated to the current schema) and the root and issuing CA.

    Refuses, changing nothing, when the workspace already has a CA or the registry already
    recorded one.
    """
    secret = require_passphrase(passphrase)
    if ca.ca_dir(ws.home).exists():
        raise Conflict(f"{ws.home} is already initialised (it has a CA in {ca.ca_dir(ws.home)})")
    ws.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    revision = db.current_revision(ws.engine)
    if revision is not None:
        db.check_schema(ws.engine)
        with read_session(ws.engine) as session:
            recorded = session.exec(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "ca.init")
            ).one()
        if recorded:
            raise Conflict(
                f"the registry at {db.redact_url(ws.registry_url)} already belongs to a CA"
            )
    db.upgrade(ws.engine)
    now = datetime.now(UTC)
    issuer = ca.create_ca(ws.home, name, key_type, secret, now=now)
    try:
        info = {
            "name": name,
            "key_type": key_type,
            "root": ca.cert_summary(issuer.root),
            "issuing": ca.cert_summary(issuer.cert),
        }
        with write_session(ws.engine) as session:
            audit.append(session, "ca.init", name, info, at=now)
    except BaseException:
        ca.remove_ca(ws.home)
        raise
    return {"home": str(ws.home), "registry": db.redact_url(ws.registry_url), **info}


def upgrade_registry(ws: Workspace) -> dict[str, str | None]:
    """Migrate the registry to this fleet's schema; returns the revisions before and after."""
    ws.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    before, after = db.upgrade(ws.engine)
    return {"from": before, "to": after, "head": db.SCHEMA_HEAD}


def current_schema(ws: Workspace) -> dict[str, str | None]:
    """The registry's schema revision and the one this fleet expects."""
    return {"current": db.current_revision(ws.engine), "head": db.SCHEMA_HEAD}


def ca_info(ws: Workspace) -> dict[str, Any]:
    """Subjects, fingerprints and validity of the root and issuing CA (no passphrase needed)."""
    issuing, root = ca.load_ca_certificates(ws.home)
    return {"root": ca.cert_summary(root), "issuing": ca.cert_summary(issuing)}


def ca_chain_pem(ws: Workspace) -> bytes:
    """The issuing CA certificate followed by the root, PEM."""
    issuing, root = ca.load_ca_certificates(ws.home)
    return ca.cert_pem(issuing) + ca.cert_pem(root)


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


def iter_audit_events(
    ws: Workspace, *, since: datetime | None = None, until: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Audit events in order, as exported (hashed fields plus ``hash``)."""
    with read_session(ws.open_registry()) as session:
        for event in audit.iter_events(session, since=since, until=until):
            yield audit.event_to_dict(event)


def verify_audit(ws: Workspace) -> audit.VerifyResult:
    """Re-hash the audit trail; see :func:`fleet.audit.verify`."""
    with read_session(ws.open_registry()) as session:
        return audit.verify(session)
