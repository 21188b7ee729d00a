"""fleet's vocabularies, each defined once: the words stored in the registry and shown in JSON.

They are ``StrEnum``s, so a member is the very string stored and printed (``"active"``) and
compares equal to it, in Python and in SQL parameters alike.
"""

from __future__ import annotations

from enum import StrEnum


class DeviceStatus(StrEnum):
    """A device's lifecycle. Rows are never deleted: decommissioning is a status."""

    ACTIVE = "active"
    DECOMMISSIONED = "decommissioned"


class CertStatus(StrEnum):
    """A certificate's status. Only ``active`` and ``revoked`` are stored; ``expired`` is
    derived when read (an unrevoked certificate past ``not_after``)."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


STORED_CERT_STATUSES = (CertStatus.ACTIVE, CertStatus.REVOKED)


class KeyOrigin(StrEnum):
    """Where a certificate's key pair came from."""

    GENERATED = "generated"  # fleet generated it and wrote key.pem
    CSR = "csr"  # the device kept its key and sent a CSR


class JobAction(StrEnum):
    """What a cloud outbox job asks of a cloud."""

    REGISTER = "register"
    DEREGISTER = "deregister"
    FIRMWARE = "firmware"  # deliver the device's current firmware target (a rollout's)


class JobState(StrEnum):
    """A cloud outbox job's state; ``pending`` and ``retry`` are open."""

    PENDING = "pending"
    RETRY = "retry"
    DONE = "done"
    FAILED = "failed"


OPEN_JOB_STATES = (JobState.PENDING, JobState.RETRY)


class RegistrationStatus(StrEnum):
    """Where a device stands on one cloud."""

    PENDING = "pending"
    REGISTERED = "registered"
    FAILED = "failed"
    DEREGISTERED = "deregistered"


class ConnectionState(StrEnum):
    """Whether a device is connected, as its last event says (``fleet status``)."""

    ONLINE = "online"
    OFFLINE = "offline"


class EventSource(StrEnum):
    """Where a connection event came from."""

    SPARKPLUG = "sparkplug"  # fleet watch: NBIRTH/NDEATH/DBIRTH/DDEATH
    MQTT_LWT = "mqtt-lwt"  # fleet watch: fleet/{device_id}/status online|offline
    AWS = "aws"  # AWS IoT lifecycle events (presence connected/disconnected)
    AZURE = "azure"  # Azure IoT Hub DeviceConnected/DeviceDisconnected (Event Grid)
    THINGSBOARD = "thingsboard"
    HTTP = "http"  # a cloud status pull (fleet cloud sync)
    INGEST = "ingest"  # fleet's own JSON Lines shape


class FirmwareSource(StrEnum):
    """Where a device's reported firmware version came from."""

    CLOUD = "cloud"  # a cloud status pull (fleet cloud sync)
    INGEST = "ingest"  # fleet status ingest
    SPARKPLUG = "sparkplug"  # a birth certificate's firmware property (fleet watch)
    MANUAL = "manual"  # fleet firmware report ID VERSION


class RolloutState(StrEnum):
    """A rollout's lifecycle."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"  # by an operator, or by itself when the failure rate passed the threshold
    ABORTED = "aborted"
    COMPLETED = "completed"


class RolloutDeviceState(StrEnum):
    """One device's progress in one rollout (counted once, whatever its retries)."""

    PENDING = "pending"
    NOTIFIED = "notified"  # the target has been delivered
    IN_PROGRESS = "in-progress"  # the device says it is updating
    SUCCEEDED = "succeeded"  # reported version equals the target
    FAILED = "failed"  # the device reported failure
    TIMED_OUT = "timed-out"  # no success within the rollout's timeout
    SKIPPED = "skipped"  # incompatible model, pinned, or already installed (reason says)
    CANCELLED = "cancelled"  # the rollout was aborted first
    ALREADY_INSTALLED = "already-installed"


TERMINAL_ROLLOUT_DEVICE_STATES = (
    RolloutDeviceState.SUCCEEDED,
    RolloutDeviceState.FAILED,
    RolloutDeviceState.TIMED_OUT,
    RolloutDeviceState.SKIPPED,
    RolloutDeviceState.CANCELLED,
    RolloutDeviceState.ALREADY_INSTALLED,
)


class DriftKind(StrEnum):
    """What ``fleet cloud drift`` finds when a cloud and the registry disagree."""

    MISSING_IN_CLOUD = "missing-in-cloud"  # registered in fleet, absent remotely
    UNKNOWN_IN_CLOUD = "unknown-in-cloud"  # remote only: possibly rogue
    CERTIFICATE_MISMATCH = "certificate-mismatch"  # another or an extra certificate
    # security: decommissioned or deregistered in fleet (or a revoked certificate) yet
    # accepted by the cloud
    DECOMMISSIONED_BUT_ENABLED = "decommissioned-but-enabled"
    DISABLED_IN_CLOUD = "disabled-in-cloud"  # active in fleet, disabled remotely
