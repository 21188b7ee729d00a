"""``fleet cloud drift``: where a cloud and the registry disagree, and the jobs that reconcile.

The cloud's inventory (:meth:`CloudBackend.iter_inventory`) is streamed in batches of
:data:`BATCH` devices; each batch is compared with the registry rows of those ids (a few
``IN (...)`` queries, no certificate PEMs read) and its ids go into a temporary SQLite set
on disk. A second pass pages through this cloud's registrations in device order and reports
the ones the inventory did not list. Memory stays flat at any fleet size: only the findings
are kept.

What the registry expects of device D on cloud C (registration R):

* D active, R registered/pending/failed, D has an active certificate: present, enabled,
  holding D's newest active certificate and no active certificate fleet did not issue to D
  for now (an older active one of D's is fine: a renewal window).
* otherwise (D decommissioned, R deregistered, no active certificate): absent or disabled.

Findings (:class:`fleet.statuses.DriftKind`) and what ``fix`` queues (outbox jobs, one
transaction, one ``cloud.drift`` audit event per device):

* ``missing-in-cloud``: expected present, absent (not for a pending registration: its job is
  queued already) -> register.
* ``unknown-in-cloud``: listed remotely, not registered on C in fleet -> nothing; with
  ``delete_unknown`` the backend deletes it now (see :func:`_delete_unknown`).
* ``certificate-mismatch``: expected present, the newest certificate is not active there or
  an active certificate fleet did not issue to D is -> register (forced).
* ``decommissioned-but-enabled`` (security): expected absent yet enabled, or a certificate
  fleet revoked is active there -> deregister (register when D is active and expected
  present: the backend's register detaches and deactivates certificates that are not D's).
* ``disabled-in-cloud``: expected present, present but disabled -> register (forced).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func
from sqlmodel import col, select

from fleet import clock
from fleet.cloud.base import CloudError, NotSupported, RemoteDevice
from fleet.cloud.clouds import make_backend
from fleet.cloud.drift_model import (
    MISSABLE,
    DriftFinding,
    DriftProgress,
    DriftReport,
    Fix,
    FixResult,
    Known,
    certificates_by_fingerprint,
    classify,
    expected_present,
    finding,
    registry_batch,
)
from fleet.cloud.jobs import chunks, enqueue_deregister, enqueue_register, get_cloud
from fleet.cloud.models import Cloud, CloudRegistration
from fleet.cloud.pacing import RateLimiter
from fleet.cloud.transitions import short_error
from fleet.errors import FleetError, InvalidInput
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.statuses import DriftKind, RegistrationStatus

if TYPE_CHECKING:
    import httpx
    from sqlalchemy.engine import Engine

    from fleet.cloud.base import CloudBackend
    from fleet.workspace import Workspace

__all__ = ["DriftFinding", "DriftReport", "FixResult", "drift"]

BATCH = 500  # remote devices compared per registry round trip
PAGE = 1000  # registrations per page of the second pass

# --- the two passes --------------------------------------------------------------------------


class _SeenIds:
    """The ids the inventory listed, in a temporary on-disk SQLite set (deleted on close)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("")  # "": a private temporary database on disk
        self.db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, ids: Sequence[str]) -> int:
        """Record ``ids``; returns how many were new (a listing may repeat one)."""
        before = self.db.total_changes
        self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?)", [(i,) for i in ids])
        return self.db.total_changes - before

    def seen(self, ids: Sequence[str]) -> set[str]:
        """The ones among ``ids`` that were recorded."""
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT id FROM seen WHERE id IN ({marks})", list(ids))
        return {row[0] for row in rows}

    def close(self) -> None:
        """Drop the set."""
        self.db.close()


def _batches(items: Iterator[RemoteDevice], size: int) -> Iterator[list[RemoteDevice]]:
    batch: list[RemoteDevice] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _compare_inventory(
    engine: Engine,
    cloud: str,
    inventory: Iterator[RemoteDevice],
    seen: _SeenIds,
    report: DriftReport,
    unknown: list[RemoteDevice],
    progress: DriftProgress | None,
) -> None:
    for batch in _batches(inventory, BATCH):
        fresh: dict[str, RemoteDevice] = {}
        for remote in batch:
            fresh.setdefault(remote.device_id, remote)
        ids = sorted(set(fresh) - seen.seen(list(fresh)))  # a listing may repeat an id
        seen.add(ids)
        report.remote_devices += len(ids)
        with read_session(engine) as session:
            known = registry_batch(session, cloud, ids)
            fleet_certs = certificates_by_fingerprint(
                session,
                (c.fingerprint_sha256 for i in ids for c in fresh[i].certificates),
            )
        for device_id in ids:
            finding = classify(fresh[device_id], known.get(device_id), fleet_certs)
            if finding is not None:
                report.findings.append(finding)
                if finding.fix == Fix.DELETE:
                    unknown.append(fresh[device_id])
        if progress is not None:
            progress(report.remote_devices, report.registrations)


def _missing(engine: Engine, cloud: str, seen: _SeenIds, report: DriftReport) -> None:
    """Second pass: the registrations expected present that the inventory did not list."""
    after = ""
    while True:
        with read_session(engine) as session:
            # straight off the (cloud, device_id) index; the rest is tested here
            query = (
                select(CloudRegistration.device_id, CloudRegistration.status)
                .where(CloudRegistration.cloud == cloud, col(CloudRegistration.device_id) > after)
                .order_by(col(CloudRegistration.device_id))
                .limit(PAGE)
            )
            rows = list(session.exec(query))
            if not rows:
                return
            after = rows[-1][0]
            absent = [device_id for device_id, status in rows if status in MISSABLE]
            absent = sorted(set(absent) - seen.seen(absent)) if absent else []
            known = registry_batch(session, cloud, absent) if absent else {}
        for device_id in absent:
            entry = known.get(device_id)
            if entry is not None and expected_present(entry):
                report.findings.append(
                    finding(
                        device_id,
                        DriftKind.MISSING_IN_CLOUD,
                        f"registration {entry.registration} in fleet, absent in the cloud",
                        Fix.REGISTER,
                        entry,
                        None,
                    )
                )


def _count_registrations(engine: Engine, cloud: str) -> int:
    with read_session(engine) as session:
        query = select(func.count()).where(
            CloudRegistration.cloud == cloud,
            col(CloudRegistration.status) != RegistrationStatus.DEREGISTERED,
        )
        return int(session.exec(query).one())


# --- fixing ----------------------------------------------------------------------------------


def _queue_fixes(engine: Engine, cloud: str, findings: Sequence[DriftFinding]) -> FixResult:
    """One transaction: the register and deregister jobs, a ``cloud.drift`` event each."""
    result = FixResult()
    wanted = {f.device_id: f for f in findings if f.fix in (Fix.REGISTER, Fix.DEREGISTER)}
    if not wanted:
        return result
    now = clock.now()
    with write_session(engine) as session:
        ids = sorted(wanted)
        current: dict[str, Known] = {}
        for chunk in chunks(ids):
            current.update(registry_batch(session, cloud, chunk))
        register: list[str] = []
        deregister: list[str] = []
        events: list[audit.PendingEvent] = []
        for device_id in ids:
            finding, known = wanted[device_id], current.get(device_id)
            if finding.fix == Fix.REGISTER and (known is None or not expected_present(known)):
                result.skipped.append({"device_id": device_id, "reason": "no longer registrable"})
                continue
            if finding.fix == Fix.DEREGISTER and known is not None and known.registration is None:
                # fleet never registered it here, yet the cloud holds it: record that it
                # does, so that the deregistration has a registration to act on
                session.add(
                    CloudRegistration(
                        device_id=device_id,
                        cloud=cloud,
                        status=RegistrationStatus.FAILED,
                        remote={},
                        last_error="found enabled by fleet cloud drift",
                        updated_at=now,
                    )
                )
            (register if finding.fix == Fix.REGISTER else deregister).append(device_id)
            events.append(
                audit.PendingEvent(
                    "cloud.drift",
                    device_id,
                    {"cloud": cloud, "kind": str(finding.kind), "fix": finding.fix},
                )
            )
        session.flush()
        for chunk in chunks(register):
            result.register += enqueue_register(session, chunk, [cloud], now=now, force=True)
        for chunk in chunks(deregister):
            result.deregister += enqueue_deregister(session, chunk, [cloud], now=now, force=True)
        audit.append_many(session, events, at=now)
    return result


def _delete_unknown(
    engine: Engine,
    cloud: Cloud,
    backend: CloudBackend,
    state: dict[str, Any],
    unknown: Sequence[RemoteDevice],
    result: FixResult,
) -> None:
    """Delete the remote-only devices now, within the cloud's rate limit.

    Not through the outbox: its jobs belong to registry devices (a foreign key), and these
    are not in the registry. Each deletion that succeeded is audited (``cloud.delete-unknown``,
    target the remote id, with the certificates it held), committed every 100; a failure is
    reported and the others go on."""
    limiter = RateLimiter(cloud.rate_per_second)
    events: list[audit.PendingEvent] = []

    def flush() -> None:
        if events:
            with write_session(engine) as session:
                audit.append_many(session, events)
            events.clear()

    for remote in unknown:
        limiter.acquire()
        try:
            backend.delete_unknown(remote, state)
        except CloudError as exc:
            result.delete_failed.append(
                {"device_id": remote.device_id, "error": short_error(str(exc))}
            )
            continue
        result.deleted.append(remote.device_id)
        details = {
            "cloud": cloud.name,
            "certificates": [c.fingerprint_sha256 for c in remote.certificates],
        }
        events.append(audit.PendingEvent("cloud.delete-unknown", remote.device_id, details))
        if len(events) >= 100:
            flush()
    flush()


# --- the entry point -------------------------------------------------------------------------


def drift(
    ws: Workspace,
    name: str,
    *,
    fix: bool = False,
    delete_unknown: bool = False,
    client: httpx.Client | None = None,
    progress: DriftProgress | None = None,
    backend: CloudBackend | None = None,
) -> DriftReport:
    """Compare cloud ``name``'s inventory with the registry (see the module docstring).

    ``fix`` queues the register/deregister jobs that reconcile (pushed by ``fleet cloud
    sync``); ``delete_unknown`` (with ``fix``) deletes the remote-only devices now.
    ``backend`` replaces the cloud's own (tests, benches). A backend without an inventory is
    :class:`InvalidInput`; a cloud failure while listing is a :class:`FleetError`."""
    if delete_unknown and not fix:
        raise InvalidInput("--delete-unknown goes with --fix")
    engine = ws.open_registry()
    with read_session(engine) as session:
        cloud = get_cloud(session, name)
    own = backend is None
    active_backend = make_backend(cloud, client=client) if backend is None else backend
    state = dict(cloud.state or {})
    report = DriftReport(cloud.name, cloud.type)
    report.registrations = _count_registrations(engine, cloud.name)
    seen = _SeenIds()
    unknown: list[RemoteDevice] = []
    try:
        try:
            inventory = active_backend.iter_inventory(state)
            _compare_inventory(engine, cloud.name, inventory, seen, report, unknown, progress)
        except NotSupported as exc:
            raise InvalidInput(
                f"cloud {name!r}: {exc}: drift needs a backend with an inventory (aws-iot, "
                "azure-iot-hub, thingsboard)"
            ) from None
        except CloudError as exc:
            raise FleetError(
                f"cloud {name!r}: reading the inventory failed: {short_error(str(exc))}"
            ) from None
        _missing(engine, cloud.name, seen, report)
        report.findings.sort(key=lambda f: (f.device_id, str(f.kind)))
        if fix:
            report.fix = _queue_fixes(engine, cloud.name, report.findings)
            if delete_unknown:
                _delete_unknown(engine, cloud, active_backend, state, unknown, report.fix)
    finally:
        seen.close()
        if own:
            active_backend.close()
    return report
