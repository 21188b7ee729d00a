"""The AWS IoT call layer: one signed rest-json request, its errors classified.

Every call is plain HTTPS over httpx, SigV4-signed by botocore's signer
(:mod:`fleet.cloud.aws.sigv4`; service ``iot`` for the control plane, ``iotdata`` for device
shadows). Failures become :class:`TransientError` (throttling, 5xx, network) or
:class:`AwsApiError` (a permanent error, with AWS's error type in ``code``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from fleet.cloud.aws.sigv4 import BotocoreSigV4Auth, CredentialsError
from fleet.cloud.base import (
    PermanentError,
    TransientError,
    UnreachableError,
    retry_after_seconds,
)

REQUEST_TIMEOUT = httpx.Timeout(15.0, connect=5.0)

# Error types AWS returns as 4xx that are worth retrying.
_TRANSIENT_TYPES = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestTimeoutException",
        "ServiceUnavailableException",
        "InternalFailureException",
        "InternalException",
        "InternalServerException",
    }
)
_BAD_KEY_TYPES = frozenset({"UnrecognizedClientException", "InvalidClientTokenId"})
_BAD_SIGNATURE_TYPES = frozenset({"InvalidSignatureException", "SignatureDoesNotMatch"})
_EXPIRED_TYPES = frozenset({"ExpiredTokenException", "ExpiredToken", "RequestExpired"})
DENIED_TYPES = frozenset({"AccessDeniedException", "UnauthorizedException", "AccessDenied"})

# How a listing pages: (the request's query parameter, the response's key) of its token.
MARKER = ("marker", "nextMarker")
NEXT_TOKEN = ("nextToken", "nextToken")


class AwsApiError(PermanentError):
    """AWS refused a request with a permanent error; ``code`` is AWS's error type."""

    def __init__(self, message: str, *, code: str, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.body = dict(body)


def is_not_found(exc: AwsApiError) -> bool:
    """AWS says the resource does not exist (by error type or HTTP status)."""
    return exc.code == "ResourceNotFoundException" or exc.status == 404


def is_already_there(exc: AwsApiError) -> bool:
    """AWS says the resource exists already (a create raced another, or was repeated)."""
    return exc.code == "ResourceAlreadyExistsException"


def uri_label(value: str) -> str:
    """Percent-encode a URI label exactly like botocore's rest-json serializer (``:`` becomes
    ``%3A``), so what goes on the wire, and gets signed, is what boto3 would send."""
    return quote(value, safe="-._~")


def query_string(**params: str) -> str:
    """``?k=v&...`` pre-encoded and sorted: httpx sends it verbatim, so the signed query is
    the sent one and already in AWS's canonical form."""
    pairs = sorted((uri_label(k), uri_label(v)) for k, v in params.items())
    return "?" + "&".join(f"{k}={v}" for k, v in pairs) if pairs else ""


def parse_error(response: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    """(error type, message, JSON body) of an AWS error response.

    rest-json services put the type in ``x-amzn-ErrorType`` (``Type:http://internal...``,
    the part after ``:`` dropped) and/or the body's ``__type``/``code``; some front ends
    answer with an XML ``<Code>``.
    """
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    code = response.headers.get("x-amzn-errortype", "").split(":", 1)[0].strip()
    if not code:
        code = str(body.get("__type") or body.get("code") or body.get("Code") or "")
        code = code.rsplit("#", 1)[-1].split(":", 1)[0]
    message = str(body.get("message") or body.get("Message") or "")
    if not body and response.content:
        text = response.text
        if not code and (match := re.search(r"<Code>([^<]+)</Code>", text)):
            code = match.group(1)
        if match := re.search(r"<Message>([^<]+)</Message>", text):
            message = match.group(1)
    return code, message[:300], body


def error_for(operation: str, response: httpx.Response) -> TransientError | AwsApiError:
    """The classified error of a failed response, with a hint for credential problems."""
    code, message, body = parse_error(response)
    status = response.status_code
    text = f"AWS IoT {operation}: {code or 'HTTP ' + str(status)}"
    if message:
        text += f": {message}"
    if status == 429 or status >= 500 or code in _TRANSIENT_TYPES:
        return TransientError(
            text, retry_after=retry_after_seconds(response.headers.get("retry-after"))
        )
    if code in _BAD_KEY_TYPES:
        text += " (the access key is not known to AWS: check AWS_ACCESS_KEY_ID or profile)"
    elif code in _BAD_SIGNATURE_TYPES:
        text += " (the secret key does not match the access key, or the clock is off)"
    elif code in _EXPIRED_TYPES:
        text += " (temporary credentials expired: refresh them)"
    return AwsApiError(text, code=code or f"HTTP{status}", status=status, body=body)


class AwsApi:
    """Signed calls to one region's AWS IoT control plane and its device shadows.

    Thread-safe: the push engine calls one instance from many threads. ``client`` is an
    injected ``httpx.Client``; without one, a client is built on first use and closed by
    :meth:`close`.
    """

    def __init__(
        self,
        region: str,
        endpoint: str,
        *,
        profile: str | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.region = region
        self.endpoint = endpoint
        self.control_auth = BotocoreSigV4Auth("iot", region, profile=profile)
        self.data_auth = BotocoreSigV4Auth("iotdata", region, profile=profile)
        self._lock = threading.Lock()
        self._client = client
        self._owns_client = client is None

    @property
    def client(self) -> httpx.Client:
        """The HTTP client (built on first use: timeouts on every request)."""
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=REQUEST_TIMEOUT)
            return self._client

    def close(self) -> None:
        """Close the HTTP client if this object built it."""
        with self._lock:
            if self._owns_client and self._client is not None:
                self._client.close()
                self._client = None

    def call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        data_plane_base: str | None = None,
    ) -> dict[str, Any]:
        """One AWS call; returns the JSON body or raises a classified CloudError."""
        base = data_plane_base or self.endpoint
        auth = self.data_auth if data_plane_base else self.control_auth
        content = json.dumps(body).encode() if body is not None else None
        request_headers = {"Accept": "application/json", **(headers or {})}
        if content is not None:
            request_headers["Content-Type"] = "application/json"
        try:
            response = self.client.request(
                method, base + path, content=content, headers=request_headers, auth=auth
            )
        except CredentialsError as exc:
            raise PermanentError(str(exc)) from None
        except httpx.TimeoutException:
            raise TransientError(f"AWS IoT {operation}: timed out talking to {base}") from None
        except httpx.ConnectError as exc:  # refused, unknown host: nobody to retry against
            raise UnreachableError(
                f"AWS IoT {operation}: cannot reach {base} ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise TransientError(
                f"AWS IoT {operation}: cannot reach {base} ({type(exc).__name__})"
            ) from None
        if response.is_success:
            if not response.content:
                return {}
            try:
                parsed = response.json()
            except ValueError:
                raise TransientError(
                    f"AWS IoT {operation}: unreadable response (HTTP {response.status_code})"
                ) from None
            return parsed if isinstance(parsed, dict) else {}
        raise error_for(operation, response)

    def describe(self, operation: str, path: str) -> dict[str, Any] | None:
        """GET ``path``; None when AWS says the resource does not exist."""
        try:
            return self.call(operation, "GET", path)
        except AwsApiError as exc:
            if is_not_found(exc):
                return None
            raise

    def call_unless_missing(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """A call whose target may be gone already, which counts as done."""
        try:
            self.call(operation, method, path, body=body, headers=headers)
        except AwsApiError as exc:
            if not is_not_found(exc):
                raise

    def create_unless_present(
        self, operation: str, path: str, *, body: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """POST a create; None when AWS says the resource exists already."""
        try:
            return self.call(operation, "POST", path, body=body)
        except AwsApiError as exc:
            if is_already_there(exc):
                return None
            raise

    def pages(
        self,
        operation: str,
        method: str,
        path: str,
        token: tuple[str, str],
        **params: str,
    ) -> Iterator[dict[str, Any]]:
        """Each page of a listing: ``path`` with ``params`` in the query, plus the token that
        ``token`` names (request parameter, response key) from the second page on."""
        value: str | None = None
        while True:
            query = query_string(**params, **({token[0]: value} if value else {}))
            page = self.call(operation, method, path + query)
            yield page
            value = page.get(token[1]) or None
            if value is None:
                return
