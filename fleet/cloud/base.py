"""The interface every cloud backend implements (see docs/cloud.md, "Writing a backend").

Changes after the first commit stay backward compatible and are listed here:
  - ``current_idempotency_key()``: the outbox sets a key per job (stable across the job's
    retries) around every backend call; backends that can send one (HTTP ``Idempotency-Key``)
    read it here. None outside the outbox.
  - ``retry_after_seconds(value)``: parses a ``Retry-After`` header (seconds or HTTP date).
  - ``CloudBackend.status_batch_size``: how many ids the outbox passes per ``fetch_status``
    call (each call costs one rate-limit token). Default 100.
  - ``CloudBackend.declared_options``: the options the backend takes on ``fleet cloud
    add``, declared as :class:`BackendOption` data; the CLI builds its flags from them.
    Default: none (such a backend gets no flags of its own and validates whatever options
    it is given, as before).
  - ``DeviceRecord.previous_fingerprint_sha256``: the device's previous certificate while it
    is still active (a renewal window), else "". Default "".
  - ``CloudBackend.register_batch_size`` and ``register_many(devices, state)``: the outbox
    passes up to that many register jobs per call (one rate-limit token), and reads one
    result per device (remote ids, or the CloudError of that device). Defaults: 1, and a
    loop over ``register``.

The push engine (``fleet.cloud.push``) owns retries, backoff, rate and concurrency limits and
persistence; a backend only performs one operation per call and classifies its failures:
``TransientError`` (retried: connection errors, timeouts, 5xx, 429, throttling) or
``PermanentError`` (the job is marked failed, other jobs go on). Nothing here is specific to
one platform: ``remote`` and ``state`` are opaque JSON-safe mappings owned by the backend.
"""

from __future__ import annotations

import abc
import contextvars
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar

from fleet import clock
from fleet.errors import InvalidInput
from fleet.statuses import EventSource

if TYPE_CHECKING:  # httpx only where a backend talks to the network, not for --help
    import httpx

_IDEMPOTENCY_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fleet_cloud_idempotency_key", default=None
)


def current_idempotency_key() -> str | None:
    """The key of the outbox job being pushed (same across its retries), or None."""
    return _IDEMPOTENCY_KEY.get()


@contextmanager
def idempotency_key(key: str) -> Iterator[None]:
    """Make ``key`` the current idempotency key for the calls inside the block."""
    token = _IDEMPOTENCY_KEY.set(key)
    try:
        yield
    finally:
        _IDEMPOTENCY_KEY.reset(token)


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    None when absent or unparseable; never negative.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or clock.now())).total_seconds())


class CloudError(Exception):
    """A cloud operation failed; the message is safe to show (never contains secrets)."""


class TransientError(CloudError):
    """A failure worth retrying with backoff (connection error, timeout, 5xx, 429, throttling).

    ``retry_after`` is the server's hint in seconds (``Retry-After``), when it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnreachableError(TransientError):
    """The platform cannot be reached at all (connection refused, unknown host): the push
    stops at once and every job stays queued, unattempted, for a later ``sync``."""


class PermanentError(CloudError):
    """A failure that retrying cannot fix (other 4xx, invalid names): the job is marked failed."""


class ConflictError(PermanentError):
    """The device exists remotely with a different certificate."""


class NotSupported(PermanentError):
    """This backend does not implement an optional operation (inventory, firmware delivery)."""


@dataclass(frozen=True)
class DeviceRecord:
    """What a backend is told about a device (never a private key)."""

    device_id: str
    model: str | None
    serial: str | None
    labels: dict[str, str]
    status: str  # a fleet.statuses.DeviceStatus
    # The device's newest active certificate ("" for deregister of a device with none).
    certificate_pem: str
    certificate_serial: str  # lowercase hex
    fingerprint_sha256: str  # lowercase hex
    # The device's previous certificate while still active (renewal window), else "".
    previous_fingerprint_sha256: str = ""


@dataclass(frozen=True)
class CaMaterial:
    """fleet's CA as a backend's one-time setup needs it."""

    issuing_pem: str  # fleet's issuing CA certificate (what signs device certs)
    root_pem: str
    # (common_name, subject public key PEM) -> PEM cert signed by fleet's issuing CA; AWS
    # RegisterCACertificate DEFAULT mode needs a verification cert whose CN is the
    # registration code.
    sign_verification_cert: Callable[[str, bytes], str]


@dataclass(frozen=True)
class RemoteStatus:
    """What the platform reports about one device."""

    connected: bool | None
    last_activity: datetime | None
    firmware_version: str | None
    # what the device says of an update under way: "in-progress" or "failed" (with detail)
    firmware_state: str | None = None
    firmware_detail: str | None = None


@dataclass(frozen=True)
class RemoteCertificate:
    """A certificate the platform holds for a device (attached, or accepted by thumbprint)."""

    fingerprint_sha256: str  # lowercase hex of the DER certificate
    active: bool  # the platform accepts it for connections now
    remote_id: str | None = None  # the platform's own id (AWS certificateId), if any


@dataclass(frozen=True)
class RemoteDevice:
    """One device as the platform's own inventory lists it (``fleet cloud drift``)."""

    device_id: str
    enabled: bool  # the platform lets it connect (AWS: any active certificate attached)
    certificates: tuple[RemoteCertificate, ...]
    connected: bool | None = None
    remote: Mapping[str, Any] | None = None  # JSON-safe ids ``delete_unknown`` needs


@dataclass(frozen=True)
class FirmwareTarget:
    """The firmware a device should run, as a rollout delivers it. None clears the target."""

    version: str
    sha256: str  # lowercase hex
    size: int
    url: str | None
    signature: str  # detached CMS over the image, PEM


@dataclass(frozen=True)
class CheckResult:
    """Outcome of ``check``: one line saying what works, or what failed and how to fix it."""

    ok: bool
    message: str


_OPTION_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
OPTION_VALUE_TYPES: tuple[type, ...] = (str, int, float, bool)


@dataclass(frozen=True)
class BackendOption:
    """One option a backend takes on ``fleet cloud add``, declared as data.

    ``name`` is the key ``validate_options`` receives (``thing_group``); the flag is
    ``--thing-group``. ``value_type`` is ``str``, ``int``, ``float`` or ``bool`` (a flag: given
    means True, absent means not given); ``multiple`` makes it repeatable, its value a list.
    ``choices`` and ``default`` document what the backend accepts and assumes when the option
    is absent; the backend's ``validate_options`` enforces them (with its own messages).
    """

    name: str
    help: str
    value_type: type = str
    multiple: bool = False
    choices: tuple[str, ...] | None = None
    default: Any = None

    def __post_init__(self) -> None:
        if not _OPTION_NAME_RE.match(self.name):
            raise ValueError(f"option name {self.name!r}: use lowercase letters, digits and '_'")
        if self.value_type not in OPTION_VALUE_TYPES:
            raise ValueError(f"option {self.name!r}: value_type must be str, int, float or bool")
        if self.value_type is bool and self.multiple:
            raise ValueError(f"option {self.name!r}: a flag cannot be repeated")

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--thing-group``."""
        return "--" + self.name.replace("_", "-")


def refuse_undeclared(
    type_name: str, declared: Sequence[BackendOption], options: Mapping[str, Any]
) -> None:
    """``InvalidInput`` naming the type and each of ``options`` it does not declare."""
    unknown = sorted(set(options) - {option.name for option in declared})
    if unknown:
        shown = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise InvalidInput(f"cloud type {type_name!r} does not take {shown}")


# Secrets are never options: an option names the environment variable that holds one.
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def timeout_seconds(value: Any) -> float:
    """A ``--timeout`` option's value: seconds, more than 0 and at most 600."""
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        raise InvalidInput("--timeout must be a number of seconds") from None
    if not 0 < timeout <= 600:
        raise InvalidInput("--timeout must be between 0 and 600 seconds")
    return timeout


class CloudBackend(abc.ABC):
    """One cloud platform. Instances are used from several threads at once by the outbox."""

    type_name: ClassVar[str]  # "aws-iot", "http", later "azure-iot-hub", "thingsboard"
    default_concurrency: ClassVar[int] = 8
    default_rate_per_second: ClassVar[float] = 10.0  # below the platform's documented quota
    status_batch_size: ClassVar[int] = 100  # ids per fetch_status call (one rate token each)
    register_batch_size: ClassVar[int] = 1  # register jobs per register_many call (one token)
    # what connection events from this platform's status pulls are recorded as
    event_source: ClassVar[EventSource] = EventSource.HTTP
    # The options of ``fleet cloud add`` this backend takes (see BackendOption).
    declared_options: ClassVar[tuple[BackendOption, ...]] = ()

    def __init__(
        self, name: str, options: Mapping[str, Any], *, client: httpx.Client | None = None
    ) -> None:
        """``options`` is what ``validate_options`` returned (JSON-safe, no secrets: only names
        of env vars holding secrets). ``client`` is an injectable ``httpx.Client``; when None
        the backend builds its own (timeouts on every request, its own Auth) and closes it in
        ``close``."""
        self.name = name
        self.options = dict(options)
        self._owns_client = client is None
        self._client = client

    @classmethod
    @abc.abstractmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check the options of ``fleet cloud add`` (keys are CLI option names with '-' -> '_',
        unset ones absent or None) and return what gets stored. Raise
        ``fleet.errors.InvalidInput`` for missing, unknown or bad ones."""

    @abc.abstractmethod
    def check(self) -> CheckResult:
        """Reachability and credentials."""

    @abc.abstractmethod
    def prepare(self, ca: CaMaterial) -> dict[str, Any]:
        """One-time setup (e.g. register the CA, create a policy); idempotent. Returns the
        JSON-safe state to persist, passed back as ``state`` to the other operations."""

    @abc.abstractmethod
    def register(self, device: DeviceRecord, state: Mapping[str, Any]) -> dict[str, Any]:
        """Upsert the device with its certificate and attributes. Already present with the
        same certificate is success; a different certificate raises ``ConflictError``.
        Returns JSON-safe remote ids that the outbox stores and passes to ``deregister``."""

    def register_many(
        self, devices: Sequence[DeviceRecord], state: Mapping[str, Any]
    ) -> list[dict[str, Any] | CloudError]:
        """Register several devices (up to ``register_batch_size``): one result per device, in
        order: its remote ids, or the ``CloudError`` that device failed with. A failure of the
        whole call (throttled, unreachable) may be raised instead. Default: ``register`` each."""
        results: list[dict[str, Any] | CloudError] = []
        for device in devices:
            try:
                results.append(self.register(device, state))
            except CloudError as exc:
                results.append(exc)
        return results

    @abc.abstractmethod
    def deregister(
        self, device: DeviceRecord, remote: Mapping[str, Any], state: Mapping[str, Any]
    ) -> None:
        """Disable or remove the device; idempotent (already gone is success).
        ``remote`` is what ``register`` returned (may be empty)."""

    @abc.abstractmethod
    def fetch_status(
        self, device_ids: Sequence[str], state: Mapping[str, Any]
    ) -> dict[str, RemoteStatus]:
        """Status of many devices at once where the platform allows; unknown ids are absent."""

    def iter_inventory(self, state: Mapping[str, Any]) -> Iterator[RemoteDevice]:
        """Every device the platform holds, page by page, within its list-rate limits
        (``fleet cloud drift``). Optional: the default raises ``NotSupported``."""
        raise NotSupported(f"cloud type {self.type_name!r} cannot list its devices")

    def delete_unknown(self, remote: RemoteDevice, state: Mapping[str, Any]) -> None:
        """Delete a device fleet does not know (``drift --fix --delete-unknown``); idempotent.
        Optional: the default raises ``NotSupported``."""
        raise NotSupported(f"cloud type {self.type_name!r} cannot delete unknown devices")

    def deliver_firmware(
        self,
        device: DeviceRecord,
        target: FirmwareTarget | None,
        remote: Mapping[str, Any],
        state: Mapping[str, Any],
    ) -> None:
        """Set (or with None, clear) the device's firmware target on the platform, where the
        device reads it (AWS: the ``firmware`` named shadow's desired state); idempotent.
        Optional: the default raises ``NotSupported``."""
        raise NotSupported(f"cloud type {self.type_name!r} cannot deliver firmware")

    def close(self) -> None:
        """Close the HTTP client if this backend built it."""
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None
