"""Queueing cloud jobs: the outbox rows written inside the caller's transaction.

Registry changes that a cloud must learn of (a device added with ``--cloud``, a certificate
revoked, a device decommissioned) write their ``cloud_job`` rows here, in the same
transaction as the change. This module is SQL only: it never imports httpx or a backend, so
registry commands stay light; :mod:`fleet.cloud.push` pushes the jobs later. The queries the
push engine shares (:func:`open_jobs`, :func:`registrations_of`...) live here too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from fleet import clock
from fleet.cloud.models import Cloud, CloudJob, CloudRegistration
from fleet.errors import Conflict, InvalidInput, NotFound
from fleet.registry import audit
from fleet.registry.db import write_session
from fleet.registry.models import Certificate, Device
from fleet.statuses import (
    OPEN_JOB_STATES,
    CertStatus,
    DeviceStatus,
    JobAction,
    JobState,
    RegistrationStatus,
)

if TYPE_CHECKING:
    from fleet.workspace import Workspace

CHUNK = 500  # ids per IN (...) query
# Registrations a deregistration applies to: the platform may hold the device.
DEREGISTRABLE = (
    RegistrationStatus.PENDING,
    RegistrationStatus.REGISTERED,
    RegistrationStatus.FAILED,
)


def get_cloud(session: Session, name: str) -> Cloud:
    """The cloud row, or :class:`NotFound`."""
    cloud = session.get(Cloud, name)
    if cloud is None:
        raise NotFound(f"no cloud named {name!r}: see `fleet cloud list`")
    return cloud


def chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    """``items`` in slices of ``size`` (one ``IN (...)`` query each)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def validate_clouds_exist(session: Session, clouds: Iterable[str]) -> list[str]:
    """The distinct cloud names, or :class:`NotFound` for the first unknown one."""
    names = list(dict.fromkeys(clouds))
    for name in names:
        get_cloud(session, name)
    return names


def devices_by_id(session: Session, device_ids: Sequence[str]) -> dict[str, Device]:
    """The devices among ``device_ids`` that exist, by id."""
    found: dict[str, Device] = {}
    for chunk in chunks(device_ids):
        found.update(
            {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(chunk)))}
        )
    return found


def newest_active_certificates(
    session: Session, device_ids: Sequence[str]
) -> dict[str, Certificate]:
    """Each device's newest active certificate, by device id (devices with none are absent)."""
    result: dict[str, Certificate] = {}
    for chunk in chunks(device_ids):
        query = select(Certificate).where(
            col(Certificate.device_id).in_(chunk), Certificate.status == CertStatus.ACTIVE
        )
        for cert in session.exec(query):
            best = result.get(cert.device_id)
            if best is None or cert.issued_at > best.issued_at:
                result[cert.device_id] = cert
    return result


def open_jobs(session: Session, device_ids: Sequence[str], clouds: Sequence[str]) -> list[CloudJob]:
    """The pending or retrying jobs of these devices on these clouds."""
    found: list[CloudJob] = []
    for chunk in chunks(device_ids):
        query = select(CloudJob).where(
            col(CloudJob.device_id).in_(chunk),
            col(CloudJob.cloud).in_(clouds),
            col(CloudJob.state).in_(OPEN_JOB_STATES),
        )
        found.extend(session.exec(query))
    return found


def registrations_of(
    session: Session, device_ids: Sequence[str], clouds: Sequence[str] | None
) -> list[CloudRegistration]:
    """The registrations of these devices on these clouds (None: on every cloud)."""
    found: list[CloudRegistration] = []
    for chunk in chunks(device_ids):
        query = select(CloudRegistration).where(col(CloudRegistration.device_id).in_(chunk))
        if clouds is not None:
            query = query.where(col(CloudRegistration.cloud).in_(clouds))
        found.extend(session.exec(query))
    return found


def _new_job(device_id: str, cloud: str, action: JobAction, now: datetime) -> CloudJob:
    return CloudJob(
        device_id=device_id,
        cloud=cloud,
        action=action,
        state=JobState.PENDING,
        attempts=0,
        next_attempt_at=now,
        idempotency_key=uuid.uuid4().hex,
        created_at=now,
        updated_at=now,
    )


def _check_registrable(
    devices: dict[str, Device], certs: dict[str, Certificate], device_ids: Sequence[str]
) -> None:
    for device_id in device_ids:
        device = devices.get(device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r} in the registry")
        if device.status != DeviceStatus.ACTIVE:
            raise Conflict(f"device {device_id!r} is decommissioned and cannot be registered")
        if device_id not in certs:
            raise Conflict(f"device {device_id!r} has no active certificate to register")


def enqueue_register(
    session: Session,
    device_ids: Sequence[str],
    clouds: Sequence[str],
    *,
    now: datetime | None = None,
    force: bool = False,
) -> int:
    """Queue registration of ``device_ids`` on ``clouds`` in the caller's transaction.

    For a provisioner: call it per batch inside the batch's write transaction, after the
    devices and certificates are flushed; if the transaction rolls back, so do the jobs.
    Unknown clouds raise :class:`NotFound` and decommissioned or certificate-less devices
    :class:`Conflict` (both before anything is written). A device already registered with
    its current certificate (unless ``force``: ``fleet cloud drift --fix`` found the platform
    disagreeing), or with a register job already queued, is skipped. Returns the
    number of jobs queued. Example::

        with write_session(engine) as session:
            ...  # add devices + certificates, session.flush()
            enqueue_register(session, ["pump-1", "pump-2"], ["plant"])
    """
    names = validate_clouds_exist(session, clouds)
    ids = list(dict.fromkeys(device_ids))
    if not names or not ids:
        return 0
    moment = now or clock.now()
    session.flush()
    certs = newest_active_certificates(session, ids)
    _check_registrable(devices_by_id(session, ids), certs, ids)
    queued = {
        (j.device_id, j.cloud)
        for j in open_jobs(session, ids, names)
        if j.action == JobAction.REGISTER
    }
    regs = {(r.device_id, r.cloud): r for r in registrations_of(session, ids, names)}
    count = 0
    for device_id in ids:
        serial = certs[device_id].serial
        for cloud in names:
            reg = regs.get((device_id, cloud))
            if (device_id, cloud) in queued:
                continue
            if (
                not force
                and reg is not None
                and reg.status == RegistrationStatus.REGISTERED
                and reg.certificate_serial == serial
            ):
                continue
            session.add(_new_job(device_id, cloud, JobAction.REGISTER, moment))
            session.add(_pending_registration(session, reg, device_id, cloud, serial, moment))
            count += 1
    session.flush()
    return count


def _pending_registration(
    session: Session,
    reg: CloudRegistration | None,
    device_id: str,
    cloud: str,
    serial: str,
    moment: datetime,
) -> CloudRegistration:
    """The registration row of a newly queued register job, now counted as pending."""
    if reg is None:
        reg = CloudRegistration(device_id=device_id, cloud=cloud, remote={})
    elif reg.status == RegistrationStatus.REGISTERED:
        # Registered with an older certificate: from now on the registry counts the
        # device as pending there. The audit trail says so, for --as-of exports.
        audit.append(
            session,
            "cloud.queue",
            device_id,
            {
                "cloud": cloud,
                "certificate_serial": serial,
                "previous_certificate_serial": reg.certificate_serial,
            },
            at=moment,
        )
    reg.status = RegistrationStatus.PENDING
    reg.certificate_serial = serial
    reg.attempts = 0
    reg.last_error = None
    reg.updated_at = moment
    return reg


def enqueue_revocation(
    session: Session, device_id: str, certificate_serial: str, *, now: datetime | None = None
) -> int:
    """Queue what the clouds need once ``certificate_serial`` of ``device_id`` is revoked, in
    the caller's transaction: deregistration where the device is registered with that
    certificate, and a fresh registration where it is registered with a newer one (a platform
    may still accept the revoked one beside it: Azure's secondary thumbprint during a
    renewal window, an extra certificate attached in AWS). Returns the number of jobs queued.
    """
    queued = enqueue_deregister(
        session, [device_id], certificate_serial=certificate_serial, now=now
    )
    device = session.get(Device, device_id)
    if device is None or device.status != DeviceStatus.ACTIVE:
        return queued
    if not newest_active_certificates(session, [device_id]):
        return queued
    newer = sorted(
        r.cloud
        for r in registrations_of(session, [device_id], None)
        if r.status == RegistrationStatus.REGISTERED
        and r.certificate_serial not in (None, certificate_serial)
    )
    if newer:
        queued += enqueue_register(session, [device_id], newer, now=now, force=True)
    return queued


def enqueue_deregister(
    session: Session,
    device_ids: Sequence[str],
    clouds: Sequence[str] | None = None,
    *,
    certificate_serial: str | None = None,
    now: datetime | None = None,
    force: bool = False,
) -> int:
    """Queue deregistration of ``device_ids`` in the caller's transaction.

    Covers every cloud where the device is registered, pending or failed (or only
    ``clouds``); with ``certificate_serial`` only registrations of that certificate (what a
    revocation affects); with ``force`` deregistered ones too (``fleet cloud drift --fix``
    found the platform still accepting the device). Queued register jobs for the same
    device and cloud are superseded (marked failed); the deregistration still runs, since
    an earlier attempt may have reached the platform. Returns the number of jobs queued.
    """
    ids = list(dict.fromkeys(device_ids))
    names = None if clouds is None else validate_clouds_exist(session, clouds)
    if not ids:
        return 0
    moment = now or clock.now()
    session.flush()
    regs = [
        r
        for r in registrations_of(session, ids, names)
        if (force or r.status in DEREGISTRABLE)
        and (certificate_serial is None or r.certificate_serial == certificate_serial)
    ]
    if not regs:
        return 0
    cloud_names = sorted({r.cloud for r in regs})
    queued_jobs = open_jobs(session, ids, cloud_names)
    queued = {(j.device_id, j.cloud) for j in queued_jobs if j.action == JobAction.DEREGISTER}
    targets = {(r.device_id, r.cloud) for r in regs}
    for job in queued_jobs:
        if job.action == JobAction.REGISTER and (job.device_id, job.cloud) in targets:
            job.state = JobState.FAILED
            job.last_error = "superseded by a deregistration"
            job.updated_at = moment
            session.add(job)
    count = 0
    for reg in regs:
        if (reg.device_id, reg.cloud) in queued:
            continue
        session.add(_new_job(reg.device_id, reg.cloud, JobAction.DEREGISTER, moment))
        count += 1
    session.flush()
    return count


def queue_registrations(
    ws: Workspace, name: str, device_ids: Sequence[str] = (), *, all_devices: bool = False
) -> int:
    """Queue registration of devices (or every active one) on a cloud; returns jobs queued."""
    return queue_registrations_skipping(ws, name, device_ids, all_devices=all_devices)[0]


def queue_registrations_skipping(
    ws: Workspace, name: str, device_ids: Sequence[str] = (), *, all_devices: bool = False
) -> tuple[int, list[str]]:
    """As :func:`queue_registrations`; with ``all_devices``, active devices without an active
    certificate are skipped rather than refused. Returns the jobs queued and the devices
    skipped (in ID order)."""
    if bool(device_ids) == all_devices:
        raise InvalidInput("give device IDs or --all (not both)")
    skipped: list[str] = []
    with write_session(ws.open_registry()) as session:
        get_cloud(session, name)
        ids = list(device_ids)
        if all_devices:
            query = (
                select(Device.id).where(Device.status == DeviceStatus.ACTIVE).order_by(Device.id)
            )
            ids = list(session.exec(query))
            certs = newest_active_certificates(session, ids)
            skipped = [device_id for device_id in ids if device_id not in certs]
            ids = [device_id for device_id in ids if device_id in certs]
        return enqueue_register(session, ids, [name]), skipped
