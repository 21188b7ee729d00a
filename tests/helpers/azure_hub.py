"""A strict local Azure IoT Hub (service API, api-version 2021-04-12) for tests and the bench.

Microsoft ships no IoT Hub emulator, so this server implements the documented contract that
fleet relies on, refusing whatever the documents say the hub refuses. Where each behaviour
comes from:

* Authentication (IoT Hub docs, "Control access to IoT Hub with shared access signatures"):
  ``Authorization: SharedAccessSignature sr=...&sig=...&se=...&skn=...``; ``sig`` is the
  base64 HMAC-SHA256, keyed with the policy's base64-decoded key, of the URL-encoded resource
  URI, a newline and the expiry; ``se`` must lie in the future; ``skn`` names the policy, whose
  permissions gate the call (registry read / registry write / service connect). 401
  ``IotHubUnauthorizedAccess`` otherwise; 403 when the policy lacks the permission.
* ``api-version`` query parameter on every call (IoT Hub REST API reference); unknown or
  missing: 400.
* ``PUT /devices/{id}`` (REST reference, Devices - Create Or Update Identity): body
  ``deviceId`` (equal to the path's), ``status`` enabled/disabled, ``authentication`` of type
  ``sas``/``selfSigned``/``certificateAuthority`` (self-signed needs a primary thumbprint, 40
  or 64 hex digits); without ``If-Match`` an existing device is 409 ``DeviceAlreadyExists``;
  ``If-Match`` other than ``*`` or the current etag is 412 ``PreconditionFailed``. Answers
  the identity with a new ``etag``. ``GET``: the identity or 404 ``DeviceNotFound``.
  ``DELETE``: needs ``If-Match`` (``*`` or the etag), 404 when absent, 204.
* ``POST /devices`` (Bulk Registry - Update Registry): a list of at most 100
  ExportImportDevice objects (``id``, ``importMode`` create / update / updateIfMatchETag /
  delete / deleteIfMatchETag, ``eTag``, ``status``, ``authentication``, ``tags``); answers
  200 ``{"isSuccessful": true, "errors": [], "warnings": []}``, or 400 with
  ``isSuccessful: false`` and one ``{deviceId, errorCode, errorStatus}`` per failed device
  (the others are applied).
* ``POST /devices/query`` (Query - Get Twins): body ``{"query": ...}``; twins as JSON,
  ``x-ms-max-item-count`` per page (at most 1000 here), ``x-ms-continuation`` in the answer
  when more follow, sent back by the client for the next page. Understands ``SELECT * FROM
  devices`` and ``... WHERE deviceId IN ['a', 'b']``.
* ``GET /twins/{id}``, ``PATCH /twins/{id}`` (Twin - Get / Update Twin): a JSON merge patch
  of ``tags`` and ``properties.desired``; ``If-Match`` (``*`` or the twin's etag) else 412.
* Throttling (IoT Hub docs, "IoT Hub quotas and throttling"): 429 ``ThrottlingException``
  with ``Retry-After``. Faults are injected on demand: ``state.faults`` is a queue of
  ``"429:N"``, ``"412"``, ``"500"``, ``"503"`` answered (in order) to the next requests whose
  ``METHOD path`` contains the given key (``state.faults["PUT /devices/dev-1"] = ["412"]``,
  ``"*"`` for any); ``state.max_page`` caps query pages below the client's
  ``x-ms-max-item-count`` (the hub may answer fewer);
  ``state.import_errors[id] = code`` makes the next import of that device fail with ``code``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote_plus, unquote, urlsplit

API_VERSION = "2021-04-12"
HOST = "fleet-test.azure-devices.net"
KEY_NAME = "registryReadWrite"
# A fixed test key (base64 of 32 bytes): for tests only.
KEY = base64.b64encode(hashlib.sha256(b"fleet azure test key").digest()).decode()
ALL_RIGHTS = frozenset({"RegistryRead", "RegistryWrite", "ServiceConnect"})
_THUMB_RE = re.compile(r"^([0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$")
_IN_RE = re.compile(r"^SELECT \* FROM devices WHERE deviceId IN \[(.*)\]$", re.S)
_MODES = {"create", "update", "updateIfMatchETag", "delete", "deleteIfMatchETag"}


def connection_string(key: str = KEY, key_name: str = KEY_NAME, host: str = HOST) -> str:
    """The hub's connection string for a policy."""
    return f"HostName={host};SharedAccessKeyName={key_name};SharedAccessKey={key}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "0Z")


def _error(code: str, text: str = "") -> dict[str, Any]:
    return {"Message": f"ErrorCode:{code};{text or code}", "ExceptionMessage": "Tracking ID:test"}


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            inner = result.get(key)
            result[key] = merge_patch(inner if isinstance(inner, dict) else {}, value)
        else:
            result[key] = value
    return result


class HubState:
    """Everything the hub holds; read and change it from tests under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.host = HOST
        self.policies: dict[str, tuple[str, frozenset[str]]] = {KEY_NAME: (KEY, ALL_RIGHTS)}
        self.devices: dict[str, dict[str, Any]] = {}  # identity as GET /devices answers it
        self.twins: dict[str, dict[str, Any]] = {}  # tags, properties, etag, connection state
        self.creations: Counter[str] = Counter()
        self.faults: dict[str, list[str]] = {}
        self.import_errors: dict[str, str] = {}
        self.requests: list[tuple[str, str, float]] = []  # method, path, monotonic time
        self.tokens: set[str] = set()  # every distinct SAS token seen
        self.import_sizes: list[int] = []
        self.latency = 0.0
        self.max_page = 1000

    def next_fault(self, path: str) -> str | None:
        with self.lock:
            for key, queue in self.faults.items():
                if queue and (key == "*" or key in path):
                    return queue.pop(0)
        return None

    def set_connection(self, device_id: str, connected: bool, firmware: str | None = None) -> None:
        """What a device connecting (and reporting its firmware) would change."""
        with self.lock:
            twin = self.twins[device_id]
            twin["connectionState"] = "Connected" if connected else "Disconnected"
            twin["lastActivityTime"] = twin["connectionStateUpdatedTime"] = _now()
            if firmware is not None:
                twin["properties"]["reported"]["firmware_version"] = firmware

    # --- the operations (called under lock) ---------------------------------------------

    def _new_identity(self, device_id: str, body: dict[str, Any]) -> dict[str, Any]:
        identity = {
            "deviceId": device_id,
            "generationId": uuid.uuid4().hex[:18],
            "etag": base64.b64encode(uuid.uuid4().bytes).decode(),
            "status": body.get("status", "enabled"),
            "statusReason": body.get("statusReason"),
            "connectionState": "Disconnected",
            "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
            "lastActivityTime": "0001-01-01T00:00:00Z",
            "authentication": body["authentication"],
            "capabilities": body.get("capabilities") or {"iotEdge": False},
        }
        return identity

    def upsert(self, device_id: str, body: dict[str, Any], create: bool) -> dict[str, Any]:
        old = self.devices.get(device_id)
        identity = self._new_identity(device_id, body)
        if old is not None:
            identity["generationId"] = old["generationId"]
            for key in ("connectionState", "connectionStateUpdatedTime", "lastActivityTime"):
                identity[key] = old[key]
        self.devices[device_id] = identity
        if old is None:
            self.creations[device_id] += 1
            self.twins[device_id] = {
                "etag": "AAAAAAAAAAE=",
                "version": 1,
                "tags": {},
                "properties": {"desired": {}, "reported": {}},
                "connectionState": "Disconnected",
                "lastActivityTime": "0001-01-01T00:00:00Z",
                "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
            }
        return identity

    def twin_row(self, device_id: str) -> dict[str, Any]:
        identity = self.devices[device_id]
        twin = self.twins[device_id]
        auth = identity["authentication"]
        return {
            "deviceId": device_id,
            "etag": twin["etag"],
            "deviceEtag": identity["etag"],
            "version": twin["version"],
            "status": identity["status"],
            "statusUpdateTime": "0001-01-01T00:00:00Z",
            "connectionState": twin["connectionState"],
            "lastActivityTime": twin["lastActivityTime"],
            "connectionStateUpdatedTime": twin["connectionStateUpdatedTime"],
            "cloudToDeviceMessageCount": 0,
            "authenticationType": auth["type"],
            "x509Thumbprint": auth.get("x509Thumbprint")
            or {"primaryThumbprint": None, "secondaryThumbprint": None},
            "capabilities": identity["capabilities"],
            "tags": twin["tags"],
            "properties": twin["properties"],
        }

    def patch_twin(self, device_id: str, patch: dict[str, Any]) -> None:
        twin = self.twins[device_id]
        if "tags" in patch:
            twin["tags"] = merge_patch(twin["tags"], patch["tags"] or {})
        desired = (patch.get("properties") or {}).get("desired")
        if isinstance(desired, dict):
            twin["properties"]["desired"] = merge_patch(twin["properties"]["desired"], desired)
        twin["version"] += 1
        twin["etag"] = base64.b64encode(uuid.uuid4().bytes).decode()


def identity_problem(device_id: str, body: Any) -> str | None:
    """Why an identity body breaks the documented shape, or None."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if body.get("deviceId", device_id) != device_id:
        return "deviceId differs from the path"
    if body.get("status", "enabled") not in ("enabled", "disabled"):
        return "status must be enabled or disabled"
    auth = body.get("authentication")
    if not isinstance(auth, dict) or auth.get("type") not in (
        "sas",
        "selfSigned",
        "certificateAuthority",
    ):
        return "authentication.type must be sas, selfSigned or certificateAuthority"
    if auth["type"] == "selfSigned":
        prints = auth.get("x509Thumbprint") or {}
        primary, secondary = prints.get("primaryThumbprint"), prints.get("secondaryThumbprint")
        if not isinstance(primary, str) or not _THUMB_RE.match(primary):
            return "selfSigned needs x509Thumbprint.primaryThumbprint (SHA-1 or SHA-256 hex)"
        if secondary is not None and not _THUMB_RE.match(str(secondary)):
            return "secondaryThumbprint must be SHA-1 or SHA-256 hex"
    return None


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    value = header.strip()
    return value == "*" or value.strip('"') == etag


class _Handler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    @property
    def state(self) -> HubState:
        return self.server.state

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _authorised(self, right: str) -> bool:
        """Check the SAS token (SAS security doc) and the policy's rights."""
        header = self.headers.get("Authorization") or ""
        prefix = "SharedAccessSignature "
        fields: dict[str, str] = {}
        if header.startswith(prefix):
            for part in header[len(prefix) :].split("&"):
                name, _, value = part.partition("=")
                fields[name] = value
        state = self.state
        policy = state.policies.get(fields.get("skn", ""))
        ok = policy is not None and {"sr", "sig", "se"} <= set(fields)
        if ok and policy is not None:
            key, rights = policy
            expected_sr = quote_plus(state.host)
            sr_ok = unquote(fields["sr"]).lower().startswith(state.host.lower())
            message = f"{fields['sr']}\n{fields['se']}".encode()
            digest = hmac.new(base64.b64decode(key), message, hashlib.sha256).digest()
            sig_ok = hmac.compare_digest(unquote(fields["sig"]), base64.b64encode(digest).decode())
            try:
                fresh = int(fields["se"]) > time.time()
            except ValueError:
                fresh = False
            ok = sr_ok and sig_ok and fresh and fields["sr"] == expected_sr
            if ok and right not in rights:
                self._send(403, _error("IotHubUnauthorizedAccess", f"policy lacks {right}"))
                return False
        if not ok:
            self._send(401, _error("IotHubUnauthorizedAccess", "Unauthorized"))
            return False
        with state.lock:
            state.tokens.add(header)
        return True

    def _handle(self, method: str) -> None:
        state = self.state
        parts = urlsplit(self.path)
        path = parts.path
        body = self._body() if method in ("PUT", "POST", "PATCH") else None
        with state.lock:
            state.requests.append((method, path, time.monotonic()))
        if state.latency:
            time.sleep(state.latency)
        if path == "/_stats":  # for the bench's separate process (no auth: test hook)
            with state.lock:
                stats = {
                    "creations": sum(state.creations.values()),
                    "devices": len(state.devices),
                    "requests": len(state.requests),
                }
            self._send(200, stats)
            return
        right = "RegistryRead" if method == "GET" or path == "/devices/query" else "RegistryWrite"
        if not self._authorised(right):
            return
        if parse_qs(parts.query).get("api-version") != [API_VERSION]:
            self._send(400, _error("InvalidProtocolVersion", "unsupported api-version"))
            return
        fault = state.next_fault(f"{method} {path}")
        if fault is not None:
            if fault.startswith("429"):
                after = fault.partition(":")[2] or "1"
                self._send(429, _error("ThrottlingException"), {"Retry-After": after})
                return
            if fault == "412":
                self._send(412, _error("PreconditionFailed", "etag mismatch"))
                return
            self._send(int(fault), _error("ServerError"))
            return
        status, payload, headers = self._route(method, path, body)
        self._send(status, payload, headers)

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str] | None]:
        if path == "/devices/query" and method == "POST":
            return self._query(body)
        if path == "/devices" and method == "POST":
            return self._import(body)
        for prefix, handler in (("/devices/", self._device), ("/twins/", self._twin)):
            if path.startswith(prefix) and "/" not in path[len(prefix) :]:
                return handler(method, unquote(path[len(prefix) :]), body)
        return 404, _error("NotFound", "no such route"), None

    def _device(self, method: str, device_id: str, body: Any) -> tuple[int, Any, Any]:
        state = self.state
        if_match = self.headers.get("If-Match")
        with state.lock:
            current = state.devices.get(device_id)
            if method == "GET":
                if current is None:
                    return 404, _error("DeviceNotFound"), None
                return 200, current, None
            if method == "DELETE":
                if current is None:
                    return 404, _error("DeviceNotFound"), None
                if not _etag_matches(if_match, current["etag"]):
                    return 412, _error("PreconditionFailed"), None
                del state.devices[device_id]
                del state.twins[device_id]
                return 204, None, None
            if method != "PUT":
                return 405, _error("MethodNotAllowed"), None
            problem = identity_problem(device_id, body)
            if problem:
                return 400, _error("ArgumentInvalid", problem), None
            if current is not None:
                if if_match is None:
                    return 409, _error("DeviceAlreadyExists"), None
                if not _etag_matches(if_match, current["etag"]):
                    return 412, _error("PreconditionFailed"), None
            return 200, state.upsert(device_id, body, create=current is None), None

    def _twin(self, method: str, device_id: str, body: Any) -> tuple[int, Any, Any]:
        state = self.state
        with state.lock:
            if device_id not in state.devices:
                return 404, _error("DeviceNotFound"), None
            if method == "GET":
                return 200, state.twin_row(device_id), None
            if method != "PATCH":
                return 405, _error("MethodNotAllowed"), None
            if not isinstance(body, dict) or set(body) - {"tags", "properties"}:
                return 400, _error("ArgumentInvalid", "a twin patch has tags/properties"), None
            if not _etag_matches(self.headers.get("If-Match"), state.twins[device_id]["etag"]):
                return 412, _error("PreconditionFailed"), None
            state.patch_twin(device_id, body)
            return 200, state.twin_row(device_id), None

    def _query(self, body: Any) -> tuple[int, Any, Any]:
        state = self.state
        sql = body.get("query") if isinstance(body, dict) else None
        if not isinstance(sql, str):
            return 400, _error("ArgumentInvalid", "body needs query"), None
        try:
            size = int(self.headers.get("x-ms-max-item-count") or 100)
        except ValueError:
            return 400, _error("ArgumentInvalid", "x-ms-max-item-count"), None
        size = max(1, min(size, 1000, state.max_page))
        with state.lock:
            ids = sorted(state.devices)
            match = _IN_RE.match(sql.strip())
            if match:
                wanted = set(re.findall(r"'([^']*)'", match.group(1)))
                ids = [i for i in ids if i in wanted]
            elif sql.strip() != "SELECT * FROM devices":
                return 400, _error("BadRequest", "query not understood by the test hub"), None
            token = self.headers.get("x-ms-continuation")
            start = int(base64.b64decode(token).decode()) if token else 0
            page = [state.twin_row(i) for i in ids[start : start + size]]
        headers = {}
        if start + size < len(ids):
            headers["x-ms-continuation"] = base64.b64encode(str(start + size).encode()).decode()
        return 200, page, headers

    def _import(self, body: Any) -> tuple[int, Any, Any]:
        state = self.state
        if not isinstance(body, list) or not body:
            return 400, _error("ArgumentInvalid", "a list of devices"), None
        if len(body) > 100:
            return 400, _error("TooManyDevices", "at most 100 devices per call"), None
        errors: list[dict[str, Any]] = []
        with state.lock:
            state.import_sizes.append(len(body))
            for item in body:
                device_id = str(item.get("id") or "") if isinstance(item, dict) else ""
                code = self._import_one(device_id, item)
                if code is not None:
                    errors.append({"deviceId": device_id, "errorCode": code, "errorStatus": code})
        result = {"isSuccessful": not errors, "errors": errors, "warnings": []}
        return (400 if errors else 200), result, None

    def _import_one(self, device_id: str, item: Any) -> str | None:
        state = self.state
        injected = state.import_errors.pop(device_id, None)
        if injected:
            return injected
        mode = item.get("importMode") if isinstance(item, dict) else None
        if not device_id or mode not in _MODES:
            return "ArgumentInvalid"
        current = state.devices.get(device_id)
        if mode.startswith("delete"):
            if current is None:
                return "DeviceNotFound"
            if mode == "deleteIfMatchETag" and item.get("eTag") != current["etag"]:
                return "PreconditionFailed"
            del state.devices[device_id]
            del state.twins[device_id]
            return None
        if identity_problem(device_id, {**item, "deviceId": device_id}):
            return "ArgumentInvalid"
        if mode == "create" and current is not None:
            return "DeviceAlreadyExists"
        if mode == "updateIfMatchETag":
            if current is None:
                return "DeviceNotFound"
            if item.get("eTag") != current["etag"]:
                return "PreconditionFailed"
        state.upsert(device_id, item, create=current is None)
        if "tags" in item:
            twin = state.twins[device_id]
            twin["tags"] = dict(item["tags"] or {})
            twin["version"] += 1
        return None

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_GET(self) -> None:
        self._handle("GET")


class HubServer(ThreadingHTTPServer):
    """The hub on 127.0.0.1; ``base`` is what ``--endpoint-url`` takes."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = HubState()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
