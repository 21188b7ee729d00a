"""Certificates: list, renew, revoke."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from sqlalchemy.engine import Engine

from fleet import clock, faults
from fleet.cloud import jobs
from fleet.devices import (
    device_certificates,
    get_device_row,
    publish_identity,
    stage_identity,
    validate_key_type,
)
from fleet.errors import Conflict, NotFound
from fleet.identifiers import normalize_serial
from fleet.pki import ca
from fleet.pki.bundles import PEM, BundleFormat, recover_in
from fleet.pki.crl import normalize_reason, revoke_rows
from fleet.pki.csr import request_for
from fleet.pki.issue import (
    certificate_details,
    certificate_row,
    check_issuable,
    issue_certificate,
)
from fleet.pki.profiles import load_profile
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.registry.models import Certificate
from fleet.statuses import CertStatus, DeviceStatus, KeyOrigin
from fleet.views import CertificateView
from fleet.workspace import Passphrase, Workspace, require_passphrase


def revoke_certificate(
    ws: Workspace, serial: str, *, reason: str = "unspecified"
) -> CertificateView:
    """Revoke the certificate with ``serial`` (hex); ``reason`` is an RFC 5280 reason name.

    Revocation needs no CA passphrase: it is a registry fact, published by the next CRL.
    """
    wanted = normalize_serial(serial)
    reason_name = normalize_reason(reason)
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        row = session.get(Certificate, wanted)
        if row is None:
            raise NotFound(f"no certificate with serial {wanted} in the registry")
        if row.status == CertStatus.REVOKED:
            raise Conflict(f"certificate {wanted} is already revoked ({row.revocation_reason})")
        revoke_rows(session, [row], reason_name, now)
        # The platform must stop accepting this certificate too.
        jobs.enqueue_revocation(session, row.device_id, wanted, now=now)
        audit.append(
            session,
            "cert.revoke",
            row.device_id,
            {"serial": wanted, "reason": reason_name},
            at=now,
        )
        session.flush()
        return CertificateView.from_row(row, now)


def renew_certificate(
    ws: Workspace,
    device_id: str,
    *,
    csr: Path | x509.CertificateSigningRequest | None = None,
    out_dir: Path | None = None,
    revoke_old: bool = False,
    profile: str | None = None,
    key_type: str | None = None,
    passphrase: Passphrase | None = None,
    bundle_format: BundleFormat | None = None,
) -> CertificateView:
    """Issue a new certificate for an active device and replace its bundle in ``out_dir``.

    ``bundle_format`` p12 writes ``bundle.p12`` (0600) in place of ``key.pem``.
    The profile defaults to the one of the device's newest certificate. The old certificates
    stay valid (for a rollover window) unless ``revoke_old`` revokes them as ``superseded``.
    The new certificate is recorded before its bundle replaces the old one; a renewal killed
    in between is finished (and returned) by the next ``renew_certificate`` of the device.
    """
    validate_key_type(key_type)
    request = request_for(csr, device_id)
    engine = ws.open_registry()
    out = out_dir or Path.cwd()
    for item in recover_in(ws.home, engine, out, device_id, bundle_format or PEM):
        if item.action == "publish" and item.serial is not None:
            # A killed renewal had recorded this one: its bundle is now in place.
            with read_session(engine) as session:
                row = session.get(Certificate, item.serial)
                if row is not None:
                    return CertificateView.from_row(row, clock.now())
    with read_session(engine) as session:
        device = get_device_row(session, device_id)
        if device.status != DeviceStatus.ACTIVE:
            raise Conflict(
                f"device {device_id!r} is decommissioned; its identity cannot be renewed"
            )
        previous = device_certificates(session, device_id)
    latest = max(previous, key=lambda c: c.issued_at, default=None)
    chosen = load_profile(profile or (latest.profile if latest else "default"), ws.home)
    if key_type is None and request is None and latest is not None and profile is None:
        key_type = latest.key_type if latest.key_origin == KeyOrigin.GENERATED else None
    check_issuable(chosen, device_id, key_type=key_type, csr=request)
    chosen_format = bundle_format.ready() if bundle_format is not None else None
    issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))
    now = clock.now()
    issued = issue_certificate(issuer, device_id, chosen, key_type=key_type, csr=request, now=now)
    new_row = certificate_row(device_id, issued, chosen.name, now)
    staged = stage_identity(out, device_id, issued)
    try:
        _record_renewal(engine, new_row, revoke_old, now)
    except BaseException:
        staged.discard()
        raise
    publish_identity(staged, issued, issuer, replace=True, bundle_format=chosen_format)
    return CertificateView.from_row(new_row, now)


def _record_renewal(engine: Engine, new_row: Certificate, revoke_old: bool, now: datetime) -> None:
    """One transaction: the new row, the old ones revoked if asked, the audit event (the
    caller publishes the new bundle once this commits)."""
    device_id = new_row.device_id
    with write_session(engine) as session:
        device = get_device_row(session, device_id)
        if device.status != DeviceStatus.ACTIVE:
            raise Conflict(f"device {device_id!r} was decommissioned meanwhile")
        old_active = [
            c for c in device_certificates(session, device_id) if c.status == CertStatus.ACTIVE
        ]
        session.add(new_row)
        revoked = old_active if revoke_old else []
        revoke_rows(session, revoked, "superseded", now)
        device.updated_at = now
        session.add(device)
        audit.append(
            session,
            "cert.renew",
            device_id,
            {"certificate": certificate_details(new_row), "revoked": [c.serial for c in revoked]},
            at=now,
        )
        session.flush()
        faults.hit("before-commit")
