"""What ``fleet rollout status|list`` show: a rollout, its devices per state (devices, not
attempts: each device is one ``rollout_device`` row whatever its retries) and per phase,
and one device's history.

A device's history is read from the audit trail (events on the rollout naming the device:
``rollout.devices``, ``rollout.join``, ``firmware.target``) beside its ``rollout_device``
row: the trail holds every transition already (each is audited), so no second table keeps
a copy that could disagree with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from fleet.errors import NotFound
from fleet.firmware.models import Rollout, RolloutDevice
from fleet.firmware.rollout.lookup import get_rollout
from fleet.firmware.rollout.machine import failure_rate
from fleet.registry.audit import format_ts, iter_audit_events
from fleet.registry.db import read_session
from fleet.statuses import RolloutDeviceState
from fleet.workspace import Workspace

_rd = RolloutDevice.__table__  # type: ignore[attr-defined]
HISTORY_ACTIONS = ("rollout.devices", "rollout.join", "firmware.target")


@dataclass(frozen=True)
class RolloutView:
    """A rollout as shown; ``states`` and ``phases`` only where counted (status)."""

    name: str
    firmware: str
    state: str
    phase: int
    phases: list[float]
    dynamic: bool
    cloud: str | None
    max_failure_rate: float
    min_executed: int
    max_per_minute: int | None
    timeout_seconds: int | None
    reason: str | None
    selector: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    states: dict[str, int] | None = None
    phase_states: list[dict[str, int]] | None = field(default=None)

    @classmethod
    def of(cls, row: Rollout) -> RolloutView:
        """The view of a rollout row (no counts)."""
        return cls(
            name=row.name,
            firmware=f"{row.model}@{row.version}",
            state=row.state,
            phase=row.current_phase,
            phases=json.loads(row.phases),
            dynamic=row.dynamic,
            cloud=row.cloud,
            max_failure_rate=row.max_failure_rate,
            min_executed=row.min_executed,
            max_per_minute=row.max_per_minute,
            timeout_seconds=row.timeout_seconds,
            reason=row.reason,
            selector=json.loads(row.selector),
            created_at=format_ts(row.created_at),
            started_at=format_ts(row.started_at) if row.started_at else None,
            finished_at=format_ts(row.finished_at) if row.finished_at else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (``--json``)."""
        shape: dict[str, Any] = {
            "name": self.name,
            "firmware": self.firmware,
            "state": self.state,
            "phase": self.phase,
            "phases": self.phases,
            "dynamic": self.dynamic,
            "cloud": self.cloud,
            "max_failure_rate": self.max_failure_rate,
            "min_executed": self.min_executed,
            "max_per_minute": self.max_per_minute,
            "timeout_seconds": self.timeout_seconds,
            "reason": self.reason,
            "selector": self.selector,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        if self.states is not None:
            executed, failures, rate = failure_rate(self.states)
            shape["devices"] = sum(self.states.values())
            shape["states"] = self.states
            shape["executed"] = executed
            shape["failures"] = failures
            shape["failure_rate"] = round(rate, 6)
            shape["phase_states"] = self.phase_states
        return shape


def rollout_status(ws: Workspace, name: str) -> RolloutView:
    """The rollout with its devices counted per state and per phase (one grouped query on
    the (rollout, phase, state) index)."""
    with read_session(ws.open_registry()) as session:
        rollout = get_rollout(session, name)
        rows = session.execute(
            select(_rd.c.phase, _rd.c.state, func.count())
            .where(_rd.c.rollout_id == rollout.id)
            .group_by(_rd.c.phase, _rd.c.state)
        ).all()
    view = RolloutView.of(rollout)
    states = {str(s): 0 for s in RolloutDeviceState}
    phases: list[dict[str, int]] = [{} for _ in view.phases]
    for phase, state, count in rows:
        states[state] = states.get(state, 0) + int(count)
        if 0 <= phase < len(phases):
            phases[phase][state] = int(count)
    return RolloutView(**{**view.__dict__, "states": states, "phase_states": phases})


def iter_rollouts(
    ws: Workspace, *, after: str | None = None, limit: int | None = None
) -> Iterator[RolloutView]:
    """Rollouts in name order after ``after``, at most ``limit``."""
    with read_session(ws.open_registry()) as session:
        query = select(Rollout).order_by(col(Rollout.name))
        if after is not None:
            query = query.where(col(Rollout.name) > after)
        if limit is not None:
            query = query.limit(limit)
        rows = list(session.execute(query).scalars())
    for row in rows:
        yield RolloutView.of(row)


def count_rollouts(ws: Workspace, *, after: str | None = None) -> int:
    """How many rollouts :func:`iter_rollouts` lists."""
    with read_session(ws.open_registry()) as session:
        query = select(func.count()).select_from(Rollout)
        if after is not None:
            query = query.where(col(Rollout.name) > after)
        return int(session.execute(query).scalar_one())


def device_history(ws: Workspace, name: str, device_id: str) -> dict[str, Any]:
    """One device in one rollout: its row (phase, state, reason, attempts) and every audited
    transition naming it, oldest first."""
    with read_session(ws.open_registry()) as session:
        rollout = get_rollout(session, name)
        row = session.get(RolloutDevice, (rollout.id, device_id))
    if row is None:
        raise NotFound(f"device {device_id!r} is not in rollout {name!r}")
    events = []
    for event in iter_audit_events(ws, target=name, action=HISTORY_ACTIONS):
        details = event["details"]
        if device_id not in details.get("devices", ()):
            continue
        entry: dict[str, Any] = {"ts": event["ts"], "seq": event["seq"], "action": event["action"]}
        if event["action"] == "firmware.target":
            entry["target"] = details.get("version")
        elif event["action"] == "rollout.join":
            entry["phase"] = details.get("phase")
        else:
            entry["state"] = details.get("state")
        events.append(entry)
    return {
        "rollout": name,
        "device_id": device_id,
        "phase": row.phase,
        "state": row.state,
        "reason": row.reason,
        "attempts": row.attempts,
        "notified_at": format_ts(row.notified_at) if row.notified_at else None,
        "history": events,
    }
