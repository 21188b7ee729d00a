"""``fleet status``: how the fleet is doing, in one read transaction of aggregate queries.

Every figure is a ``COUNT`` over an index range or a ``GROUP BY`` answered from an index (no
table scan, no row read), so the answer takes well under a second at a million devices:

- devices: the models and the total from one scan of ``device(model)``, each status but
  active as a short range of ``device(status)``;
- certificates: the total and the revoked range of ``certificate(status, not_after)``; active
  ones past ``not_after`` and within each expiry window are ranges of that same index;
- cloud registrations by cloud and status: one scan of ``cloud_registration(cloud, status)``;
  open and failed jobs and the oldest open one: ranges of ``cloud_job(state, cloud,
  created_at)`` (done jobs, the bulk of the table, are never read);
- the newest CRL and the audit head: one row each, by primary key.

Indexes rather than counters kept in the writers' transactions: counters would add a hot row
that every device add, revocation and job update must lock, while these indexes are small,
ordered and kept by the database itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from fleet import clock
from fleet.cloud.models import Cloud, CloudJob, CloudRegistration
from fleet.errors import InvalidInput
from fleet.registry.db import read_session
from fleet.registry.models import AuditHead, Certificate, CrlRecord, Device
from fleet.status.models import ConnectionStatus
from fleet.statuses import CertStatus, ConnectionState, DeviceStatus, JobState, RegistrationStatus
from fleet.views import iso

if TYPE_CHECKING:
    from fleet.workspace import Workspace

EXPIRY_WINDOWS_DAYS = (7, 30, 90)  # cumulative: "within 30 days" includes "within 7"
DEFAULT_TOP = 10
MAX_TOP = 1000
DEFAULT_CRL_WARN = timedelta(hours=24)
CRL_EXPIRED_CONSEQUENCE = "brokers reject every client once a CRL expires"
PUBLISH_HINT = "publish one with `fleet ca crl`"

_device = Device.__table__  # type: ignore[attr-defined]
_cert = Certificate.__table__  # type: ignore[attr-defined]
_crl = CrlRecord.__table__  # type: ignore[attr-defined]
_head = AuditHead.__table__  # type: ignore[attr-defined]
_cloud = Cloud.__table__  # type: ignore[attr-defined]
_job = CloudJob.__table__  # type: ignore[attr-defined]
_registration = CloudRegistration.__table__  # type: ignore[attr-defined]


def format_span(seconds: float) -> str:
    """A span for people, at most two units: ``42s``, ``12m 5s``, ``5h 12m``, ``3d 4h``."""
    total = int(abs(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


@dataclass(frozen=True)
class ModelCount:
    """How many devices have one model (``None``: no model recorded)."""

    model: str | None
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "count": self.count}


@dataclass(frozen=True)
class DeviceSummary:
    """Devices by status, and the ``top`` most common models; the rest summed as other."""

    total: int
    by_status: dict[str, int]
    by_model: tuple[ModelCount, ...]
    other_models: int  # how many further models...
    other_devices: int  # ...and how many devices they have

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_status": dict(self.by_status),
            "by_model": [m.to_dict() for m in self.by_model],
            "other": {"models": self.other_models, "count": self.other_devices},
        }


@dataclass(frozen=True)
class CertificateSummary:
    """Stored certificates by status; active ones past ``not_after`` (expired but never
    revoked or renewed) and those expiring within each window (cumulative, from now)."""

    active: int
    revoked: int
    expired_active: int
    expiring_within_days: dict[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "revoked": self.revoked,
            "expired_active": self.expired_active,
            "expiring_within": {f"{d}d": n for d, n in self.expiring_within_days.items()},
        }


@dataclass(frozen=True)
class CrlSummary:
    """The newest CRL the CA published."""

    number: int
    this_update: datetime
    next_update: datetime
    revoked_count: int
    next_update_in_seconds: int  # negative once it is past

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "this_update": iso(self.this_update),
            "next_update": iso(self.next_update),
            "next_update_in_seconds": self.next_update_in_seconds,
            "revoked_count": self.revoked_count,
        }


@dataclass(frozen=True)
class CloudSummary:
    """One cloud: its registrations by status and its outbox. Open jobs are pending or
    retrying ones (``retrying`` counts those among them that failed at least once)."""

    name: str
    type: str
    registrations: dict[str, int]
    open_jobs: int
    retrying_jobs: int
    failed_jobs: int
    oldest_open_job_age_seconds: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "registrations": dict(self.registrations),
            "jobs": {
                "open": self.open_jobs,
                "retrying": self.retrying_jobs,
                "failed": self.failed_jobs,
                "oldest_open_age_seconds": self.oldest_open_job_age_seconds,
            },
        }


@dataclass(frozen=True)
class AuditSummary:
    """The audit trail's head: its sequence number is the number of events."""

    events: int
    head_hash: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"events": self.events, "head_seq": self.events, "head_hash": self.head_hash}


@dataclass(frozen=True)
class ConnectionSummary:
    """Devices by their last connection event, and those offline longest."""

    online: int
    offline: int
    # (device ID, offline since), longest first
    longest_offline: tuple[tuple[str, datetime], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "offline": self.offline,
            "longest_offline": [
                {"device_id": device_id, "since": iso(since)}
                for device_id, since in self.longest_offline
            ],
        }


@dataclass(frozen=True)
class FleetStatus:
    """The fleet at ``at``: what ``fleet status`` shows; ``to_dict()`` is its JSON."""

    at: datetime
    devices: DeviceSummary
    certificates: CertificateSummary
    crl: CrlSummary | None
    clouds: tuple[CloudSummary, ...]
    audit: AuditSummary
    crl_warn_seconds: int
    warnings: tuple[str, ...] = field(default=())
    connections: ConnectionSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "devices": self.devices.to_dict(),
            "certificates": self.certificates.to_dict(),
            "crl": None if self.crl is None else self.crl.to_dict(),
            "crl_warn_seconds": self.crl_warn_seconds,
            "clouds": [c.to_dict() for c in self.clouds],
            "audit": self.audit.to_dict(),
            "connections": None if self.connections is None else self.connections.to_dict(),
            "warnings": list(self.warnings),
        }


def fleet_status(
    ws: Workspace, *, top: int = DEFAULT_TOP, crl_warn: timedelta = DEFAULT_CRL_WARN
) -> FleetStatus:
    """Summarise the registry: devices by status and by model (the ``top`` most common; the
    rest as other), certificates by expiry, the newest CRL, each cloud's registrations and
    outbox, the audit head. ``warnings`` says when no CRL was published or the newest one's
    next update is less than ``crl_warn`` away or past.

    Raises :class:`InvalidInput` for ``top`` outside 1 to 1000 or a negative ``crl_warn``.
    """
    if not 1 <= top <= MAX_TOP:
        raise InvalidInput(f"--top must be 1 to {MAX_TOP}")
    if crl_warn < timedelta(0):
        raise InvalidInput("--crl-warn must not be negative")
    now = clock.now()
    # One read transaction: on SQLite one snapshot for every figure, without a write lock.
    with read_session(ws.open_registry()) as session:
        conn = session.connection()
        devices = _devices(conn, top)
        certificates = _certificates(conn, now)
        crl = _crl_summary(conn, now)
        clouds = _clouds(conn, now)
        audit = _audit(conn)
        connections = _connections(conn)
    return FleetStatus(
        at=now,
        devices=devices,
        certificates=certificates,
        crl=crl,
        clouds=clouds,
        audit=audit,
        crl_warn_seconds=int(crl_warn.total_seconds()),
        warnings=tuple(crl_warnings(crl, crl_warn)),
        connections=connections,
    )


def crl_warnings(crl: CrlSummary | None, warn: timedelta) -> list[str]:
    """What to tell about the CRL: never published, next update within ``warn``, or past."""
    if crl is None:
        return [f"no CRL was ever published: {PUBLISH_HINT}; {CRL_EXPIRED_CONSEQUENCE}"]
    left = crl.next_update_in_seconds
    when = iso(crl.next_update)
    if left <= 0:
        return [
            f"CRL {crl.number} expired {format_span(left)} ago ({when}): "
            f"{CRL_EXPIRED_CONSEQUENCE}; {PUBLISH_HINT} now"
        ]
    if left <= warn.total_seconds():
        return [
            f"CRL {crl.number} expires in {format_span(left)} ({when}), within the "
            f"{format_span(warn.total_seconds())} warning threshold: {PUBLISH_HINT} before "
            f"then; {CRL_EXPIRED_CONSEQUENCE}"
        ]
    return []


def _count(conn: Connection, table: Any, *where: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def _devices(conn: Connection, top: int) -> DeviceSummary:
    count = func.count()
    # Over the grouped rows, in the same scan of device(model): the number of models and the
    # number of devices (PostgreSQL has no cheap COUNT(*), so one scan instead of two).
    query = (
        select(_device.c.model, count, func.count().over(), func.sum(count).over())
        .group_by(_device.c.model)
        .order_by(count.desc(), _device.c.model.is_(None), _device.c.model)
        .limit(top)
    )
    rows = conn.execute(query).all()
    by_model = tuple(ModelCount(model, int(n)) for model, n, _, _ in rows)
    models, total = (int(rows[0][2]), int(rows[0][3])) if rows else (0, 0)
    # The statuses other than active are short ranges of device(status); active is what is
    # left (the column only ever holds DeviceStatus values).
    others = {
        str(s): _count(conn, _device, _device.c.status == s)
        for s in DeviceStatus
        if s != DeviceStatus.ACTIVE
    }
    by_status = {DeviceStatus.ACTIVE.value: total - sum(others.values()), **others}
    return DeviceSummary(
        total=total,
        by_status=by_status,
        by_model=by_model,
        other_models=models - len(by_model),
        other_devices=total - sum(m.count for m in by_model),
    )


def _certificates(conn: Connection, now: datetime) -> CertificateSummary:
    # Only active and revoked are stored (expired is derived): active is what is left. A bare
    # COUNT(*) is SQLite's fast path (it counts the pages of the smallest index).
    total = _count(conn, _cert)
    revoked = _count(conn, _cert, _cert.c.status == CertStatus.REVOKED)
    active, not_after = _cert.c.status == CertStatus.ACTIVE, _cert.c.not_after
    # Each figure is one range of the (status, not_after) index, counted without reading rows.
    expired = _count(conn, _cert, active, not_after < now)
    windows = {
        days: _count(conn, _cert, active, not_after >= now, not_after <= now + timedelta(days))
        for days in EXPIRY_WINDOWS_DAYS
    }
    return CertificateSummary(
        active=total - revoked,
        revoked=revoked,
        expired_active=expired,
        expiring_within_days=windows,
    )


def _crl_summary(conn: Connection, now: datetime) -> CrlSummary | None:
    query = (
        select(_crl.c.number, _crl.c.this_update, _crl.c.next_update, _crl.c.revoked_count)
        .order_by(_crl.c.number.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    if row is None:
        return None
    number, this_update, next_update, revoked_count = row
    return CrlSummary(
        number=int(number),
        this_update=this_update,
        next_update=next_update,
        revoked_count=int(revoked_count),
        next_update_in_seconds=int((next_update - now).total_seconds()),
    )


def _clouds(conn: Connection, now: datetime) -> tuple[CloudSummary, ...]:
    clouds = conn.execute(select(_cloud.c.name, _cloud.c.type).order_by(_cloud.c.name)).all()
    if not clouds:
        return ()
    reg = _registration.c
    registrations = {
        (cloud, status): int(n)
        for cloud, status, n in conn.execute(
            select(reg.cloud, reg.status, func.count()).group_by(reg.cloud, reg.status)
        )
    }
    job = _job.c
    # Done jobs (most of the table) are outside this range of the (state, ...) index.
    job_query = (
        select(job.cloud, job.state, func.count(), func.min(job.created_at))
        .where(job.state.in_((JobState.PENDING, JobState.RETRY, JobState.FAILED)))
        .group_by(job.cloud, job.state)
    )
    jobs: dict[tuple[str, str], tuple[int, datetime | None]] = {
        (cloud, state): (int(n), oldest) for cloud, state, n, oldest in conn.execute(job_query)
    }
    result = []
    for name, kind in clouds:
        pending, pending_oldest = jobs.get((name, JobState.PENDING), (0, None))
        retrying, retry_oldest = jobs.get((name, JobState.RETRY), (0, None))
        failed, _ = jobs.get((name, JobState.FAILED), (0, None))
        starts = [t for t in (pending_oldest, retry_oldest) if t is not None]
        age = int((now - min(starts)).total_seconds()) if starts else None
        result.append(
            CloudSummary(
                name=name,
                type=kind,
                registrations={str(s): registrations.get((name, s), 0) for s in RegistrationStatus},
                open_jobs=pending + retrying,
                retrying_jobs=retrying,
                failed_jobs=failed,
                oldest_open_job_age_seconds=None if age is None else max(age, 0),
            )
        )
    return tuple(result)


def _audit(conn: Connection) -> AuditSummary:
    row = conn.execute(select(_head.c.seq, _head.c.hash).where(_head.c.id == 1)).first()
    if row is None:
        return AuditSummary(events=0, head_hash=None)
    return AuditSummary(events=int(row[0]), head_hash=str(row[1]))


LONGEST_OFFLINE = 5


def _connections(conn: Connection) -> ConnectionSummary:
    """Online and offline counts and the longest offline, from connection_state's
    (state, device_id) and (state, since) indexes."""
    state = ConnectionStatus.__table__  # type: ignore[attr-defined]
    online = _count(conn, state, state.c.state == ConnectionState.ONLINE)
    offline = _count(conn, state, state.c.state == ConnectionState.OFFLINE)
    longest = conn.execute(
        select(state.c.device_id, state.c.since)
        .where(state.c.state == ConnectionState.OFFLINE)
        .order_by(state.c.since, state.c.device_id)
        .limit(LONGEST_OFFLINE)
    )
    return ConnectionSummary(online, offline, tuple((r.device_id, r.since) for r in longest))
