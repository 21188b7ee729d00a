"""What the library's public functions return: typed, immutable views of devices,
certificates and the CA. Each view's ``to_dict()`` is its stable JSON shape (documented in
README.md), exactly what ``--json`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.statuses import CertStatus, DeviceStatus, KeyOrigin

if TYPE_CHECKING:
    from sqlalchemy.engine import Row

    from fleet.registry.models import Certificate, Device


def iso(moment: datetime | None) -> str | None:
    """``2026-11-25T10:00:00Z`` (UTC, seconds), or ``None``."""
    if moment is None:
        return None
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat is C; strftime parses its format on every call (lists render millions)
    return moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def certificate_status(cert: Certificate | Row[Any], now: datetime) -> CertStatus:
    """``active``, ``revoked`` or ``expired`` (unrevoked and past ``not_after`` at ``now``)."""
    if cert.status == CertStatus.REVOKED:
        return CertStatus.REVOKED
    if cert.not_after < now:
        return CertStatus.EXPIRED
    return CertStatus.ACTIVE


# The JSON shapes, in key order: the one place they are defined. Times are ISO text
# (:func:`iso`); a certificate's ``status`` is as judged by :func:`certificate_status`.
CERTIFICATE_FIELDS = (
    "serial",
    "device_id",
    "fingerprint_sha256",
    "subject",
    "not_before",
    "not_after",
    "status",
    "revoked_at",
    "revocation_reason",
    "profile",
    "key_type",
    "key_origin",
)
DEVICE_FIELDS = (
    "id",
    "model",
    "serial",
    "labels",
    "status",
    "created_at",
    "updated_at",
    "decommissioned_at",
    "decommission_reason",
)  # then "certificates": each device's certificates, newest first
TIME_FIELDS = frozenset(
    {"not_before", "not_after", "revoked_at", "created_at", "updated_at", "decommissioned_at"}
)


def _shape(item: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {
        name: iso(getattr(item, name)) if name in TIME_FIELDS else getattr(item, name)
        for name in fields
    }


def newest_first(certificates: Iterable[Any]) -> list[Any]:
    """Certificate rows newest first: by issue time, then serial."""
    return sorted(certificates, key=_issue_order, reverse=True)


def _issue_order(cert: Any) -> tuple[datetime, str]:
    return (cert.issued_at, cert.serial)


@dataclass(frozen=True, slots=True)
class CertificateView:
    """A device certificate as the registry knows it (no private material).

    ``status`` is as of the moment the view was made: ``expired`` is derived, never stored.
    """

    serial: str
    device_id: str
    fingerprint_sha256: str
    subject: str
    not_before: datetime
    not_after: datetime
    status: CertStatus
    revoked_at: datetime | None
    revocation_reason: str | None
    profile: str
    key_type: str
    key_origin: KeyOrigin

    @classmethod
    def from_row(cls, cert: Certificate | Row[Any], now: datetime) -> CertificateView:
        """The view of a registry row (an ORM object or a Core row), its status judged at
        ``now``."""
        return cls(
            serial=cert.serial,
            device_id=cert.device_id,
            fingerprint_sha256=cert.fingerprint_sha256,
            subject=cert.subject,
            not_before=cert.not_before,
            not_after=cert.not_after,
            status=certificate_status(cert, now),
            revoked_at=cert.revoked_at,
            revocation_reason=cert.revocation_reason,
            profile=cert.profile,
            key_type=cert.key_type,
            key_origin=KeyOrigin(cert.key_origin),
        )

    def to_dict(self) -> dict[str, Any]:
        """The certificate as fleet's JSON shows it (:data:`CERTIFICATE_FIELDS`)."""
        return _shape(self, CERTIFICATE_FIELDS)


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """A device's current connection state, from its newest connection event (``state``
    ``None``: never seen by any source)."""

    state: str | None = None
    since: datetime | None = None
    last_seen: datetime | None = None
    source: str | None = None
    reason: str | None = None
    reported_firmware: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The state as ``--json`` shows it."""
        return {
            "state": self.state,
            "since": iso(self.since),
            "last_seen": iso(self.last_seen),
            "source": self.source,
            "reason": self.reason,
            "reported_firmware": self.reported_firmware,
        }


@dataclass(frozen=True, slots=True)
class FirmwareView:
    """A device's firmware: what it last reported (and when, from which source), the update
    it says is under way, its target (and the rollout that set it), and its pin."""

    reported_version: str | None = None
    reported_at: datetime | None = None
    reported_source: str | None = None
    update_state: str | None = None
    update_detail: str | None = None
    target_version: str | None = None
    target_rollout: str | None = None
    pinned_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The firmware as ``--json`` shows it."""
        return {
            "reported": {
                "version": self.reported_version,
                "at": iso(self.reported_at),
                "source": self.reported_source,
                "update_state": self.update_state,
                "update_detail": self.update_detail,
            },
            "target": {"version": self.target_version, "rollout": self.target_rollout},
            "pinned_version": self.pinned_version,
        }


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device with every certificate it was ever issued, newest first."""

    id: str
    model: str | None
    serial: str | None
    labels: Mapping[str, str]
    status: DeviceStatus
    created_at: datetime
    updated_at: datetime
    decommissioned_at: datetime | None
    decommission_reason: str | None
    certificates: tuple[CertificateView, ...]
    # where the device's connection stands (``device show``); lists leave it out
    connection: ConnectionView | None = None
    firmware: FirmwareView | None = None  # likewise
    # the clouds it has a registration with, by name: its status there (``device show``)
    clouds: Mapping[str, str] | None = None

    @classmethod
    def from_rows(
        cls,
        device: Device | Row[Any],
        certificates: Iterable[Certificate | Row[Any]],
        now: datetime,
    ) -> DeviceView:
        """The view of a device row and its certificate rows, statuses judged at ``now``."""
        return cls(
            id=device.id,
            model=device.model,
            serial=device.serial,
            labels=dict(device.labels),
            status=DeviceStatus(device.status),
            created_at=device.created_at,
            updated_at=device.updated_at,
            decommissioned_at=device.decommissioned_at,
            decommission_reason=device.decommission_reason,
            certificates=tuple(
                CertificateView.from_row(c, now) for c in newest_first(certificates)
            ),
        )

    def certificates_in(self, status: CertStatus) -> tuple[CertificateView, ...]:
        """This device's certificates in ``status``, newest first."""
        return tuple(c for c in self.certificates if c.status == status)

    def to_dict(self) -> dict[str, Any]:
        """The device as fleet's JSON shows it."""
        shape = _shape(self, DEVICE_FIELDS)
        shape["labels"] = dict(self.labels)
        shape["certificates"] = [c.to_dict() for c in self.certificates]
        if self.connection is not None:
            shape["connection"] = self.connection.to_dict()
        if self.firmware is not None:
            shape["firmware"] = self.firmware.to_dict()
        if self.clouds is not None:
            shape["clouds"] = dict(self.clouds)
        return shape


@dataclass(frozen=True, slots=True)
class CaCertificateSummary:
    """Who a CA certificate names, its fingerprint, validity and key type."""

    subject: str
    issuer: str
    serial: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    key_type: str

    def to_dict(self) -> dict[str, str | None]:
        """The summary as fleet's JSON (and the ``ca.init`` audit event) shows it."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint_sha256,
            "not_before": iso(self.not_before),
            "not_after": iso(self.not_after),
            "key_type": self.key_type,
        }


@dataclass(frozen=True, slots=True)
class CaInfo:
    """The workspace's two CA certificates: the root and the issuing CA it signed."""

    root: CaCertificateSummary
    issuing: CaCertificateSummary

    def to_dict(self) -> dict[str, Any]:
        """``{"root": ..., "issuing": ...}``, as ``fleet ca show --json`` prints it."""
        return {"root": self.root.to_dict(), "issuing": self.issuing.to_dict()}


@dataclass(frozen=True, slots=True)
class InitResult:
    """A new workspace: where it lives, its registry (password redacted) and its CA."""

    home: Path
    registry: str
    name: str
    key_type: str
    ca: CaInfo

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON ``fleet init --json`` prints (the CA's certificates at top level)."""
        return {
            "home": str(self.home),
            "registry": self.registry,
            "name": self.name,
            "key_type": self.key_type,
            **self.ca.to_dict(),
        }
