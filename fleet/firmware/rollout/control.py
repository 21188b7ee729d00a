"""Operator commands on a rollout: pause, resume, abort, retry-failed.

Each is one write transaction with its audit event; abort and retry-failed move devices
set-based (``rollout.devices`` events) and abort clears the targets it had delivered (queued
``firmware`` jobs then clear them on the clouds).
"""

from __future__ import annotations

from sqlalchemy import update

from fleet import clock
from fleet.errors import Conflict
from fleet.firmware.models import Rollout, RolloutDevice
from fleet.firmware.rollout.lookup import get_rollout
from fleet.firmware.rollout.machine import allowed
from fleet.firmware.rollout.targets import audit_devices, clear_targets, enqueue_firmware_jobs
from fleet.registry import audit
from fleet.registry.db import write_session
from fleet.statuses import RolloutDeviceState, RolloutState
from fleet.workspace import Workspace

_rd = RolloutDevice.__table__  # type: ignore[attr-defined]
S = RolloutDeviceState


def _refuse(rollout: Rollout, command: str) -> None:
    if not allowed(rollout.state, command):
        raise Conflict(f"rollout {rollout.name!r} is {rollout.state}: cannot {command} it")


def pause_rollout(ws: Workspace, name: str, reason: str | None = None) -> Rollout:
    """Pause a running rollout: steps leave it alone until ``resume``."""
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        rollout = get_rollout(session, name)
        _refuse(rollout, "pause")
        rollout.state = RolloutState.PAUSED
        rollout.reason = reason or "paused by an operator"
        rollout.updated_at = now
        session.add(rollout)
        audit.append(
            session, "rollout.pause", name, {"reason": rollout.reason, "auto": False}, at=now
        )
    return rollout


def resume_rollout(ws: Workspace, name: str) -> Rollout:
    """Resume a paused rollout (the next step pauses it again if the failure rate still
    exceeds the threshold: ``retry-failed`` first)."""
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        rollout = get_rollout(session, name)
        _refuse(rollout, "resume")
        rollout.state = RolloutState.RUNNING
        rollout.reason = None
        rollout.updated_at = now
        session.add(rollout)
        audit.append(session, "rollout.resume", name, {}, at=now)
    return rollout


def abort_rollout(ws: Workspace, name: str) -> dict[str, int]:
    """Abort: devices not terminal yet become ``cancelled``; the targets delivered to the
    notified and in-progress ones are cleared (and the clearing queued to their clouds).
    Returns how many devices were cancelled and how many targets cleared."""
    now = clock.now()
    moment = now
    with write_session(ws.open_registry()) as session:
        rollout = get_rollout(session, name)
        _refuse(rollout, "abort")
        assert rollout.id is not None
        conn = session.connection()

        def cancel(froms: tuple[str, ...]) -> list[str]:
            statement = (
                update(_rd)
                .where(_rd.c.rollout_id == rollout.id, _rd.c.state.in_([str(s) for s in froms]))
                .values(state=str(S.CANCELLED), reason="rollout aborted", updated_at=moment)
                .returning(_rd.c.device_id)
            )
            return list(conn.execute(statement).scalars())

        waiting = cancel((S.PENDING,))
        delivered = cancel((S.NOTIFIED, S.IN_PROGRESS))
        audit_devices(
            session,
            "rollout.devices",
            name,
            {"state": str(S.CANCELLED)},
            waiting + delivered,
            at=now,
        )
        clear_targets(session, rollout, delivered, now)
        enqueue_firmware_jobs(session, delivered, rollout.cloud, now)
        rollout.state = RolloutState.ABORTED
        rollout.reason = "aborted by an operator"
        rollout.finished_at = now
        rollout.updated_at = now
        session.add(rollout)
        audit.append(
            session,
            "rollout.abort",
            name,
            {"cancelled": len(waiting) + len(delivered), "targets_cleared": len(delivered)},
            at=now,
        )
    return {"cancelled": len(waiting) + len(delivered), "targets_cleared": len(delivered)}


def retry_failed(ws: Workspace, name: str) -> int:
    """Move the rollout's failed and timed-out devices back to ``pending`` (their attempts
    are kept and counted again when notified); a completed rollout with devices to retry
    runs again. Returns how many devices will be retried."""
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        rollout = get_rollout(session, name)
        if rollout.state in (RolloutState.CREATED, RolloutState.ABORTED):
            raise Conflict(f"rollout {name!r} is {rollout.state}: nothing to retry")
        statement = (
            update(_rd)
            .where(
                _rd.c.rollout_id == rollout.id, _rd.c.state.in_([str(S.FAILED), str(S.TIMED_OUT)])
            )
            .values(state=str(S.PENDING), reason=None, updated_at=now)
            .returning(_rd.c.device_id)
        )
        ids = list(session.connection().execute(statement).scalars())
        audit_devices(session, "rollout.devices", name, {"state": str(S.PENDING)}, ids, at=now)
        if ids and rollout.state == RolloutState.COMPLETED:
            rollout.state = RolloutState.RUNNING
            rollout.finished_at = None
        rollout.updated_at = now
        session.add(rollout)
        audit.append(session, "rollout.retry", name, {"devices": len(ids)}, at=now)
    return len(ids)
