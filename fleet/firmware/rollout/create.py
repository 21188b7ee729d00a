"""Creating a rollout and starting it: the selection, evaluated set-based in the database.

``start`` freezes the device set with one ``INSERT ... SELECT``: the selector's devices
(index-answered, :class:`fleet.listing.DeviceFilter`), ranked by ID, each given its phase
(by rank against the phases' cumulative cut-offs) and its first state: ``skipped`` (model not
among the image's, pinned to another version, or below the image's ``requires_min``),
``already-installed`` (reports the version already) or ``pending``. A ``--dynamic``
rollout runs the same selection at every step for devices not in it yet, into the current
phase (:func:`join_new_devices`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, func, literal, not_, or_, select
from sqlalchemy.engine import Connection
from sqlmodel import Session, col

from fleet import clock
from fleet.cloud.jobs import get_cloud
from fleet.errors import Conflict, InvalidInput, NotFound
from fleet.firmware.catalogue import find_image, split_target
from fleet.firmware.models import (
    DeviceFirmware,
    FirmwareImage,
    FirmwareModel,
    Rollout,
    RolloutDevice,
)
from fleet.firmware.rollout.lookup import get_rollout
from fleet.firmware.rollout.machine import parse_percent, parse_phases, phase_cutoffs
from fleet.firmware.rollout.targets import audit_devices
from fleet.firmware.versions import compare_versions
from fleet.identifiers import parse_duration
from fleet.listing import DeviceFilter, _device_query
from fleet.registry import audit
from fleet.registry.db import write_session
from fleet.registry.models import Device
from fleet.statuses import DeviceStatus, RolloutDeviceState, RolloutState
from fleet.workspace import Workspace

NAME_MAX = 64
_device = Device.__table__  # type: ignore[attr-defined]
_fw = DeviceFirmware.__table__  # type: ignore[attr-defined]
_fm = FirmwareModel.__table__  # type: ignore[attr-defined]
_rd = RolloutDevice.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RolloutSpec:
    """What ``fleet rollout create`` was given, as text where the CLI takes text."""

    name: str
    firmware: str  # MODEL@VERSION
    model: str | None = None
    labels: Mapping[str, str] | None = None
    status: str | None = None
    phases: str = "100%"
    max_failure_rate: str = "5%"
    min_executed: int = 20
    max_per_minute: int | None = None
    timeout: str | None = None
    dynamic: bool = False
    cloud: str | None = None


def _check_name(name: str) -> str:
    if not name or len(name) > NAME_MAX or not name.isprintable() or "/" in name:
        raise InvalidInput(f"rollout name must be 1-{NAME_MAX} printable characters, no '/'")
    return name


def selector_of(rollout: Rollout) -> DeviceFilter:
    """The rollout's device filter (active devices unless it names a status)."""
    data = json.loads(rollout.selector)
    return DeviceFilter(
        model=data.get("model"),
        labels=data.get("labels") or None,
        status=data.get("status") or DeviceStatus.ACTIVE,
    )


def create_rollout(ws: Workspace, spec: RolloutSpec) -> Rollout:
    """Record a rollout (state ``created``) after checking everything it names: the image
    (catalogued, not deprecated), the selector, phases, thresholds, the cloud. Audited
    ``rollout.create``. Example::

        create_rollout(ws, RolloutSpec("spring", "pump@2.1.0", phases="10%,100%"))
    """
    name = _check_name(spec.name)
    model, version = split_target(spec.firmware)
    phases = parse_phases(spec.phases)
    rate = parse_percent(spec.max_failure_rate, what="--max-failure-rate") / 100
    if spec.min_executed < 0:
        raise InvalidInput("--min-executed must be 0 or more")
    if spec.max_per_minute is not None and spec.max_per_minute < 1:
        raise InvalidInput("--max-per-minute must be 1 or more")
    timeout: timedelta | None = None
    if spec.timeout is not None:
        timeout = parse_duration(spec.timeout, bare_unit="h", what="--timeout")
        if timeout.total_seconds() < 1:
            raise InvalidInput("--timeout must be at least 1s")
    selector = DeviceFilter(model=spec.model, labels=spec.labels, status=spec.status)
    selector.check()
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        image = find_image(session, model, version)
        if image is None:
            raise NotFound(
                f"no firmware {model}@{version} in the catalogue: see `fleet firmware list`"
            )
        if image.deprecated:
            raise Conflict(f"firmware {model}@{version} is deprecated and cannot be rolled out")
        if spec.cloud is not None:
            get_cloud(session, spec.cloud)
        if session.execute(select(col(Rollout.id)).where(col(Rollout.name) == name)).first():
            raise Conflict(f"a rollout named {name!r} exists already")
        stored = {
            "model": spec.model,
            "labels": dict(spec.labels or {}),
            "status": spec.status,
        }
        assert image.id is not None
        rollout = Rollout(
            name=name,
            firmware_id=image.id,
            model=model,
            version=version,
            selector=json.dumps(stored, sort_keys=True),
            phases=json.dumps(phases),
            max_failure_rate=rate,
            min_executed=spec.min_executed,
            max_per_minute=spec.max_per_minute,
            timeout_seconds=int(timeout.total_seconds()) if timeout is not None else None,
            dynamic=spec.dynamic,
            cloud=spec.cloud,
            state=RolloutState.CREATED,
            current_phase=0,
            created_at=now,
            updated_at=now,
        )
        session.add(rollout)
        session.flush()
        audit.append(
            session,
            "rollout.create",
            name,
            {
                "firmware": f"{model}@{version}",
                "selector": stored,
                "phases": phases,
                "max_failure_rate": rate,
                "min_executed": spec.min_executed,
                "max_per_minute": spec.max_per_minute,
                "timeout_seconds": rollout.timeout_seconds,
                "dynamic": spec.dynamic,
                "cloud": spec.cloud,
            },
            at=now,
        )
    return rollout


def _below_requires_min(conn: Connection, image: FirmwareImage) -> list[str]:
    """The reported versions (distinct, read off the index) older than the image's
    ``requires_min``: devices on them cannot take this image."""
    if not image.requires_min:
        return []
    versions = conn.execute(
        select(_fw.c.reported_version).where(_fw.c.reported_version.is_not(None)).distinct()
    ).scalars()
    below = []
    for version in versions:
        try:
            if compare_versions(version, image.requires_min) < 0:
                below.append(version)
        except InvalidInput:  # an unparseable report: not known to be below
            continue
    return below


def _first_state(
    rollout: Rollout, image: FirmwareImage, below: list[str], model: Any
) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """(state, reason) CASE expressions of a selected device (columns of ``_fw`` and the
    device's ``model``)."""
    compatible = model.in_(select(_fm.c.model).where(_fm.c.firmware_id == image.id))
    pinned = and_(_fw.c.pinned_version.is_not(None), _fw.c.pinned_version != rollout.version)
    rules: list[tuple[ColumnElement[bool], str, ColumnElement[Any]]] = [
        (
            or_(model.is_(None), not_(compatible)),
            RolloutDeviceState.SKIPPED,
            literal("model not among the image's models"),
        ),
        (pinned, RolloutDeviceState.SKIPPED, literal("pinned to ") + _fw.c.pinned_version),
    ]
    if below:
        rules.append(
            (
                _fw.c.reported_version.in_(below),
                RolloutDeviceState.SKIPPED,
                literal(f"reported version below requires-min {image.requires_min}"),
            )
        )
    rules.append(
        (
            _fw.c.reported_version == rollout.version,
            RolloutDeviceState.ALREADY_INSTALLED,
            literal("reports the version already"),
        )
    )
    state = case(
        *((cond, literal(str(value))) for cond, value, _ in rules),
        else_=literal(str(RolloutDeviceState.PENDING)),
    )
    reason = case(*((cond, text) for cond, _, text in rules), else_=None)
    return state, reason


def _insert_selected(
    session: Session,
    rollout: Rollout,
    image: FirmwareImage,
    phase_of: Any,
    source: Any,
    now: datetime,
    *,
    returning: bool = False,
) -> list[tuple[str, str]]:
    """Insert the selected devices; with ``returning``, their (id, first state)."""
    conn = session.connection()
    state, reason = _first_state(rollout, image, _below_requires_min(conn, image), source.c.model)
    query = (
        select(
            literal(rollout.id, _rd.c.rollout_id.type),
            source.c.id,
            phase_of,
            state,
            reason,
            literal(0, _rd.c.attempts.type),
            literal(now, _rd.c.updated_at.type),
        )
        .select_from(source.outerjoin(_fw, _fw.c.device_id == source.c.id))
        .where(literal(True))
    )
    statement = _rd.insert().from_select(
        ["rollout_id", "device_id", "phase", "state", "reason", "attempts", "updated_at"],
        query,
    )
    if not returning:
        conn.execute(statement)
        return []
    rows = conn.execute(statement.returning(_rd.c.device_id, _rd.c.state))
    return [(str(device_id), str(state)) for device_id, state in rows]


def _state_counts(session: Session, rollout_id: int) -> dict[str, int]:
    rows = session.execute(
        select(_rd.c.state, func.count())
        .where(_rd.c.rollout_id == rollout_id)
        .group_by(_rd.c.state)
    )
    return {str(state): int(count) for state, count in rows}


def _audit_skips(session: Session, rollout: Rollout, now: datetime) -> None:
    """``rollout.devices`` events for the devices selected straight into a terminal state."""
    for value in (RolloutDeviceState.SKIPPED, RolloutDeviceState.ALREADY_INSTALLED):
        query = select(_rd.c.device_id).where(_rd.c.rollout_id == rollout.id, _rd.c.state == value)
        query = query.where(_rd.c.updated_at == literal(now, _rd.c.updated_at.type))
        ids = list(session.execute(query).scalars())
        audit_devices(session, "rollout.devices", rollout.name, {"state": str(value)}, ids, at=now)


def start_rollout(ws: Workspace, name: str) -> dict[str, int]:
    """Freeze the device set of a ``created`` rollout (see the module docstring) and set it
    ``running``; the next step notifies its first phase. Returns the devices per state."""
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        rollout = get_rollout(session, name)
        if rollout.state != RolloutState.CREATED:
            raise Conflict(f"rollout {name!r} is {rollout.state}: only a created rollout starts")
        image = session.get(FirmwareImage, rollout.firmware_id)
        assert image is not None and rollout.id is not None
        if image.deprecated:
            raise Conflict(f"firmware {rollout.model}@{rollout.version} is deprecated: not started")
        where = selector_of(rollout)
        base, key = _device_query([_device.c.id, _device.c.model], where, after=None)
        total = int(session.execute(select(func.count()).select_from(base.subquery())).scalar_one())
        cutoffs = phase_cutoffs(total, json.loads(rollout.phases))
        ranked = base.add_columns(func.row_number().over(order_by=key).label("rn")).subquery()
        phase_of = case(
            *((ranked.c.rn <= cut, literal(index)) for index, cut in enumerate(cutoffs)),
            else_=literal(len(cutoffs) - 1),
        )
        _insert_selected(session, rollout, image, phase_of, ranked, now)
        counts = _state_counts(session, rollout.id)
        rollout.state = RolloutState.RUNNING
        rollout.started_at = now
        rollout.updated_at = now
        session.add(rollout)
        audit.append(
            session,
            "rollout.start",
            name,
            {"devices": total, "states": counts, "phase_sizes": cutoffs},
            at=now,
        )
        _audit_skips(session, rollout, now)
    return counts


def join_new_devices(session: Session, rollout: Rollout, now: datetime) -> int:
    """``--dynamic``: the devices matching the selector that are not in the rollout yet join
    its current phase (audited ``rollout.join``). Returns how many joined."""
    image = session.get(FirmwareImage, rollout.firmware_id)
    assert image is not None and rollout.id is not None
    base, key = _device_query([_device.c.id, _device.c.model], selector_of(rollout), after=None)
    already = exists().where(_rd.c.rollout_id == rollout.id, _rd.c.device_id == key)
    fresh = base.where(~already).subquery()
    rows = _insert_selected(
        session, rollout, image, literal(rollout.current_phase), fresh, now, returning=True
    )
    ids = [device_id for device_id, _ in rows]
    audit_devices(
        session, "rollout.join", rollout.name, {"phase": rollout.current_phase}, ids, at=now
    )
    for value in (RolloutDeviceState.SKIPPED, RolloutDeviceState.ALREADY_INSTALLED):
        done = [device_id for device_id, state in rows if state == value]
        audit_devices(session, "rollout.devices", rollout.name, {"state": str(value)}, done, at=now)
    return len(ids)
