"""A real HTTP device registry for tests and the bench: ``ThreadingHTTPServer`` on 127.0.0.1.

It behaves like a careful in-house registry: ``PUT /devices/{id}`` upserts (same certificate =
200, different = 409), honours ``Idempotency-Key`` (a repeated key replays the first
response without applying anything again), ``DELETE`` removes (404 when absent), ``GET``
returns status fields, ``OPTIONS`` answers 204. It counts how often each device was really
created, so tests can assert "registered exactly once".

Faults are scripted per device: ``faults["pump-1"] = ["500", "429:2", "429:date", "slow",
"drop_before", "drop_after"]`` makes its next requests fail in that order:
``500`` (server error), ``429:N`` (Retry-After N seconds), ``429:date`` (Retry-After as an
HTTP date 1 to 2 s ahead), ``slow`` (apply, then answer after ``slow_seconds``, past the client's
timeout), ``drop_before`` (close the connection without applying), ``drop_after`` (apply, then
close without answering), ``400`` (permanent).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


class RegistryState:
    """Everything the server knows; read it from tests (under ``lock``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.devices: dict[str, dict[str, Any]] = {}
        self.creations: Counter[str] = Counter()
        self.deletions: Counter[str] = Counter()
        self.responses: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self.faults: dict[str, list[str]] = {}
        self.status: dict[str, dict[str, Any]] = {}
        # (method, device id or None, Idempotency-Key, monotonic arrival time)
        self.requests: list[tuple[str, str | None, str | None, float]] = []
        self.required_headers: dict[str, str] = {}
        self.latency = 0.0
        self.slow_seconds = 1.0

    def next_fault(self, device_id: str) -> str | None:
        with self.lock:
            queue = self.faults.get(device_id)
            return queue.pop(0) if queue else None


class _Handler(BaseHTTPRequestHandler):
    server: RegistryServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus delayed
    # ACKs add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    @property
    def state(self) -> RegistryState:
        return self.server.state

    def _device_id(self) -> str | None:
        path = urlsplit(self.path).path
        prefix = "/devices/"
        return unquote(path[len(prefix) :]) if path.startswith(prefix) else None

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _authorised(self) -> bool:
        for name, value in self.state.required_headers.items():
            if self.headers.get(name) != value:
                self._send(401, {"error": "unauthorised"})
                return False
        return True

    def _handle(self, method: str) -> None:
        state = self.state
        body = self._body() if method in ("PUT", "POST", "PATCH", "DELETE") else None
        device_id = self._device_id()
        key = self.headers.get("Idempotency-Key")
        with state.lock:
            state.requests.append((method, device_id, key, time.monotonic()))
        if state.latency:
            time.sleep(state.latency)
        if method == "GET" and self.path == "/_stats":  # for the bench's separate process
            with state.lock:
                times = [t for m, _, _, t in state.requests if m == "PUT"]
                stats = {"creations": sum(state.creations.values()), "put_times": times}
            self._send(200, stats)
            return
        if not self._authorised():
            return
        if method == "OPTIONS":
            self._send(204)
            return
        if device_id is None:
            self._send(404, {"error": "no such route"})
            return
        fault = state.next_fault(device_id) if method != "GET" else None
        if fault == "500":
            self._send(500, {"error": "internal"})
            return
        if fault == "400":
            self._send(400, {"error": "bad request"})
            return
        if fault is not None and fault.startswith("429:"):
            value = fault[4:]
            if value == "date":
                # HTTP dates have whole seconds: 2 s ahead is at least 1 s ahead.
                when = datetime.now(UTC) + timedelta(seconds=2)
                value = format_datetime(when, usegmt=True)
            self._send(429, {"error": "slow down"}, {"Retry-After": value})
            return
        if fault == "drop_before":
            self._drop()
            return
        status, payload = self._apply(method, device_id, body, key)
        if fault == "drop_after":
            self._drop()
            return
        if fault == "slow":
            time.sleep(state.slow_seconds)
        try:
            self._send(status, payload)
        except OSError:  # the client gave up (timeout)
            self.close_connection = True

    def _apply(
        self, method: str, device_id: str, body: Any, key: str | None
    ) -> tuple[int, dict[str, Any] | None]:
        state = self.state
        with state.lock:
            if key is not None and key in state.responses:
                return state.responses[key]
            result: tuple[int, dict[str, Any] | None]
            if method == "GET":
                if device_id not in state.devices:
                    return 404, {"error": "not found"}
                return 200, {"device_id": device_id, **state.status.get(device_id, {})}
            if method == "DELETE":
                if device_id in state.devices:
                    del state.devices[device_id]
                    state.deletions[device_id] += 1
                    result = (204, None)
                else:
                    result = (404, {"error": "not found"})
            else:
                fingerprint = body["certificate"]["fingerprint_sha256"]
                existing = state.devices.get(device_id)
                if existing is None:
                    state.devices[device_id] = body
                    state.creations[device_id] += 1
                    result = (201, {"remote_id": f"r-{device_id}"})
                elif existing["certificate"]["fingerprint_sha256"] == fingerprint:
                    state.devices[device_id] = body
                    result = (200, {"remote_id": f"r-{device_id}"})
                else:
                    result = (409, {"error": "different certificate"})
            if key is not None:
                state.responses[key] = result
            return result

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

    def do_OPTIONS(self) -> None:
        self._handle("OPTIONS")


class RegistryServer(ThreadingHTTPServer):
    """The server; ``url`` is the device URL template (``.../devices/{id}``)."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = RegistryState()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        return f"{self.base}/devices/{{id}}"

    def start(self) -> RegistryServer:
        self._thread.start()
        return self

    def reset(self) -> None:
        """Forget everything (between bench phases)."""
        self.state = RegistryState()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
