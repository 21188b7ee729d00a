"""Making a batch durable: device and certificate rows, ``device.add`` audit events and
queued cloud registrations in ONE registry transaction (or not at all); then, once it has
committed, the bundles completed and renamed into place."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fleet.cloud import jobs
from fleet.errors import RegistryError
from fleet.faults import Faults
from fleet.pki.issue import (
    IssuedCertificate,
    certificate_details,
    certificate_values,
    device_details,
)
from fleet.provision.publish import OutDir
from fleet.provision.seen import Issued, SeenIds
from fleet.provision.source import Row
from fleet.provision.summary import Tally
from fleet.registry import audit
from fleet.registry.bulk import bulk_insert
from fleet.registry.db import write_session
from fleet.registry.models import Certificate, Device
from fleet.statuses import DeviceStatus
from fleet.views import iso

ATTEMPTS = 3
_DEADLOCK_DETECTED = "40P01"  # PostgreSQL's SQLSTATE


class SignedRow(NamedTuple):
    """A row whose certificate a worker signed and whose bundle it staged."""

    row: Row
    profile: str
    certificate: IssuedCertificate


@dataclass
class _Records:
    """What one batch adds to the registry."""

    devices: list[dict[str, Any]] = field(default_factory=list)
    certificates: list[dict[str, Any]] = field(default_factory=list)
    events: list[audit.PendingEvent] = field(default_factory=list)
    issued: list[Issued] = field(default_factory=list)

    def add(self, signed: SignedRow, now: datetime) -> None:
        """The device, its certificate and its ``device.add`` event."""
        row = signed.row
        device = _device_row(row, now)
        cert = certificate_values(row.device_id, signed.certificate, signed.profile, now)
        self.devices.append(device)
        self.certificates.append(cert)
        self.events.append(_device_added(device, cert))
        not_after = iso(cert["not_after"]) or ""
        self.issued.append((cert["serial"], cert["fingerprint_sha256"], not_after, row.device_id))

    def write(self, session: Session, now: datetime, clouds: list[str]) -> None:
        """Insert it all in ``session``'s transaction; queue registrations on ``clouds``."""
        bulk_insert(session, Device.__table__, self.devices)  # type: ignore[attr-defined]
        bulk_insert(session, Certificate.__table__, self.certificates)  # type: ignore[attr-defined]
        audit.append_many(
            session, self.events, at=now, insert_rows=lambda t, r: bulk_insert(session, t, r)
        )
        if clouds and self.devices:
            jobs.enqueue_register(session, [d["id"] for d in self.devices], clouds, now=now)


@dataclass
class _Outcome:
    """One attempt at a batch: what it registers, and the rows it settles otherwise."""

    records: _Records = field(default_factory=_Records)
    failed: list[tuple[Row, str]] = field(default_factory=list)  # OUT/ID is something else
    present: list[Row] = field(default_factory=list)  # registered meanwhile by another run
    recorded: list[SignedRow] = field(default_factory=list)  # to publish after the commit


class BatchCommitter:
    """Commits batches of signed rows; runs sharing the output folder take turns."""

    def __init__(
        self,
        engine: Engine,
        out: OutDir,
        tally: Tally,
        seen: SeenIds,
        faults: Faults,
        clouds: list[str],
    ) -> None:
        self.engine = engine
        self.out = out
        self.tally = tally
        self.seen = seen
        self.faults = faults
        self.clouds = clouds

    def commit(self, batch: list[SignedRow], now: datetime) -> None:
        """Make one batch durable: registry rows and audit events in one transaction, then
        the bundles into place. (Anything else that must happen atomically with provisioning, e.g.
        queueing cloud registrations, belongs inside this transaction too.)"""
        with self.out.lock():
            for attempt in range(ATTEMPTS):
                try:
                    self._attempt(batch, now)
                    return
                except (sa_exc.IntegrityError, sa_exc.OperationalError) as exc:
                    # Another process registered one of these IDs between our check and our
                    # insert (PostgreSQL; two runs inserting shared IDs in different orders
                    # can also deadlock, and PostgreSQL then aborts one of them): the next
                    # attempt sees the committed rows and skips them.
                    retry = isinstance(exc, sa_exc.IntegrityError) or (
                        getattr(exc.orig, "sqlstate", None) == _DEADLOCK_DETECTED
                    )
                    if not retry or attempt == ATTEMPTS - 1:
                        self.out.discard([s.row.device_id for s in batch])
                        if not retry:
                            raise
                        raise RegistryError(f"cannot register the batch: {exc.orig}") from exc
                except BaseException:
                    self.out.discard([s.row.device_id for s in batch])
                    raise

    def _attempt(self, batch: list[SignedRow], now: datetime) -> None:
        outcome = _Outcome()
        with write_session(self.engine) as session:
            taken = _registered(session, [s.row.device_id for s in batch])
            for signed in batch:
                if signed.row.device_id in taken:
                    outcome.present.append(signed.row)
                elif (error := self.out.check_free(signed.row.device_id)) is not None:
                    outcome.failed.append((signed.row, error))
                else:
                    outcome.records.add(signed, now)
                    outcome.recorded.append(signed)
            self.faults.hit("after-rename")
            outcome.records.write(session, now, self.clouds)
            self.faults.hit("before-commit")
        self.faults.hit("after-commit")
        # Recorded: now the certificates reach the disk (a re-run publishes what a kill
        # leaves staged, see fleet.pki.bundles.recover).
        for signed in outcome.recorded:
            self.out.publish(signed.row.device_id, signed.certificate.cert_pem)
        self._settle(outcome)

    def _settle(self, outcome: _Outcome) -> None:
        """After the commit: count the batch's rows and tidy their staged bundles."""
        for row, error in outcome.failed:
            self.out.discard([row.device_id])
            self.tally.fail_row(row, error)
        self.out.discard([row.device_id for row in outcome.present])
        self.tally.skip(len(outcome.present))
        self.seen.mark_ok([row.device_id for row in outcome.present])
        self.seen.mark_issued(outcome.records.issued)
        self.tally.provisioned(len(outcome.records.issued))


def _registered(session: Session, ids: list[str]) -> set[str]:
    device = Device.__table__  # type: ignore[attr-defined]
    return set(session.execute(select(device.c.id).where(device.c.id.in_(ids))).scalars())


def _device_row(row: Row, now: datetime) -> dict[str, Any]:
    return {
        "id": row.device_id,
        "model": row.model,
        "serial": row.serial,
        "labels": row.labels,
        "status": DeviceStatus.ACTIVE,
        "created_at": now,
        "updated_at": now,
        "decommissioned_at": None,
        "decommission_reason": None,
    }


def _device_added(device: dict[str, Any], cert: dict[str, Any]) -> audit.PendingEvent:
    # The same details `fleet device add` records, so history rebuilt from the trail sees
    # no difference between the two paths.
    return audit.PendingEvent(
        "device.add",
        device["id"],
        {**device_details(device), "certificate": certificate_details(cert)},
    )
