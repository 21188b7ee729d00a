"""Azure IoT Hub backend (type ``azure-iot-hub``), through the hub's service REST API
(api-version 2021-04-12), authenticated with a shared access signature (:mod:`.sas`).

* ``register``: ``GET /twins/{id}``, then ``PUT /devices/{id}`` (create; or update with
  ``If-Match`` on the identity's etag, re-read and retried on 412) with X.509 authentication
  (:mod:`.identity`: ``selfSigned`` thumbprints, or ``certificateAuthority`` with ``--auth
  ca``), then the ``fleet`` twin tag (model, serial, labels) by ``PATCH /twins/{id}`` with the
  twin's etag. Another certificate under the ID is a :class:`ConflictError`.
* ``register_many`` (the outbox's batches of up to 100): one query for the batch's current
  identities, then one ``POST /devices`` import (``importMode`` create, or
  updateIfMatchETag) carrying identities and tags; per-device errors are read from the
  answer (``isSuccessful``, ``errors[]``) and fail only their own device.
* ``deregister``: ``status: disabled`` (etag-checked), or ``DELETE`` with ``--deregister-mode
  delete``; gone already is success.
* ``fetch_status``, ``iter_inventory``: ``POST /devices/query`` paged by ``x-ms-continuation``.
* ``deliver_firmware``: the twin's desired ``firmware`` property; ``delete_unknown``: DELETE.

Rates: S1 allows 100 identity-registry operations and 20 queries per minute per unit (the
control plane throttling doc). One outbox token is one register batch (1 query + 1 import),
one deregistration (2 registry operations) or one status batch (1 query); the default 0.3
tokens/s (18/min) stays under both quotas for a one-unit S1 hub.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx

from fleet.cloud.azure import options as azure_options
from fleet.cloud.azure.api import HubApi, HubError, device_path, etag_header, twin_path
from fleet.cloud.azure.identity import (
    DEVICE_ID_RE,
    Action,
    Identity,
    Plan,
    identity_from,
    plan,
    tags_patch,
)
from fleet.cloud.azure.sas import SasAuth
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
from fleet.cloud.pacing import SYSTEM_TIMER, RateLimiter
from fleet.statuses import EventSource

ETAG_RETRIES = 3
# Per-device import errors worth retrying: the device appeared or changed meanwhile (the
# retry re-reads it), or the hub was busy.
_RETRY_CODES = frozenset({"DeviceAlreadyExists", "PreconditionFailed", "ThrottlingException"})
_NEVER = "0001-01-01T00:00:00"


class AzureIotHubBackend(CloudBackend):
    """Azure IoT Hub (type ``azure-iot-hub``). Options: :mod:`fleet.cloud.azure.options`."""

    type_name: ClassVar[str] = azure_options.TYPE_NAME
    event_source: ClassVar[EventSource] = EventSource.AZURE
    declared_options = azure_options.OPTIONS
    default_concurrency: ClassVar[int] = 4
    default_rate_per_second: ClassVar[float] = 0.3
    status_batch_size: ClassVar[int] = 100
    register_batch_size: ClassVar[int] = 100  # devices per bulk import (the API's maximum)

    def __init__(
        self, name: str, options: Mapping[str, Any], *, client: httpx.Client | None = None
    ) -> None:
        super().__init__(name, options, client=client)
        self.env = str(self.options["connection_string_env"])
        self.mode = str(self.options.get("auth") or azure_options.AUTH.default)
        self.deregister_mode = str(
            self.options.get("deregister_mode") or azure_options.DEREGISTER_MODE.default
        )
        self.firmware_field = str(
            self.options.get("firmware_field") or azure_options.FIRMWARE_FIELD.default
        )
        self.query_rate = float(
            self.options.get("query_rate_per_minute") or azure_options.QUERY_RATE.default
        )
        self.auth = SasAuth(self.env)
        endpoint = self.options.get("endpoint_url")
        self.api = HubApi(
            str(endpoint) if endpoint else self._host_url,
            self.auth,
            timeout=float(self.options.get("timeout") or azure_options.TIMEOUT.default),
            client=client,
        )

    def __repr__(self) -> str:
        return f"AzureIotHubBackend(name={self.name!r}, env={self.env!r})"

    def _host_url(self) -> str:
        return "https://" + self.auth.connection().host_name

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """See :func:`fleet.cloud.azure.options.validate_options`."""
        return azure_options.validate_options(options)

    def close(self) -> None:
        """Close the HTTP client if this backend built it."""
        super().close()
        self.api.close()

    # --- check, prepare -----------------------------------------------------------------

    def check(self) -> CheckResult:
        """The connection string, the key (a signed query) and the hub's reachability."""
        try:
            self.auth.connection()
            rows = self.api.query("SELECT * FROM devices", "check", page_size=1)
            next(rows, None)
        except TransientError as exc:
            if "is not set" in str(exc):
                return CheckResult(False, f"{exc}: export the hub's connection string there")
            return CheckResult(False, f"{exc} (check the host name and the network)")
        except HubError as exc:
            if exc.status == 401:
                return CheckResult(
                    False,
                    f"IoT Hub refused the signature (401 {exc.code}): check SharedAccessKey and "
                    f"SharedAccessKeyName in ${self.env}",
                )
            if exc.status == 403:
                return CheckResult(
                    False,
                    f"IoT Hub refused access (403 {exc.code}): the policy in ${self.env} needs "
                    "registry read, registry write and service connect permissions",
                )
            return CheckResult(False, str(exc))
        except PermanentError as exc:
            return CheckResult(False, str(exc))
        return CheckResult(
            True, f"IoT Hub at {self.api.base_url} accepted the key from ${self.env}"
        )

    def prepare(self, ca: CaMaterial) -> dict[str, Any]:
        """Nothing to create in the hub (its CA certificates are managed through Azure Resource
        Manager, not this API; see docs/cloud-azure.md for ``--auth ca``)."""
        return {"auth": self.mode}

    # --- register -------------------------------------------------------------------------

    @staticmethod
    def _checked(device: DeviceRecord) -> None:
        if not DEVICE_ID_RE.match(device.device_id):
            raise PermanentError(
                f"device ID {device.device_id!r} is not a valid IoT Hub device ID (up to 128 "
                "letters, digits and - . % _ * ? ! ( ) , : = @ $ ')"
            )
        if not device.fingerprint_sha256:
            raise PermanentError(f"device {device.device_id!r} has no active certificate")

    def _get_identity(self, device_id: str) -> Identity | None:
        """The identity as its twin shows it (thumbprints, status, device etag and tags)."""
        try:
            data = self.api.json("GET", twin_path(device_id), f"read {device_id}")
        except HubError as exc:
            if exc.status == 404:
                return None
            raise
        return identity_from(data) if isinstance(data, dict) else None

    @staticmethod
    def _remote(device: DeviceRecord, body: Mapping[str, Any]) -> dict[str, Any]:
        prints = body["authentication"]["x509Thumbprint"]
        return {
            "device_id": device.device_id,
            "auth": body["authentication"]["type"],
            "primary_thumbprint": prints["primaryThumbprint"],
        }

    def register(self, device: DeviceRecord, state: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update the identity, then its twin tags (see the module docstring)."""
        self._checked(device)
        what = f"register {device.device_id}"
        for _ in range(ETAG_RETRIES):
            found = self._get_identity(device.device_id)
            step = plan(device, found, self.mode)
            if step.action == Action.CONFLICT:
                raise ConflictError(step.reason)
            if step.action == Action.NOTHING:
                break
            headers = {"If-Match": etag_header(found.etag or "*")} if found is not None else {}
            try:
                self.api.request(
                    "PUT", device_path(device.device_id), what, json=step.body, headers=headers
                )
                break
            except HubError as exc:
                # 409: created meanwhile; 412: changed meanwhile. Read it again.
                if exc.status not in (409, 412):
                    raise
        else:
            raise TransientError(f"{what}: the identity kept changing (etag); retrying later")
        self._update_tags(device, step, found.twin if found is not None else None)
        return self._remote(device, step.body)

    def _update_tags(
        self, device: DeviceRecord, step: Plan, known: Mapping[str, Any] | None
    ) -> None:
        """Patch the ``fleet`` tag, starting from the twin read before (``known``); a 412
        means it changed meanwhile: read it again."""
        what = f"tag {device.device_id}"
        for _ in range(ETAG_RETRIES):
            twin: Any = known
            known = None
            if twin is None:
                twin = self.api.json("GET", twin_path(device.device_id), what)
            twin = twin if isinstance(twin, Mapping) else {}
            patch = tags_patch(twin.get("tags") or {}, step.tags)
            if patch is None:
                return
            etag = str(twin.get("etag") or "*")
            try:
                self.api.request(
                    "PATCH",
                    twin_path(device.device_id),
                    what,
                    json={"tags": {"fleet": patch}},
                    headers={"If-Match": etag_header(etag)},
                )
                return
            except HubError as exc:
                if exc.status != 412:
                    raise
        raise TransientError(f"{what}: the twin kept changing (etag); retrying later")

    def register_many(
        self, devices: Sequence[DeviceRecord], state: Mapping[str, Any]
    ) -> list[dict[str, Any] | CloudError]:
        """One query and one bulk import for the batch (see the module docstring)."""
        results: dict[int, dict[str, Any] | CloudError] = {}
        batch: list[int] = []
        for index, device in enumerate(devices):
            try:
                self._checked(device)
            except PermanentError as exc:
                results[index] = exc
                continue
            if "'" in device.device_id:  # cannot go into the query's IN list: one at a time
                try:
                    results[index] = self.register(device, state)
                except CloudError as exc:
                    results[index] = exc
                continue
            batch.append(index)
        if batch:
            results.update(self._import(devices, batch))
        return [results[i] for i in range(len(devices))]

    def _import(
        self, devices: Sequence[DeviceRecord], batch: list[int]
    ) -> dict[int, dict[str, Any] | CloudError]:
        existing = self._query_identities([devices[i].device_id for i in batch])
        results: dict[int, dict[str, Any] | CloudError] = {}
        items: list[dict[str, Any]] = []
        sent: dict[str, int] = {}
        for index in batch:
            device = devices[index]
            found = existing.get(device.device_id)
            step = plan(device, found, self.mode)
            if step.action == Action.CONFLICT:
                results[index] = ConflictError(step.reason)
                continue
            tags_same = found is not None and tags_patch(found.tags, step.tags) is None
            if step.action == Action.NOTHING and tags_same:
                results[index] = self._remote(device, step.body)
                continue
            item: dict[str, Any] = {
                "id": device.device_id,
                "status": step.body["status"],
                "authentication": step.body["authentication"],
                "tags": {**(found.tags if found else {}), "fleet": step.tags},
            }
            if found is None:
                item["importMode"] = "create"
            else:
                item["importMode"] = "updateIfMatchETag"
                item["eTag"] = found.etag
                twin_etag = found.twin.get("etag")
                if twin_etag:
                    item["twinETag"] = twin_etag
            items.append(item)
            sent[device.device_id] = index
            results[index] = self._remote(device, step.body)
        if items:
            for device_id, error in self._send_import(items).items():
                if device_id in sent:
                    results[sent[device_id]] = error
        return results

    def _send_import(self, items: list[dict[str, Any]]) -> dict[str, CloudError]:
        """POST the import; the per-device failures by device ID."""
        what = f"import of {len(items)} devices"
        response = self.api.request("POST", "/devices", what, json=items, accept=(400,))
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise TransientError(f"{what}: IoT Hub's answer is not a bulk result")
        if response.status_code == 400 and not body.get("errors"):
            raise PermanentError(f"{what}: IoT Hub refused the request (400)")
        failures: dict[str, CloudError] = {}
        for error in body.get("errors") or []:
            if not isinstance(error, dict):
                continue
            device_id = str(error.get("deviceId") or "")
            code = str(error.get("errorCode") or "unknown")
            message = f"register {device_id}: IoT Hub import refused it ({code})"
            if code in _RETRY_CODES:
                failures[device_id] = TransientError(message)
            else:
                failures[device_id] = PermanentError(message)
        if not body.get("isSuccessful", not failures) and not failures:
            raise TransientError(f"{what}: IoT Hub reported failure without errors")
        return failures

    def _query_identities(self, device_ids: Sequence[str]) -> dict[str, Identity]:
        ids = [d for d in dict.fromkeys(device_ids) if "'" not in d]
        if not ids:
            return {}
        quoted = ", ".join(f"'{d}'" for d in ids)
        sql = f"SELECT * FROM devices WHERE deviceId IN [{quoted}]"
        found: dict[str, Identity] = {}
        for row in self.api.query(sql, f"query {len(ids)} devices"):
            identity = identity_from(row)
            found[identity.device_id] = identity
        return found

    # --- deregister -----------------------------------------------------------------------

    def deregister(
        self, device: DeviceRecord, remote: Mapping[str, Any], state: Mapping[str, Any]
    ) -> None:
        """Disable (etag-checked) or delete the identity; gone already is success."""
        device_id = str(remote.get("device_id") or device.device_id)
        if not DEVICE_ID_RE.match(device_id):
            return  # the hub would never have accepted it
        if self.deregister_mode == "delete":
            self._delete(device_id)
            return
        what = f"deregister {device_id}"
        for _ in range(ETAG_RETRIES):
            try:
                data = self.api.json("GET", device_path(device_id), what)
            except HubError as exc:
                if exc.status == 404:
                    return
                raise
            if not isinstance(data, dict) or str(data.get("status")).lower() == "disabled":
                return
            body = {**data, "status": "disabled", "statusReason": "deregistered by fleet"}
            headers = {"If-Match": etag_header(str(data.get("etag") or "*"))}
            try:
                self.api.request("PUT", device_path(device_id), what, json=body, headers=headers)
                return
            except HubError as exc:
                if exc.status == 404:
                    return
                if exc.status != 412:
                    raise
        raise TransientError(f"{what}: the identity kept changing (etag); retrying later")

    def _delete(self, device_id: str) -> None:
        try:
            self.api.request(
                "DELETE", device_path(device_id), f"delete {device_id}", headers={"If-Match": "*"}
            )
        except HubError as exc:
            if exc.status != 404:
                raise

    # --- status, inventory ----------------------------------------------------------------

    def fetch_status(
        self, device_ids: Sequence[str], state: Mapping[str, Any]
    ) -> dict[str, RemoteStatus]:
        """Connection state, last activity and reported firmware of many devices (one query)."""
        ids = [d for d in dict.fromkeys(device_ids) if DEVICE_ID_RE.match(d)]
        rows: list[Mapping[str, Any]] = [i.twin for i in self._query_identities(ids).values()]
        for device_id in (d for d in ids if "'" in d):
            try:
                twin = self.api.json("GET", twin_path(device_id), f"status of {device_id}")
            except HubError as exc:
                if exc.status == 404:
                    continue
                raise
            if isinstance(twin, dict):
                rows.append(twin)
        return {str(row.get("deviceId")): self._status(row) for row in rows}

    def _status(self, twin: Mapping[str, Any]) -> RemoteStatus:
        state = twin.get("connectionState")
        times = [_time(twin.get(k)) for k in ("lastActivityTime", "connectionStateUpdatedTime")]
        known = [t for t in times if t is not None]
        reported = (twin.get("properties") or {}).get("reported") or {}
        firmware = reported.get(self.firmware_field) if isinstance(reported, dict) else None
        return RemoteStatus(
            connected=None if state is None else str(state).lower() == "connected",
            last_activity=max(known) if known else None,
            firmware_version=str(firmware) if isinstance(firmware, str | int) else None,
        )

    def iter_inventory(self, state: Mapping[str, Any]) -> Iterator[RemoteDevice]:
        """Every device identity of the hub, 1000 a page, pages paced at
        ``query_rate_per_minute``."""
        limiter = RateLimiter(self.query_rate / 60.0, SYSTEM_TIMER)
        for row in self.api.query(
            "SELECT * FROM devices", "inventory", page_size=1000, pace=limiter.acquire
        ):
            identity = identity_from(row)
            certificates = tuple(
                RemoteCertificate(fingerprint_sha256=p.lower(), active=identity.enabled)
                for p in (identity.primary, identity.secondary)
                if p
            )
            if not certificates and identity.auth_type == "certificateAuthority":
                tagged = identity.tags.get("fleet")
                fingerprint = tagged.get("certificate_sha256") if isinstance(tagged, dict) else None
                if fingerprint:
                    certificates = (RemoteCertificate(str(fingerprint).lower(), identity.enabled),)
            yield RemoteDevice(
                device_id=identity.device_id,
                enabled=identity.enabled,
                certificates=certificates,
                connected=identity.connected,
                remote={"device_id": identity.device_id},
            )

    def delete_unknown(self, remote: RemoteDevice, state: Mapping[str, Any]) -> None:
        """Delete a device fleet does not know; gone already is success."""
        device_id = str((remote.remote or {}).get("device_id") or remote.device_id)
        if DEVICE_ID_RE.match(device_id):
            self._delete(device_id)

    def deliver_firmware(
        self,
        device: DeviceRecord,
        target: FirmwareTarget | None,
        remote: Mapping[str, Any],
        state: Mapping[str, Any],
    ) -> None:
        """Set (or clear) the twin's desired ``firmware`` property."""
        device_id = str(remote.get("device_id") or device.device_id)
        value = None
        if target is not None:
            value = {
                "version": target.version,
                "url": target.url,
                "sha256": target.sha256,
                "size": target.size,
                "signature": target.signature,
            }
        what = f"firmware for {device_id}"
        try:
            self.api.request(
                "PATCH",
                twin_path(device_id),
                what,
                json={"properties": {"desired": {"firmware": value}}},
                headers={"If-Match": "*"},
            )
        except HubError as exc:
            if exc.status == 404:
                raise PermanentError(f"{what}: the device is not registered in IoT Hub") from None
            raise


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value or value.startswith(_NEVER):
        return None
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # the hub writes 7 fractional digits; Python reads up to 6
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
