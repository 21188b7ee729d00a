"""How fleet authenticates to ThingsBoard's REST API, as ``httpx.Auth`` flows.

* :class:`JwtAuth`: ``POST /api/auth/login`` with ``{"username", "password"}`` (the password
  read from an environment variable at login time, never stored or shown) returns
  ``{"token", "refreshToken"}``; every request carries ``X-Authorization: Bearer <token>``.
  A 401 (the access token expired) is answered once by ``POST /api/auth/token`` with
  ``{"refreshToken"}``, and if that is refused too (the refresh token expired), by a new
  login; then the request is sent again. Threads share one token: the first thread to see a
  401 renews it, the others reuse the new one.
* :class:`ApiKeyAuth`: ``X-Authorization: ApiKey <key>`` (ThingsBoard 4.3+), the key read
  from an environment variable on every request.

Source: ThingsBoard REST API docs ("REST API" → "JWT token", "API keys") and the
``tb-ce-client`` package's ``_auth.py`` (same endpoints, header and refresh order).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator

import httpx

from fleet.cloud.base import PermanentError, TransientError, retry_after_seconds

HEADER = "X-Authorization"
LOGIN_PATH = "/api/auth/login"
REFRESH_PATH = "/api/auth/token"


def _secret_from(env: str, what: str) -> str:
    value = os.environ.get(env)
    if not value:
        # Transient: jobs stay queued until the variable is exported. Name only.
        raise TransientError(f"environment variable {env} ({what}) is not set")
    return value


class ApiKeyAuth(httpx.Auth):
    """``X-Authorization: ApiKey <$env>`` on every request."""

    def __init__(self, env: str) -> None:
        self.env = env

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the header; a 401 is left to the caller (an API key cannot be renewed)."""
        request.headers[HEADER] = "ApiKey " + _secret_from(self.env, "the ThingsBoard API key")
        yield request

    def __repr__(self) -> str:
        return f"ApiKeyAuth(env={self.env!r})"


class JwtAuth(httpx.Auth):
    """JWT login with refresh (see the module docstring). Thread-safe."""

    requires_response_body = True

    def __init__(self, base_url: str, username: str, password_env: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password_env = password_env
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh: str | None = None
        self.logins = 0  # counters, for tests and the bench
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"JwtAuth(user={self.username!r}, password_env={self.password_env!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Send with the current token (logging in first if none); on 401 renew, resend."""
        token = self._token
        if token is None:
            token = yield from self._renew(None, refresh=False)
        request.headers[HEADER] = "Bearer " + token
        response = yield request
        if response.status_code != 401:
            return
        token = yield from self._renew(token, refresh=True)
        request.headers[HEADER] = "Bearer " + token
        yield request

    def _renew(
        self, seen: str | None, *, refresh: bool
    ) -> Generator[httpx.Request, httpx.Response, str]:
        with self._lock:
            if self._token is not None and self._token != seen:
                return self._token  # another thread renewed it meanwhile
            if refresh and self._refresh:
                response = yield httpx.Request(
                    "POST", self.base_url + REFRESH_PATH, json={"refreshToken": self._refresh}
                )
                if response.status_code == 200 and self._take(response):
                    self.refreshes += 1
                    return self._token or ""
                if response.status_code == 429 or response.status_code >= 500:
                    raise _transient("token refresh", response)
            password = _secret_from(self.password_env, "the ThingsBoard password")
            response = yield httpx.Request(
                "POST",
                self.base_url + LOGIN_PATH,
                json={"username": self.username, "password": password},
            )
            del password
            if response.status_code == 200 and self._take(response):
                self.logins += 1
                return self._token or ""
            if response.status_code == 429 or response.status_code >= 500:
                raise _transient("login", response)
            self._token = self._refresh = None
            raise PermanentError(
                f"ThingsBoard refused the login of {self.username!r} (HTTP "
                f"{response.status_code}): check the user and the password in "
                f"${self.password_env}"
            )

    def _take(self, response: httpx.Response) -> bool:
        try:
            body = response.json()
        except ValueError:
            return False
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            return False
        self._token = body["token"]
        refresh = body.get("refreshToken")
        self._refresh = refresh if isinstance(refresh, str) else None
        return True


def _transient(what: str, response: httpx.Response) -> TransientError:
    return TransientError(
        f"ThingsBoard {what}: HTTP {response.status_code}",
        retry_after=retry_after_seconds(response.headers.get("Retry-After")),
    )
