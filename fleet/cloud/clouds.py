"""Configured clouds: add, list, show, remove and check them; build their backends.

Nothing here talks to a platform except :func:`check_cloud`; adding a cloud only validates
and stores its options (one-time setup runs at the first push, so a cloud can be added
offline). Backends are loaded on use, so listing clouds never imports httpx.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from fleet import clock
from fleet.cloud.base import CheckResult, CloudBackend, CloudError, refuse_undeclared
from fleet.cloud.jobs import get_cloud
from fleet.cloud.models import Cloud, CloudJob, CloudRegistration
from fleet.cloud.plugins import load_backend_class
from fleet.cloud.views import CloudDetail, CloudView, RemovedCloud
from fleet.errors import Conflict, InvalidInput
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.statuses import OPEN_JOB_STATES, JobState, RegistrationStatus

if TYPE_CHECKING:
    import httpx

    from fleet.workspace import Workspace

_CLOUD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_cloud_name(name: str) -> str:
    """Cloud names: letters, digits, ``_ . -``; up to 64; starting alphanumeric."""
    if not _CLOUD_NAME_RE.match(name):
        raise InvalidInput(
            f"invalid cloud name {name!r}: use letters, digits, '_', '.', '-' (max 64, "
            "starting with a letter or digit)"
        )
    return name


def validate_backend_options(
    backend_class: type[CloudBackend], options: Mapping[str, Any]
) -> dict[str, Any]:
    """What gets stored for ``options``: unset ones (None or empty) dropped, the rest checked
    by the backend; a backend that declares its options also refuses any other."""
    given = {k: v for k, v in options.items() if v is not None and v != [] and v != ()}
    stored = backend_class.validate_options(given)
    if backend_class.declared_options:
        refuse_undeclared(backend_class.type_name, backend_class.declared_options, given)
    return stored


def add_cloud(
    ws: Workspace,
    name: str,
    type_name: str,
    options: Mapping[str, Any],
    *,
    concurrency: int | None = None,
    rate_per_second: float | None = None,
    unlimited_rate: bool = False,
) -> CloudView:
    """Configure a cloud. Options are checked by the backend; nothing touches the network
    (one-time setup runs at the first push, so a cloud can be added offline).

    Unset options (None or empty) are dropped before the backend sees them. Example::

        add_cloud(ws, "plant", "http", {"url": "https://reg.example/devices/{id}",
                                        "header": ["Authorization=REG_TOKEN"]})
    """
    validate_cloud_name(name)
    backend_class = load_backend_class(type_name)
    stored = validate_backend_options(backend_class, options)
    if concurrency is not None and not 1 <= concurrency <= 256:
        raise InvalidInput("concurrency must be between 1 and 256")
    if rate_per_second is not None and not 0 < rate_per_second <= 100_000:
        raise InvalidInput("rate must be a positive number of requests per second")
    rate = None if unlimited_rate else (rate_per_second or backend_class.default_rate_per_second)
    now = clock.now()
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
    return CloudView.from_row(cloud)


def list_clouds(ws: Workspace) -> list[CloudView]:
    """Every configured cloud, by name."""
    with read_session(ws.open_registry()) as session:
        rows = session.exec(select(Cloud).order_by(Cloud.name)).all()
        return [CloudView.from_row(c) for c in rows]


def _counts(
    session: Session, name: str
) -> tuple[dict[JobState, int], dict[RegistrationStatus, int]]:
    """How many of the cloud's jobs are in each state, and registrations in each status."""
    jobs = session.exec(
        select(CloudJob.state, func.count()).where(CloudJob.cloud == name).group_by(CloudJob.state)
    ).all()
    regs = session.exec(
        select(CloudRegistration.status, func.count())
        .where(CloudRegistration.cloud == name)
        .group_by(CloudRegistration.status)
    ).all()
    return (
        {JobState(k): int(v) for k, v in jobs},
        {RegistrationStatus(k): int(v) for k, v in regs},
    )


def show_cloud(ws: Workspace, name: str) -> CloudDetail:
    """A cloud with counts of its jobs (by state) and registrations (by status)."""
    with read_session(ws.open_registry()) as session:
        cloud = get_cloud(session, name)
        jobs, regs = _counts(session, name)
        return CloudDetail(CloudView.from_row(cloud), jobs, regs)


def remove_cloud(ws: Workspace, name: str, *, force: bool = False) -> RemovedCloud:
    """Forget a cloud (nothing is changed on the platform itself).

    Refused while it has open jobs or registered devices, unless ``force``: then its jobs and
    registration records are dropped with it (the audit event counts them).
    """
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        cloud = get_cloud(session, name)
        jobs, regs = _counts(session, name)
        open_jobs = sum(jobs.get(s, 0) for s in OPEN_JOB_STATES)
        registered = regs.get(RegistrationStatus.REGISTERED, 0)
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
    return RemovedCloud(name, dropped_jobs, dropped_regs)


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
