"""Where devices stand on clouds: pull status from the platforms, sync, list registrations.

:func:`sync` is a push followed by a status pull; :func:`iter_status` streams the registry's
view (``fleet cloud status``), with what is still queued for each device.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, tuple_
from sqlmodel import col, select

from fleet import clock
from fleet.cloud.base import CloudBackend, CloudError, RemoteStatus
from fleet.cloud.clouds import make_backend
from fleet.cloud.jobs import CHUNK, get_cloud, open_jobs
from fleet.cloud.models import Cloud, CloudRegistration
from fleet.cloud.pacing import SYSTEM_TIMER, PushPolicy, RateLimiter, Timer
from fleet.cloud.push import ProgressFn, PushReport, push
from fleet.cloud.transitions import short_error
from fleet.cloud.views import RegistrationView
from fleet.errors import InvalidInput
from fleet.firmware.reports import Report, record_reports
from fleet.registry.db import read_session, write_session
from fleet.status.events import Seen, record_in
from fleet.statuses import ConnectionState, FirmwareSource, RegistrationStatus

if TYPE_CHECKING:
    import httpx

    from fleet.workspace import Passphrase, Workspace

STATUS_ERRORS_MAX = 20  # errors a sync report lists


@dataclass
class SyncReport:
    """``push`` then status pull, for one cloud."""

    push: PushReport
    status_updated: int = 0
    status_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as ``--json`` shows it."""
        return {
            **self.push.to_dict(),
            "status_updated": self.status_updated,
            "status_errors": self.status_errors,
        }


def _fetch_all(
    cloud: Cloud, backend: CloudBackend, ids: list[str], timer: Timer
) -> tuple[dict[str, RemoteStatus], list[str]]:
    """Statuses of ``ids`` in batches of ``backend.status_batch_size``, within the cloud's
    rate and concurrency limits; a failed batch is an error message, the others go on."""
    state = dict(cloud.state or {})
    limiter = RateLimiter(cloud.rate_per_second, timer)
    size = max(1, backend.status_batch_size)
    batches = [ids[i : i + size] for i in range(0, len(ids), size)]

    def fetch(batch: list[str]) -> dict[str, RemoteStatus]:
        limiter.acquire()
        return backend.fetch_status(batch, state)

    errors: list[str] = []
    results: dict[str, RemoteStatus] = {}
    with ThreadPoolExecutor(max_workers=cloud.concurrency) as pool:
        futures = [pool.submit(fetch, b) for b in batches]
        for future in futures:
            try:
                results.update(future.result())
            except CloudError as exc:
                errors.append(short_error(str(exc)))
            except Exception as exc:  # backend bug: report, do not leak its text
                errors.append(f"unexpected backend error ({type(exc).__name__})")
    return results, errors


def pull_status(
    ws: Workspace,
    cloud: Cloud,
    backend: CloudBackend,
    *,
    timer: Timer = SYSTEM_TIMER,
) -> tuple[int, list[str]]:
    """Fetch connection state, last activity and firmware for the cloud's registered devices
    (in batches of ``backend.status_batch_size``, within the cloud's limits) and store them.
    Returns how many registrations were updated and the first errors."""
    engine = ws.open_registry()
    with read_session(engine) as session:
        query = select(CloudRegistration.device_id).where(
            CloudRegistration.cloud == cloud.name,
            CloudRegistration.status == RegistrationStatus.REGISTERED,
        )
        ids = sorted(session.exec(query))
    results, errors = _fetch_all(cloud, backend, ids, timer)
    now = clock.now()
    items = sorted(results.items())
    updated = 0
    for start in range(0, len(items), CHUNK):
        with write_session(engine) as session:
            changes: list[Seen] = []
            reports: list[Report] = []
            for device_id, status in items[start : start + CHUNK]:
                reg = session.get(CloudRegistration, (device_id, cloud.name))
                if reg is None:
                    continue
                if status.connected is not None and status.connected != reg.connected:
                    # a change is an event in the device's history; an unchanged pull is not
                    changes.append(
                        Seen(
                            device_id,
                            ConnectionState.ONLINE if status.connected else ConnectionState.OFFLINE,
                            backend.event_source,
                            status.last_activity or now,
                        )
                    )
                reg.connected = status.connected
                reg.last_activity = status.last_activity
                reg.firmware_version = (
                    status.firmware_version[:128] if status.firmware_version else None
                )
                reg.status_checked_at = now
                session.add(reg)
                updated += 1
                if status.firmware_version is not None or status.firmware_state is not None:
                    reports.append(
                        Report(
                            device_id,
                            status.firmware_version[:64] if status.firmware_version else None,
                            FirmwareSource.CLOUD,
                            now,
                            status.firmware_state,  # type: ignore[arg-type]
                            status.firmware_detail,
                        )
                    )
            record_in(session, changes, now=now)
            record_reports(session, reports, now=now)
    return updated, errors[:STATUS_ERRORS_MAX]


def sync(
    ws: Workspace,
    name: str | None = None,
    *,
    policy: PushPolicy | None = None,
    timer: Timer = SYSTEM_TIMER,
    client: httpx.Client | None = None,
    progress: ProgressFn | None = None,
    passphrase: Passphrase | None = None,
    step_rollouts: bool = True,
) -> list[SyncReport]:
    """Push every due job, then pull status (recording the firmware devices report), for
    one cloud or all of them; then step the running rollouts (``fleet rollout step``) and
    push the firmware targets that step queued."""
    reports = []
    pushed = push(
        ws,
        name,
        policy=policy,
        timer=timer,
        client=client,
        progress=progress,
        passphrase=passphrase,
    )
    for push_report in pushed:
        report = SyncReport(push_report)
        if push_report.error is None and push_report.unreachable is None:
            with read_session(ws.open_registry()) as session:
                cloud = get_cloud(session, push_report.cloud)
            backend = make_backend(cloud, client=client)
            try:
                report.status_updated, report.status_errors = pull_status(
                    ws, cloud, backend, timer=timer
                )
            finally:
                backend.close()
        reports.append(report)
    if step_rollouts and any(r.push.error is None for r in reports):
        _step_and_deliver(ws, name, reports, policy=policy, timer=timer, client=client)
    return reports


def _step_and_deliver(
    ws: Workspace,
    name: str | None,
    reports: list[SyncReport],
    *,
    policy: PushPolicy | None,
    timer: Timer,
    client: httpx.Client | None,
) -> None:
    """Step the running rollouts; push what they queued, folded into the sync reports."""
    from fleet.firmware.rollout.step import step

    if not sum(r.jobs for r in step(ws)):
        return
    by_cloud = {r.push.cloud: r.push for r in reports if r.push.error is None}
    for extra in push(ws, name, policy=policy, timer=timer, client=client):
        first = by_cloud.get(extra.cloud)
        if first is None:
            continue
        first.done += extra.done
        first.failed += extra.failed
        first.left = extra.left
        first.failures.extend(extra.failures)


def status_cursor(row: RegistrationView, *, one_cloud: bool) -> str:
    """The ``--after`` key of a registration: its device ID within one cloud, else
    ``CLOUD/DEVICE`` (neither may contain ``/``)."""
    return row.device_id if one_cloud else f"{row.cloud}/{row.device_id}"


def _after_key(name: str | None, after: str | None) -> tuple[str, str] | None:
    if after is None:
        return None
    if name is not None:
        return (name, after)
    cloud, slash, device = after.partition("/")
    if not slash:
        raise InvalidInput(f"--after {after!r}: across clouds the cursor is CLOUD/DEVICE")
    return (cloud, device)


def _status_conditions(name: str | None, last: tuple[str, str] | None) -> list[Any]:
    registration = CloudRegistration.__table__  # type: ignore[attr-defined]
    conditions: list[Any] = []
    if name is not None:
        conditions.append(registration.c.cloud == name)
    if last is not None:
        conditions.append(tuple_(registration.c.cloud, registration.c.device_id) > last)
    return conditions


def iter_status(
    ws: Workspace,
    name: str | None = None,
    *,
    after: str | None = None,
    limit: int | None = None,
    batch_size: int = 1000,
) -> Iterator[RegistrationView]:
    """Every registration (of one cloud or all), ordered by cloud then device, after the
    cursor ``after`` (see :func:`status_cursor`), at most ``limit``; streamed."""
    engine = ws.open_registry()
    with read_session(engine) as session:
        if name is not None:
            get_cloud(session, name)
    last = _after_key(name, after)
    remaining = limit
    while remaining is None or remaining > 0:
        size = batch_size if remaining is None else min(batch_size, remaining)
        with read_session(engine) as session:
            query = select(CloudRegistration).where(*_status_conditions(name, last))
            rows = list(
                session.exec(
                    query.order_by(
                        col(CloudRegistration.cloud), col(CloudRegistration.device_id)
                    ).limit(size)
                )
            )
            if not rows:
                return
            ids = [r.device_id for r in rows]
            clouds = sorted({r.cloud for r in rows})
            jobs = {(j.device_id, j.cloud): j for j in open_jobs(session, ids, clouds)}
            batch = [RegistrationView.from_rows(r, jobs.get((r.device_id, r.cloud))) for r in rows]
        yield from batch
        last = (rows[-1].cloud, rows[-1].device_id)
        if remaining is not None:
            remaining -= len(rows)
        if len(rows) < size:
            return


def count_status(ws: Workspace, name: str | None = None, *, after: str | None = None) -> int:
    """How many registrations :func:`iter_status` would list."""
    engine = ws.open_registry()
    registration = CloudRegistration.__table__  # type: ignore[attr-defined]
    with read_session(engine) as session:
        if name is not None:
            get_cloud(session, name)
        query = select(func.count()).select_from(registration)
        query = query.where(*_status_conditions(name, _after_key(name, after)))
        return int(session.execute(query).scalar_one())
