"""ThingsBoard backend (type ``thingsboard``), over ThingsBoard's REST API.

What each operation does (see docs/cloud-thingsboard.md):

* ``register``: the model's device profile (``GET /api/deviceProfiles?textSearch``, created
  with ``POST /api/deviceProfile`` when missing: one per model, cached), then
  ``POST /api/device-with-credentials?nameConflictPolicy=FAIL`` with ``X509_CERTIFICATE``
  credentials (the PEM, and the SHA3 credentials id ThingsBoard derives from it), then the
  model, serial and labels (``label_<name>``; stale ones deleted on a re-registration) as
  SERVER_SCOPE attributes. A device of that
  name with the same certificate is success; with another one, a :class:`ConflictError`.
* ``deregister``: ``DELETE /api/device/{id}`` (``--on-deregister delete``) or, with
  ``keep``, the X.509 credentials replaced by a random access token nobody keeps
  (``POST /api/device/credentials``) and ``fleet_state=deregistered``; never a device whose
  certificate is not fleet's.
* ``fetch_status``: the ``active``, ``lastActivityTime``, ``lastConnectTime``,
  ``lastDisconnectTime`` server attributes and ``current_fw_version`` (a client attribute,
  or the latest time-series value as ThingsBoard's OTA protocol reports it).
* ``iter_inventory``: ``GET /api/tenant/deviceInfos`` page by page (with ``active``), each
  device's credentials (and ``fleet_state`` where they are not X.509).
* ``deliver_firmware``: ThingsBoard's OTA: a URL firmware package per (model profile,
  version) (``POST /api/otaPackage``) assigned to the device (its ``firmwareId``, ``POST
  /api/device``); ThingsBoard then pushes the ``fw_*`` shared attributes to the device. fleet
  adds the detached signature as the ``fleet_fw_signature`` shared attribute.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from fleet.cloud.base import (
    CaMaterial,
    CheckResult,
    CloudBackend,
    CloudError,
    ConflictError,
    DeviceRecord,
    FirmwareTarget,
    PermanentError,
    RemoteCertificate,
    RemoteDevice,
    RemoteStatus,
    TransientError,
)
from fleet.cloud.thingsboard import options as tb_options
from fleet.cloud.thingsboard.api import (
    PAGE_SIZE,
    TbApi,
    TbApiError,
    credentials_id,
    der_fingerprint,
    entity_id,
    is_name_taken,
    with_retries,
)
from fleet.cloud.thingsboard.auth import ApiKeyAuth, JwtAuth
from fleet.statuses import EventSource

DEFAULT_PROFILE = "default"
STATUS_KEYS = [
    "active",
    "lastActivityTime",
    "lastConnectTime",
    "lastDisconnectTime",
    "current_fw_version",
    "fleet_state",
]
FIRMWARE_SIGNATURE_KEY = "fleet_fw_signature"
LABEL_PREFIX = "label_"


class ThingsBoardBackend(CloudBackend):
    """ThingsBoard CE/PE (type ``thingsboard``). Options: :mod:`~.thingsboard.options`."""

    type_name: ClassVar[str] = tb_options.TYPE_NAME
    declared_options = tb_options.OPTIONS
    event_source: ClassVar[EventSource] = EventSource.THINGSBOARD
    # A registration is 3-5 REST calls. ThingsBoard's per-tenant REST limits are off by
    # default in CE and configurable (tenant profile "rest limits"); 10 jobs/s stays well
    # below the ThingsBoard Cloud defaults. 429 is retried with Retry-After anyway.
    default_concurrency: ClassVar[int] = 4
    default_rate_per_second: ClassVar[float] = 10.0
    status_batch_size: ClassVar[int] = 10  # devices per fetch_status (2-3 calls each)
    inventory_requests_per_second: ClassVar[float] = 20.0

    def __init__(
        self, name: str, options: Mapping[str, Any], *, client: httpx.Client | None = None
    ) -> None:
        super().__init__(name, options, client=client)
        self.url = str(self.options["base_url"]).rstrip("/")
        self.on_deregister = str(
            self.options.get("on_deregister", tb_options.ON_DEREGISTER.default)
        )
        timeout = float(self.options.get("timeout", tb_options.TIMEOUT.default))
        self.auth: httpx.Auth
        if self.options.get("api_key_env"):
            self.auth = ApiKeyAuth(str(self.options["api_key_env"]))
        else:
            self.auth = JwtAuth(
                self.url, str(self.options["username"]), str(self.options["password_env"])
            )
        if self._client is None:  # built eagerly: worker threads share it
            self._client = httpx.Client(
                timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
        self.api = TbApi(self.url, self.auth, self._client)
        self._pace_lock = threading.Lock()
        self._next_read = 0.0

    def __repr__(self) -> str:
        return f"ThingsBoardBackend(name={self.name!r}, url={self.url!r})"

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """See :func:`fleet.cloud.thingsboard.options.validate_options`."""
        return tb_options.validate_options(options)

    # --- check / prepare --------------------------------------------------------------------

    def check(self) -> CheckResult:
        """``GET /api/auth/user``: reachable, credentials accepted, a tenant administrator."""
        try:
            user = self.api.call("current user", "GET", "/api/auth/user")
        except TransientError as exc:
            return CheckResult(False, f"{exc}; is --base-url right and the server up?")
        except CloudError as exc:
            return CheckResult(False, str(exc))
        user = user if isinstance(user, dict) else {}
        authority = str(user.get("authority", "?"))
        who = str(user.get("email") or user.get("name") or "?")
        if authority != "TENANT_ADMIN":
            return CheckResult(
                False,
                f"{self.api.where()} accepted the credentials of {who!r}, but as {authority}: "
                "fleet needs a tenant administrator (TENANT_ADMIN) to manage devices",
            )
        return CheckResult(True, f"ThingsBoard at {self.api.where()}: {who} ({authority})")

    def prepare(self, ca: CaMaterial) -> dict[str, Any]:
        """Nothing to set up: each device carries its own X.509 certificate as credentials."""
        return {}

    # --- register ---------------------------------------------------------------------------

    def _profile_id(self, device: DeviceRecord) -> str:
        name = device.model or DEFAULT_PROFILE

        def body() -> dict[str, Any]:
            return {
                "name": name,
                "description": f"fleet model {name}",
                "type": "DEFAULT",
                "transportType": "DEFAULT",
                "provisionType": "DISABLED",
                "profileData": {
                    "configuration": {"type": "DEFAULT"},
                    "transportConfiguration": {"type": "DEFAULT"},
                    "provisionConfiguration": {"type": "DISABLED"},
                },
            }

        return self.api.profile_id(name, body)

    @staticmethod
    def attributes_for(device: DeviceRecord) -> dict[str, Any]:
        """The SERVER_SCOPE attributes fleet writes: model, serial, ``label_<name>`` per
        label and ``fleet_state``."""
        values: dict[str, Any] = {"fleet_state": "registered"}
        if device.model is not None:
            values["model"] = device.model
        if device.serial is not None:
            values["serial"] = device.serial
        for key, value in sorted(device.labels.items()):
            values[LABEL_PREFIX + key] = value
        return values

    def register(self, device: DeviceRecord, state: Mapping[str, Any]) -> dict[str, Any]:
        """Create the device with its certificate, or accept it as it is (module docstring)."""
        if not device.certificate_pem:
            raise PermanentError(f"device {device.device_id!r} has no active certificate")
        profile_id = self._profile_id(device)
        tb_id: str | None = None
        existed = False
        for _ in range(2):
            existing = self.api.find_device(device.device_id)
            if existing is not None:
                tb_id = str(existing["id"]["id"])
                self._adopt(device, tb_id)
                existed = True
                break
            try:
                created = self.api.call(
                    f"create device {device.device_id}",
                    "POST",
                    "/api/device-with-credentials",
                    params={"nameConflictPolicy": "FAIL"},
                    json={
                        "device": {
                            "name": device.device_id,
                            "type": device.model or DEFAULT_PROFILE,
                            "deviceProfileId": entity_id("DEVICE_PROFILE", profile_id),
                        },
                        "credentials": {
                            "credentialsType": "X509_CERTIFICATE",
                            "credentialsId": credentials_id(device.certificate_pem),
                            "credentialsValue": device.certificate_pem,
                        },
                    },
                )
            except TbApiError as exc:
                if is_name_taken(exc):
                    continue  # created meanwhile (or by a retry whose answer was lost)
                raise
            tb_id = str(created["id"]["id"])
            self.api.remember_device(device.device_id, tb_id)
            break
        if tb_id is None:
            raise TransientError(f"device {device.device_id!r}: created and gone meanwhile")
        attributes = self.attributes_for(device)
        self.api.save_attributes(tb_id, "SERVER_SCOPE", attributes)
        if existed:  # labels removed in fleet since: their attributes go too
            stale = [
                key
                for key in self.api.attribute_keys(tb_id, "SERVER_SCOPE")
                if key.startswith(LABEL_PREFIX) and key not in attributes
            ]
            if stale:
                self.api.delete_attributes(tb_id, "SERVER_SCOPE", stale)
        return {
            "device_id": tb_id,
            "device_profile_id": profile_id,
            "credentials_id": credentials_id(device.certificate_pem),
        }

    def _adopt(self, device: DeviceRecord, tb_id: str) -> None:
        """An existing device of that name: fine with fleet's certificate, renewed with it if
        fleet kept it deregistered, otherwise a conflict."""
        creds = self.api.credentials(tb_id)
        if creds is None:
            raise TransientError(f"device {device.device_id!r} was deleted meanwhile")
        kind = creds.get("credentialsType")
        value = str(creds.get("credentialsValue") or "")
        if kind == "X509_CERTIFICATE" and der_fingerprint(value) == device.fingerprint_sha256:
            return
        if kind != "X509_CERTIFICATE":
            state = self.api.attributes(tb_id, ["fleet_state"]).get("fleet_state")
            if state == "deregistered":  # fleet's own, kept by --on-deregister keep
                self._set_credentials(
                    creds,
                    {
                        "credentialsType": "X509_CERTIFICATE",
                        "credentialsId": credentials_id(device.certificate_pem),
                        "credentialsValue": device.certificate_pem,
                    },
                )
                return
        raise ConflictError(
            f"device {device.device_id!r} already exists in ThingsBoard with other "
            f"credentials ({kind}): delete it there or deregister it first"
        )

    def _set_credentials(self, current: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        body = {"id": current["id"], "deviceId": current["deviceId"], **new}
        if "credentialsValue" not in new:
            body["credentialsValue"] = None
        self.api.call("update credentials", "POST", "/api/device/credentials", json=body)

    # --- deregister -------------------------------------------------------------------------

    def deregister(
        self, device: DeviceRecord, remote: Mapping[str, Any], state: Mapping[str, Any]
    ) -> None:
        """Delete the device, or keep it with its certificate replaced; idempotent."""
        found = self.api.find_device(device.device_id)  # fresh: never act on a stale id
        if found is None:
            return
        tb_id = str(found["id"]["id"])
        creds = self.api.credentials(tb_id)
        if creds is None:
            self.api.forget_device(device.device_id)
            return
        kind = creds.get("credentialsType")
        if kind == "X509_CERTIFICATE":
            ours = {device.fingerprint_sha256} - {""}
            value = str(creds.get("credentialsValue") or "")
            same = der_fingerprint(value) in ours or (
                remote.get("credentials_id")
                and creds.get("credentialsId") == remote["credentials_id"]
            )
            if not same:
                raise PermanentError(
                    f"device {device.device_id!r} in ThingsBoard holds a certificate that is not "
                    "fleet's: left untouched"
                )
        if self.on_deregister == "delete":
            self.api.call_unless_missing(
                f"delete device {device.device_id}", "DELETE", f"/api/device/{quote(tb_id)}"
            )
            self.api.forget_device(device.device_id)
            return
        if kind == "X509_CERTIFICATE":
            # The device can no longer connect: a random token that nobody is told.
            token = secrets.token_urlsafe(24)
            self._set_credentials(
                creds, {"credentialsType": "ACCESS_TOKEN", "credentialsId": token}
            )
            del token
        self.api.save_attributes(tb_id, "SERVER_SCOPE", {"fleet_state": "deregistered"})

    # --- status -----------------------------------------------------------------------------

    def fetch_status(
        self, device_ids: Sequence[str], state: Mapping[str, Any]
    ) -> dict[str, RemoteStatus]:
        """Server attributes (and the reported firmware) per device; unknown ids absent."""
        result: dict[str, RemoteStatus] = {}
        for name in dict.fromkeys(device_ids):
            tb_id = self.api.device_id(name)
            if tb_id is None:
                continue
            values = self.api.attributes(tb_id, STATUS_KEYS)
            firmware = values.get("current_fw_version")
            if firmware is None:
                firmware = self._reported_firmware(tb_id)
            active = values.get("active")
            result[name] = RemoteStatus(
                connected=active if isinstance(active, bool) else None,
                last_activity=_from_ms(values.get("lastActivityTime")),
                firmware_version=str(firmware) if isinstance(firmware, str | int) else None,
            )
        return result

    def _reported_firmware(self, tb_id: str) -> Any:
        body = self.api.call_unless_missing(
            "latest telemetry",
            "GET",
            f"/api/plugins/telemetry/DEVICE/{quote(tb_id)}/values/timeseries",
            params={"keys": "current_fw_version"},
        )
        series = body.get("current_fw_version") if isinstance(body, dict) else None
        if isinstance(series, list) and series and isinstance(series[0], dict):
            return series[0].get("value")
        return None

    # --- inventory --------------------------------------------------------------------------

    def _paced(self) -> None:
        """Spread the inventory's reads at ``inventory_requests_per_second``."""
        with self._pace_lock:
            now = time.monotonic()
            wait = self._next_read - now
            self._next_read = max(now, self._next_read) + 1.0 / self.inventory_requests_per_second
        if wait > 0:
            time.sleep(wait)

    def iter_inventory(self, state: Mapping[str, Any]) -> Iterator[RemoteDevice]:
        """Every device of the tenant with its X.509 credentials, page by page, paced."""
        page = 0
        while True:
            self._paced()
            body = with_retries(partial(self._device_page, page))
            for device in body.get("data") or []:
                remote = self._remote_device(device)
                if remote is not None:
                    yield remote
            if not body.get("hasNext"):
                return
            page += 1

    def _device_page(self, page: int) -> dict[str, Any]:
        params: dict[str, str | int] = {"pageSize": PAGE_SIZE, "page": page}
        body = self.api.call("list devices", "GET", "/api/tenant/deviceInfos", params=params)
        return body if isinstance(body, dict) else {}

    def _remote_device(self, device: Mapping[str, Any]) -> RemoteDevice | None:
        tb_id = str(device.get("id", {}).get("id", ""))
        name = str(device.get("name", ""))
        self._paced()
        creds = with_retries(lambda: self.api.credentials(tb_id))
        if creds is None:
            return None  # deleted while listing
        certificates: tuple[RemoteCertificate, ...] = ()
        kind = creds.get("credentialsType")
        enabled = True
        if kind == "X509_CERTIFICATE":
            fingerprint = der_fingerprint(str(creds.get("credentialsValue") or ""))
            if fingerprint:
                certificates = (
                    RemoteCertificate(fingerprint, True, str(creds.get("credentialsId") or "")),
                )
        else:  # kept by fleet (credentials replaced), or another kind of device
            self._paced()
            values = with_retries(lambda: self.api.attributes(tb_id, ["fleet_state"]))
            enabled = values.get("fleet_state") != "deregistered"
        active = device.get("active")
        return RemoteDevice(
            device_id=name,
            enabled=enabled,
            certificates=certificates,
            connected=active if isinstance(active, bool) else None,
            remote={"device_id": tb_id, "credentials_type": str(kind)},
        )

    def delete_unknown(self, remote: RemoteDevice, state: Mapping[str, Any]) -> None:
        """``DELETE /api/device/{id}`` of a device fleet does not know; gone is success."""
        tb_id = str((remote.remote or {}).get("device_id") or "") or self.api.device_id(
            remote.device_id
        )
        if not tb_id:
            return
        self.api.call_unless_missing(
            f"delete device {remote.device_id}", "DELETE", f"/api/device/{quote(tb_id)}"
        )
        self.api.forget_device(remote.device_id)

    # --- firmware ---------------------------------------------------------------------------

    def deliver_firmware(
        self,
        device: DeviceRecord,
        target: FirmwareTarget | None,
        remote: Mapping[str, Any],
        state: Mapping[str, Any],
    ) -> None:
        """Assign (or with None, unassign) the target's OTA package (module docstring)."""
        current = self.api.find_device(device.device_id)
        if current is None:
            raise PermanentError(
                f"device {device.device_id!r} is not in ThingsBoard: register it first"
            )
        tb_id = str(current["id"]["id"])
        package_id = None if target is None else self._package_id(device, current, target)
        assigned = (current.get("firmwareId") or {}).get("id")
        if assigned != package_id:
            updated = {k: v for k, v in current.items() if k != "firmwareId"}
            if package_id is not None:
                updated["firmwareId"] = entity_id("OTA_PACKAGE", package_id)
            self.api.call(
                f"assign firmware to {device.device_id}", "POST", "/api/device", json=updated
            )
        if target is None:
            self.api.delete_attributes(tb_id, "SHARED_SCOPE", [FIRMWARE_SIGNATURE_KEY])
        else:
            self.api.save_attributes(
                tb_id, "SHARED_SCOPE", {FIRMWARE_SIGNATURE_KEY: target.signature}
            )

    def _package_id(
        self, device: DeviceRecord, current: Mapping[str, Any], target: FirmwareTarget
    ) -> str:
        profile_id = str(current["deviceProfileId"]["id"])
        title = str(current.get("type") or device.model or DEFAULT_PROFILE)
        path = f"/api/otaPackages/{quote(profile_id)}/FIRMWARE"
        for page in self.api.pages("firmware packages", path, textSearch=title):
            for package in page:
                if package.get("title") == title and package.get("version") == target.version:
                    if package.get("checksum") not in (None, target.sha256):
                        raise ConflictError(
                            f"ThingsBoard already has firmware {title} {target.version} with "
                            "another checksum: give the new image another version"
                        )
                    return str(package["id"]["id"])
        if not target.url:
            raise PermanentError(
                f"firmware {target.version} has no URL: ThingsBoard's OTA packages created by "
                "fleet point at the image's URL (give the firmware a --url)"
            )
        try:
            created = self.api.call(
                f"create firmware package {title} {target.version}",
                "POST",
                "/api/otaPackage",
                json={
                    "title": title,
                    "version": target.version,
                    "type": "FIRMWARE",
                    "deviceProfileId": entity_id("DEVICE_PROFILE", profile_id),
                    "url": target.url,
                    "usesUrl": True,
                    "checksumAlgorithm": "SHA256",
                    "checksum": target.sha256,
                    "dataSize": target.size,
                    "additionalInfo": {"description": f"fleet firmware {title} {target.version}"},
                },
            )
        except TbApiError as exc:
            if is_name_taken(exc):
                raise TransientError(f"{exc} (created meanwhile: looked up on retry)") from None
            raise
        return str(created["id"]["id"])


def _from_ms(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return datetime.fromtimestamp(value / 1000.0, tz=UTC)
