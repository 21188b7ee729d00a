"""The ThingsBoard REST call layer: one authenticated request, its failures classified, and
the lookups every operation shares (device by name, device profile per model, paging).

Failures become :class:`TransientError` (429 and 5xx with ``Retry-After``, timeouts,
connection errors) or :class:`TbApiError` (a permanent error with ThingsBoard's status and
message). A 401 reaching this layer means the JWT refresh and a new login did not help, or
the API key was refused.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from fleet.cloud.base import CloudError, PermanentError, TransientError, retry_after_seconds

PAGE_SIZE = 100
_T = TypeVar("_T")


class TbApiError(PermanentError):
    """ThingsBoard refused a request for good; ``status`` is the HTTP status."""

    def __init__(self, message: str, *, status: int, tb_message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.tb_message = tb_message


def is_name_taken(exc: TbApiError) -> bool:
    """The create failed because an entity of that name exists (``nameConflictPolicy=FAIL``)."""
    return exc.status == 400 and "already exists" in exc.tb_message.lower()


def pem_body(pem: str) -> str:
    """ThingsBoard's ``EncryptionUtil.certTrimNewLines``: the certificate without its
    BEGIN/END lines and line breaks (what it hashes into the credentials id)."""
    return (
        pem.replace("-----BEGIN CERTIFICATE-----", "")
        .replace("\n", "")
        .replace("\r", "")
        .replace("-----END CERTIFICATE-----", "")
    )


def credentials_id(pem: str) -> str:
    """The X.509 credentials id ThingsBoard derives from a certificate: SHA3-256 (hex) of
    :func:`pem_body`."""
    return hashlib.sha3_256(pem_body(pem).encode()).hexdigest()


def der_fingerprint(value: str) -> str | None:
    """SHA-256 (hex) of the DER certificate in ``value`` (a PEM, or its bare base64 body as
    older ThingsBoard versions return it); None when it is not one."""
    body = pem_body(value).strip().replace(" ", "")
    try:
        der = base64.b64decode(body, validate=True)
    except ValueError:
        return None
    return hashlib.sha256(der).hexdigest() if der else None


def entity_id(kind: str, value: str) -> dict[str, str]:
    """``{"id": ..., "entityType": ...}`` as ThingsBoard's entity references are written."""
    return {"id": value, "entityType": kind}


class TbApi:
    """Calls to one ThingsBoard server; thread-safe (the outbox calls it from many threads)."""

    def __init__(self, base_url: str, auth: httpx.Auth, client: httpx.Client) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.client = client
        self._lock = threading.Lock()
        self._profile_lock = threading.Lock()
        self._profiles: dict[str, str] = {}  # profile name -> id
        self._device_ids: dict[str, str] = {}  # device name -> id

    def where(self) -> str:
        """Scheme and host of the server, for messages."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    def call(
        self,
        what: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
    ) -> Any:
        """One call; returns the parsed JSON body (None when empty) or raises."""
        try:
            response = self.client.request(
                method, self.base_url + path, params=params, json=json, auth=self.auth
            )
        except CloudError:
            raise
        except httpx.TimeoutException:
            raise TransientError(f"ThingsBoard {what}: timed out ({self.where()})") from None
        except httpx.TransportError as exc:
            raise TransientError(
                f"ThingsBoard {what}: cannot reach {self.where()} ({type(exc).__name__})"
            ) from None
        if response.is_success:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise TransientError(
                    f"ThingsBoard {what}: unreadable response (HTTP {response.status_code})"
                ) from None
        raise error_for(what, response)

    def call_unless_missing(self, what: str, method: str, path: str, **kw: Any) -> Any:
        """A call whose target may be gone: 404 returns None."""
        try:
            return self.call(what, method, path, **kw)
        except TbApiError as exc:
            if exc.status == 404:
                return None
            raise

    def pages(self, what: str, path: str, **params: str | int) -> Iterator[list[dict[str, Any]]]:
        """Each page's ``data`` of a ThingsBoard page link (``pageSize``, ``page``), until
        ``hasNext`` is false."""
        page = 0
        while True:
            body = self.call(
                what, "GET", path, params={**params, "pageSize": PAGE_SIZE, "page": page}
            )
            data = body.get("data") if isinstance(body, dict) else None
            yield [d for d in data or [] if isinstance(d, dict)]
            if not (isinstance(body, dict) and body.get("hasNext")):
                return
            page += 1

    # --- devices ------------------------------------------------------------------------------

    def find_device(self, name: str) -> dict[str, Any] | None:
        """The tenant's device named ``name``, or None: ``GET /api/tenant/devices?deviceName=``
        (getTenantDevice; served by every ThingsBoard from 3.x to 4.x, 4.x also documents it
        as ``/api/tenant/device``)."""
        found = self.call_unless_missing(
            "device lookup", "GET", "/api/tenant/devices", params={"deviceName": name}
        )
        with self._lock:
            if isinstance(found, dict) and found.get("name") == name:
                self._device_ids[name] = str(found["id"]["id"])
                return found
            self._device_ids.pop(name, None)
        return None

    def device_id(self, name: str) -> str | None:
        """The device's id, from this process's cache or :meth:`find_device`."""
        with self._lock:
            known = self._device_ids.get(name)
        if known:
            return known
        found = self.find_device(name)
        return str(found["id"]["id"]) if found else None

    def forget_device(self, name: str) -> None:
        """Drop a cached id (the device was deleted)."""
        with self._lock:
            self._device_ids.pop(name, None)

    def remember_device(self, name: str, device_id: str) -> None:
        """Cache a device's id (just created)."""
        with self._lock:
            self._device_ids[name] = device_id

    def credentials(self, device_id: str) -> dict[str, Any] | None:
        """``GET /api/device/{id}/credentials``; None when the device is gone."""
        found = self.call_unless_missing(
            "device credentials", "GET", f"/api/device/{quote(device_id)}/credentials"
        )
        return found if isinstance(found, dict) else None

    def attributes(self, device_id: str, keys: list[str]) -> dict[str, Any]:
        """{key: value} of the device's attributes (every scope) among ``keys``."""
        body = self.call_unless_missing(
            "attributes",
            "GET",
            f"/api/plugins/telemetry/DEVICE/{quote(device_id)}/values/attributes",
            params={"keys": ",".join(keys)},
        )
        return {
            str(item["key"]): item.get("value")
            for item in body or []
            if isinstance(item, dict) and "key" in item
        }

    def save_attributes(self, device_id: str, scope: str, values: Mapping[str, Any]) -> None:
        """``POST /api/plugins/telemetry/DEVICE/{id}/attributes/{scope}`` (a merge)."""
        self.call(
            f"save {scope} attributes",
            "POST",
            f"/api/plugins/telemetry/DEVICE/{quote(device_id)}/attributes/{scope}",
            json=dict(values),
        )

    def attribute_keys(self, device_id: str, scope: str) -> list[str]:
        """``GET /api/plugins/telemetry/DEVICE/{id}/keys/attributes/{scope}``."""
        body = self.call_unless_missing(
            f"{scope} attribute keys",
            "GET",
            f"/api/plugins/telemetry/DEVICE/{quote(device_id)}/keys/attributes/{scope}",
        )
        return [str(key) for key in body or []]

    def delete_attributes(self, device_id: str, scope: str, keys: list[str]) -> None:
        """``DELETE /api/plugins/telemetry/DEVICE/{id}/{scope}?keys=``."""
        self.call_unless_missing(
            f"delete {scope} attributes",
            "DELETE",
            f"/api/plugins/telemetry/DEVICE/{quote(device_id)}/{scope}",
            params={"keys": ",".join(keys)},
        )

    # --- device profiles ---------------------------------------------------------------------

    def profile_id(self, name: str, create: Callable[[], dict[str, Any]]) -> str:
        """The id of the device profile ``name``: cached, found, or created with ``create()``'s
        body (another creator winning the race is fine: found again)."""
        with self._lock:
            known = self._profiles.get(name)
        if known:
            return known
        with self._profile_lock:  # one thread creates; the others wait and reuse its answer
            known = self._profiles.get(name)
            if known:
                return known
            found = self._find_profile(name)
            if found is None:
                try:
                    created = self.call(
                        "create device profile", "POST", "/api/deviceProfile", json=create()
                    )
                    found = str(created["id"]["id"])
                except TbApiError as exc:
                    if not is_name_taken(exc):
                        raise
                    found = self._find_profile(name)
                    if found is None:
                        raise
            with self._lock:
                self._profiles[name] = found
            return found

    def _find_profile(self, name: str) -> str | None:
        for page in self.pages("device profile lookup", "/api/deviceProfiles", textSearch=name):
            for profile in page:
                if profile.get("name") == name:
                    return str(profile["id"]["id"])
        return None


def with_retries(call: Callable[[], _T], *, attempts: int = 5, base: float = 0.5) -> _T:
    """``call()``, retried on TransientError (honouring its Retry-After) a few times: for the
    long reads (inventory) that have no outbox to retry them."""
    for attempt in range(attempts):
        try:
            return call()
        except TransientError as exc:
            if attempt == attempts - 1:
                raise
            time.sleep(exc.retry_after if exc.retry_after is not None else base * 2**attempt)
    raise AssertionError("unreachable")


def error_for(what: str, response: httpx.Response) -> TransientError | TbApiError:
    """The classified error of a failed response (ThingsBoard's ``{"status", "message",
    "errorCode"}`` body when there is one)."""
    status = response.status_code
    message = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            message = str(body.get("message") or "")[:300]
    except ValueError:
        pass
    text = f"ThingsBoard {what}: HTTP {status}" + (f": {message}" if message else "")
    if status == 429 or status >= 500 or status == 408:
        return TransientError(
            text, retry_after=retry_after_seconds(response.headers.get("Retry-After"))
        )
    if status == 401:
        text += " (credentials refused: check the user, password or API key)"
    elif status == 403:
        text += " (permission denied: fleet needs a tenant administrator, see the docs)"
    return TbApiError(text, status=status, tb_message=message)
