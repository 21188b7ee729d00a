"""The state of the strict local ThingsBoard (tests/helpers/thingsboard_server.py): users,
tokens, devices, credentials, profiles, attributes, OTA packages, scripted faults, and the
errors in ThingsBoard's ``{"status", "message", "errorCode"}`` shape. Tests read and arrange
it under ``lock``."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import Counter
from typing import Any


class Dropped(Exception):
    """Close the connection without an answer."""

    pass


class Reply(Exception):
    """The answer to send (raised from anywhere in a route)."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def error(status: int, message: str, code: int) -> Reply:
    return Reply(
        status,
        {"status": status, "message": message, "errorCode": code, "timestamp": now_ms()},
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def not_found() -> Reply:
    return error(404, "Requested item wasn't found!", 32)


def bad(message: str) -> Reply:
    return error(400, message, 31)


def ref(kind: str, value: str) -> dict[str, str]:
    return {"id": value, "entityType": kind}


def sha3_of_pem(pem: str) -> str:
    """ThingsBoard's X.509 credentials id of ``pem``."""
    trimmed = (
        pem.replace("-----BEGIN CERTIFICATE-----", "")
        .replace("\n", "")
        .replace("\r", "")
        .replace("-----END CERTIFICATE-----", "")
    )
    return hashlib.sha3_256(trimmed.encode()).hexdigest()


class TbState:
    """Everything the server knows; read it from tests under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tenant_id = str(uuid.uuid4())
        self.users: dict[str, tuple[str, str]] = {}  # email -> (password, authority)
        self.api_keys: dict[str, str] = {}  # key -> email
        self.tokens: dict[str, tuple[str, float]] = {}  # access token -> (email, expiry)
        self.refresh_tokens: dict[str, tuple[str, float]] = {}
        self.token_ttl = 900.0
        self.refresh_ttl = 3600.0
        self.devices: dict[str, dict[str, Any]] = {}
        self.credentials: dict[str, dict[str, Any]] = {}  # device id -> credentials
        self.profiles: dict[str, dict[str, Any]] = {}
        self.packages: dict[str, dict[str, Any]] = {}
        self.attributes: dict[str, dict[str, dict[str, tuple[Any, int]]]] = {}
        self.timeseries: dict[str, dict[str, tuple[int, Any]]] = {}
        self.faults: dict[str, list[str]] = {}
        self.creations: Counter[str] = Counter()  # device name -> devices created
        self.profile_creations: Counter[str] = Counter()
        self.logins = 0
        self.refreshes = 0
        # (method, path, query, status, monotonic time)
        self.requests: list[tuple[str, str, str, int, float]] = []
        self.bodies: list[tuple[str, str, Any]] = []  # (model, route, body) of each request
        self.violations: list[str] = []
        self.latency = 0.0  # seconds each request takes (the bench: a network's worth)
        self.add_profile("default", default=True)

    # --- set-up helpers for tests -----------------------------------------------------------

    def add_user(self, email: str, password: str, authority: str = "TENANT_ADMIN") -> None:
        with self.lock:
            self.users[email] = (password, authority)

    def add_api_key(self, key: str, email: str) -> None:
        with self.lock:
            self.api_keys[key] = email

    def add_profile(self, name: str, *, default: bool = False) -> str:
        profile_id = str(uuid.uuid4())
        with self.lock:
            self.profiles[profile_id] = {
                "id": ref("DEVICE_PROFILE", profile_id),
                "createdTime": now_ms(),
                "tenantId": ref("TENANT", self.tenant_id),
                "name": name,
                "type": "DEFAULT",
                "transportType": "DEFAULT",
                "provisionType": "DISABLED",
                "default": default,
                "profileData": {
                    "configuration": {"type": "DEFAULT"},
                    "transportConfiguration": {"type": "DEFAULT"},
                    "provisionConfiguration": {"type": "DISABLED"},
                },
            }
        return profile_id

    def expire_tokens(self, *, refresh_too: bool = False) -> None:
        """Every access token (and refresh token) expires now."""
        with self.lock:
            self.tokens = {t: (u, 0.0) for t, (u, _e) in self.tokens.items()}
            if refresh_too:
                self.refresh_tokens = {t: (u, 0.0) for t, (u, _e) in self.refresh_tokens.items()}

    def device_by_name(self, name: str) -> dict[str, Any] | None:
        with self.lock:
            return next((d for d in self.devices.values() if d["name"] == name), None)

    def set_attribute(self, device_id: str, scope: str, key: str, value: Any) -> None:
        with self.lock:
            self.attributes.setdefault(device_id, {}).setdefault(scope, {})[key] = (
                value,
                now_ms(),
            )

    def attribute(self, device_id: str, scope: str, key: str) -> Any:
        with self.lock:
            return self.attributes.get(device_id, {}).get(scope, {}).get(key, (None, 0))[0]

    def add_device(self, name: str, pem: str | None = None, token: str | None = None) -> str:
        """A device created behind fleet's back (console, another tool)."""
        with self.lock:
            profile = next(p for p in self.profiles.values() if p["name"] == "default")
            return self._create_device(
                {"name": name, "type": "default"},
                profile["id"]["id"],
                {"credentialsType": "X509_CERTIFICATE", "credentialsValue": pem}
                if pem
                else {"credentialsType": "ACCESS_TOKEN", "credentialsId": token or "tok"},
            )

    def next_fault(self, key: str) -> str | None:
        with self.lock:
            queue = self.faults.get(key)
            return queue.pop(0) if queue else None

    # --- the model --------------------------------------------------------------------------

    def _create_device(self, device: dict[str, Any], profile_id: str, creds: dict[str, Any]) -> str:
        device_id = str(uuid.uuid4())
        if creds.get("credentialsType") == "X509_CERTIFICATE":
            value = str(creds.get("credentialsValue") or "")
            if "BEGIN CERTIFICATE" not in value:
                raise bad("Failed to decode X509 certificate!")
            derived = sha3_of_pem(value)
            if creds.get("credentialsId") not in (None, derived):
                raise bad("Certificate credentials id does not match the certificate!")
            creds_id = derived
        else:
            creds_id = str(creds.get("credentialsId") or uuid.uuid4().hex[:20])
            value = None
        if any(c["credentialsId"] == creds_id for c in self.credentials.values()):
            raise bad("Specified credentials are already registered!")
        profile = self.profiles[profile_id]
        self.devices[device_id] = {
            "id": ref("DEVICE", device_id),
            "createdTime": now_ms(),
            "tenantId": ref("TENANT", self.tenant_id),
            "customerId": ref("CUSTOMER", "13814000-1dd2-11b2-8080-808080808080"),
            "name": device["name"],
            "type": profile["name"],
            "label": device.get("label"),
            "deviceProfileId": ref("DEVICE_PROFILE", profile_id),
            "additionalInfo": device.get("additionalInfo"),
            "version": 1,
        }
        self.credentials[device_id] = {
            "id": {"id": str(uuid.uuid4())},
            "createdTime": now_ms(),
            "deviceId": ref("DEVICE", device_id),
            "credentialsType": creds.get("credentialsType"),
            "credentialsId": creds_id,
            "credentialsValue": value,
            "version": 1,
        }
        self.creations[device["name"]] += 1
        self.set_attribute(device_id, "SERVER_SCOPE", "active", False)
        return device_id
