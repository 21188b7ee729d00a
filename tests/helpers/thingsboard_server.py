"""A strict local ThingsBoard for the tests and the bench (ThingsBoard itself cannot run
here): ``ThreadingHTTPServer`` on 127.0.0.1 implementing the REST endpoints fleet uses, in
their documented shapes, and refusing what real ThingsBoard refuses.

Where each behaviour comes from (ThingsBoard CE docs, "REST API" reference = the Swagger UI
of a ThingsBoard server, mirrored by the ``tb-ce-client`` package's models and API classes):

* Auth ("REST API" → "JWT token"; ``tb-ce-client`` ``_auth.py``): ``POST /api/auth/login``
  ``{"username","password"}`` → ``{"token","refreshToken"}``; every other call needs
  ``X-Authorization: Bearer <token>``; an expired or unknown token answers 401
  ``{"status":401,"message":"Token has expired","errorCode":11}``; ``POST /api/auth/token``
  ``{"refreshToken"}`` issues a new pair, 401 when the refresh token expired. API keys
  (ThingsBoard 4.3 "API keys"): ``X-Authorization: ApiKey <key>``. ``GET /api/auth/user``.
* Devices (DeviceController, "Create Device (saveDevice) with credentials"): ``POST
  /api/device-with-credentials?nameConflictPolicy=FAIL|UNIQUIFY`` (FAIL when omitted): a
  taken name is 400 ``Device with such name already exists!``; X.509 credentials: the
  ``credentialsId`` is SHA3-256 of the trimmed PEM (``EncryptionUtil.certTrimNewLines`` +
  ``getSha3Hash``), a given one must match, and it is unique across devices (400
  ``Specified credentials are already registered!``); the profile must exist. ``GET
  /api/device/{id}``, ``DELETE /api/device/{id}``, ``POST /api/device`` (update),
  ``GET /api/device/{id}/credentials``, ``POST /api/device/credentials`` (the credentials'
  ``id`` must be the device's). Unknown ids: 404 ``Requested item wasn't found!``.
* ``GET /api/tenant/devices?deviceName=`` (getTenantDevice; 4.x also ``/api/tenant/device``):
  the device of that exact name, 404 when there is none.
* Page links (``PageData``: ``data``, ``totalPages``, ``totalElements``, ``hasNext``):
  ``GET /api/tenant/devices``, ``GET /api/tenant/deviceInfos`` (DeviceInfo: with ``active``,
  ``deviceProfileName``), ``GET /api/deviceProfiles``, ``GET
  /api/otaPackages/{profileId}/{type}`` require ``pageSize`` and ``page``; ``textSearch``
  matches name (or title) substrings, case-insensitively.
* Device profiles (DeviceProfileController "Create Or Update Device Profile"): unique name
  (400), ``profileData`` required; a ``default`` profile exists in every tenant.
* Attributes (TelemetryController, "Working with telemetry → attributes"): ``POST
  /api/plugins/telemetry/DEVICE/{id}/attributes/{SERVER_SCOPE|SHARED_SCOPE}`` with a JSON
  object (CLIENT_SCOPE is the device's: 400); ``GET .../values/attributes?keys=`` lists
  ``{"lastUpdateTs","key","value"}`` of all three scopes; ``GET .../keys/attributes/{scope}``
  lists keys; ``DELETE .../DEVICE/{id}/{scope}?keys=`` deletes attributes;
  ``GET .../values/timeseries?keys=`` → ``{"key": [{"ts","value"}]}``.
* OTA ("OTA updates" guide; OtaPackageController): ``POST /api/otaPackage`` (title+version
  unique per profile and type: 400); assigning a device's ``firmwareId`` (same profile,
  FIRMWARE type) makes the server write the shared attributes ``fw_title``, ``fw_version``,
  ``fw_tag``, ``fw_url`` (URL packages) or ``fw_size``/``fw_checksum``/
  ``fw_checksum_algorithm``, as ``DefaultOtaPackageStateService`` does; unassigning removes
  them.

Every request body is checked against the ``tb-ce-client`` model of its endpoint
(``helpers.tb_models``): a body that does not round-trip is refused with 400 and recorded in
``state.violations``; every response body of a modelled shape is checked too.

Faults (``state.faults[key] = [...]``; key = a device name for its create, or ``"*"`` for any
authenticated call): ``500``/``503``, ``429:N`` (Retry-After N s), ``drop_before`` (close
without applying), ``drop_after`` (apply, then close without answering), ``expire`` (the
caller's token expires just before the call).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from helpers import tb_models
from helpers.thingsboard_state import (
    Dropped,
    Reply,
    TbState,
    bad,
    error,
    not_found,
    now_ms,
    ref,
    sha3_of_pem,
)


class _Handler(BaseHTTPRequestHandler):
    server: ThingsBoardServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    @property
    def state(self) -> TbState:
        return self.server.state

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if (raw and body is None) or (method == "POST" and not raw):
            with self.state.lock:
                self.state.violations.append(
                    f"{method} {path}: unreadable body ({len(raw)} of "
                    f"{self.headers.get('Content-Length')} bytes: {raw[:60]!r})"
                )

        def record(status: int) -> None:  # before answering: the client may look at once
            with self.state.lock:
                self.state.requests.append((method, path, parts.query, status, time.monotonic()))

        try:
            self._route(method, path, query, body)
        except Reply as reply:
            record(reply.status)
            self._send(reply.status, reply.body, reply.headers)
        except Dropped:
            record(0)
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        except Exception as exc:  # a bug in the server: answer 500, keep it visible
            record(500)
            with self.state.lock:
                self.state.violations.append(f"server error {type(exc).__name__}: {exc}")
            self._send(500, {"status": 500, "message": "test server bug", "errorCode": 2}, {})

    def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # --- checks -------------------------------------------------------------------------------

    def _validate(self, method: str, route: str, body: Any) -> None:
        model = tb_models.REQUEST_MODELS.get((method, route))
        if model is None:
            return
        found = tb_models.problems(model, body)
        with self.state.lock:
            self.state.bodies.append((model, route, body))
            self.state.violations.extend(f"{method} {route}: {p}" for p in found)
        if found:
            raise bad("; ".join(found)[:500])

    def _check_response(self, model: str, body: Any) -> Any:
        found = tb_models.problems(model, body)
        if found:
            with self.state.lock:
                self.state.violations.extend(f"server response {p}" for p in found)
        return body

    def _user(self) -> str:
        header = self.headers.get("X-Authorization") or ""
        scheme, _, value = header.partition(" ")
        with self.state.lock:
            if scheme == "ApiKey" and value in self.state.api_keys:
                return self.state.api_keys[value]
            if scheme == "Bearer" and value in self.state.tokens:
                email, expiry = self.state.tokens[value]
                if time.time() < expiry:
                    return email
                raise error(401, "Token has expired", 11)
        raise error(401, "Authentication failed", 10)

    def _fault(self, key: str) -> str | None:
        fault = self.state.next_fault(key)
        if fault is None:
            return None
        if fault in ("500", "503"):
            raise error(int(fault), "Internal server error", 2)
        if fault.startswith("429"):
            seconds = fault.partition(":")[2] or "1"
            raise Reply(
                429,
                {"status": 429, "message": "Too many requests", "errorCode": 33},
                {"Retry-After": seconds},
            )
        if fault == "drop_before":
            raise Dropped
        return fault

    def _page(self, query: dict[str, list[str]], items: list[dict[str, Any]], key: str) -> Any:
        try:
            size = int(query["pageSize"][0])
            page = int(query["page"][0])
        except (KeyError, ValueError):
            raise bad("Required request parameter 'pageSize' and 'page' are not present") from None
        if size < 1 or page < 0:
            raise bad("Page size and page must be positive")
        search = (query.get("textSearch") or [""])[0].lower()
        chosen = [i for i in items if search in str(i.get(key, "")).lower()]
        chosen.sort(key=lambda i: (i.get("createdTime", 0), str(i.get(key))))
        total = len(chosen)
        pages = (total + size - 1) // size
        return {
            "data": chosen[page * size : (page + 1) * size],
            "totalPages": pages,
            "totalElements": total,
            "hasNext": (page + 1) < pages,
        }

    # --- routes -------------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> None:
        state = self.state
        if state.latency:
            time.sleep(state.latency)
        if method == "GET" and path == "/_stats":  # the bench's view (not ThingsBoard's API)
            with state.lock:
                stats = {
                    "creations": sum(state.creations.values()),
                    "requests": len(state.requests),
                    "logins": state.logins,
                    "refreshes": state.refreshes,
                    "violations": state.violations[:20],
                }
            raise Reply(200, stats)
        if method == "POST" and path in ("/api/auth/login", "/api/auth/token"):
            self._validate(method, path, body)
            raise Reply(200, self._auth_call(path, body))
        if (self.state.faults.get("*") or [None])[0] == "expire":
            state.next_fault("*")
            state.expire_tokens()
        self._user()
        drop_after = self._fault("*") == "drop_after"
        with state.lock:
            reply = self._dispatch(method, path, query, body)
        if drop_after:
            raise Dropped
        raise reply

    def _auth_call(self, path: str, body: dict[str, Any]) -> dict[str, str]:
        state = self.state
        with state.lock:
            if path == "/api/auth/login":
                user = state.users.get(str(body.get("username")))
                if user is None or user[0] != body.get("password"):
                    raise error(401, "Invalid username or password", 10)
                email = str(body["username"])
                state.logins += 1
            else:
                found = state.refresh_tokens.pop(str(body.get("refreshToken")), None)
                if found is None or time.time() >= found[1]:
                    raise error(401, "Token has expired", 11)
                email = found[0]
                state.refreshes += 1
            token = self._jwt(email, state.token_ttl)
            refresh = self._jwt(email, state.refresh_ttl)
            state.tokens[token] = (email, time.time() + state.token_ttl)
            state.refresh_tokens[refresh] = (email, time.time() + state.refresh_ttl)
        return self._check_response("LoginResponse", {"token": token, "refreshToken": refresh})

    @staticmethod
    def _jwt(email: str, ttl: float) -> str:
        def part(data: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

        now = int(time.time())
        claims = {"sub": email, "iat": now, "exp": now + int(ttl), "jti": uuid.uuid4().hex}
        return f"{part({'alg': 'HS512'})}.{part(claims)}.{uuid.uuid4().hex}"

    def _dispatch(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Reply:
        state = self.state
        segments = [unquote(s) for s in path.split("/")[1:]]
        route = path
        if method == "GET" and path == "/api/auth/user":
            email = self._user()
            user = {
                "email": email,
                "authority": state.users.get(email, ("", "TENANT_ADMIN"))[1],
                "name": email,
                "tenantId": ref("TENANT", state.tenant_id),
            }
            return Reply(200, self._check_response("User", user))
        if (
            method == "GET"
            and path in ("/api/tenant/devices", "/api/tenant/device")
            and ("deviceName" in query)
        ):
            device = state.device_by_name(query["deviceName"][0])
            if device is None:
                raise not_found()
            return Reply(200, self._check_response("Device", device))
        if method == "GET" and path == "/api/tenant/devices":
            page = self._page(query, list(state.devices.values()), "name")
            return Reply(200, self._check_response("PageDataDevice", page))
        if method == "GET" and path == "/api/tenant/deviceInfos":
            infos = [
                {
                    **d,
                    "active": state.attribute(d["id"]["id"], "SERVER_SCOPE", "active") is True,
                    "deviceProfileName": d["type"],
                    "customerIsPublic": False,
                }
                for d in state.devices.values()
            ]
            page = self._page(query, infos, "name")
            return Reply(200, self._check_response("PageDataDeviceInfo", page))
        if method == "GET" and path == "/api/deviceProfiles":
            page = self._page(query, list(state.profiles.values()), "name")
            return Reply(200, self._check_response("PageDataDeviceProfile", page))
        if method == "POST" and path == "/api/deviceProfile":
            self._validate(method, route, body)
            if "id" in body:
                raise bad("fleet's test server creates profiles only")
            if not body.get("profileData"):
                raise bad("Device profile data should be specified!")
            if any(p["name"] == body["name"] for p in state.profiles.values()):
                raise bad("Device profile with such name already exists!")
            profile_id = state.add_profile(str(body["name"]))
            state.profile_creations[str(body["name"])] += 1
            return Reply(200, state.profiles[profile_id])
        if method == "POST" and path == "/api/device-with-credentials":
            self._validate(method, route, body)
            policy = (query.get("nameConflictPolicy") or ["FAIL"])[0]
            if policy not in ("FAIL", "UNIQUIFY"):
                raise bad(f"Invalid nameConflictPolicy {policy!r}")
            device, creds = body["device"], body["credentials"]
            fault = self._fault(str(device.get("name")))
            if "id" in device:
                raise bad("fleet's test server creates devices only here")
            if state.device_by_name(device["name"]) is not None:
                if policy == "FAIL":
                    raise bad("Device with such name already exists!")
                device = {**device, "name": f"{device['name']}_{uuid.uuid4().hex[:6]}"}
            profile_ref = device.get("deviceProfileId") or {}
            profile_id = profile_ref.get("id")
            if profile_id not in state.profiles:
                raise bad(
                    "Device profile with such id does not exist!"
                    if profile_id
                    else "Device profile is required"
                )
            device_id = state._create_device(device, profile_id, creds)
            if fault == "drop_after":
                raise Dropped
            return Reply(200, self._check_response("Device", state.devices[device_id]))
        if (
            segments[:2] == ["api", "device"]
            and len(segments) == 3
            and segments[2] != "credentials"
        ):
            device_id = segments[2]
            if device_id not in state.devices:
                raise not_found()
            if method == "GET":
                return Reply(200, self._check_response("Device", state.devices[device_id]))
            if method == "DELETE":
                del state.devices[device_id]
                state.credentials.pop(device_id, None)
                state.attributes.pop(device_id, None)
                return Reply(200)
        if (
            method == "GET"
            and len(segments) == 4
            and segments[:2] == ["api", "device"]
            and segments[3] == "credentials"
        ):
            creds = state.credentials.get(segments[2])
            if creds is None:
                raise not_found()
            return Reply(200, self._check_response("DeviceCredentials", creds))
        if method == "POST" and path == "/api/device/credentials":
            self._validate(method, route, body)
            device_id = str(body["deviceId"]["id"])
            current = state.credentials.get(device_id)
            if current is None:
                raise not_found()
            if body["id"]["id"] != current["id"]["id"]:
                raise bad("Can't update credentials of another device!")
            new = dict(
                current,
                credentialsType=body["credentialsType"],
                credentialsId=body["credentialsId"],
                credentialsValue=body.get("credentialsValue"),
            )
            if new["credentialsType"] == "X509_CERTIFICATE":
                new["credentialsId"] = sha3_of_pem(str(new["credentialsValue"]))
            if any(
                c["credentialsId"] == new["credentialsId"]
                for k, c in state.credentials.items()
                if k != device_id
            ):
                raise bad("Specified credentials are already registered!")
            state.credentials[device_id] = new
            return Reply(200, new)
        if method == "POST" and path == "/api/device":
            self._validate(method, route, body)
            return Reply(200, self._update_device(body))
        if segments[:3] == ["api", "plugins", "telemetry"] and len(segments) >= 6:
            return self._telemetry(method, segments, query, body)
        if method == "GET" and segments[:2] == ["api", "otaPackages"] and len(segments) == 4:
            items = [
                p
                for p in state.packages.values()
                if p["deviceProfileId"]["id"] == segments[2] and p["type"] == segments[3]
            ]
            page = self._page(query, items, "title")
            return Reply(200, self._check_response("PageDataOtaPackageInfo", page))
        if method == "POST" and path == "/api/otaPackage":
            self._validate(method, route, body)
            return Reply(200, self._create_package(body))
        raise not_found()

    def _update_device(self, body: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        device_id = (body.get("id") or {}).get("id")
        current = state.devices.get(str(device_id))
        if current is None:
            raise not_found()
        if body.get("name") != current["name"]:
            raise bad("fleet never renames devices")
        firmware = (body.get("firmwareId") or {}).get("id")
        old = (current.get("firmwareId") or {}).get("id")
        if firmware is not None:
            package = state.packages.get(firmware)
            if package is None:
                raise bad("Can't assign non-existent firmware!")
            if package["type"] != "FIRMWARE":
                raise bad("Can't assign firmware with type: " + package["type"])
            if package["deviceProfileId"] != current["deviceProfileId"]:
                raise bad("Can't assign firmware with different deviceProfile!")
        updated = {k: v for k, v in current.items() if k != "firmwareId"}
        if firmware is not None:
            updated["firmwareId"] = ref("OTA_PACKAGE", firmware)
        updated["version"] = int(current.get("version", 1)) + 1
        state.devices[str(device_id)] = updated
        if firmware != old:
            self._push_firmware_attributes(str(device_id), state.packages.get(firmware or ""))
        return updated

    def _push_firmware_attributes(self, device_id: str, package: dict[str, Any] | None) -> None:
        shared = self.state.attributes.setdefault(device_id, {}).setdefault("SHARED_SCOPE", {})
        for key in (
            "fw_title",
            "fw_version",
            "fw_tag",
            "fw_url",
            "fw_size",
            "fw_checksum",
            "fw_checksum_algorithm",
        ):
            shared.pop(key, None)
        if package is None:
            return
        values = {
            "fw_title": package["title"],
            "fw_version": package["version"],
            "fw_tag": f"{package['title']} {package['version']}",
        }
        if package.get("url"):
            values["fw_url"] = package["url"]
        else:
            values.update(
                fw_size=package.get("dataSize"),
                fw_checksum=package.get("checksum"),
                fw_checksum_algorithm=package.get("checksumAlgorithm"),
            )
        for key, value in values.items():
            shared[key] = (value, now_ms())

    def _create_package(self, body: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        profile_id = (body.get("deviceProfileId") or {}).get("id")
        if profile_id not in state.profiles:
            raise bad("OTA package should be assigned to an existing device profile!")
        for field in ("title", "version", "type"):
            if not body.get(field):
                raise bad(f"OTA package {field} should be specified!")
        if body.get("usesUrl") and not body.get("url"):
            raise bad("OTA package URL should be specified!")
        for package in state.packages.values():
            if (
                package["deviceProfileId"]["id"],
                package["type"],
                package["title"],
                package["version"],
            ) == (profile_id, body["type"], body["title"], body["version"]):
                raise bad("OtaPackage with such title and version already exists!")
        package_id = str(uuid.uuid4())
        package = {k: v for k, v in body.items() if k != "usesUrl"}
        package.update(
            id=ref("OTA_PACKAGE", package_id),
            createdTime=now_ms(),
            tenantId=ref("TENANT", state.tenant_id),
            hasData=bool(body.get("url")),
        )
        state.packages[package_id] = package
        return self._check_response("OtaPackageInfo", package)

    def _telemetry(
        self, method: str, segments: list[str], query: dict[str, list[str]], body: Any
    ) -> Reply:
        state = self.state
        entity_type, device_id = segments[3], segments[4]
        if entity_type != "DEVICE":
            raise bad("fleet's test server keeps device attributes only")
        if device_id not in state.devices:
            raise not_found()
        rest = segments[5:]
        if method == "POST" and len(rest) == 2 and rest[0] == "attributes":
            scope = rest[1]
            if scope not in ("SERVER_SCOPE", "SHARED_SCOPE"):
                raise bad(f"Invalid attribute scope: {scope}")
            if not isinstance(body, dict) or not body:
                raise bad("Invalid request body: a non-empty JSON object is expected")
            with state.lock:
                state.bodies.append(("attributes", "/api/plugins/telemetry/.../attributes", body))
            for key, value in body.items():
                if not isinstance(key, str) or not re.match(r"^\S.{0,254}$", key):
                    raise bad(f"Invalid attribute key {key!r}")
                state.set_attribute(device_id, scope, key, value)
            return Reply(200)
        keys = [k for k in (query.get("keys") or [""])[0].split(",") if k]
        if method == "GET" and len(rest) == 3 and rest[:2] == ["keys", "attributes"]:
            return Reply(200, sorted(state.attributes.get(device_id, {}).get(rest[2], {})))
        if method == "DELETE" and len(rest) == 1:
            if rest[0] not in ("SERVER_SCOPE", "SHARED_SCOPE", "CLIENT_SCOPE"):
                raise bad(f"Invalid attribute scope: {rest[0]}")
            if not keys:
                raise bad("Required request parameter 'keys' is not present")
            for key in keys:
                state.attributes.get(device_id, {}).get(rest[0], {}).pop(key, None)
            return Reply(200)
        if method == "GET" and rest == ["values", "attributes"]:
            found = []
            for scope in ("CLIENT_SCOPE", "SHARED_SCOPE", "SERVER_SCOPE"):
                for key, (value, ts) in state.attributes.get(device_id, {}).get(scope, {}).items():
                    if not keys or key in keys:
                        found.append({"lastUpdateTs": ts, "key": key, "value": value})
            return Reply(200, found)
        if method == "GET" and rest == ["values", "timeseries"]:
            series = state.timeseries.get(device_id, {})
            return Reply(
                200, {k: [{"ts": series[k][0], "value": series[k][1]}] for k in keys if k in series}
            )
        raise not_found()


class ThingsBoardServer(ThreadingHTTPServer):
    """The server on 127.0.0.1 (port 0: the OS picks); ``url`` is its base URL."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        if not tb_models.available():
            raise RuntimeError("tb-ce-client is not installed (pip install -e .[test])")
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = TbState()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ThingsBoardServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
