"""What ``fleet cloud drift`` compares and reports: the findings, the report, and the rules
that classify one remote device against the registry (:func:`classify`). The passes over
the inventory and the fixes are in :mod:`fleet.cloud.drift`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from fleet.cloud.base import RemoteDevice
from fleet.cloud.jobs import chunks
from fleet.cloud.models import CloudRegistration
from fleet.registry.models import Certificate, Device
from fleet.statuses import CertStatus, DeviceStatus, DriftKind, RegistrationStatus

DriftProgress = Callable[[int, int], None]  # (remote devices read, registrations expected)
# Where a registration says the platform should hold the device.
_EXPECTED = (
    RegistrationStatus.REGISTERED,
    RegistrationStatus.PENDING,
    RegistrationStatus.FAILED,
)

# Where absence is drift (pending: the register job is queued, it is not there yet).
MISSABLE = (RegistrationStatus.REGISTERED, RegistrationStatus.FAILED)


class Fix:
    """What ``--fix`` does about a finding."""

    REGISTER = "register"
    DEREGISTER = "deregister"
    DELETE = "delete"  # only with --delete-unknown


@dataclass(frozen=True)
class DriftFinding:
    """One disagreement between the registry and the cloud about one device."""

    device_id: str
    kind: DriftKind
    detail: str
    fix: str | None  # a Fix, or None: reported only
    device_status: str | None  # None: not in the registry
    registration: str | None  # the registration's status on this cloud, None: none
    expected_fingerprint: str | None  # the newest active certificate's, when expected
    remote: RemoteDevice | None

    @property
    def security(self) -> bool:
        """A device the cloud accepts although fleet says it must not."""
        return self.kind == DriftKind.DECOMMISSIONED_BUT_ENABLED

    def to_dict(self) -> dict[str, Any]:
        """The finding as ``--json`` shows it."""
        remote = None
        if self.remote is not None:
            remote = {
                "enabled": self.remote.enabled,
                "connected": self.remote.connected,
                "certificates": [
                    {
                        "fingerprint_sha256": c.fingerprint_sha256,
                        "active": c.active,
                        "remote_id": c.remote_id,
                    }
                    for c in self.remote.certificates
                ],
            }
        return {
            "device_id": self.device_id,
            "kind": str(self.kind),
            "security": self.security,
            "detail": self.detail,
            "fix": self.fix,
            "device_status": self.device_status,
            "registration": self.registration,
            "expected_fingerprint": self.expected_fingerprint,
            "remote": remote,
        }


@dataclass
class FixResult:
    """What ``--fix`` did: jobs queued (pushed by ``fleet cloud sync``), unknowns deleted."""

    register: int = 0
    deregister: int = 0
    deleted: list[str] = field(default_factory=list)
    delete_failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # changed since the check

    def to_dict(self) -> dict[str, Any]:
        """The result as ``--json`` shows it."""
        return {
            "register": self.register,
            "deregister": self.deregister,
            "deleted": self.deleted,
            "delete_failed": self.delete_failed,
            "skipped": self.skipped,
        }


@dataclass
class DriftReport:
    """The drift of one cloud: what was compared, what differs, what was fixed."""

    cloud: str
    type: str
    remote_devices: int = 0
    registrations: int = 0
    findings: list[DriftFinding] = field(default_factory=list)
    fix: FixResult | None = None

    @property
    def clean(self) -> bool:
        """True when the cloud and the registry agree."""
        return not self.findings

    def counts(self) -> dict[str, int]:
        """Findings per kind (every kind, zeros included)."""
        result = {str(kind): 0 for kind in DriftKind}
        for finding in self.findings:
            result[str(finding.kind)] += 1
        return result

    def to_dict(self) -> dict[str, Any]:
        """The report as ``--json`` prints it."""
        return {
            "cloud": self.cloud,
            "type": self.type,
            "clean": self.clean,
            "remote_devices": self.remote_devices,
            "registrations": self.registrations,
            "counts": self.counts(),
            "security_findings": sum(1 for f in self.findings if f.security),
            "findings": [f.to_dict() for f in self.findings],
            "fix": None if self.fix is None else self.fix.to_dict(),
        }


# --- the registry side ---------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """What the registry holds about one device, as far as drift needs it."""

    status: str
    registration: str | None
    newest_fingerprint: str | None  # of the newest active certificate
    active_fingerprints: frozenset[str]


def registry_batch(session: Session, cloud: str, ids: Sequence[str]) -> dict[str, Known]:
    statuses = dict(
        session.exec(select(Device.id, Device.status).where(col(Device.id).in_(ids))).all()
    )
    regs = dict(
        session.exec(
            select(CloudRegistration.device_id, CloudRegistration.status).where(
                CloudRegistration.cloud == cloud, col(CloudRegistration.device_id).in_(ids)
            )
        ).all()
    )
    active: dict[str, list[tuple[Any, str]]] = {}
    # by device only, the status tested here: a status condition in SQL can make SQLite
    # walk the (status, not_after) index, every active certificate of the fleet per batch
    query = select(
        Certificate.device_id,
        Certificate.issued_at,
        Certificate.fingerprint_sha256,
        Certificate.status,
    ).where(col(Certificate.device_id).in_(ids))
    for device_id, issued_at, fingerprint, status in session.exec(query):
        if status == CertStatus.ACTIVE:
            active.setdefault(device_id, []).append((issued_at, fingerprint))
    known: dict[str, Known] = {}
    for device_id, status in statuses.items():
        certs = sorted(active.get(device_id, []))
        known[device_id] = Known(
            status=status,
            registration=regs.get(device_id),
            newest_fingerprint=certs[-1][1] if certs else None,
            active_fingerprints=frozenset(fp for _, fp in certs),
        )
    return known


def certificates_by_fingerprint(
    session: Session, fingerprints: Iterable[str]
) -> dict[str, tuple[str, str, str]]:
    """fingerprint -> (device id, serial, stored status) of the fleet certificates among
    ``fingerprints``."""
    found: dict[str, tuple[str, str, str]] = {}
    for chunk in chunks(sorted(set(fingerprints))):
        query = select(
            Certificate.fingerprint_sha256,
            Certificate.device_id,
            Certificate.serial,
            Certificate.status,
        ).where(col(Certificate.fingerprint_sha256).in_(chunk))
        for fingerprint, device_id, serial, status in session.exec(query):
            found[fingerprint] = (device_id, serial, status)
    return found


def expected_present(known: Known) -> bool:
    return (
        known.status == DeviceStatus.ACTIVE
        and known.registration in _EXPECTED
        and known.newest_fingerprint is not None
    )


def finding(
    device_id: str,
    kind: DriftKind,
    detail: str,
    fix: str | None,
    known: Known | None,
    remote: RemoteDevice | None,
) -> DriftFinding:
    expected = known.newest_fingerprint if known and expected_present(known) else None
    return DriftFinding(
        device_id=device_id,
        kind=kind,
        detail=detail,
        fix=fix,
        device_status=known.status if known else None,
        registration=known.registration if known else None,
        expected_fingerprint=expected,
        remote=remote,
    )


def classify(
    remote: RemoteDevice,
    known: Known | None,
    fleet_certs: dict[str, tuple[str, str, str]],
) -> DriftFinding | None:
    """The finding about one device the cloud listed (None: it agrees with the registry).

    ``fleet_certs`` maps the fingerprints of fleet certificates to (device, serial, status)."""
    device_id = remote.device_id
    if known is None or known.registration is None:
        where = "not in the registry" if known is None else "not registered on this cloud"
        if known is not None and known.status != DeviceStatus.ACTIVE and remote.enabled:
            return finding(
                device_id,
                DriftKind.DECOMMISSIONED_BUT_ENABLED,
                "decommissioned in fleet, never registered on this cloud, yet enabled there",
                Fix.DEREGISTER,
                known,
                remote,
            )
        return finding(
            device_id,
            DriftKind.UNKNOWN_IN_CLOUD,
            f"listed by the cloud, {where}",
            Fix.DELETE if known is None else None,
            known,
            remote,
        )
    active_remote = [c for c in remote.certificates if c.active]
    revoked = [
        fleet_certs[c.fingerprint_sha256][1]
        for c in active_remote
        if c.fingerprint_sha256 in fleet_certs
        and fleet_certs[c.fingerprint_sha256][2] == CertStatus.REVOKED
    ]
    expected = expected_present(known)
    if not expected:
        if not remote.enabled:
            return None  # disabled or emptied, as a deregistration leaves it
        if known.status != DeviceStatus.ACTIVE:
            why = "decommissioned in fleet"
        elif known.registration == RegistrationStatus.DEREGISTERED:
            why = "deregistered from this cloud in fleet"
        else:
            why = "without an active certificate in fleet"
        if revoked:
            why += f"; revoked certificate {', '.join(sorted(revoked))} active there"
        return finding(
            device_id,
            DriftKind.DECOMMISSIONED_BUT_ENABLED,
            f"{why}, yet enabled in the cloud",
            Fix.DEREGISTER,
            known,
            remote,
        )
    if revoked:
        return finding(
            device_id,
            DriftKind.DECOMMISSIONED_BUT_ENABLED,
            f"revoked certificate {', '.join(sorted(revoked))} is active in the cloud",
            Fix.REGISTER,
            known,
            remote,
        )
    if not remote.enabled:
        return finding(
            device_id,
            DriftKind.DISABLED_IN_CLOUD,
            "active in fleet, disabled in the cloud",
            Fix.REGISTER,
            known,
            remote,
        )
    fingerprints = {c.fingerprint_sha256 for c in active_remote}
    extra = sorted(fingerprints - known.active_fingerprints)
    problems = []
    if known.newest_fingerprint not in fingerprints:
        problems.append("its current certificate is not active there")
    if extra:
        problems.append(f"{len(extra)} certificate(s) fleet did not issue to it are active there")
    if problems:
        return finding(
            device_id,
            DriftKind.CERTIFICATE_MISMATCH,
            "; ".join(problems),
            Fix.REGISTER,
            known,
            remote,
        )
    return None
