"""What the cloud API returns: typed, immutable views of clouds, registrations and
``register``'s result (push and sync reports are :mod:`fleet.cloud.push`'s and
:mod:`fleet.cloud.status`'s).

Each view's ``to_dict()`` is its stable JSON shape, exactly what ``fleet cloud ... --json``
prints. A cloud's ``options`` are the backend's own (opaque) JSON and hold no secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fleet.cloud.models import Cloud, CloudJob, CloudRegistration
from fleet.statuses import JobAction, JobState, RegistrationStatus
from fleet.views import iso

if TYPE_CHECKING:
    from fleet.cloud.push import PushReport


@dataclass(frozen=True, slots=True)
class CloudView:
    """A configured cloud: its backend type and options, limits, and whether it was prepared
    (its one-time setup ran)."""

    name: str
    type: str
    options: Mapping[str, Any]
    prepared: bool
    concurrency: int
    rate_per_second: float | None  # None: no rate limit
    created_at: datetime

    @classmethod
    def from_row(cls, cloud: Cloud) -> CloudView:
        """The view of a registry row (its backend state is not part of it)."""
        return cls(
            name=cloud.name,
            type=cloud.type,
            options=dict(cloud.options),
            prepared=cloud.state is not None,
            concurrency=cloud.concurrency,
            rate_per_second=cloud.rate_per_second,
            created_at=cloud.created_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """The cloud as ``fleet cloud list/add --json`` shows it."""
        return {
            "name": self.name,
            "type": self.type,
            "options": dict(self.options),
            "prepared": self.prepared,
            "concurrency": self.concurrency,
            "rate_per_second": self.rate_per_second,
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class CloudDetail:
    """A cloud with how many of its jobs are in each state and how many of its
    registrations in each status (states and statuses with none are left out)."""

    cloud: CloudView
    jobs: Mapping[JobState, int]
    registrations: Mapping[RegistrationStatus, int]

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON ``fleet cloud show --json`` prints (the cloud's fields, then the
        counts)."""
        return {
            **self.cloud.to_dict(),
            "jobs": dict(self.jobs),
            "registrations": dict(self.registrations),
        }


@dataclass(frozen=True, slots=True)
class RemovedCloud:
    """A cloud that was forgotten, with the job and registration records dropped with it."""

    name: str
    dropped_jobs: int
    dropped_registrations: int

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "dropped_jobs": ..., "dropped_registrations": ...}``."""
        return {
            "name": self.name,
            "dropped_jobs": self.dropped_jobs,
            "dropped_registrations": self.dropped_registrations,
        }


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """What :func:`fleet.cloud.push.register` did: how many registrations it queued, and the
    report of the push that followed (``None`` when only queued)."""

    queued: int
    push: PushReport | None
    skipped: tuple[str, ...] = ()  # --all: active devices without an active certificate

    def to_dict(self) -> dict[str, Any]:
        """``{"queued": n, "push": report-or-None}`` (and ``"skipped": [ids]`` when --all
        skipped some), as ``fleet cloud register --json`` prints it."""
        result: dict[str, Any] = {
            "queued": self.queued,
            "push": None if self.push is None else self.push.to_dict(),
        }
        if self.skipped:
            result["skipped"] = list(self.skipped)
        return result


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """The open job a registration still has: what it asks and where it stands."""

    action: JobAction
    state: JobState

    def to_dict(self) -> dict[str, str]:
        """``{"action": ..., "state": ...}``."""
        return {"action": self.action, "state": self.state}


@dataclass(frozen=True, slots=True)
class RegistrationView:
    """Where one device stands on one cloud: its status, attempts and last error, the job
    still queued for it (if any), and what the platform last reported."""

    device_id: str
    cloud: str
    status: RegistrationStatus
    certificate_serial: str | None
    attempts: int
    last_error: str | None
    queued: QueuedJob | None
    connected: bool | None
    last_activity: datetime | None
    firmware_version: str | None
    status_checked_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_rows(cls, reg: CloudRegistration, job: CloudJob | None) -> RegistrationView:
        """The view of a registration row and its open job (``None``: nothing queued)."""
        return cls(
            device_id=reg.device_id,
            cloud=reg.cloud,
            status=RegistrationStatus(reg.status),
            certificate_serial=reg.certificate_serial,
            attempts=reg.attempts,
            last_error=reg.last_error,
            queued=None if job is None else QueuedJob(JobAction(job.action), JobState(job.state)),
            connected=reg.connected,
            last_activity=reg.last_activity,
            firmware_version=reg.firmware_version,
            status_checked_at=reg.status_checked_at,
            updated_at=reg.updated_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """The registration as ``fleet cloud status --json`` shows it."""
        return {
            "device_id": self.device_id,
            "cloud": self.cloud,
            "status": self.status,
            "certificate_serial": self.certificate_serial,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "queued": None if self.queued is None else self.queued.to_dict(),
            "connected": self.connected,
            "last_activity": iso(self.last_activity),
            "firmware_version": self.firmware_version,
            "status_checked_at": iso(self.status_checked_at),
            "updated_at": iso(self.updated_at),
        }
