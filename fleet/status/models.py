"""Connection status tables (migration 0006): events as they arrived, and each device's
current state derived from them.

Events are telemetry, not registry changes: they are not in the hash-chained audit trail.
``connection_event`` keeps the history (pruned by ``fleet status prune``); ``connection_state``
is the newest state per device, updated in the transaction that records the events that change
it, so it survives pruning; ``stray_connection_event`` keeps events for devices the registry
does not know or has decommissioned, to be reported rather than dropped.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from fleet.registry.models import utc_column


class ConnectionEvent(SQLModel, table=True):
    """A device went online or offline, according to ``source`` at ``source_time``.

    ``marker`` is the source's own ordering (AWS ``versionNumber`` zero-padded, Azure
    ``sequenceNumber``, Sparkplug ``bdSeq``), comparable as text within one source; ``key`` is
    unique per event content, so a redelivered event is recorded once.
    """

    __tablename__ = "connection_event"
    __table_args__ = (Index("ix_connection_event_device_time", "device_id", "source_time"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=64, unique=True)
    device_id: str = Field(foreign_key="device.id", max_length=64)
    state: str = Field(max_length=8)  # a ConnectionState
    source: str = Field(max_length=16)  # an EventSource
    source_time: datetime = utc_column(nullable=False)
    received_at: datetime = utc_column(nullable=False)  # not indexed: no query reads by it
    marker: str | None = Field(default=None, max_length=80)
    session: str | None = Field(default=None, max_length=128)
    reason: str | None = Field(default=None, max_length=256)
    firmware: str | None = Field(default=None, max_length=128)


class ConnectionStatus(SQLModel, table=True):
    """A device's current connection state: the newest event's ``state``, ``since`` when it
    entered that state, ``last_seen`` the newest moment any source saw it."""

    __tablename__ = "connection_state"
    # `device list --offline --offline-for 24h` pages (state, since) and (state, device_id)
    __table_args__ = (
        Index("ix_connection_state_state_device", "state", "device_id"),
        Index("ix_connection_state_state_since", "state", "since"),
    )

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=64)
    state: str = Field(max_length=8)
    since: datetime = utc_column(nullable=False)
    last_seen: datetime = utc_column(nullable=False)
    source: str = Field(max_length=16)
    source_time: datetime = utc_column(nullable=False)
    marker: str | None = Field(default=None, max_length=80)
    reason: str | None = Field(default=None, max_length=256)
    firmware: str | None = Field(default=None, max_length=128)


class StrayConnectionEvent(SQLModel, table=True):
    """An event for a device the registry does not know (``unknown``) or has retired
    (``decommissioned``): kept and reported, never applied."""

    __tablename__ = "stray_connection_event"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=64, unique=True)
    device_id: str = Field(max_length=128, index=True)
    why: str = Field(max_length=16)
    state: str = Field(max_length=8)
    source: str = Field(max_length=16)
    source_time: datetime = utc_column(nullable=False)
    received_at: datetime = utc_column(nullable=False, index=True)
    marker: str | None = Field(default=None, max_length=80)
    reason: str | None = Field(default=None, max_length=256)
