"""The push engine: sends a cloud's due jobs to its backend and records what came of them.

A job row is written in the same transaction as the registry change that causes it
(:mod:`fleet.cloud.jobs`); pushing happens after commit, from :func:`push` (or
:func:`fleet.cloud.status.sync`). Each job's outcome and the device's registration status are
committed in small batches, so a crash loses at most one batch of outcomes and the jobs in
it are simply pushed again (same idempotency key, idempotent backends). Jobs that hit a
transient failure are retried with exponential backoff and full jitter (or after the
server's ``Retry-After``); a permanent failure marks that job failed and the others go on.
What each outcome means for the job and the registration is decided in
:mod:`fleet.cloud.transitions`; this module only schedules, calls and writes.

Concurrency model: threads. The backend interface is synchronous (httpx.Client, which is
thread-safe and pools connections; botocore's signer for AWS), so a ``ThreadPoolExecutor``
with the cloud's concurrency limit runs the network calls while the GIL is released on
socket I/O. The database is touched only by the calling thread (sessions are not shared
between threads; SQLite prefers one writer), which also keeps audit appends in order.
"""

from __future__ import annotations

import gc
import queue
import random
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fleet import clock
from fleet.cloud.base import CaMaterial, CloudBackend, CloudError, UnreachableError
from fleet.cloud.clouds import make_backend
from fleet.cloud.jobs import get_cloud, queue_registrations_skipping
from fleet.cloud.models import Cloud, CloudJob, CloudRegistration
from fleet.cloud.pacing import SYSTEM_TIMER, PushPolicy, RateLimiter, Timer
from fleet.cloud.transitions import Attempt, JobRow, Outcome, Transition, short_error, transition
from fleet.cloud.views import RegisterResult
from fleet.cloud.work import Work, load_work, perform_group
from fleet.pki import ca
from fleet.pki.issue import verification_certificate
from fleet.pki.keys import cert_pem
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.statuses import OPEN_JOB_STATES, JobAction, JobState
from fleet.workspace import Passphrase, Workspace, require_passphrase

if TYPE_CHECKING:
    import httpx

_JOB_COLUMNS = ("state", "attempts", "last_error", "next_attempt_at", "updated_at")
ProgressFn = Callable[[int, int], None]  # (jobs finished, jobs to push)


@dataclass
class PushReport:
    """What one push run did on one cloud."""

    cloud: str
    done: int = 0
    failed: int = 0
    left: int = 0  # still queued (retry later): offline, throttled, out of time
    failures: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the run could not start (prepare failed)
    # the platform could not be reached (connection refused...): the run stopped at once and
    # its jobs stay queued, unattempted; the first such error
    unreachable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as ``--json`` shows it (``"unreachable"`` only when it was)."""
        result: dict[str, Any] = {
            "cloud": self.cloud,
            "done": self.done,
            "failed": self.failed,
            "left": self.left,
            "failures": self.failures,
            "error": self.error,
        }
        if self.unreachable is not None:
            result["unreachable"] = self.unreachable
        return result


def ca_material(ws: Workspace, passphrase: Passphrase | None = None) -> CaMaterial:
    """fleet's CA for a backend's prepare (the passphrase is asked only if it signs)."""
    issuing, root = ca.load_ca_certificates(ws.home)

    def sign(common_name: str, public_key_pem: bytes) -> str:
        issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))
        return verification_certificate(issuer, common_name, public_key_pem)

    return CaMaterial(
        issuing_pem=cert_pem(issuing).decode("ascii"),
        root_pem=cert_pem(root).decode("ascii"),
        sign_verification_cert=sign,
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


def _open_jobs_query(cloud: str, device_ids: Sequence[str] | None) -> Any:
    query = select(CloudJob).where(
        CloudJob.cloud == cloud, col(CloudJob.state).in_(OPEN_JOB_STATES)
    )
    if device_ids is not None:
        query = query.where(col(CloudJob.device_id).in_(device_ids))
    return query


def count_open_jobs(session: Session, cloud: str, device_ids: Sequence[str] | None) -> int:
    """Jobs of ``cloud`` (of these devices only, if given) still pending or retrying."""
    sub = _open_jobs_query(cloud, device_ids).subquery()
    return int(session.exec(select(func.count()).select_from(sub)).one())


def _job_rows(session: Session, job_ids: Sequence[int]) -> dict[int, JobRow]:
    """The jobs' state and attempts as the database holds them now, by id."""
    rows = session.exec(
        select(CloudJob.id, CloudJob.state, CloudJob.attempts).where(col(CloudJob.id).in_(job_ids))
    ).all()
    return {row[0]: JobRow(row[1], row[2]) for row in rows if row[0] is not None}


def _ensure_registrations(
    session: Session, cloud: str, works: Sequence[Work], now: datetime
) -> None:
    """Create the registration rows of these jobs' devices that do not exist."""
    query = select(CloudRegistration.device_id).where(
        CloudRegistration.cloud == cloud,
        col(CloudRegistration.device_id).in_([w.device_id for w in works]),
    )
    missing = {w.device_id for w in works} - set(session.exec(query).all())
    for device_id in sorted(missing):
        session.add(CloudRegistration(device_id=device_id, cloud=cloud, remote={}, updated_at=now))
    session.flush()


class _Writes:
    """The rows one batch of outcomes changes, written with executemany UPDATEs grouped by
    the columns they set (not ORM objects: this thread's CPU time is what the worker threads
    wait for)."""

    def __init__(self, cloud: str, now: datetime) -> None:
        self.cloud = cloud
        self.now = now
        self.jobs: list[dict[str, Any]] = []
        self.registrations: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        self.events: list[audit.PendingEvent] = []

    def add(self, work: Work, step: Transition) -> None:
        """Queue the writes of one outcome."""
        if step.job is not None:
            self.jobs.append({"b_id": work.job_id, **step.job, "updated_at": self.now})
        if step.registration is not None:
            values = {**step.registration, "updated_at": self.now}
            key = tuple(sorted(values))
            self.registrations.setdefault(key, []).append({"b_device_id": work.device_id, **values})
        if step.event is not None:
            action, details = step.event
            self.events.append(audit.PendingEvent(action, work.device_id, details))

    def write(self, session: Session) -> None:
        """Execute the queued writes in ``session``."""
        jobs_table = CloudJob.__table__  # type: ignore[attr-defined]
        regs_table = CloudRegistration.__table__  # type: ignore[attr-defined]
        if self.jobs:
            statement = (
                update(jobs_table)
                .where(jobs_table.c.id == bindparam("b_id"))
                .values({k: bindparam(k) for k in _JOB_COLUMNS})
            )
            session.connection().execute(statement, self.jobs)
        for columns, values in self.registrations.items():
            statement = (
                update(regs_table)
                .where(regs_table.c.cloud == self.cloud)
                .where(regs_table.c.device_id == bindparam("b_device_id"))
                .values({k: bindparam(k) for k in columns})
            )
            session.connection().execute(statement, values)
        if self.events:
            audit.append_many(session, self.events, at=self.now)


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
        timer: Timer,
        progress: ProgressFn | None,
        rng: random.Random,
    ) -> None:
        self.engine = engine
        self.cloud = cloud
        self.backend = backend
        self.state = state
        self.device_ids = list(device_ids) if device_ids is not None else None
        self.policy = policy
        self.timer = timer
        self.progress = progress
        self.rng = rng
        self.limiter = RateLimiter(cloud.rate_per_second, timer)
        self.report = PushReport(cloud.name)
        self.finished = 0
        self.total = 0

    def _count_open(self) -> int:
        with read_session(self.engine) as session:
            return count_open_jobs(session, self.cloud.name, self.device_ids)

    def _due(self, limit: int) -> list[Work]:
        now = clock.now()
        with read_session(self.engine) as session:
            query = (
                _open_jobs_query(self.cloud.name, self.device_ids)
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
            return load_work(session, picked)

    def _next_due(self) -> datetime | None:
        with read_session(self.engine) as session:
            sub = _open_jobs_query(self.cloud.name, self.device_ids).subquery()
            value = session.exec(select(func.min(sub.c.next_attempt_at))).one()
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite aggregate: no type processing
            value = value.replace(tzinfo=UTC)
        return value  # type: ignore[no-any-return]

    def run(self) -> PushReport:
        """Push until no job is due, waiting for retries up to ``policy.max_wait``."""
        self.total = self._count_open()
        if self.progress:
            self.progress(0, self.total)
        deadline = self.timer.monotonic() + self.policy.max_wait
        page = max(500, self.cloud.concurrency * 50)
        with _old_objects_frozen(), ThreadPoolExecutor(self.cloud.concurrency) as pool:
            while True:
                works = self._due(page)
                if works:
                    self._run_round(pool, works)
                    if self.report.unreachable is not None:
                        break  # nobody answers: every job stays queued for a later run
                    continue
                next_due = self._next_due()
                if next_due is None:
                    break
                wait_s = (next_due - clock.now()).total_seconds()
                if self.timer.monotonic() + wait_s > deadline:
                    break
                self.timer.sleep(max(0.0, wait_s))
        self.report.left = self._count_open()
        return self.report

    def _groups(self, works: list[Work]) -> list[list[Work]]:
        """One job per call, except register jobs, which go ``register_batch_size`` at a
        time to backends that batch them."""
        size = self.backend.register_batch_size
        if size <= 1:
            return [[work] for work in works]
        registers = [w for w in works if w.action == JobAction.REGISTER]
        groups = [registers[i : i + size] for i in range(0, len(registers), size)]
        return groups + [[w] for w in works if w.action != JobAction.REGISTER]

    def _run_round(self, pool: ThreadPoolExecutor, works: list[Work]) -> None:
        pending: dict[Future[list[Outcome]], list[Work]] = {}
        # Workers hand their finished futures over through a queue: waiting on it costs this
        # thread O(1) per result (concurrent.futures.wait() would add and remove a waiter on
        # every pending future each time, GIL time the workers and the limiter wait for).
        done_queue: queue.SimpleQueue[Future[list[Outcome]]] = queue.SimpleQueue()
        batch: list[tuple[Work, Outcome]] = []
        items = iter(self._groups(works))
        in_flight = 0
        # A bounded number of submitted jobs: enough to keep workers busy while this thread
        # commits a batch, few enough that a crash strands few finished results (they are
        # pushed again, idempotently, by the next run).
        window = self.cloud.concurrency * 4 + self.policy.commit_every
        exhausted = False
        while True:
            while not exhausted and in_flight < window:
                if self.report.unreachable is not None:
                    exhausted = True  # submit nothing more: it would only be refused too
                    break
                group = next(items, None)
                if group is None:
                    exhausted = True
                    break
                future = pool.submit(perform_group, self.backend, self.state, self.limiter, group)
                pending[future] = group
                future.add_done_callback(done_queue.put)
                in_flight += len(group)
            if not pending:
                break
            for done in _drain(done_queue):
                group = pending.pop(done)
                in_flight -= len(group)
                for work, outcome in zip(group, done.result(), strict=True):
                    if outcome.unreachable:  # not an attempt: the job stays as it was
                        if self.report.unreachable is None:
                            self.report.unreachable = outcome.error
                        continue
                    batch.append((work, outcome))
            if len(batch) >= self.policy.commit_every:
                self._apply(batch)
                batch = []
        if batch:
            self._apply(batch)

    def _apply(self, outcomes: Sequence[tuple[Work, Outcome]]) -> None:
        """Commit a batch of outcomes: job rows, registration rows, audit events."""
        now = clock.now()
        writes = _Writes(self.cloud.name, now)
        with write_session(self.engine) as session:
            jobs = _job_rows(session, [work.job_id for work, _ in outcomes])
            # Registration rows come with their jobs; just in case one went missing.
            _ensure_registrations(session, self.cloud.name, [w for w, _ in outcomes], now)
            for work, outcome in outcomes:
                job = jobs.get(work.job_id)
                if job is None:  # the cloud was removed meanwhile (--force)
                    continue
                record = work.record
                attempt = Attempt(
                    self.cloud.name,
                    work.device_id,
                    work.action,
                    record.certificate_serial if record is not None else None,
                )
                step = transition(job, attempt, outcome, policy=self.policy, rng=self.rng, now=now)
                writes.add(work, step)
                self._count(step)
            writes.write(session)
        if self.progress:
            self.progress(self.finished, self.total)

    def _count(self, step: Transition) -> None:
        if step.counts_as == JobState.DONE:
            self.report.done += 1
        elif step.counts_as == JobState.FAILED:
            self.report.failed += 1
            if step.failure is not None:
                self.report.failures.append(step.failure)
        else:
            return
        self.finished += 1


@contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """Leave the objects that exist before the push out of the garbage collector's full
    collections while it runs (:func:`gc.freeze`), and give them back after.

    A full collection traverses every tracked object of the process while holding the GIL:
    in a process that has loaded and made a lot (the bench: ~100 ms), every worker thread
    and the rate limiter stop, and a rated push loses those slots for good.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _drain(finished: queue.SimpleQueue[Future[list[Outcome]]]) -> list[Future[list[Outcome]]]:
    """The futures in ``finished``: waits for the first, takes the others already there."""
    done = [finished.get()]
    while True:
        try:
            done.append(finished.get_nowait())
        except queue.Empty:
            return done


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
    timer: Timer = SYSTEM_TIMER,
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
                report = PushReport(cloud.name, error=f"setup failed: {short_error(str(exc))}")
                if isinstance(exc, UnreachableError):
                    report.unreachable = short_error(str(exc))
                with read_session(engine) as session:
                    report.left = count_open_jobs(session, cloud.name, device_ids)
                reports.append(report)
                continue
            pusher = _Pusher(
                engine,
                cloud,
                backend,
                state,
                device_ids=device_ids,
                policy=policy or PushPolicy(),
                timer=timer,
                progress=progress,
                rng=rng or random.Random(),
            )
            reports.append(pusher.run())
        finally:
            backend.close()
    return reports


def register(
    ws: Workspace,
    name: str,
    device_ids: Sequence[str] = (),
    *,
    all_devices: bool = False,
    queue_only: bool = False,
    policy: PushPolicy | None = None,
    timer: Timer = SYSTEM_TIMER,
    client: httpx.Client | None = None,
    progress: ProgressFn | None = None,
    passphrase: Passphrase | None = None,
) -> RegisterResult:
    """Queue registration of devices on a cloud and, unless ``queue_only``, push the cloud's
    queue now. Returns how many were queued, the push's report (``None``: queue only) and,
    with ``all_devices``, the active devices skipped for having no active certificate."""
    queued, skipped = queue_registrations_skipping(ws, name, device_ids, all_devices=all_devices)
    if queue_only:
        return RegisterResult(queued, None, tuple(skipped))
    reports = push(
        ws,
        name,
        policy=policy,
        timer=timer,
        client=client,
        progress=progress,
        passphrase=passphrase,
    )
    return RegisterResult(queued, reports[0], tuple(skipped))
