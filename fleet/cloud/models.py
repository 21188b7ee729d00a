"""Registry tables for cloud registration (migration 0002).

``Cloud`` is a configured platform; ``CloudJob`` is the durable outbox (one row per
register/deregister request, written in the transaction of the change that causes it);
``CloudRegistration`` is where each device stands on each cloud. ``options``, ``state`` and
``remote`` are opaque JSON owned by the backend, so no platform's vocabulary leaks in here,
and never hold secrets (only names of environment variables that do).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from fleet.registry.models import utc_column
from fleet.statuses import JobState, RegistrationStatus


class Cloud(SQLModel, table=True):
    """A cloud platform devices are registered with."""

    __tablename__ = "cloud"

    name: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=32)
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # What the backend's prepare() returned; None until the first push prepares it.
    state: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    concurrency: int
    rate_per_second: float | None = None  # None: no rate limit
    created_at: datetime = utc_column(nullable=False)


class CloudJob(SQLModel, table=True):
    """One outbox entry: register or deregister a device on a cloud."""

    __tablename__ = "cloud_job"
    # `fleet status`: open jobs per cloud and the oldest, without reading the done ones
    __table_args__ = (Index("ix_cloud_job_state_cloud_created", "state", "cloud", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="device.id", max_length=64, index=True)
    cloud: str = Field(foreign_key="cloud.name", max_length=64, index=True)
    action: str = Field(max_length=16)  # a JobAction
    state: str = Field(default=JobState.PENDING, max_length=16)  # a JobState
    attempts: int = 0
    next_attempt_at: datetime | None = utc_column(nullable=True)
    last_error: str | None = Field(default=None, max_length=512)
    # Sent with every attempt of this job (HTTP Idempotency-Key), so a retry of a request
    # whose response was lost is recognised by the server.
    idempotency_key: str = Field(max_length=64, unique=True)
    created_at: datetime = utc_column(nullable=False)
    updated_at: datetime = utc_column(nullable=False)


class CloudRegistration(SQLModel, table=True):
    """Where one device stands on one cloud, and what the cloud last reported about it."""

    __tablename__ = "cloud_registration"
    # `cloud status NAME` pages in device order; `fleet status` counts by (cloud, status)
    __table_args__ = (
        Index("ix_cloud_registration_cloud_device_id", "cloud", "device_id"),
        Index("ix_cloud_registration_cloud_status", "cloud", "status"),
    )

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=64)
    cloud: str = Field(foreign_key="cloud.name", primary_key=True, max_length=64)
    status: str = Field(default=RegistrationStatus.PENDING, max_length=16)
    # What register() returned (remote ids), handed back to deregister().
    remote: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    certificate_serial: str | None = Field(default=None, max_length=40)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=512)
    connected: bool | None = None
    last_activity: datetime | None = utc_column(nullable=True)
    firmware_version: str | None = Field(default=None, max_length=128)
    status_checked_at: datetime | None = utc_column(nullable=True)
    updated_at: datetime = utc_column(nullable=False)
