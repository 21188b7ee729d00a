"""The registry's core tables (SQLModel): devices, certificates, the audit trail, CRLs.

Features keep their own tables beside their code (:mod:`fleet.export.models`,
:mod:`fleet.cloud.models`). Alembic migrations in ``migrations/versions`` mirror all of them;
``tests/test_registry.py::test_models_and_migrations_do_not_drift`` fails when the two drift
apart."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel

from fleet.registry.types import UTCDateTime as UTCDateTime
from fleet.registry.types import iso_text as iso_text
from fleet.statuses import CertStatus, DeviceStatus


def utc_column(*, nullable: bool, index: bool = False) -> Any:
    """A :class:`UTCDateTime` column for a SQLModel table."""
    return Field(
        default=None,
        sa_column=Column(UTCDateTime(), nullable=nullable, index=index),
    )


class Device(SQLModel, table=True):
    """A device in the registry. Rows are never deleted: decommissioning changes ``status``."""

    __tablename__ = "device"
    # (filter, id): a filtered list pages in ID order straight off the index (migration 0005)
    __table_args__ = (
        Index("ix_device_model_id", "model", "id"),
        Index("ix_device_status_id", "status", "id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    model: str | None = Field(default=None, max_length=128)
    serial: str | None = Field(default=None, max_length=128)
    # The record (exported, hashed into audit details); device_label indexes it.
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default=DeviceStatus.ACTIVE, max_length=16)
    created_at: datetime = utc_column(nullable=False)
    updated_at: datetime = utc_column(nullable=False)
    decommissioned_at: datetime | None = utc_column(nullable=True)
    decommission_reason: str | None = Field(default=None, max_length=256)


class Certificate(SQLModel, table=True):
    """An X.509 certificate fleet's issuing CA signed for a device."""

    __tablename__ = "certificate"
    # "active and expiring within 30 days" is a range scan of (status, not_after)
    __table_args__ = (Index("ix_certificate_status_not_after", "status", "not_after"),)

    # lowercase hex without leading zeros; up to 20 octets, so not an integer column
    serial: str = Field(primary_key=True, max_length=40)
    device_id: str = Field(foreign_key="device.id", max_length=64, index=True)
    fingerprint_sha256: str = Field(max_length=64, unique=True)
    subject: str = Field(max_length=512)
    not_before: datetime = utc_column(nullable=False)
    not_after: datetime = utc_column(nullable=False, index=True)
    status: str = Field(default=CertStatus.ACTIVE, max_length=16)
    revoked_at: datetime | None = utc_column(nullable=True)
    revocation_reason: str | None = Field(default=None, max_length=32)
    profile: str = Field(max_length=64)
    key_type: str = Field(max_length=16)
    key_origin: str = Field(max_length=16)  # a fleet.statuses.KeyOrigin
    issued_at: datetime = utc_column(nullable=False)
    pem: str = Field(sa_column=Column(Text, nullable=False))


class DeviceLabel(SQLModel, table=True):
    """One label of one device: the index that label filters read (``--label site=hh``).

    ``device.labels`` stays the record; database triggers (migration 0005) rewrite a device's
    rows here whenever its ``labels`` are inserted or updated, in the same transaction, by
    whichever path writes the device. Keyed (key, value, device_id), WITHOUT ROWID on SQLite:
    the devices with one label lie together, in ID order, ready to page.
    """

    __tablename__ = "device_label"
    __table_args__ = {"sqlite_with_rowid": False}

    key: str = Field(primary_key=True, max_length=63)
    value: str = Field(primary_key=True, max_length=256)
    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=64, index=True)


class AuditEvent(SQLModel, table=True):
    """One link of the hash-chained audit trail (see :mod:`fleet.registry.audit`).

    ``ts`` and ``details`` are stored exactly as hashed (ISO-8601 text, canonical JSON), so a
    row read back re-hashes to the same value on every backend.
    """

    __tablename__ = "audit_event"
    # `audit log --target X` / `--action A` page in seq order straight off these (migration 0005)
    __table_args__ = (
        Index("ix_audit_event_action_seq", "action", "seq"),
        Index("ix_audit_event_target_seq", "target", "seq"),
    )

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    ts: str = Field(max_length=32, index=True)
    actor: str = Field(max_length=128)
    action: str = Field(max_length=64)
    target: str = Field(max_length=128)
    details: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The chain's newest link, one row. Writers lock it so appends never interleave."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = Field(default=0)
    hash: str = Field(max_length=64)


class CrlRecord(SQLModel, table=True):
    """Each CRL the issuing CA published; ``number`` is the CRL number extension."""

    __tablename__ = "crl"

    number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    this_update: datetime = utc_column(nullable=False)
    next_update: datetime = utc_column(nullable=False)
    revoked_count: int
