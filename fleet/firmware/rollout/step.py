"""``fleet rollout step``: advance every running rollout once (cron, the watcher, or
``fleet cloud sync`` call it).

Per rollout, in one write transaction: a ``--dynamic`` rollout takes in devices matching
later; the devices' reports (``device_firmware``) move notified and in-progress devices on
(succeeded, failed, in-progress) and the clock times out the slow ones; then
:func:`fleet.firmware.rollout.machine.decide` pauses, advances, completes or notifies the
current phase's pending devices (within ``--max-per-minute``). Every per-device change is
one set-based ``UPDATE ... RETURNING``, audited in batches (``rollout.devices``), its
targets and outbox jobs written beside it (:mod:`fleet.firmware.rollout.targets`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, literal, select, update
from sqlmodel import Session, col

from fleet import clock
from fleet.firmware.models import DeviceFirmware, FirmwareImage, Rollout, RolloutDevice
from fleet.firmware.rollout.create import join_new_devices
from fleet.firmware.rollout.lookup import get_rollout
from fleet.firmware.rollout.machine import OPEN_STATES, Next, Thresholds, decide
from fleet.firmware.rollout.targets import (
    audit_devices,
    enqueue_firmware_jobs,
    set_targets,
)
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.statuses import RolloutDeviceState, RolloutState
from fleet.workspace import Workspace

_rd = RolloutDevice.__table__  # type: ignore[attr-defined]
_fw = DeviceFirmware.__table__  # type: ignore[attr-defined]
S = RolloutDeviceState


@dataclass
class StepReport:
    """What one step did to one rollout."""

    rollout: str
    state: str
    phase: int
    joined: int = 0
    changed: dict[str, int] = field(default_factory=dict)  # new state -> devices moved there
    notified: int = 0
    jobs: int = 0
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as ``--json`` shows it."""
        return {
            "rollout": self.rollout,
            "state": self.state,
            "phase": self.phase,
            "joined": self.joined,
            "changed": self.changed,
            "notified": self.notified,
            "jobs": self.jobs,
            "reason": self.reason,
        }


def _moment(now: datetime) -> Any:
    return literal(now, _rd.c.updated_at.type)


def _move(
    session: Session,
    rollout: Rollout,
    report: StepReport,
    froms: tuple[str, ...],
    to: str,
    condition: ColumnElement[bool],
    now: datetime,
    reason: Any = None,
) -> list[str]:
    """Move the rollout's devices in ``froms`` that meet ``condition`` to ``to``; audited."""
    statement = (
        update(_rd)
        .where(_rd.c.rollout_id == rollout.id, _rd.c.state.in_([str(s) for s in froms]), condition)
        .values(state=str(to), reason=reason, updated_at=_moment(now))
        .returning(_rd.c.device_id)
    )
    ids = list(session.connection().execute(statement).scalars())
    if ids:
        report.changed[str(to)] = report.changed.get(str(to), 0) + len(ids)
        audit_devices(session, "rollout.devices", rollout.name, {"state": str(to)}, ids, at=now)
    return ids


def _firmware_says(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(_fw.c.device_id == _rd.c.device_id, *conditions)


def observe(session: Session, rollout: Rollout, report: StepReport, now: datetime) -> None:
    """Apply what devices reported, then the timeout (see the module docstring)."""
    active = (S.NOTIFIED, S.IN_PROGRESS)
    _move(
        session,
        rollout,
        report,
        active,
        S.SUCCEEDED,
        _firmware_says(_fw.c.reported_version == rollout.version),
        now,
    )
    failed = and_(
        _fw.c.update_state == "failed",
        func.coalesce(_fw.c.reported_version, "") != rollout.version,
    )
    detail = (
        select(func.coalesce(_fw.c.update_detail, "the device reported failure"))
        .where(_fw.c.device_id == _rd.c.device_id)
        .scalar_subquery()
    )
    _move(session, rollout, report, active, S.FAILED, _firmware_says(failed), now, reason=detail)
    _move(
        session,
        rollout,
        report,
        (S.NOTIFIED,),
        S.IN_PROGRESS,
        _firmware_says(_fw.c.update_state == "in-progress"),
        now,
    )
    if rollout.timeout_seconds:
        limit = now - timedelta(seconds=rollout.timeout_seconds)
        reason = f"no success within {rollout.timeout_seconds}s of notification"
        _move(
            session,
            rollout,
            report,
            active,
            S.TIMED_OUT,
            _rd.c.notified_at <= literal(limit, _rd.c.notified_at.type),
            now,
            reason=literal(reason),
        )


def _counts(session: Session, rollout_id: int) -> dict[str, int]:
    rows = session.execute(
        select(_rd.c.state, func.count())
        .where(_rd.c.rollout_id == rollout_id)
        .group_by(_rd.c.state)
    )
    return {str(state): int(count) for state, count in rows}


def _open_in_phase(session: Session, rollout: Rollout) -> int:
    query = select(func.count()).where(
        _rd.c.rollout_id == rollout.id,
        _rd.c.phase <= rollout.current_phase,
        _rd.c.state.in_([str(s) for s in OPEN_STATES]),
    )
    return int(session.execute(query).scalar_one())


def _budget(session: Session, rollout: Rollout, now: datetime) -> int | None:
    """How many more devices may be notified this minute (None: no limit)."""
    if rollout.max_per_minute is None:
        return None
    since = literal(now - timedelta(minutes=1), _rd.c.notified_at.type)
    recent = session.execute(
        select(func.count()).where(_rd.c.rollout_id == rollout.id, _rd.c.notified_at > since)
    ).scalar_one()
    return max(0, rollout.max_per_minute - int(recent))


def notify(session: Session, rollout: Rollout, report: StepReport, now: datetime) -> None:
    """Notify the pending devices of phases up to the current one (within the per-minute
    budget): state ``notified``, attempt counted, target set, outbox jobs queued."""
    in_phase = and_(_rd.c.phase <= rollout.current_phase)
    pinned = _firmware_says(
        _fw.c.pinned_version.is_not(None), _fw.c.pinned_version != rollout.version
    )
    pin = (
        select(literal("pinned to ") + _fw.c.pinned_version)
        .where(_fw.c.device_id == _rd.c.device_id)
        .scalar_subquery()
    )
    _move(
        session, rollout, report, (S.PENDING,), S.SKIPPED, and_(in_phase, pinned), now, reason=pin
    )
    budget = _budget(session, rollout, now)
    if budget == 0:
        return
    condition: ColumnElement[bool] = in_phase
    if budget is not None:
        inner = _rd.alias("inner_rd")
        chosen = (
            select(inner.c.device_id)
            .where(
                inner.c.rollout_id == rollout.id,
                inner.c.state == S.PENDING,
                inner.c.phase <= rollout.current_phase,
            )
            .order_by(inner.c.device_id)
            .limit(budget)
        )
        condition = and_(in_phase, _rd.c.device_id.in_(chosen))
    statement = (
        update(_rd)
        .where(_rd.c.rollout_id == rollout.id, _rd.c.state == S.PENDING, condition)
        .values(
            state=str(S.NOTIFIED),
            reason=None,
            attempts=_rd.c.attempts + 1,
            notified_at=literal(now, _rd.c.notified_at.type),
            updated_at=_moment(now),
        )
        .returning(_rd.c.device_id)
    )
    ids = list(session.connection().execute(statement).scalars())
    if not ids:
        return
    set_targets(session, rollout, ids, now)
    report.jobs += enqueue_firmware_jobs(session, ids, rollout.cloud, now)
    report.notified += len(ids)


def _set_state(
    session: Session, rollout: Rollout, state: RolloutState, reason: str | None, now: datetime
) -> None:
    rollout.state = state
    rollout.reason = reason
    rollout.updated_at = now
    if state in (RolloutState.COMPLETED, RolloutState.ABORTED):
        rollout.finished_at = now
    session.add(rollout)


def step_one(session: Session, rollout: Rollout, now: datetime) -> StepReport:
    """One step of one running rollout in the caller's write transaction."""
    assert rollout.id is not None
    phases = json.loads(rollout.phases)
    report = StepReport(rollout.name, str(rollout.state), rollout.current_phase)
    image = session.get(FirmwareImage, rollout.firmware_id)
    if image is not None and image.deprecated:
        why = f"firmware {rollout.model}@{rollout.version} was deprecated"
        _set_state(session, rollout, RolloutState.PAUSED, why, now)
        audit.append(session, "rollout.pause", rollout.name, {"reason": why, "auto": True}, at=now)
        report.state, report.reason = rollout.state, why
        return report
    if rollout.dynamic:
        report.joined = join_new_devices(session, rollout, now)
    observe(session, rollout, report, now)
    rule = Thresholds(rollout.max_failure_rate, rollout.min_executed)
    for _ in range(len(phases) + 1):
        move, reason = decide(
            _counts(session, rollout.id),
            _open_in_phase(session, rollout),
            rollout.current_phase,
            len(phases),
            rule,
        )
        if move == Next.PAUSE:
            _set_state(session, rollout, RolloutState.PAUSED, reason, now)
            audit.append(
                session, "rollout.pause", rollout.name, {"reason": reason, "auto": True}, at=now
            )
            break
        if move == Next.COMPLETE:
            _set_state(session, rollout, RolloutState.COMPLETED, None, now)
            audit.append(
                session,
                "rollout.complete",
                rollout.name,
                {"states": _counts(session, rollout.id)},
                at=now,
            )
            break
        if move == Next.ADVANCE:
            rollout.current_phase += 1
            rollout.updated_at = now
            session.add(rollout)
            audit.append(
                session,
                "rollout.phase",
                rollout.name,
                {"phase": rollout.current_phase, "percent": phases[rollout.current_phase]},
                at=now,
            )
            continue
        notify(session, rollout, report, now)
        break
    report.state, report.phase, report.reason = rollout.state, rollout.current_phase, rollout.reason
    return report


def step(ws: Workspace, name: str | None = None) -> list[StepReport]:
    """Advance every running rollout (or only ``name``) once, each in its own transaction.
    Example: ``for r in step(ws): print(r.rollout, r.state, r.changed)``."""
    engine = ws.open_registry()
    with read_session(engine) as session:
        query = select(col(Rollout.name)).where(col(Rollout.state) == RolloutState.RUNNING)
        if name is not None:
            get_rollout(session, name)
            query = query.where(col(Rollout.name) == name)
        names = list(session.execute(query.order_by(col(Rollout.name))).scalars())
    reports = []
    for rollout_name in names:
        now = clock.now()
        with write_session(engine) as session:
            query_one = select(Rollout).where(col(Rollout.name) == rollout_name)
            rollout = session.execute(query_one).scalars().one()
            if rollout.state != RolloutState.RUNNING:
                continue
            reports.append(step_one(session, rollout, now))
    return reports
