"""The stable JSON shapes of devices and certificates (documented in README.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fleet import clock
from fleet.registry.models import Certificate, Device
from fleet.statuses import CertStatus


def iso(moment: datetime | None) -> str | None:
    """``2026-11-25T10:00:00Z`` (UTC, seconds), or ``None``."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_status(cert: Certificate, now: datetime | None = None) -> CertStatus:
    """``active``, ``revoked`` or ``expired`` (an unrevoked certificate past ``not_after``)."""
    if cert.status == CertStatus.REVOKED:
        return CertStatus.REVOKED
    if cert.not_after < (now or clock.now()):
        return CertStatus.EXPIRED
    return CertStatus.ACTIVE


def certificate_to_dict(cert: Certificate, now: datetime | None = None) -> dict[str, Any]:
    """A certificate as fleet's JSON shows it (no private material)."""
    return {
        "serial": cert.serial,
        "device_id": cert.device_id,
        "fingerprint_sha256": cert.fingerprint_sha256,
        "subject": cert.subject,
        "not_before": iso(cert.not_before),
        "not_after": iso(cert.not_after),
        "status": certificate_status(cert, now),
        "revoked_at": iso(cert.revoked_at),
        "revocation_reason": cert.revocation_reason,
        "profile": cert.profile,
        "key_type": cert.key_type,
        "key_origin": cert.key_origin,
    }


def device_to_dict(
    device: Device, certificates: list[Certificate], now: datetime | None = None
) -> dict[str, Any]:
    """A device with its certificates (newest first) as fleet's JSON shows it."""
    ordered = sorted(certificates, key=lambda c: (c.issued_at, c.serial), reverse=True)
    return {
        "id": device.id,
        "model": device.model,
        "serial": device.serial,
        "labels": dict(device.labels),
        "status": device.status,
        "created_at": iso(device.created_at),
        "updated_at": iso(device.updated_at),
        "decommissioned_at": iso(device.decommissioned_at),
        "decommission_reason": device.decommission_reason,
        "certificates": [certificate_to_dict(c, now) for c in ordered],
    }
