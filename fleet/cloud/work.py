"""One job's work: what the backend is told about the device, and the call that does it.

:func:`load_work` reads, in the engine's thread, everything the calls need (the device, the
certificate to register or to deregister, the remote ids); :func:`perform` runs in a worker
thread, touches no database and turns every backend failure into an :class:`Outcome`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from fleet.cloud.base import (
    CloudBackend,
    CloudError,
    DeviceRecord,
    FirmwareTarget,
    TransientError,
    UnreachableError,
    idempotency_key,
)
from fleet.cloud.jobs import chunks, devices_by_id, newest_active_certificates, registrations_of
from fleet.cloud.models import CloudJob
from fleet.cloud.pacing import RateLimiter
from fleet.cloud.transitions import Outcome, OutcomeKind, short_error
from fleet.registry.models import Certificate, Device
from fleet.statuses import CertStatus, DeviceStatus, JobAction


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
    firmware: FirmwareTarget | None = None  # a firmware job: the target (None clears it)


def _certificates_by_serial(session: Session, serials: Sequence[str]) -> dict[str, Certificate]:
    found: dict[str, Certificate] = {}
    for chunk in chunks(serials):
        query = select(Certificate).where(col(Certificate.serial).in_(chunk))
        found.update({c.serial: c for c in session.exec(query)})
    return found


def _previous_fingerprints(
    session: Session, device_ids: Sequence[str], newest: Mapping[str, Certificate]
) -> dict[str, str]:
    """Each device's active certificate issued just before its newest one (a renewal
    window), by device id: its fingerprint (three columns read, not the certificates)."""
    best: dict[str, tuple[Any, str]] = {}  # device id -> (issued_at, fingerprint)
    columns = (Certificate.device_id, Certificate.serial, Certificate.issued_at,
               Certificate.fingerprint_sha256)  # fmt: skip
    for chunk in chunks(device_ids):
        query = select(*columns).where(
            col(Certificate.device_id).in_(chunk), Certificate.status == CertStatus.ACTIVE
        )
        for device_id, serial, issued_at, fingerprint in session.exec(query):
            current = newest.get(device_id)
            if current is None or serial == current.serial:
                continue
            found = best.get(device_id)
            if found is None or issued_at > found[0]:
                best[device_id] = (issued_at, fingerprint)
    return {device_id: fingerprint for device_id, (_, fingerprint) in best.items()}


def _record(device: Device, cert: Certificate | None, previous: str = "") -> DeviceRecord:
    return DeviceRecord(
        device_id=device.id,
        model=device.model,
        serial=device.serial,
        labels=dict(device.labels),
        status=device.status,
        certificate_pem=cert.pem if cert is not None else "",
        certificate_serial=cert.serial if cert is not None else "",
        fingerprint_sha256=cert.fingerprint_sha256 if cert is not None else "",
        previous_fingerprint_sha256=previous,
    )


def load_work(session: Session, jobs: Sequence[CloudJob]) -> list[Work]:
    """The work of each job, in order. A register job of a device that is decommissioned or
    has no active certificate gets a refusal instead of a record; a deregister job carries
    the certificate that was registered (else the newest active one)."""
    ids = list({j.device_id for j in jobs})
    devices = devices_by_id(session, ids)
    active = newest_active_certificates(session, ids)
    regs = {(r.device_id, r.cloud): r for r in registrations_of(session, ids, None)}
    register_ids = [j.device_id for j in jobs if j.action == JobAction.REGISTER]
    previous = _previous_fingerprints(session, list(dict.fromkeys(register_ids)), active)
    by_serial = _certificates_by_serial(
        session, sorted({r.certificate_serial for r in regs.values() if r.certificate_serial})
    )
    firmware_ids = sorted({j.device_id for j in jobs if j.action == JobAction.FIRMWARE})
    targets = firmware_targets(session, firmware_ids) if firmware_ids else {}
    works: list[Work] = []
    for job in jobs:
        assert job.id is not None
        device = devices[job.device_id]
        reg = regs.get((job.device_id, job.cloud))
        action = JobAction(job.action)
        refusal = ""
        if action in (JobAction.REGISTER, JobAction.FIRMWARE):
            cert = active.get(job.device_id)
            if device.status != DeviceStatus.ACTIVE:
                refusal = "device is decommissioned"
            elif cert is None and action == JobAction.REGISTER:
                refusal = "device has no active certificate"
        else:
            registered = by_serial.get(reg.certificate_serial or "") if reg is not None else None
            cert = registered or active.get(job.device_id)
        earlier = previous.get(job.device_id, "") if action == JobAction.REGISTER else ""
        record = None if refusal else _record(device, cert, earlier)
        remote = dict(reg.remote) if reg is not None else {}
        works.append(
            Work(
                job.id,
                job.device_id,
                action,
                job.idempotency_key,
                record,
                refusal,
                remote,
                targets.get(job.device_id),
            )
        )
    return works


def firmware_targets(session: Session, device_ids: Sequence[str]) -> dict[str, FirmwareTarget]:
    """The current firmware target of each device that has one (a firmware job delivers
    what the device should run when it is pushed, not when it was queued)."""
    from fleet.firmware.models import DeviceFirmware, FirmwareImage, Rollout

    fw = DeviceFirmware.__table__  # type: ignore[attr-defined]
    image = FirmwareImage.__table__  # type: ignore[attr-defined]
    rollout = Rollout.__table__  # type: ignore[attr-defined]
    found: dict[str, FirmwareTarget] = {}
    for chunk in chunks(device_ids):
        query = (
            core_select(
                fw.c.device_id,
                fw.c.target_version,
                image.c.sha256,
                image.c.size,
                image.c.url,
                image.c.signature_pem,
            )
            .select_from(
                fw.join(rollout, rollout.c.id == fw.c.target_rollout_id).join(
                    image, image.c.id == rollout.c.firmware_id
                )
            )
            .where(fw.c.device_id.in_(chunk), fw.c.target_version.is_not(None))
        )
        for device_id, version, sha256, size, url, signature in session.execute(query):
            found[device_id] = FirmwareTarget(version, sha256, size, url, signature)
    return found


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
            if work.action == JobAction.FIRMWARE:
                backend.deliver_firmware(work.record, work.firmware, work.remote, state)
                return Outcome(OutcomeKind.DONE)
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


def perform_group(
    backend: CloudBackend, state: Mapping[str, Any], limiter: RateLimiter, works: Sequence[Work]
) -> list[Outcome]:
    """Run a group of jobs: one job through :func:`perform`, several register jobs through
    ``backend.register_many`` (one rate-limit permit); one outcome per job, in order."""
    if len(works) == 1:
        return [perform(backend, state, limiter, works[0])]
    outcomes: list[Outcome | None] = [
        None if w.record is not None else Outcome(OutcomeKind.PERMANENT, error=w.refusal)
        for w in works
    ]
    todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
    records = [works[i].record for i in todo]
    if todo:
        limiter.acquire()
        try:
            results: list[Any] = backend.register_many([r for r in records if r is not None], state)
            if len(results) != len(todo):
                raise RuntimeError("register_many returned the wrong number of results")
        except Exception as exc:  # the whole call failed: every job in it shares the outcome
            results = [exc] * len(todo)
        for index, result in zip(todo, results, strict=True):
            outcomes[index] = _outcome_of(result)
    return [o for o in outcomes if o is not None]


def _outcome_of(result: Any) -> Outcome:
    if isinstance(result, dict):
        return Outcome(OutcomeKind.DONE, remote=dict(result))
    if isinstance(result, UnreachableError):
        return Outcome(OutcomeKind.TRANSIENT, error=short_error(str(result)), unreachable=True)
    if isinstance(result, TransientError):
        return Outcome(
            OutcomeKind.TRANSIENT, error=short_error(str(result)), retry_after=result.retry_after
        )
    if isinstance(result, CloudError):
        return Outcome(OutcomeKind.PERMANENT, error=short_error(str(result)))
    name = type(result).__name__
    return Outcome(OutcomeKind.PERMANENT, error=f"unexpected backend error ({name})")
