"""One job's work: what the backend is told about the device, and the call that does it.

:func:`load_work` reads, in the engine's thread, everything the calls need (the device, the
certificate to register or to deregister, the remote ids); :func:`perform` runs in a worker
thread, touches no database and turns every backend failure into an :class:`Outcome`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from fleet.cloud.base import (
    CloudBackend,
    CloudError,
    DeviceRecord,
    TransientError,
    UnreachableError,
    idempotency_key,
)
from fleet.cloud.jobs import chunks, devices_by_id, newest_active_certificates, registrations_of
from fleet.cloud.models import CloudJob
from fleet.cloud.pacing import RateLimiter
from fleet.cloud.transitions import Outcome, OutcomeKind, short_error
from fleet.registry.models import Certificate, Device
from fleet.statuses import DeviceStatus, JobAction


@dataclass(frozen=True)
class Work:
    """One job, ready to push."""

    job_id: int
    device_id: str
    action: JobAction
    key: str  # the job's idempotency key, the same for every attempt
    record: DeviceRecord | None  # None: refuse without calling the backend
    refusal: str
    remote: dict[str, Any]  # what the registration holds from register()


def _certificates_by_serial(session: Session, serials: Sequence[str]) -> dict[str, Certificate]:
    found: dict[str, Certificate] = {}
    for chunk in chunks(serials):
        query = select(Certificate).where(col(Certificate.serial).in_(chunk))
        found.update({c.serial: c for c in session.exec(query)})
    return found


def _record(device: Device, cert: Certificate | None) -> DeviceRecord:
    return DeviceRecord(
        device_id=device.id,
        model=device.model,
        serial=device.serial,
        labels=dict(device.labels),
        status=device.status,
        certificate_pem=cert.pem if cert is not None else "",
        certificate_serial=cert.serial if cert is not None else "",
        fingerprint_sha256=cert.fingerprint_sha256 if cert is not None else "",
    )


def load_work(session: Session, jobs: Sequence[CloudJob]) -> list[Work]:
    """The work of each job, in order. A register job of a device that is decommissioned or
    has no active certificate gets a refusal instead of a record; a deregister job carries
    the certificate that was registered (else the newest active one)."""
    ids = list({j.device_id for j in jobs})
    devices = devices_by_id(session, ids)
    active = newest_active_certificates(session, ids)
    regs = {(r.device_id, r.cloud): r for r in registrations_of(session, ids, None)}
    by_serial = _certificates_by_serial(
        session, sorted({r.certificate_serial for r in regs.values() if r.certificate_serial})
    )
    works: list[Work] = []
    for job in jobs:
        assert job.id is not None
        device = devices[job.device_id]
        reg = regs.get((job.device_id, job.cloud))
        action = JobAction(job.action)
        refusal = ""
        if action == JobAction.REGISTER:
            cert = active.get(job.device_id)
            if device.status != DeviceStatus.ACTIVE:
                refusal = "device is decommissioned"
            elif cert is None:
                refusal = "device has no active certificate"
        else:
            registered = by_serial.get(reg.certificate_serial or "") if reg is not None else None
            cert = registered or active.get(job.device_id)
        record = None if refusal else _record(device, cert)
        remote = dict(reg.remote) if reg is not None else {}
        works.append(
            Work(job.id, job.device_id, action, job.idempotency_key, record, refusal, remote)
        )
    return works


def perform(
    backend: CloudBackend, state: Mapping[str, Any], limiter: RateLimiter, work: Work
) -> Outcome:
    """Run one job against the backend (after a rate-limit permit); never raises for a
    backend failure."""
    if work.record is None:
        return Outcome(OutcomeKind.PERMANENT, error=work.refusal)
    limiter.acquire()
    try:
        with idempotency_key(work.key):
            if work.action == JobAction.REGISTER:
                remote = backend.register(work.record, state)
                return Outcome(OutcomeKind.DONE, remote=dict(remote))
            backend.deregister(work.record, work.remote, state)
            return Outcome(OutcomeKind.DONE)
    except UnreachableError as exc:
        return Outcome(OutcomeKind.TRANSIENT, error=short_error(str(exc)), unreachable=True)
    except TransientError as exc:
        return Outcome(
            OutcomeKind.TRANSIENT, error=short_error(str(exc)), retry_after=exc.retry_after
        )
    except CloudError as exc:  # PermanentError, ConflictError and any other classified one
        return Outcome(OutcomeKind.PERMANENT, error=short_error(str(exc)))
    except Exception as exc:  # a backend bug: fail this job, keep the others going
        # Only the type: an unexpected exception's text is not vetted for secrets.
        return Outcome(
            OutcomeKind.PERMANENT, error=f"unexpected backend error ({type(exc).__name__})"
        )
