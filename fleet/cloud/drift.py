"""``fleet cloud drift``: where a cloud and the registry disagree, and the jobs that reconcile.

The cloud's inventory (:meth:`CloudBackend.iter_inventory`) is streamed in batches of
:data:`BATCH` devices; each batch is compared with the registry rows of those ids (a few
``IN (...)`` queries, no certificate PEMs read) and its ids go into a temporary SQLite set
on disk. A second pass pages through this cloud's registrations in device order and reports
the ones the inventory did not list. Memory stays flat at any fleet size: only the findings
are kept.

What the registry expects of device D on cloud C (registration R):

* D active, R registered/pending/failed, D has an active certificate: present, enabled,
  holding D's newest active certificate and no active certificate fleet did not issue to D
  for now (an older active one of D's is fine: a renewal window).
* otherwise (D decommissioned, R deregistered, no active certificate): absent or disabled.

Findings (:class:`fleet.statuses.DriftKind`) and what ``fix`` queues (outbox jobs, one
transaction, one ``cloud.drift`` audit event per device):

* ``missing-in-cloud``: expected present, absent (not for a pending registration: its job is
  queued already) -> register.
* ``unknown-in-cloud``: listed remotely, not registered on C in fleet -> nothing; with
  ``delete_unknown`` the backend deletes it now (see :func:`_delete_unknown`).
* ``certificate-mismatch``: expected present, the newest certificate is not active there or
  an active certificate fleet did not issue to D is -> register (forced).
* ``decommissioned-but-enabled`` (security): expected absent yet enabled, or a certificate
  fleet revoked is active there -> deregister (register when D is active and expected
  present: the backend's register detaches and deactivates certificates that are not D's).
* ``disabled-in-cloud``: expected present, present but disabled -> register (forced).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet import clock
from fleet.cloud.base import CloudError, NotSupported, RemoteDevice
from fleet.cloud.clouds import make_backend
from fleet.cloud.jobs import chunks, enqueue_deregister, enqueue_register, get_cloud
from fleet.cloud.models import Cloud, CloudRegistration
from fleet.cloud.pacing import RateLimiter
from fleet.cloud.transitions import short_error
from fleet.errors import FleetError, InvalidInput
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.registry.models import Certificate, Device
from fleet.statuses import CertStatus, DeviceStatus, DriftKind, RegistrationStatus

if TYPE_CHECKING:
    import httpx
    from sqlalchemy.engine import Engine

    from fleet.cloud.base import CloudBackend
    from fleet.workspace import Workspace

BATCH = 500  # remote devices compared per registry round trip
PAGE = 1000  # registrations per page of the second pass
DriftProgress = Callable[[int, int], None]  # (remote devices read, registrations expected)
# Where a registration says the platform should hold the device.
_EXPECTED = (
    RegistrationStatus.REGISTERED,
    RegistrationStatus.PENDING,
    RegistrationStatus.FAILED,
)

# Where absence is drift (pending: the register job is queued, it is not there yet).
_MISSABLE = (RegistrationStatus.REGISTERED, RegistrationStatus.FAILED)


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
class _Known:
    """What the registry holds about one device, as far as drift needs it."""

    status: str
    registration: str | None
    newest_fingerprint: str | None  # of the newest active certificate
    active_fingerprints: frozenset[str]


def _registry_batch(session: Session, cloud: str, ids: Sequence[str]) -> dict[str, _Known]:
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
    known: dict[str, _Known] = {}
    for device_id, status in statuses.items():
        certs = sorted(active.get(device_id, []))
        known[device_id] = _Known(
            status=status,
            registration=regs.get(device_id),
            newest_fingerprint=certs[-1][1] if certs else None,
            active_fingerprints=frozenset(fp for _, fp in certs),
        )
    return known


def _certificates_by_fingerprint(
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


def _expected_present(known: _Known) -> bool:
    return (
        known.status == DeviceStatus.ACTIVE
        and known.registration in _EXPECTED
        and known.newest_fingerprint is not None
    )


def _finding(
    device_id: str,
    kind: DriftKind,
    detail: str,
    fix: str | None,
    known: _Known | None,
    remote: RemoteDevice | None,
) -> DriftFinding:
    expected = known.newest_fingerprint if known and _expected_present(known) else None
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
    known: _Known | None,
    fleet_certs: dict[str, tuple[str, str, str]],
) -> DriftFinding | None:
    """The finding about one device the cloud listed (None: it agrees with the registry).

    ``fleet_certs`` maps the fingerprints of fleet certificates to (device, serial, status)."""
    device_id = remote.device_id
    if known is None or known.registration is None:
        where = "not in the registry" if known is None else "not registered on this cloud"
        if known is not None and known.status != DeviceStatus.ACTIVE and remote.enabled:
            return _finding(
                device_id,
                DriftKind.DECOMMISSIONED_BUT_ENABLED,
                "decommissioned in fleet, never registered on this cloud, yet enabled there",
                Fix.DEREGISTER,
                known,
                remote,
            )
        return _finding(
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
    expected = _expected_present(known)
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
        return _finding(
            device_id,
            DriftKind.DECOMMISSIONED_BUT_ENABLED,
            f"{why}, yet enabled in the cloud",
            Fix.DEREGISTER,
            known,
            remote,
        )
    if revoked:
        return _finding(
            device_id,
            DriftKind.DECOMMISSIONED_BUT_ENABLED,
            f"revoked certificate {', '.join(sorted(revoked))} is active in the cloud",
            Fix.REGISTER,
            known,
            remote,
        )
    if not remote.enabled:
        return _finding(
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
        return _finding(
            device_id,
            DriftKind.CERTIFICATE_MISMATCH,
            "; ".join(problems),
            Fix.REGISTER,
            known,
            remote,
        )
    return None


# --- the two passes --------------------------------------------------------------------------


class _SeenIds:
    """The ids the inventory listed, in a temporary on-disk SQLite set (deleted on close)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("")  # "": a private temporary database on disk
        self.db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, ids: Sequence[str]) -> int:
        """Record ``ids``; returns how many were new (a listing may repeat one)."""
        before = self.db.total_changes
        self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?)", [(i,) for i in ids])
        return self.db.total_changes - before

    def seen(self, ids: Sequence[str]) -> set[str]:
        """The ones among ``ids`` that were recorded."""
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT id FROM seen WHERE id IN ({marks})", list(ids))
        return {row[0] for row in rows}

    def close(self) -> None:
        """Drop the set."""
        self.db.close()


def _batches(items: Iterator[RemoteDevice], size: int) -> Iterator[list[RemoteDevice]]:
    batch: list[RemoteDevice] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _compare_inventory(
    engine: Engine,
    cloud: str,
    inventory: Iterator[RemoteDevice],
    seen: _SeenIds,
    report: DriftReport,
    unknown: list[RemoteDevice],
    progress: DriftProgress | None,
) -> None:
    for batch in _batches(inventory, BATCH):
        fresh: dict[str, RemoteDevice] = {}
        for remote in batch:
            fresh.setdefault(remote.device_id, remote)
        ids = sorted(set(fresh) - seen.seen(list(fresh)))  # a listing may repeat an id
        seen.add(ids)
        report.remote_devices += len(ids)
        with read_session(engine) as session:
            known = _registry_batch(session, cloud, ids)
            fleet_certs = _certificates_by_fingerprint(
                session,
                (c.fingerprint_sha256 for i in ids for c in fresh[i].certificates),
            )
        for device_id in ids:
            finding = classify(fresh[device_id], known.get(device_id), fleet_certs)
            if finding is not None:
                report.findings.append(finding)
                if finding.fix == Fix.DELETE:
                    unknown.append(fresh[device_id])
        if progress is not None:
            progress(report.remote_devices, report.registrations)


def _missing(engine: Engine, cloud: str, seen: _SeenIds, report: DriftReport) -> None:
    """Second pass: the registrations expected present that the inventory did not list."""
    after = ""
    while True:
        with read_session(engine) as session:
            # straight off the (cloud, device_id) index; the rest is tested here
            query = (
                select(CloudRegistration.device_id, CloudRegistration.status)
                .where(CloudRegistration.cloud == cloud, col(CloudRegistration.device_id) > after)
                .order_by(col(CloudRegistration.device_id))
                .limit(PAGE)
            )
            rows = list(session.exec(query))
            if not rows:
                return
            after = rows[-1][0]
            absent = [device_id for device_id, status in rows if status in _MISSABLE]
            absent = sorted(set(absent) - seen.seen(absent)) if absent else []
            known = _registry_batch(session, cloud, absent) if absent else {}
        for device_id in absent:
            entry = known.get(device_id)
            if entry is not None and _expected_present(entry):
                report.findings.append(
                    _finding(
                        device_id,
                        DriftKind.MISSING_IN_CLOUD,
                        f"registration {entry.registration} in fleet, absent in the cloud",
                        Fix.REGISTER,
                        entry,
                        None,
                    )
                )


def _count_registrations(engine: Engine, cloud: str) -> int:
    with read_session(engine) as session:
        query = select(func.count()).where(
            CloudRegistration.cloud == cloud,
            col(CloudRegistration.status) != RegistrationStatus.DEREGISTERED,
        )
        return int(session.exec(query).one())


# --- fixing ----------------------------------------------------------------------------------


def _queue_fixes(engine: Engine, cloud: str, findings: Sequence[DriftFinding]) -> FixResult:
    """One transaction: the register and deregister jobs, a ``cloud.drift`` event each."""
    result = FixResult()
    wanted = {f.device_id: f for f in findings if f.fix in (Fix.REGISTER, Fix.DEREGISTER)}
    if not wanted:
        return result
    now = clock.now()
    with write_session(engine) as session:
        ids = sorted(wanted)
        current: dict[str, _Known] = {}
        for chunk in chunks(ids):
            current.update(_registry_batch(session, cloud, chunk))
        register: list[str] = []
        deregister: list[str] = []
        events: list[audit.PendingEvent] = []
        for device_id in ids:
            finding, known = wanted[device_id], current.get(device_id)
            if finding.fix == Fix.REGISTER and (known is None or not _expected_present(known)):
                result.skipped.append({"device_id": device_id, "reason": "no longer registrable"})
                continue
            if finding.fix == Fix.DEREGISTER and known is not None and known.registration is None:
                # fleet never registered it here, yet the cloud holds it: record that it
                # does, so that the deregistration has a registration to act on
                session.add(
                    CloudRegistration(
                        device_id=device_id,
                        cloud=cloud,
                        status=RegistrationStatus.FAILED,
                        remote={},
                        last_error="found enabled by fleet cloud drift",
                        updated_at=now,
                    )
                )
            (register if finding.fix == Fix.REGISTER else deregister).append(device_id)
            events.append(
                audit.PendingEvent(
                    "cloud.drift",
                    device_id,
                    {"cloud": cloud, "kind": str(finding.kind), "fix": finding.fix},
                )
            )
        session.flush()
        for chunk in chunks(register):
            result.register += enqueue_register(session, chunk, [cloud], now=now, force=True)
        for chunk in chunks(deregister):
            result.deregister += enqueue_deregister(session, chunk, [cloud], now=now, force=True)
        audit.append_many(session, events, at=now)
    return result


def _delete_unknown(
    engine: Engine,
    cloud: Cloud,
    backend: CloudBackend,
    state: dict[str, Any],
    unknown: Sequence[RemoteDevice],
    result: FixResult,
) -> None:
    """Delete the remote-only devices now, within the cloud's rate limit.

    Not through the outbox: its jobs belong to registry devices (a foreign key), and these
    are not in the registry. Each deletion that succeeded is audited (``cloud.delete-unknown``,
    target the remote id, with the certificates it held), committed every 100; a failure is
    reported and the others go on."""
    limiter = RateLimiter(cloud.rate_per_second)
    events: list[audit.PendingEvent] = []

    def flush() -> None:
        if events:
            with write_session(engine) as session:
                audit.append_many(session, events)
            events.clear()

    for remote in unknown:
        limiter.acquire()
        try:
            backend.delete_unknown(remote, state)
        except CloudError as exc:
            result.delete_failed.append(
                {"device_id": remote.device_id, "error": short_error(str(exc))}
            )
            continue
        result.deleted.append(remote.device_id)
        details = {
            "cloud": cloud.name,
            "certificates": [c.fingerprint_sha256 for c in remote.certificates],
        }
        events.append(audit.PendingEvent("cloud.delete-unknown", remote.device_id, details))
        if len(events) >= 100:
            flush()
    flush()


# --- the entry point -------------------------------------------------------------------------


def drift(
    ws: Workspace,
    name: str,
    *,
    fix: bool = False,
    delete_unknown: bool = False,
    client: httpx.Client | None = None,
    progress: DriftProgress | None = None,
    backend: CloudBackend | None = None,
) -> DriftReport:
    """Compare cloud ``name``'s inventory with the registry (see the module docstring).

    ``fix`` queues the register/deregister jobs that reconcile (pushed by ``fleet cloud
    sync``); ``delete_unknown`` (with ``fix``) deletes the remote-only devices now.
    ``backend`` replaces the cloud's own (tests, benches). A backend without an inventory is
    :class:`InvalidInput`; a cloud failure while listing is a :class:`FleetError`."""
    if delete_unknown and not fix:
        raise InvalidInput("--delete-unknown goes with --fix")
    engine = ws.open_registry()
    with read_session(engine) as session:
        cloud = get_cloud(session, name)
    own = backend is None
    active_backend = make_backend(cloud, client=client) if backend is None else backend
    state = dict(cloud.state or {})
    report = DriftReport(cloud.name, cloud.type)
    report.registrations = _count_registrations(engine, cloud.name)
    seen = _SeenIds()
    unknown: list[RemoteDevice] = []
    try:
        try:
            inventory = active_backend.iter_inventory(state)
            _compare_inventory(engine, cloud.name, inventory, seen, report, unknown, progress)
        except NotSupported as exc:
            raise InvalidInput(
                f"cloud {name!r}: {exc}: drift needs a backend with an inventory (aws-iot, "
                "azure-iot-hub, thingsboard)"
            ) from None
        except CloudError as exc:
            raise FleetError(
                f"cloud {name!r}: reading the inventory failed: {short_error(str(exc))}"
            ) from None
        _missing(engine, cloud.name, seen, report)
        report.findings.sort(key=lambda f: (f.device_id, str(f.kind)))
        if fix:
            report.fix = _queue_fixes(engine, cloud.name, report.findings)
            if delete_unknown:
                _delete_unknown(engine, cloud, active_backend, state, unknown, report.fix)
    finally:
        seen.close()
        if own:
            active_backend.close()
    return report
