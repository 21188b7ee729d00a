"""Firmware tables (migration 0007): the catalogue, each device's firmware, and rollouts.

``firmware_image`` is one image (content, SHA-256, size, where it lives, its detached CMS
signature); ``firmware_model`` says which models an image is for, so ``MODEL@VERSION`` names
exactly one image. ``device_firmware`` is a device's reported version (from any source),
its target (set by a rollout) and its pin. ``rollout`` and ``rollout_device`` hold a rollout
and the state of each device in it (counted once, whatever its retries).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet.registry.models import utc_column


class FirmwareImage(SQLModel, table=True):
    """One firmware image in the catalogue."""

    __tablename__ = "firmware_image"
    __table_args__ = (UniqueConstraint("version", "sha256", name="uq_firmware_image_version"),)

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(max_length=64, index=True)  # semantic version, as given
    sha256: str = Field(max_length=64)  # lowercase hex of the image
    size: int = Field(sa_type=BigInteger)  # bytes; images may pass 2 GiB
    url: str | None = Field(default=None, max_length=2048)  # where devices fetch it, if remote
    stored_path: str | None = Field(default=None, max_length=512)  # under <home>/firmware/
    signature_pem: str = Field(sa_type=Text)  # detached CMS (PEM) over the image bytes
    signer_serial: str = Field(max_length=40)  # the firmware-signing certificate's serial
    requires_min: str | None = Field(default=None, max_length=64)  # lowest version to upgrade from
    notes: str | None = Field(default=None, max_length=1024)
    deprecated: bool = Field(default=False)
    deprecated_at: datetime | None = utc_column(nullable=True)
    created_at: datetime = utc_column(nullable=False)


class FirmwareModel(SQLModel, table=True):
    """Image ``firmware_id`` is for ``model``; (model, version) names one image."""

    __tablename__ = "firmware_model"

    model: str = Field(primary_key=True, max_length=64)
    version: str = Field(primary_key=True, max_length=64)
    firmware_id: int = Field(foreign_key="firmware_image.id", index=True)


class DeviceFirmware(SQLModel, table=True):
    """What a device runs (``reported_*``), what it should run (``target_*``), and its pin."""

    __tablename__ = "device_firmware"
    # compliance counts devices per version; rollouts find devices behind their target
    __table_args__ = (
        Index("ix_device_firmware_reported", "reported_version", "device_id"),
        Index("ix_device_firmware_target", "target_version", "device_id"),
    )

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=64)
    reported_version: str | None = Field(default=None, max_length=64)
    reported_at: datetime | None = utc_column(nullable=True)
    reported_source: str | None = Field(default=None, max_length=16)  # a FirmwareSource
    # what the device last said of an update in progress: "in-progress" or "failed", with detail
    update_state: str | None = Field(default=None, max_length=16)
    update_detail: str | None = Field(default=None, max_length=512)
    target_version: str | None = Field(default=None, max_length=64)
    target_rollout_id: int | None = Field(default=None, foreign_key="rollout.id")
    pinned_version: str | None = Field(default=None, max_length=64)
    updated_at: datetime = utc_column(nullable=False)


class Rollout(SQLModel, table=True):
    """A phased rollout of one image to a selection of devices."""

    __tablename__ = "rollout"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    firmware_id: int = Field(foreign_key="firmware_image.id")
    model: str = Field(max_length=64)  # the MODEL of --firmware MODEL@VERSION
    version: str = Field(max_length=64)
    selector: str = Field(sa_type=Text)  # JSON: the device filter (model, labels, status)
    phases: str = Field(max_length=256)  # JSON list of cumulative percentages, e.g. [1,10,50,100]
    max_failure_rate: float  # 0..1
    min_executed: int
    max_per_minute: int | None = None
    timeout_seconds: int | None = None
    dynamic: bool = Field(default=False)
    cloud: str | None = Field(default=None, max_length=64)
    state: str = Field(max_length=16, index=True)  # a RolloutState
    current_phase: int = Field(default=0)  # index into phases
    reason: str | None = Field(default=None, max_length=512)  # why it paused/aborted
    created_at: datetime = utc_column(nullable=False)
    started_at: datetime | None = utc_column(nullable=True)
    finished_at: datetime | None = utc_column(nullable=True)
    updated_at: datetime = utc_column(nullable=False)


class RolloutDevice(SQLModel, table=True):
    """One device in one rollout: its phase and state (a RolloutDeviceState)."""

    __tablename__ = "rollout_device"
    __table_args__ = (
        Index("ix_rollout_device_state", "rollout_id", "state", "device_id"),
        Index("ix_rollout_device_phase_state", "rollout_id", "phase", "state"),
    )

    rollout_id: int = Field(foreign_key="rollout.id", primary_key=True)
    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=64)
    phase: int
    state: str = Field(max_length=24)  # "already-installed" is 17 characters
    reason: str | None = Field(default=None, max_length=512)
    attempts: int = Field(default=0)
    notified_at: datetime | None = utc_column(nullable=True)
    updated_at: datetime = utc_column(nullable=False)
