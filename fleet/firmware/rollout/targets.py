"""Targets: what a rollout tells devices to run, set and cleared set-based, audited and queued
for delivery through the cloud outbox, all in the caller's write transaction.

Audit format (the export's ``--as-of`` replays it): action ``firmware.target``, target the
rollout's name, details ``{"version": "<version or null>", "devices": [ids...]}``, at most
:data:`AUDIT_BATCH` devices per event. Per-device state changes are audited the same way as
``rollout.devices`` ``{"state": "<new state>", "devices": [ids...]}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, literal, select, update
from sqlalchemy.engine import Connection
from sqlmodel import Session

from fleet.cloud.models import CloudJob, CloudRegistration
from fleet.firmware.models import DeviceFirmware, Rollout, RolloutDevice
from fleet.registry import audit
from fleet.statuses import OPEN_JOB_STATES, JobAction, JobState, RegistrationStatus

AUDIT_BATCH = 1000
ID_CHUNK = 2000  # ids per IN (...) list

_fw = DeviceFirmware.__table__  # type: ignore[attr-defined]
_rd = RolloutDevice.__table__  # type: ignore[attr-defined]
_job = CloudJob.__table__  # type: ignore[attr-defined]
_reg = CloudRegistration.__table__  # type: ignore[attr-defined]
# registrations a firmware target is delivered to: registered, or being registered (the
# outbox pushes one job per device at a time, oldest first, so the registration goes first)
DELIVERABLE = (RegistrationStatus.REGISTERED, RegistrationStatus.PENDING)


def audit_devices(
    session: Session,
    action: str,
    rollout: str,
    details: dict[str, Any],
    device_ids: Sequence[str],
    *,
    at: datetime,
) -> None:
    """Append ``action`` events on ``rollout`` naming ``device_ids``, at most
    :data:`AUDIT_BATCH` per event, each with ``details`` plus ``devices``."""
    ids = sorted(device_ids)
    events = [
        audit.PendingEvent(action, rollout, {**details, "devices": ids[i : i + AUDIT_BATCH]})
        for i in range(0, len(ids), AUDIT_BATCH)
    ]
    if events:
        audit.append_many(session, events, at=at)


def _insert_for(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def _chunks(device_ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(device_ids), ID_CHUNK):
        yield list(device_ids[start : start + ID_CHUNK])


def set_targets(
    session: Session, rollout: Rollout, device_ids: Sequence[str], now: datetime
) -> None:
    """Make ``rollout``'s version the target of ``device_ids`` (members of the rollout):
    ``device_firmware`` upserted set-based per chunk, its update state reset (a new attempt
    starts), the ``firmware.target`` events written."""
    if not device_ids:
        return
    conn = session.connection()
    insert = _insert_for(conn)
    for chunk in _chunks(device_ids):
        source = select(
            _rd.c.device_id,
            literal(rollout.version, _fw.c.target_version.type),
            literal(rollout.id, _fw.c.target_rollout_id.type),
            literal(now, _fw.c.updated_at.type),
        ).where(_rd.c.rollout_id == rollout.id, _rd.c.device_id.in_(chunk))
        statement = insert(_fw).from_select(
            ["device_id", "target_version", "target_rollout_id", "updated_at"], source
        )
        statement = statement.on_conflict_do_update(
            index_elements=["device_id"],
            set_={
                "target_version": statement.excluded.target_version,
                "target_rollout_id": statement.excluded.target_rollout_id,
                "update_state": None,
                "update_detail": None,
                "updated_at": statement.excluded.updated_at,
            },
        )
        conn.execute(statement)
    audit_devices(
        session, "firmware.target", rollout.name, {"version": rollout.version}, device_ids, at=now
    )


def clear_targets(
    session: Session, rollout: Rollout, device_ids: Sequence[str], now: datetime
) -> None:
    """Clear the targets this rollout set on ``device_ids`` (a target another rollout set
    since is left alone) and audit it (``version`` null)."""
    if not device_ids:
        return
    conn = session.connection()
    for start in range(0, len(device_ids), ID_CHUNK):
        chunk = list(device_ids[start : start + ID_CHUNK])
        conn.execute(
            update(_fw)
            .where(_fw.c.device_id.in_(chunk), _fw.c.target_rollout_id == rollout.id)
            .values(target_version=None, target_rollout_id=None, updated_at=now)
        )
    audit_devices(session, "firmware.target", rollout.name, {"version": None}, device_ids, at=now)


def _job_key(conn: Connection) -> ColumnElement[Any]:
    """A fresh idempotency key per inserted job, made by the database."""
    if conn.dialect.name == "postgresql":
        return func.md5(
            func.concat(func.random(), func.clock_timestamp(), _reg.c.device_id, _reg.c.cloud)
        )
    return func.lower(func.hex(func.randomblob(16)))


def enqueue_firmware_jobs(
    session: Session, device_ids: Sequence[str], cloud: str | None, now: datetime
) -> int:
    """Queue a ``firmware`` outbox job for each of ``device_ids`` on its cloud
    (``cloud``, or every cloud it is registered or being registered with), unless one is
    already queued there (the job reads the device's current target when it is pushed).
    Returns the jobs queued."""
    conn = session.connection()
    open_job = exists().where(
        _job.c.device_id == _reg.c.device_id,
        _job.c.cloud == _reg.c.cloud,
        _job.c.action == JobAction.FIRMWARE,
        _job.c.state.in_(OPEN_JOB_STATES),
    )
    queued = 0
    for chunk in _chunks(device_ids):
        conditions = [_reg.c.device_id.in_(chunk), _reg.c.status.in_(DELIVERABLE), ~open_job]
        if cloud is not None:
            conditions.append(_reg.c.cloud == cloud)
        queued += _insert_jobs(conn, conditions, now)
    return queued


def _insert_jobs(conn: Connection, conditions: list[ColumnElement[bool]], now: datetime) -> int:
    moment = literal(now, _job.c.created_at.type)
    source = select(
        _reg.c.device_id,
        _reg.c.cloud,
        literal(str(JobAction.FIRMWARE), _job.c.action.type),
        literal(str(JobState.PENDING), _job.c.state.type),
        literal(0, _job.c.attempts.type),
        moment,
        _job_key(conn),
        moment,
        moment,
    ).where(and_(*conditions))
    statement = _job.insert().from_select(
        [
            "device_id",
            "cloud",
            "action",
            "state",
            "attempts",
            "next_attempt_at",
            "idempotency_key",
            "created_at",
            "updated_at",
        ],
        source,
    )
    return int(conn.execute(statement).rowcount or 0)
