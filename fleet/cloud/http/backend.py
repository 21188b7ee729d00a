"""Generic HTTP backend for in-house registries.

register: ``METHOD url`` (default ``PUT``; ``{id}`` in the URL template is the URL-encoded
device ID) with a JSON body::

    {"device_id", "model", "serial", "labels", "status",
     "certificate": {"pem", "serial", "fingerprint_sha256"}}

and an ``Idempotency-Key`` header that stays the same across retries of one outbox job.
Any 2xx is success (a JSON object in the response is stored as the device's remote ids);
409 means the device exists with a different certificate (``ConflictError``); 408, 425, 429
and 5xx are transient (``Retry-After`` honoured); other 4xx are permanent.
deregister: ``DELETE`` (or ``--deregister-method``) on the same URL; 404/410 count as done.
fetch_status: ``GET`` on the same URL, one device per request (``status_batch_size = 1``);
a 2xx JSON object's ``connected`` (bool), ``last_activity`` (ISO 8601) and
``firmware_version`` (string) are read when present; 404 means unknown (absent).
a JSON ``firmware_update`` object (``{"state": "in-progress"|"failed", "detail"}``) is the
device's update state.
deliver_firmware: ``PUT`` on ``--firmware-url`` (default: the URL with ``/firmware``
appended) with ``{"firmware": {"version", "url", "sha256", "size", "signature"}}``, or
``{"firmware": null}`` to clear the target; any 2xx is success.
check: ``OPTIONS`` on the URL with ``{id}`` = ``fleet-check``: any answer below 500 other than
401/403 proves reachability and credentials.

Header values come from environment variables named at ``cloud add`` time
(``--header Authorization=REG_TOKEN``), read at request time and never stored or shown.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx

from fleet.cloud.base import (
    CaMaterial,
    CheckResult,
    CloudBackend,
    ConflictError,
    DeviceRecord,
    FirmwareTarget,
    PermanentError,
    RemoteStatus,
    TransientError,
    UnreachableError,
    current_idempotency_key,
    retry_after_seconds,
)
from fleet.cloud.http import options as http_options

TRANSIENT_STATUSES = frozenset({408, 425, 429})


class HttpBackend(CloudBackend):
    """Registers devices with a generic HTTP endpoint (see the module docstring)."""

    type_name: ClassVar[str] = http_options.TYPE_NAME
    declared_options = http_options.OPTIONS
    default_concurrency: ClassVar[int] = 8
    default_rate_per_second: ClassVar[float] = 50.0
    status_batch_size: ClassVar[int] = 1

    def __init__(
        self, name: str, options: Mapping[str, Any], *, client: httpx.Client | None = None
    ) -> None:
        super().__init__(name, options, client=client)
        self.url_template = str(options["url"])
        self.firmware_template = str(
            options.get("firmware_url") or self.url_template.rstrip("/") + "/firmware"
        )
        self.method = str(options.get("method", http_options.METHOD.default))
        self.deregister_method = str(
            options.get("deregister_method", http_options.DEREGISTER_METHOD.default)
        )
        self.header_envs: dict[str, str] = dict(options.get("header", {}))
        self.timeout = float(options.get("timeout", http_options.TIMEOUT.default))
        self.check_method = str(options.get("check_method", http_options.CHECK_METHOD.default))
        self.check_url: str | None = options.get("check_url")
        if self._client is None:  # built eagerly: worker threads share it
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 5.0)),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """See :func:`fleet.cloud.http.options.validate_options`."""
        return http_options.validate_options(options)

    # --- plumbing --------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        """The shared HTTP client (RuntimeError once closed)."""
        if self._client is None:
            raise RuntimeError("backend is closed")
        return self._client

    def url_for(self, device_id: str) -> str:
        """The URL template with ``{id}`` = the URL-encoded device ID."""
        return self.url_template.replace("{id}", quote(device_id, safe=""))

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        for name, env in self.header_envs.items():
            value = os.environ.get(env)
            if not value:
                # Transient: the jobs stay queued until the variable is exported. Names
                # only in the message: it is shown and stored.
                raise TransientError(f"environment variable {env} (for header {name}) is not set")
            headers[name] = value
        return headers

    def _send(
        self, method: str, url: str, *, json: Any = None, key: str | None = None
    ) -> httpx.Response:
        headers = self._headers()
        if key is not None:
            headers["Idempotency-Key"] = key
        try:
            return self.client.request(method, url, json=json, headers=headers)
        except httpx.TimeoutException:
            raise TransientError(f"{method} {self._where(url)}: timed out") from None
        except httpx.ConnectError as exc:  # refused, unknown host: nobody to retry against
            raise UnreachableError(
                f"{method} {self._where(url)}: cannot connect ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise TransientError(
                f"{method} {self._where(url)}: connection failed ({type(exc).__name__})"
            ) from None

    @staticmethod
    def _where(url: str) -> str:
        # Scheme, host and path only (a query string might carry a token).
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def _raise_for(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        summary = f"{what}: HTTP {status} {response.reason_phrase}".strip()
        if status in TRANSIENT_STATUSES or status >= 500:
            retry = retry_after_seconds(response.headers.get("Retry-After"))
            raise TransientError(summary, retry_after=retry)
        if status == 409:
            raise ConflictError(f"{what}: the device exists with a different certificate (409)")
        raise PermanentError(summary)

    # --- the interface ---------------------------------------------------------------------

    def check(self) -> CheckResult:
        url = self.check_url or self.url_for("fleet-check")
        method = self.check_method
        try:
            response = self._send(method, url)
        except (TransientError, PermanentError) as exc:
            return CheckResult(False, f"{exc}; is the URL right and the server up?")
        status = response.status_code
        if status in (405, 501):
            return CheckResult(
                False,
                f"{method} {self._where(url)} answered HTTP {status}: the server does not take "
                f"{method}; choose another with `fleet cloud add ... --check-method`",
            )
        if status in (401, 403):
            envs = ", ".join(self.header_envs.values()) or "none configured"
            return CheckResult(
                False,
                f"{self._where(url)} refused the credentials (HTTP {status}); check the "
                f"header environment variables ({envs})",
            )
        if status >= 500:
            return CheckResult(
                False, f"{method} {self._where(url)} answered HTTP {status}: server error"
            )
        return CheckResult(True, f"{method} {self._where(url)} reachable (HTTP {status})")

    def prepare(self, ca: CaMaterial) -> dict[str, Any]:
        return {}

    def register(self, device: DeviceRecord, state: Mapping[str, Any]) -> dict[str, Any]:
        url = self.url_for(device.device_id)
        body = {
            "device_id": device.device_id,
            "model": device.model,
            "serial": device.serial,
            "labels": device.labels,
            "status": device.status,
            "certificate": {
                "pem": device.certificate_pem,
                "serial": device.certificate_serial,
                "fingerprint_sha256": device.fingerprint_sha256,
            },
        }
        key = current_idempotency_key() or f"fleet-{device.device_id}-{device.certificate_serial}"
        response = self._send(self.method, url, json=body, key=key)
        self._raise_for(response, f"register {device.device_id}")
        try:
            data = response.json()
        except ValueError:
            return {}
        return dict(data) if isinstance(data, dict) else {}

    def deregister(
        self, device: DeviceRecord, remote: Mapping[str, Any], state: Mapping[str, Any]
    ) -> None:
        url = self.url_for(device.device_id)
        key = current_idempotency_key()
        body = None if self.deregister_method == "DELETE" else {"device_id": device.device_id}
        response = self._send(self.deregister_method, url, json=body, key=key)
        if response.status_code in (404, 410):
            return
        self._raise_for(response, f"deregister {device.device_id}")

    def fetch_status(
        self, device_ids: Sequence[str], state: Mapping[str, Any]
    ) -> dict[str, RemoteStatus]:
        result: dict[str, RemoteStatus] = {}
        for device_id in device_ids:
            response = self._send("GET", self.url_for(device_id))
            if response.status_code in (404, 410):
                continue
            self._raise_for(response, f"status of {device_id}")
            try:
                data = response.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                result[device_id] = RemoteStatus(None, None, None)
                continue
            connected = data.get("connected")
            firmware = data.get("firmware_version")
            update = data.get("firmware_update")
            said = update.get("state") if isinstance(update, dict) else None
            detail = update.get("detail") if isinstance(update, dict) else None
            result[device_id] = RemoteStatus(
                connected=connected if isinstance(connected, bool) else None,
                last_activity=_parse_time(data.get("last_activity")),
                firmware_version=str(firmware) if isinstance(firmware, str | int) else None,
                firmware_state=said if said in ("in-progress", "failed") else None,
                firmware_detail=str(detail)[:512] if detail is not None else None,
            )
        return result

    def deliver_firmware(
        self,
        device: DeviceRecord,
        target: FirmwareTarget | None,
        remote: Mapping[str, Any],
        state: Mapping[str, Any],
    ) -> None:
        """PUT the target (or ``null``) on the firmware URL (see the module docstring)."""
        url = self.firmware_template.replace("{id}", quote(device.device_id, safe=""))
        body: dict[str, Any] = {"firmware": None}
        if target is not None:
            body["firmware"] = {
                "version": target.version,
                "url": target.url,
                "sha256": target.sha256,
                "size": target.size,
                "signature": target.signature,
            }
        response = self._send("PUT", url, json=body, key=current_idempotency_key())
        self._raise_for(response, f"firmware target of {device.device_id}")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
