"""IoT Hub's service REST API as fleet uses it: one request, its failure classified.

Failures (IoT Hub REST reference; control plane throttling doc): 429 (``ThrottlingException``)
and 5xx are :class:`TransientError` (``Retry-After`` honoured), connection errors and timeouts
too; 401/403 and other 4xx are :class:`HubError` (a ``PermanentError``) carrying the status and
the hub's error code (``ErrorCode:DeviceNotFound;...`` in the body's ``Message``), so callers
can treat 404 and 412 (etag mismatch) themselves.

Query paging (Query - Get Twins): ``POST /devices/query`` answers one page and, when more
follow, an ``x-ms-continuation`` header that the next request sends back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from fleet.cloud.azure.options import API_VERSION
from fleet.cloud.azure.sas import SasAuth
from fleet.cloud.base import PermanentError, TransientError, retry_after_seconds

CONTINUATION = "x-ms-continuation"
MAX_ITEM_COUNT = "x-ms-max-item-count"
_ERROR_CODE_RE = re.compile(r"ErrorCode:([A-Za-z]+)")


class HubError(PermanentError):
    """The hub refused a request (4xx other than 429): ``status`` and ``code``."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def error_code(response: httpx.Response) -> str:
    """The hub's error code from a failed response (``DeviceNotFound``...), or ``HTTP<n>``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("Message", "message", "errorCode", "ErrorCode"):
            value = body.get(key)
            if isinstance(value, str):
                found = _ERROR_CODE_RE.search(value)
                if found:
                    return found.group(1)
                if key in ("errorCode", "ErrorCode") and value:
                    return value
            if isinstance(value, int) and key in ("errorCode", "ErrorCode"):
                return str(value)
    return f"HTTP{response.status_code}"


def device_path(device_id: str) -> str:
    """``/devices/{id}`` with the id percent-encoded."""
    return "/devices/" + quote(device_id, safe="")


def twin_path(device_id: str) -> str:
    """``/twins/{id}`` with the id percent-encoded."""
    return "/twins/" + quote(device_id, safe="")


def etag_header(etag: str) -> str:
    """An ``If-Match`` value: the etag quoted as the hub expects (``"*"`` stays bare)."""
    if etag == "*" or etag.startswith('"'):
        return etag
    return f'"{etag}"'


class HubApi:
    """Requests to one hub; thread-safe (one shared ``httpx.Client``)."""

    def __init__(
        self,
        base_url: str | Callable[[], str],
        auth: SasAuth,
        *,
        timeout: float,
        client: httpx.Client | None = None,
    ) -> None:
        self._base = base_url
        self.auth = auth
        self._owns = client is None
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    @property
    def base_url(self) -> str:
        """Where requests go (from the option, else the connection string's host)."""
        return self._base() if callable(self._base) else self._base

    def close(self) -> None:
        """Close the client if this object built it."""
        if self._owns:
            self.client.close()

    def request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One request; a 2xx response (or one of ``accept``) is returned, anything else
        raised as classified."""
        url = f"{self.base_url}{path}"
        try:
            response = self.client.request(
                method,
                url,
                params={"api-version": API_VERSION},
                json=json,
                headers={"Accept": "application/json", **(headers or {})},
                auth=self.auth,
            )
        except httpx.TimeoutException:
            raise TransientError(f"{what}: IoT Hub timed out") from None
        except httpx.TransportError as exc:
            raise TransientError(
                f"{what}: cannot reach IoT Hub at {self.base_url} ({type(exc).__name__})"
            ) from None
        status = response.status_code
        if 200 <= status < 300 or status in accept:
            return response
        code = error_code(response)
        summary = f"{what}: IoT Hub answered {status} {code}"
        if status == 429 or status >= 500:
            retry = retry_after_seconds(response.headers.get("Retry-After"))
            raise TransientError(summary, retry_after=retry)
        raise HubError(summary, status=status, code=code)

    def json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        """``request`` and its JSON body (None when empty)."""
        response = self.request(method, path, what, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise TransientError(f"{what}: IoT Hub answered something other than JSON") from None

    def query(
        self,
        sql: str,
        what: str,
        *,
        page_size: int = 1000,
        pace: Callable[[], object] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every row of an IoT Hub query, page by page (``pace`` is called before each page)."""
        continuation: str | None = None
        while True:
            if pace is not None:
                pace()
            headers = {MAX_ITEM_COUNT: str(page_size)}
            if continuation:
                headers[CONTINUATION] = continuation
            response = self.request(
                "POST", "/devices/query", what, json={"query": sql}, headers=headers
            )
            try:
                rows = response.json()
            except ValueError:
                raise TransientError(
                    f"{what}: IoT Hub answered something other than JSON"
                ) from None
            if not isinstance(rows, list):
                raise PermanentError(f"{what}: IoT Hub's query answer is not a list")
            yield from (row for row in rows if isinstance(row, dict))
            continuation = response.headers.get(CONTINUATION)
            if not continuation:
                return
