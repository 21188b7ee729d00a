"""Shared access signatures for IoT Hub's service API, as an ``httpx.Auth``.

The token, as Microsoft's service SDK ``azure-iot-hub`` builds it (``azure/iot/hub/
sastoken.py``; tests/test_cloud_azure.py checks it byte for byte against that SDK)::

    SharedAccessSignature sr={quote_plus(host)}&sig={quote(b64(hmac))}&se={expiry}&skn={policy}

with ``hmac = HMAC-SHA256(b64decode(key), quote_plus(host) + "\\n" + expiry)``. The device
SDK encodes ``sr``/``sig`` differently; the hub accepts both, fleet follows the service SDK.

The connection string is read from its environment variable when a token is needed, never
stored; a token is reused until ``RENEW_BEFORE`` seconds before it expires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Generator
from urllib.parse import quote, quote_plus

import httpx

from fleet.cloud.azure.options import ConnectionString, parse_connection_string
from fleet.cloud.base import PermanentError, TransientError
from fleet.errors import InvalidInput

TOKEN_TTL = 3600  # seconds, the SDK's default
RENEW_BEFORE = 300  # a new token this long before the old one expires


def sas_token(resource: str, key: str, key_name: str | None, expiry: int) -> str:
    """The ``SharedAccessSignature`` for ``resource`` (a host name, not yet encoded), signed
    with ``key`` (base64) and valid until ``expiry`` (Unix seconds)."""
    uri = quote_plus(resource)
    message = f"{uri}\n{expiry}".encode()
    try:
        signing_key = base64.b64decode(key.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the SharedAccessKey is not base64") from None
    digest = hmac.new(signing_key, message, hashlib.sha256).digest()
    signature = quote(base64.b64encode(digest))
    token = f"SharedAccessSignature sr={uri}&sig={signature}&se={expiry}"
    return f"{token}&skn={key_name}" if key_name else token


class SasAuth(httpx.Auth):
    """Adds ``Authorization: SharedAccessSignature ...`` from the connection string in
    ``$env``; thread-safe (the outbox's workers share one). ``clock`` returns Unix seconds."""

    def __init__(self, env: str, *, clock: Callable[[], float] = time.time) -> None:
        self.env = env
        self.clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expiry = 0
        self._source: str | None = None  # a digest of the string the token was made from

    def connection(self) -> ConnectionString:
        """The parsed connection string (``TransientError`` while the variable is unset: the
        jobs wait for it; ``PermanentError`` when it is malformed). Names only in messages."""
        text = os.environ.get(self.env)
        if not text:
            raise TransientError(f"environment variable {self.env} is not set")
        try:
            return parse_connection_string(text, self.env)
        except InvalidInput as exc:
            raise PermanentError(str(exc)) from None

    def token(self) -> str:
        """A valid token, renewed ``RENEW_BEFORE`` seconds before expiry (or when the
        connection string changed)."""
        conn = self.connection()
        source = hashlib.sha256(
            repr((conn.host_name, conn.key_name, conn.key)).encode()
        ).hexdigest()
        now = self.clock()
        with self._lock:
            if self._token is None or source != self._source or now >= self._expiry - RENEW_BEFORE:
                expiry = int(now + TOKEN_TTL)
                try:
                    self._token = sas_token(conn.host_name, conn.key, conn.key_name, expiry)
                except ValueError as exc:
                    raise PermanentError(f"${self.env}: {exc}") from None
                self._expiry = expiry
                self._source = source
            return self._token

    @property
    def expiry(self) -> int:
        """When the current token expires (Unix seconds; 0 before the first)."""
        return self._expiry

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self.token()
        yield request
