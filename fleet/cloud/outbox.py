"""Clouds, the durable outbox of registration jobs, and the engine that pushes them.

A job row is written in the same transaction as the registry change that causes it
(:func:`enqueue_register` / :func:`enqueue_deregister` take the caller's session); pushing
happens after commit, from :func:`push` / :func:`sync`. Each job's outcome and the device's
registration status are committed in small batches, so a crash loses at most one batch of
outcomes and the jobs in it are simply pushed again (same idempotency key, idempotent
backends). Jobs that hit a transient failure are retried with exponential backoff and full
jitter (or after the server's ``Retry-After``); a permanent failure marks that job failed
and the others go on.

Concurrency model: threads. The backend interface is synchronous (httpx.Client, which is
thread-safe and pools connections; botocore's signer for AWS), so a ``ThreadPoolExecutor``
with the cloud's concurrency limit runs the network calls while the GIL is released on
socket I/O. The database is touched only by the calling thread (sessions are not shared
between threads; SQLite prefers one writer), which also keeps audit appends in order.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy import bindparam, delete, func, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fleet.cloud.base import (
    CaMaterial,
    CheckResult,
    CloudBackend,
    CloudError,
    DeviceRecord,
    PermanentError,
    RemoteStatus,
    TransientError,
    idempotency_key,
)
from fleet.cloud.jobs import (
    CHUNK,
    OPEN_STATES,
    _chunks,
    _newest_active,
    _open_jobs,
    _registrations,
    get_cloud,
    queue_registrations,
)
from fleet.cloud.models import Cloud, CloudJob, CloudRegistration
from fleet.cloud.plugins import load_backend_class
from fleet.errors import Conflict, InvalidInput
from fleet.pki import ca
from fleet.pki.issue import verification_certificate
from fleet.pki.keys import cert_pem
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.registry.models import Certificate, Device
from fleet.views import iso
from fleet.workspace import Passphrase, Workspace, require_passphrase

_JOB_COLUMNS = ("state", "attempts", "last_error", "next_attempt_at", "updated_at")
_CLOUD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ERROR_MAX = 500


# --- time, rate limit, backoff ---------------------------------------------------------


class Clock(Protocol):
    """Where the engine gets time and how it waits (tests inject a fake one)."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class RateLimiter:
    """Spaces request starts at least ``1/rate`` seconds apart, across threads.

    Permits are granted only at the moment they are used, each at least one interval after
    the previous grant: in ANY window of length T at most ``floor(T * rate) + 1`` requests
    start, and the rate the platform sees never exceeds the limit. (Handing out future slots
    in advance would let threads that wake late from a stall, a GC pause or a long commit,
    fire their slots together: the bench measured 216 requests in one second at 200/s.)
    Grants are spaced 0.5% wider than ``1/rate`` so that network jitter cannot push the rate
    the platform sees over its quota. ``rate=None`` means unlimited.
    """

    SAFETY = 1.005

    def __init__(self, rate: float | None, clock: Clock = SYSTEM_CLOCK) -> None:
        if rate is not None and rate <= 0:
            raise InvalidInput("rate must be positive")
        self.interval = 0.0 if rate is None else self.SAFETY / rate
        self.clock = clock
        self._lock = threading.Lock()
        self._last_grant: float | None = None

    def acquire(self) -> float:
        """Wait for a permit; returns the (monotonic) time it was granted."""
        if self.interval == 0.0:
            return self.clock.monotonic()
        while True:
            with self._lock:
                now = self.clock.monotonic()
                due = now if self._last_grant is None else self._last_grant + self.interval
                # 1 ns of slack: a sleep of exactly (due - now) may land one float ulp short
                if now >= due - 1e-9:
                    self._last_grant = now
                    return now
            self.clock.sleep(due - now)


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempts-1))] (AWS architecture blog)."""
    ceiling = min(cap, base * (2 ** max(0, attempts - 1)))
    return rng.uniform(0.0, ceiling)


@dataclass(frozen=True)
class PushPolicy:
    """How hard one push run tries.

    ``max_wait``: how long a run keeps waiting for jobs scheduled to retry later (jobs due
    after that stay queued for the next ``sync``). ``max_attempts``: None retries transient
    failures forever (across runs); a number marks the job failed after that many attempts.
    ``retry_after_cap`` bounds a server's ``Retry-After``.
    """

    base_delay: float = 0.5
    max_delay: float = 60.0
    max_wait: float = 30.0
    max_attempts: int | None = None
    retry_after_cap: float = 300.0
    commit_every: int = 100


ProgressFn = Callable[[int, int], None]  # (jobs finished, jobs to push)


# --- clouds ------------------------------------------------------------------------------


def validate_cloud_name(name: str) -> str:
    """Cloud names: letters, digits, ``_ . -``; up to 64; starting alphanumeric."""
    if not _CLOUD_NAME_RE.match(name):
        raise InvalidInput(
            f"invalid cloud name {name!r}: use letters, digits, '_', '.', '-' (max 64, "
            "starting with a letter or digit)"
        )
    return name


def cloud_to_dict(cloud: Cloud) -> dict[str, Any]:
    """A cloud as ``fleet cloud list/show --json`` shows it (options hold no secrets)."""
    return {
        "name": cloud.name,
        "type": cloud.type,
        "options": dict(cloud.options),
        "prepared": cloud.state is not None,
        "concurrency": cloud.concurrency,
        "rate_per_second": cloud.rate_per_second,
        "created_at": iso(cloud.created_at),
    }


def add_cloud(
    ws: Workspace,
    name: str,
    type_name: str,
    options: Mapping[str, Any],
    *,
    concurrency: int | None = None,
    rate_per_second: float | None = None,
    unlimited_rate: bool = False,
) -> dict[str, Any]:
    """Configure a cloud. Options are checked by the backend; nothing touches the network
    (one-time setup runs at the first push, so a cloud can be added offline).

    Unset options (None or empty) are dropped before the backend sees them. Example::

        add_cloud(ws, "plant", "http", {"url": "https://reg.example/devices/{id}",
                                        "header": ["Authorization=REG_TOKEN"]})
    """
    validate_cloud_name(name)
    backend_class = load_backend_class(type_name)
    given = {k: v for k, v in options.items() if v is not None and v != [] and v != ()}
    stored = backend_class.validate_options(given)
    if concurrency is not None and not 1 <= concurrency <= 256:
        raise InvalidInput("concurrency must be between 1 and 256")
    if rate_per_second is not None and not 0 < rate_per_second <= 100_000:
        raise InvalidInput("rate must be a positive number of requests per second")
    rate = None if unlimited_rate else (rate_per_second or backend_class.default_rate_per_second)
    now = datetime.now(UTC)
    cloud = Cloud(
        name=name,
        type=type_name,
        options=stored,
        state=None,
        concurrency=concurrency or backend_class.default_concurrency,
        rate_per_second=rate,
        created_at=now,
    )
    with write_session(ws.open_registry()) as session:
        if session.get(Cloud, name) is not None:
            raise Conflict(f"cloud {name!r} already exists")
        session.add(cloud)
        audit.append(
            session,
            "cloud.add",
            name,
            {
                "type": type_name,
                "options": stored,
                "concurrency": cloud.concurrency,
                "rate_per_second": rate,
            },
            at=now,
        )
    return cloud_to_dict(cloud)


def list_clouds(ws: Workspace) -> list[dict[str, Any]]:
    """Every configured cloud, by name."""
    with read_session(ws.open_registry()) as session:
        rows = session.exec(select(Cloud).order_by(Cloud.name)).all()
        return [cloud_to_dict(c) for c in rows]


def _counts(session: Session, name: str) -> tuple[dict[str, int], dict[str, int]]:
    jobs = session.exec(
        select(CloudJob.state, func.count()).where(CloudJob.cloud == name).group_by(CloudJob.state)
    ).all()
    regs = session.exec(
        select(CloudRegistration.status, func.count())
        .where(CloudRegistration.cloud == name)
        .group_by(CloudRegistration.status)
    ).all()
    return {str(k): int(v) for k, v in jobs}, {str(k): int(v) for k, v in regs}


def show_cloud(ws: Workspace, name: str) -> dict[str, Any]:
    """A cloud with counts of its jobs (by state) and registrations (by status)."""
    with read_session(ws.open_registry()) as session:
        cloud = get_cloud(session, name)
        jobs, regs = _counts(session, name)
        return {**cloud_to_dict(cloud), "jobs": jobs, "registrations": regs}


def remove_cloud(ws: Workspace, name: str, *, force: bool = False) -> dict[str, Any]:
    """Forget a cloud (nothing is changed on the platform itself).

    Refused while it has open jobs or registered devices, unless ``force``: then its jobs and
    registration records are dropped with it (the audit event counts them).
    """
    now = datetime.now(UTC)
    with write_session(ws.open_registry()) as session:
        cloud = get_cloud(session, name)
        jobs, regs = _counts(session, name)
        open_jobs = sum(jobs.get(s, 0) for s in OPEN_STATES)
        registered = regs.get("registered", 0)
        if (open_jobs or registered) and not force:
            raise Conflict(
                f"cloud {name!r} has {open_jobs} queued job(s) and {registered} registered "
                "device(s); deregister them first or use --force to forget it anyway"
            )
        dropped_jobs = sum(jobs.values())
        dropped_regs = sum(regs.values())
        session.exec(delete(CloudJob).where(col(CloudJob.cloud) == name))
        session.exec(delete(CloudRegistration).where(col(CloudRegistration.cloud) == name))
        session.delete(cloud)
        audit.append(
            session,
            "cloud.remove",
            name,
            {
                "type": cloud.type,
                "forced": force,
                "dropped_jobs": dropped_jobs,
                "dropped_registrations": dropped_regs,
            },
            at=now,
        )
    return {"name": name, "dropped_jobs": dropped_jobs, "dropped_registrations": dropped_regs}


def make_backend(cloud: Cloud, *, client: httpx.Client | None = None) -> CloudBackend:
    """An instance of the cloud's backend (``client`` overrides its own HTTP client)."""
    backend_class = load_backend_class(cloud.type)
    return backend_class(cloud.name, dict(cloud.options), client=client)


def check_cloud(ws: Workspace, name: str, *, client: httpx.Client | None = None) -> CheckResult:
    """Ask the backend whether the platform is reachable and the credentials work."""
    with read_session(ws.open_registry()) as session:
        cloud = get_cloud(session, name)
    backend = make_backend(cloud, client=client)
    try:
        return backend.check()
    except CloudError as exc:
        return CheckResult(False, str(exc))
    finally:
        backend.close()


# --- pushing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Work:
    job_id: int
    device_id: str
    action: str
    key: str
    record: DeviceRecord | None  # None: refuse without calling the backend
    refusal: str
    remote: dict[str, Any]


@dataclass(frozen=True)
class _Outcome:
    work: _Work
    kind: str  # "done", "transient", "permanent"
    remote: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    retry_after: float | None = None


@dataclass
class PushReport:
    """What one push run did on one cloud."""

    cloud: str
    done: int = 0
    failed: int = 0
    left: int = 0  # still queued (retry later): offline, throttled, out of time
    failures: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the run could not start (prepare failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cloud": self.cloud,
            "done": self.done,
            "failed": self.failed,
            "left": self.left,
            "failures": self.failures,
            "error": self.error,
        }


def _short(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 3] + "..."


def _sign_verification_cert(
    ws: Workspace, passphrase: Passphrase | None
) -> Callable[[str, bytes], str]:
    def sign(common_name: str, public_key_pem: bytes) -> str:
        issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))
        return verification_certificate(issuer, common_name, public_key_pem)

    return sign


def ca_material(ws: Workspace, passphrase: Passphrase | None = None) -> CaMaterial:
    """fleet's CA for a backend's prepare (the passphrase is asked only if it signs)."""
    issuing, root = ca.load_ca_certificates(ws.home)
    return CaMaterial(
        issuing_pem=cert_pem(issuing).decode("ascii"),
        root_pem=cert_pem(root).decode("ascii"),
        sign_verification_cert=_sign_verification_cert(ws, passphrase),
    )


def _ensure_prepared(
    ws: Workspace,
    engine: Engine,
    cloud: Cloud,
    backend: CloudBackend,
    passphrase: Passphrase | None,
) -> dict[str, Any]:
    if cloud.state is not None:
        return dict(cloud.state)
    state = backend.prepare(ca_material(ws, passphrase))
    with write_session(engine) as session:
        row = get_cloud(session, cloud.name)
        row.state = dict(state)
        session.add(row)
        audit.append(session, "cloud.prepare", cloud.name, {"type": cloud.type})
    cloud.state = dict(state)
    return dict(state)


def _records(session: Session, jobs: Sequence[CloudJob]) -> list[_Work]:
    ids = list({j.device_id for j in jobs})
    devices: dict[str, Device] = {}
    for chunk in _chunks(ids):
        devices.update(
            {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(chunk)))}
        )
    active = _newest_active(session, ids)
    regs = {(r.device_id, r.cloud): r for r in _registrations(session, ids, None)}
    wanted_serials = {r.certificate_serial for r in regs.values() if r.certificate_serial}
    by_serial: dict[str, Certificate] = {}
    serial_list = sorted(wanted_serials)
    for chunk in _chunks(serial_list):
        query = select(Certificate).where(col(Certificate.serial).in_(chunk))
        by_serial.update({c.serial: c for c in session.exec(query)})
    works: list[_Work] = []
    for job in jobs:
        assert job.id is not None
        device = devices[job.device_id]
        reg = regs.get((job.device_id, job.cloud))
        remote = dict(reg.remote) if reg is not None else {}
        if job.action == "register":
            cert = active.get(job.device_id)
            refusal = ""
            if device.status != "active":
                refusal = "device is decommissioned"
            elif cert is None:
                refusal = "device has no active certificate"
        else:
            # Deregister what was registered: that certificate, else the newest active one.
            registered = by_serial.get(reg.certificate_serial or "") if reg is not None else None
            cert = registered or active.get(job.device_id)
            refusal = ""
        record = None
        if not refusal:
            record = DeviceRecord(
                device_id=device.id,
                model=device.model,
                serial=device.serial,
                labels=dict(device.labels),
                status=device.status,
                certificate_pem=cert.pem if cert is not None else "",
                certificate_serial=cert.serial if cert is not None else "",
                fingerprint_sha256=cert.fingerprint_sha256 if cert is not None else "",
            )
        works.append(
            _Work(job.id, job.device_id, job.action, job.idempotency_key, record, refusal, remote)
        )
    return works


def _run_one(
    backend: CloudBackend, state: Mapping[str, Any], limiter: RateLimiter, work: _Work
) -> _Outcome:
    if work.record is None:
        return _Outcome(work, "permanent", error=work.refusal)
    limiter.acquire()
    try:
        with idempotency_key(work.key):
            if work.action == "register":
                remote = backend.register(work.record, state)
                return _Outcome(work, "done", remote=dict(remote))
            backend.deregister(work.record, work.remote, state)
            return _Outcome(work, "done")
    except TransientError as exc:
        return _Outcome(work, "transient", error=_short(str(exc)), retry_after=exc.retry_after)
    except PermanentError as exc:
        return _Outcome(work, "permanent", error=_short(str(exc)))
    except CloudError as exc:
        return _Outcome(work, "permanent", error=_short(str(exc)))
    except Exception as exc:  # a backend bug: fail this job, keep the others going
        # Only the type: an unexpected exception's text is not vetted for secrets.
        return _Outcome(work, "permanent", error=f"unexpected backend error ({type(exc).__name__})")


class _Pusher:
    """Pushes one cloud's due jobs (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        cloud: Cloud,
        backend: CloudBackend,
        state: dict[str, Any],
        *,
        device_ids: Sequence[str] | None,
        policy: PushPolicy,
        clock: Clock,
        progress: ProgressFn | None,
        rng: random.Random,
    ) -> None:
        self.engine = engine
        self.cloud = cloud
        self.backend = backend
        self.state = state
        self.device_ids = list(device_ids) if device_ids is not None else None
        self.policy = policy
        self.clock = clock
        self.progress = progress
        self.rng = rng
        self.limiter = RateLimiter(cloud.rate_per_second, clock)
        self.report = PushReport(cloud.name)
        self.finished = 0
        self.total = 0

    def _open_query(self) -> Any:
        query = select(CloudJob).where(
            CloudJob.cloud == self.cloud.name, col(CloudJob.state).in_(OPEN_STATES)
        )
        if self.device_ids is not None:
            query = query.where(col(CloudJob.device_id).in_(self.device_ids))
        return query

    def _count_open(self) -> int:
        with read_session(self.engine) as session:
            sub = self._open_query().subquery()
            return int(session.exec(select(func.count()).select_from(sub)).one())

    def _due(self, limit: int) -> list[_Work]:
        now = self.clock.now()
        with read_session(self.engine) as session:
            query = (
                self._open_query()
                .where(
                    or_(
                        col(CloudJob.next_attempt_at).is_(None),
                        col(CloudJob.next_attempt_at) <= now,
                    )
                )
                .order_by(col(CloudJob.id))
                .limit(limit)
            )
            jobs = list(session.exec(query))
            # One job per device at a time, oldest first: a register and a later
            # deregister of the same device must not race.
            seen: set[str] = set()
            picked = []
            for job in jobs:
                if job.device_id not in seen:
                    seen.add(job.device_id)
                    picked.append(job)
            return _records(session, picked)

    def _next_due(self) -> datetime | None:
        with read_session(self.engine) as session:
            sub = self._open_query().subquery()
            value = session.exec(select(func.min(sub.c.next_attempt_at))).one()
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite aggregate: no type processing
            value = value.replace(tzinfo=UTC)
        return value  # type: ignore[no-any-return]

    def run(self) -> PushReport:
        self.total = self._count_open()
        if self.progress:
            self.progress(0, self.total)
        deadline = self.clock.monotonic() + self.policy.max_wait
        page = max(500, self.cloud.concurrency * 50)
        with ThreadPoolExecutor(max_workers=self.cloud.concurrency) as pool:
            while True:
                works = self._due(page)
                if works:
                    self._run_round(pool, works)
                    continue
                next_due = self._next_due()
                if next_due is None:
                    break
                wait_s = (next_due - self.clock.now()).total_seconds()
                if self.clock.monotonic() + wait_s > deadline:
                    break
                self.clock.sleep(max(0.0, wait_s))
        self.report.left = self._count_open()
        return self.report

    def _run_round(self, pool: ThreadPoolExecutor, works: list[_Work]) -> None:
        state = self.state
        pending: set[Future[_Outcome]] = set()
        batch: list[_Outcome] = []
        items = iter(works)
        # A bounded number of submitted jobs: enough to keep workers busy while this thread
        # commits a batch, few enough that a crash strands few finished results (they are
        # pushed again, idempotently, by the next run).
        window = self.cloud.concurrency * 4 + self.policy.commit_every
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                work = next(items, None)
                if work is None:
                    exhausted = True
                    break
                pending.add(pool.submit(_run_one, self.backend, state, self.limiter, work))
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            batch.extend(f.result() for f in finished)
            if len(batch) >= self.policy.commit_every:
                self._apply(batch)
                batch = []
        if batch:
            self._apply(batch)

    def _apply(self, outcomes: Sequence[_Outcome]) -> None:
        """Commit a batch of outcomes: job rows, registration rows, audit events.

        Core executemany UPDATEs (grouped by the columns they set) rather than ORM objects:
        this thread's CPU time is what the worker threads wait for.
        """
        now = self.clock.now()
        name = self.cloud.name
        events: list[audit.PendingEvent] = []
        job_updates: list[dict[str, Any]] = []
        reg_updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}

        def reg_update(device_id: str, **values: Any) -> None:
            values["updated_at"] = now
            key = tuple(sorted(values))
            reg_updates.setdefault(key, []).append({"b_device_id": device_id, **values})

        with write_session(self.engine) as session:
            job_ids = [o.work.job_id for o in outcomes]
            rows = session.exec(
                select(CloudJob.id, CloudJob.state, CloudJob.attempts).where(
                    col(CloudJob.id).in_(job_ids)
                )
            ).all()
            jobs = {row[0]: (row[1], row[2]) for row in rows}
            reg_query = select(CloudRegistration.device_id).where(
                CloudRegistration.cloud == name,
                col(CloudRegistration.device_id).in_([o.work.device_id for o in outcomes]),
            )
            missing = {o.work.device_id for o in outcomes} - set(session.exec(reg_query).all())
            for device_id in sorted(
                missing
            ):  # registration rows come with their jobs; just in case
                session.add(
                    CloudRegistration(device_id=device_id, cloud=name, remote={}, updated_at=now)
                )
            session.flush()
            for outcome in outcomes:
                work = outcome.work
                found = jobs.get(work.job_id)
                if found is None:  # the cloud was removed meanwhile (--force)
                    continue
                job_state, attempts = found
                record = work.record
                serial = record.certificate_serial if record is not None else None
                if job_state not in OPEN_STATES:
                    # Superseded while in flight (a deregistration was queued): only a
                    # success matters, so the deregistration knows the remote ids.
                    if outcome.kind == "done" and work.action == "register":
                        reg_update(
                            work.device_id,
                            status="registered",
                            remote=outcome.remote,
                            certificate_serial=serial,
                        )
                        events.append(
                            audit.PendingEvent(
                                "cloud.register",
                                work.device_id,
                                {"cloud": name, "certificate_serial": serial, "attempts": attempts},
                            )
                        )
                    continue
                attempts += 1
                kind, error = outcome.kind, outcome.error
                if kind == "transient" and (
                    self.policy.max_attempts is not None and attempts >= self.policy.max_attempts
                ):
                    kind, error = "permanent", _short(f"gave up after {attempts} attempts: {error}")
                job = {"b_id": work.job_id, "attempts": attempts, "updated_at": now}
                if kind == "done":
                    job_updates.append(
                        {**job, "state": "done", "last_error": None, "next_attempt_at": None}
                    )
                    if work.action == "register":
                        reg_update(
                            work.device_id,
                            status="registered",
                            remote=outcome.remote,
                            certificate_serial=serial,
                            attempts=attempts,
                            last_error=None,
                        )
                    else:
                        reg_update(
                            work.device_id,
                            status="deregistered",
                            attempts=attempts,
                            last_error=None,
                        )
                    self.report.done += 1
                    self.finished += 1
                    events.append(
                        audit.PendingEvent(
                            f"cloud.{work.action}",
                            work.device_id,
                            {"cloud": name, "certificate_serial": serial, "attempts": attempts},
                        )
                    )
                elif kind == "transient":
                    delay = (
                        min(outcome.retry_after, self.policy.retry_after_cap)
                        if outcome.retry_after is not None
                        else backoff_delay(
                            attempts, self.policy.base_delay, self.policy.max_delay, self.rng
                        )
                    )
                    job_updates.append(
                        {
                            **job,
                            "state": "retry",
                            "last_error": error,
                            "next_attempt_at": now + timedelta(seconds=delay),
                        }
                    )
                    reg_update(work.device_id, attempts=attempts, last_error=error)
                else:
                    job_updates.append(
                        {**job, "state": "failed", "last_error": error, "next_attempt_at": None}
                    )
                    reg_update(
                        work.device_id,
                        status="failed",
                        attempts=attempts,
                        last_error=_short(f"{work.action}: {error}"),
                    )
                    self.report.failed += 1
                    self.finished += 1
                    failure = {
                        "device_id": work.device_id,
                        "action": work.action,
                        "attempts": attempts,
                        "error": error,
                    }
                    self.report.failures.append(failure)
                    events.append(
                        audit.PendingEvent(
                            "cloud.failed",
                            work.device_id,
                            {
                                "cloud": name,
                                **{k: failure[k] for k in ("action", "attempts", "error")},
                            },
                        )
                    )
            jobs_table = CloudJob.__table__  # type: ignore[attr-defined]
            regs_table = CloudRegistration.__table__  # type: ignore[attr-defined]
            if job_updates:
                statement = (
                    update(jobs_table)
                    .where(jobs_table.c.id == bindparam("b_id"))
                    .values({k: bindparam(k) for k in _JOB_COLUMNS})
                )
                session.connection().execute(statement, job_updates)
            for columns, values in reg_updates.items():
                statement = (
                    update(regs_table)
                    .where(regs_table.c.cloud == name)
                    .where(regs_table.c.device_id == bindparam("b_device_id"))
                    .values({k: bindparam(k) for k in columns})
                )
                session.connection().execute(statement, values)
            if events:
                audit.append_many(session, events, at=now)
        if self.progress:
            self.progress(self.finished, self.total)


def _clouds_to_push(ws: Workspace, name: str | None) -> list[Cloud]:
    with read_session(ws.open_registry()) as session:
        if name is not None:
            return [get_cloud(session, name)]
        return list(session.exec(select(Cloud).order_by(Cloud.name)))


def push(
    ws: Workspace,
    name: str | None = None,
    *,
    device_ids: Sequence[str] | None = None,
    policy: PushPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
    client: httpx.Client | None = None,
    progress: ProgressFn | None = None,
    passphrase: Passphrase | None = None,
    rng: random.Random | None = None,
) -> list[PushReport]:
    """Push every due job of one cloud (or of all clouds); one report per cloud.

    Prepares a cloud first if it never was. Jobs that stay retryable past ``policy.max_wait``
    remain queued (``report.left``) for the next run.
    """
    engine = ws.open_registry()
    reports = []
    for cloud in _clouds_to_push(ws, name):
        backend = make_backend(cloud, client=client)
        try:
            try:
                state = _ensure_prepared(ws, engine, cloud, backend, passphrase)
            except CloudError as exc:
                report = PushReport(cloud.name, error=f"setup failed: {_short(str(exc))}")
                with read_session(engine) as session:
                    report.left = _count_open_jobs(session, cloud.name, device_ids)
                reports.append(report)
                continue
            pusher = _Pusher(
                engine,
                cloud,
                backend,
                state,
                device_ids=device_ids,
                policy=policy or PushPolicy(),
                clock=clock,
                progress=progress,
                rng=rng or random.Random(),
            )
            reports.append(pusher.run())
        finally:
            backend.close()
    return reports


def _count_open_jobs(session: Session, cloud: str, device_ids: Sequence[str] | None) -> int:
    query = (
        select(func.count())
        .select_from(CloudJob)
        .where(CloudJob.cloud == cloud, col(CloudJob.state).in_(OPEN_STATES))
    )
    if device_ids is not None:
        query = query.where(col(CloudJob.device_id).in_(device_ids))
    return int(session.exec(query).one())


def register(
    ws: Workspace,
    name: str,
    device_ids: Sequence[str] = (),
    *,
    all_devices: bool = False,
    queue_only: bool = False,
    policy: PushPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
    client: httpx.Client | None = None,
    progress: ProgressFn | None = None,
    passphrase: Passphrase | None = None,
) -> dict[str, Any]:
    """Queue registration of devices on a cloud and, unless ``queue_only``, push the cloud's
    queue now. Returns ``{"queued": n, "push": report-or-None}``."""
    queued = queue_registrations(ws, name, device_ids, all_devices=all_devices)
    if queue_only:
        return {"queued": queued, "push": None}
    reports = push(
        ws,
        name,
        policy=policy,
        clock=clock,
        client=client,
        progress=progress,
        passphrase=passphrase,
    )
    return {"queued": queued, "push": reports[0].to_dict()}


@dataclass
class SyncReport:
    """``push`` then status pull, for one cloud."""

    push: PushReport
    status_updated: int = 0
    status_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.push.to_dict(),
            "status_updated": self.status_updated,
            "status_errors": self.status_errors,
        }


def pull_status(
    ws: Workspace,
    cloud: Cloud,
    backend: CloudBackend,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[int, list[str]]:
    """Fetch connection state, last activity and firmware for the cloud's registered devices
    (in batches of ``backend.status_batch_size``, within the cloud's limits) and store them."""
    engine = ws.open_registry()
    with read_session(engine) as session:
        query = select(CloudRegistration.device_id).where(
            CloudRegistration.cloud == cloud.name, CloudRegistration.status == "registered"
        )
        ids = sorted(session.exec(query))
    state = dict(cloud.state or {})
    limiter = RateLimiter(cloud.rate_per_second, clock)
    size = max(1, backend.status_batch_size)
    batches = [ids[i : i + size] for i in range(0, len(ids), size)]

    def fetch(batch: list[str]) -> dict[str, RemoteStatus]:
        limiter.acquire()
        return backend.fetch_status(batch, state)

    updated = 0
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=cloud.concurrency) as pool:
        futures = [pool.submit(fetch, b) for b in batches]
        results: dict[str, RemoteStatus] = {}
        for future in futures:
            try:
                results.update(future.result())
            except CloudError as exc:
                errors.append(_short(str(exc)))
            except Exception as exc:  # backend bug: report, do not leak its text
                errors.append(f"unexpected backend error ({type(exc).__name__})")
    now = clock.now()
    items = sorted(results.items())
    for start in range(0, len(items), CHUNK):
        with write_session(engine) as session:
            for device_id, status in items[start : start + CHUNK]:
                reg = session.get(CloudRegistration, (device_id, cloud.name))
                if reg is None:
                    continue
                reg.connected = status.connected
                reg.last_activity = status.last_activity
                reg.firmware_version = (
                    status.firmware_version[:128] if status.firmware_version else None
                )
                reg.status_checked_at = now
                session.add(reg)
                updated += 1
    return updated, errors[:20]


def sync(
    ws: Workspace,
    name: str | None = None,
    *,
    policy: PushPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
    client: httpx.Client | None = None,
    progress: ProgressFn | None = None,
    passphrase: Passphrase | None = None,
) -> list[SyncReport]:
    """Push every due job, then pull status, for one cloud or all of them."""
    reports = []
    for push_report in push(
        ws,
        name,
        policy=policy,
        clock=clock,
        client=client,
        progress=progress,
        passphrase=passphrase,
    ):
        report = SyncReport(push_report)
        if push_report.error is None:
            with read_session(ws.open_registry()) as session:
                cloud = get_cloud(session, push_report.cloud)
            backend = make_backend(cloud, client=client)
            try:
                report.status_updated, report.status_errors = pull_status(
                    ws, cloud, backend, clock=clock
                )
            finally:
                backend.close()
        reports.append(report)
    return reports


def registration_to_dict(reg: CloudRegistration, job: CloudJob | None) -> dict[str, Any]:
    """One device on one cloud, as ``fleet cloud status --json`` shows it."""
    return {
        "device_id": reg.device_id,
        "cloud": reg.cloud,
        "status": reg.status,
        "certificate_serial": reg.certificate_serial,
        "attempts": reg.attempts,
        "last_error": reg.last_error,
        "queued": None if job is None else {"action": job.action, "state": job.state},
        "connected": reg.connected,
        "last_activity": iso(reg.last_activity),
        "firmware_version": reg.firmware_version,
        "status_checked_at": iso(reg.status_checked_at),
        "updated_at": iso(reg.updated_at),
    }


def iter_status(
    ws: Workspace, name: str | None = None, *, batch_size: int = 1000
) -> Iterator[dict[str, Any]]:
    """Every registration (of one cloud or all), ordered by cloud then device, streamed."""
    engine = ws.open_registry()
    with read_session(engine) as session:
        if name is not None:
            get_cloud(session, name)
    last: tuple[str, str] = ("", "")
    while True:
        with read_session(engine) as session:
            query = select(CloudRegistration).where(
                or_(
                    col(CloudRegistration.cloud) > last[0],
                    (col(CloudRegistration.cloud) == last[0])
                    & (col(CloudRegistration.device_id) > last[1]),
                )
            )
            if name is not None:
                query = query.where(CloudRegistration.cloud == name)
            rows = list(
                session.exec(
                    query.order_by(
                        col(CloudRegistration.cloud), col(CloudRegistration.device_id)
                    ).limit(batch_size)
                )
            )
            if not rows:
                return
            ids = [r.device_id for r in rows]
            clouds = sorted({r.cloud for r in rows})
            jobs = {(j.device_id, j.cloud): j for j in _open_jobs(session, ids, clouds)}
            batch = [registration_to_dict(r, jobs.get((r.device_id, r.cloud))) for r in rows]
        yield from batch
        last = (rows[-1].cloud, rows[-1].device_id)
