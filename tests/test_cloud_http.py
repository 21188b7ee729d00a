"""The generic HTTP backend against a real local HTTP registry (tests/cloudserver.py),
including one that injects 500s, 429 with Retry-After, slow responses and dropped
connections."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cloudserver import RegistryServer
from helpers import add_devices
from sqlmodel import select

from fleet import devices
from fleet.cloud.base import CloudBackend, PermanentError, TransientError
from fleet.cloud.clouds import add_cloud
from fleet.cloud.http import HttpBackend
from fleet.cloud.models import CloudJob, CloudRegistration
from fleet.cloud.pacing import PushPolicy
from fleet.cloud.push import push
from fleet.cloud.status import iter_status, sync
from fleet.cloud.testing import BackendContract
from fleet.errors import InvalidInput
from fleet.registry.db import read_session
from fleet.workspace import Workspace

TOKEN = "Bearer s3cr3t-token-value-4711"
FAST = PushPolicy(base_delay=0.05, max_delay=0.2, max_wait=30.0)


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, server: RegistryServer) -> str:
    monkeypatch.setenv("REG_TOKEN", TOKEN)
    server.state.required_headers = {"Authorization": TOKEN}
    return "REG_TOKEN"


def http_options(server: RegistryServer, **extra: Any) -> dict[str, Any]:
    return HttpBackend.validate_options(
        {"url": server.url, "header": ["Authorization=REG_TOKEN"], **extra}
    )


class TestHttpBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, server: RegistryServer, token_env: str) -> Iterator[CloudBackend]:
        backend = HttpBackend("contract", http_options(server))
        yield backend
        backend.close()

    @pytest.fixture
    def read_back(self, server: RegistryServer) -> Any:
        def read(device_id: str) -> dict[str, Any] | None:
            with server.state.lock:
                body = server.state.devices.get(device_id)
            if body is None:
                return None
            return {
                "certificate_pem": body["certificate"]["pem"],
                "active": True,
                "attributes": {"model": body["model"], "labels": body["labels"]},
            }

        return read

    @pytest.fixture
    def secret_values(self) -> list[str]:
        return [TOKEN, "s3cr3t"]


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "needs --url"),
        ({"url": "https://h/devices"}, "must contain {id}"),
        ({"url": "ftp://h/{id}"}, "http:// or https://"),
        ({"url": "https://u:p@h/{id}"}, "must not contain credentials"),
        ({"url": "https://h/{id}/{model}"}, "only use the {id}"),
        ({"url": "https://h/{id}", "method": "GET"}, "--method"),
        ({"url": "https://h/{id}", "header": ["Authorization: Bearer x"]}, "NAME=ENV_VAR"),
        ({"url": "https://h/{id}", "header": ["Authorization=Bearer x"]}, "NAME=ENV_VAR"),
        ({"url": "https://h/{id}", "region": "eu-west-1"}, "does not take --region"),
        ({"url": "https://h/{id}", "timeout": 0}, "--timeout"),
    ],
)
def test_validate_options_refuses_bad_ones(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput, match=None) as info:
        HttpBackend.validate_options(options)
    assert fragment in str(info.value)


def test_validate_options_stores_only_env_var_names() -> None:
    stored = HttpBackend.validate_options(
        {"url": "https://h/devices/{id}", "method": "post", "header": ["X-Api-Key=API_KEY"]}
    )
    assert stored == {
        "url": "https://h/devices/{id}",
        "method": "POST",
        "deregister_method": "DELETE",
        "header": {"X-Api-Key": "API_KEY"},
    }


# --- backend behaviour -----------------------------------------------------------------------


def test_device_id_is_url_encoded_and_body_carries_certificate(
    server: RegistryServer, token_env: str, tmp_path: Path
) -> None:
    from helpers import device_record

    from fleet.pki import ca

    issuer = ca.create_ca(tmp_path, "T", "ec-p256", "pass phrase")
    backend = HttpBackend("t", http_options(server))
    try:
        record = device_record(issuer, "site:a/b")
        backend.register(record, {})
    finally:
        backend.close()
    body = server.state.devices["site:a/b"]
    assert body["certificate"] == {
        "pem": record.certificate_pem,
        "serial": record.certificate_serial,
        "fingerprint_sha256": record.fingerprint_sha256,
    }
    assert body["labels"] == {"site": "hamburg"}


def test_classifies_failures(server: RegistryServer, token_env: str, tmp_path: Path) -> None:
    from helpers import device_record

    from fleet.pki import ca

    issuer = ca.create_ca(tmp_path, "T", "ec-p256", "pass phrase")
    # Generous margins: the box is shared, a normal answer must never hit the timeout.
    backend = HttpBackend("t", http_options(server, timeout=1.0))
    server.state.slow_seconds = 2.0
    try:
        record = device_record(issuer, "dev-1")
        expectations: list[tuple[str, type[Exception]]] = [
            ("500", TransientError),
            ("429:3", TransientError),
            ("slow", TransientError),
            ("drop_before", TransientError),
            ("400", PermanentError),
        ]
        for fault, kind in expectations:
            server.state.faults["dev-1"] = [fault]
            with pytest.raises(kind) as info:
                backend.register(record, {})
            if kind is PermanentError:
                assert not isinstance(info.value, TransientError)
            if fault == "429:3":
                assert isinstance(info.value, TransientError)
                assert info.value.retry_after == 3.0
    finally:
        backend.close()


def test_check_reports_each_failure(server: RegistryServer, token_env: str) -> None:
    backend = HttpBackend("t", http_options(server))
    try:
        assert backend.check().ok
        server.state.required_headers = {"Authorization": "something else"}
        result = backend.check()
        assert not result.ok and "refused the credentials" in result.message
        assert "REG_TOKEN" in result.message and TOKEN not in result.message
    finally:
        backend.close()
    gone = RegistryServer()  # bound, then closed: its port refuses connections
    gone.server_close()
    backend = HttpBackend("t", http_options(gone, timeout=0.5))
    try:
        result = backend.check()
        assert not result.ok and "cannot connect" in result.message
    finally:
        backend.close()


# --- through the outbox, with faults ---------------------------------------------------------


def test_every_job_registered_exactly_once_despite_faults(
    ready_ws: Workspace, server: RegistryServer, token_env: str, tmp_path: Path
) -> None:
    add_cloud(ready_ws, "reg", "http", {**http_options(server), "timeout": 1.0})
    ids = add_devices(ready_ws, tmp_path, 10, clouds=("reg",))
    server.state.slow_seconds = 2.0
    server.state.faults = {
        ids[0]: ["500", "500"],
        ids[1]: ["429:1"],
        ids[2]: ["429:date"],
        ids[3]: ["slow"],
        ids[4]: ["drop_before"],
        ids[5]: ["drop_after"],
        ids[6]: ["slow", "drop_after", "500"],
    }
    reports = push(ready_ws, "reg", policy=FAST)
    assert [(r.done, r.failed, r.left) for r in reports] == [(10, 0, 0)]
    with server.state.lock:
        assert dict(server.state.creations) == dict.fromkeys(ids, 1)
        puts = [r for r in server.state.requests if r[0] == "PUT"]
    # One key per job, reused by all its retries.
    keys: dict[str, set[str | None]] = {}
    for _, device_id, key, _ in puts:
        keys.setdefault(device_id or "", set()).add(key)
    assert all(len(k) == 1 and None not in k for k in keys.values())
    assert len({next(iter(k)) for k in keys.values()}) == len(ids)
    # Retry-After honoured: the retry came no sooner than the server asked.
    for device_id in (ids[1], ids[2]):
        times = [t for _, d, _, t in puts if d == device_id]
        assert len(times) >= 2
        assert times[1] - times[0] >= 0.95
    with read_session(ready_ws.open_registry()) as session:
        regs = session.exec(select(CloudRegistration)).all()
        assert {r.device_id: r.status for r in regs} == dict.fromkeys(ids, "registered")
        assert {r.device_id: r.attempts for r in regs}[ids[6]] >= 4  # 3 faults, then success
        assert all(r.remote == {"remote_id": f"r-{r.device_id}"} for r in regs)
        jobs = session.exec(select(CloudJob)).all()
        assert {j.state for j in jobs} == {"done"}


def test_conflict_fails_that_job_only(
    ready_ws: Workspace, server: RegistryServer, token_env: str, tmp_path: Path
) -> None:
    add_cloud(ready_ws, "reg", "http", http_options(server))
    ids = add_devices(ready_ws, tmp_path, 4, clouds=("reg",))
    with server.state.lock:  # someone else's device under the same ID
        server.state.devices[ids[1]] = {"certificate": {"fingerprint_sha256": "00" * 32}}
    server.state.faults[ids[2]] = ["400"]
    (report,) = push(ready_ws, "reg", policy=FAST)
    assert (report.done, report.failed, report.left) == (2, 2, 0)
    errors = {f["device_id"]: f["error"] for f in report.failures}
    assert "different certificate" in errors[ids[1]]
    assert "HTTP 400" in errors[ids[2]]
    status = {r.device_id: r for r in iter_status(ready_ws, "reg")}
    assert status[ids[1]].status == "failed" and status[ids[1]].attempts == 1
    assert "different certificate" in (status[ids[1]].last_error or "")
    assert status[ids[0]].status == status[ids[3]].status == "registered"


def test_missing_header_variable_keeps_jobs_queued(
    sqlite_ws: Workspace, server: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import PASSPHRASE

    from fleet.pki.authority import init_workspace

    init_workspace(sqlite_ws, name="T", passphrase=PASSPHRASE)
    monkeypatch.delenv("REG_TOKEN", raising=False)
    add_cloud(sqlite_ws, "reg", "http", http_options(server))
    add_devices(sqlite_ws, tmp_path, 2, clouds=("reg",))
    policy = PushPolicy(base_delay=0.01, max_delay=0.02, max_wait=0.1)
    (report,) = push(sqlite_ws, "reg", policy=policy)
    assert (report.done, report.failed, report.left) == (0, 0, 2)
    rows = list(iter_status(sqlite_ws, "reg"))
    assert {r.status for r in rows} == {"pending"}
    assert all("REG_TOKEN" in (r.last_error or "") for r in rows)
    assert server.state.requests == []


def test_sync_pulls_status(
    ready_sqlite_ws: Workspace, server: RegistryServer, token_env: str, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    add_cloud(ws, "reg", "http", http_options(server))
    ids = add_devices(ws, tmp_path, 2, clouds=("reg",))
    server.state.status[ids[0]] = {
        "connected": True,
        "last_activity": "2026-11-24T10:00:00Z",
        "firmware_version": "1.4.2",
    }
    (report,) = sync(ws, "reg", policy=FAST)
    assert report.push.done == 2 and report.status_updated == 2
    rows = {r.device_id: r for r in iter_status(ws, "reg")}
    assert rows[ids[0]].connected is True
    assert rows[ids[0]].firmware_version == "1.4.2"
    assert rows[ids[0]].last_activity == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert rows[ids[0]].to_dict()["last_activity"] == "2026-11-24T10:00:00Z"
    assert rows[ids[1]].connected is None and rows[ids[1]].status_checked_at is not None


def test_sync_records_connection_changes_as_events(
    ready_ws: Workspace, server: RegistryServer, token_env: str, tmp_path: Path
) -> None:
    """A status pull that changes a device's connection records one event (source http, at
    the platform's last activity); an unchanged pull records none."""
    from fleet.status.history import connection_of, iter_history

    add_cloud(ready_ws, "reg", "http", http_options(server))
    ids = add_devices(ready_ws, tmp_path, 2, clouds=("reg",))
    server.state.status[ids[0]] = {"connected": True, "last_activity": "2026-11-24T10:00:00Z"}
    sync(ready_ws, "reg", policy=FAST)
    sync(ready_ws, "reg", policy=FAST)
    state = connection_of(ready_ws, ids[0])
    assert (state.state, state.source) == ("online", "http")
    assert state.since == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert connection_of(ready_ws, ids[1]).state is None  # the platform said nothing
    server.state.status[ids[0]] = {"connected": False, "last_activity": "2026-11-24T11:00:00Z"}
    sync(ready_ws, "reg", policy=FAST)
    history = [(e.state, e.source_time.hour) for e in iter_history(ready_ws, ids[0])]
    assert history == [("online", 10), ("offline", 11)]


def test_decommission_deregisters(
    ready_ws: Workspace, server: RegistryServer, token_env: str, tmp_path: Path
) -> None:
    add_cloud(ready_ws, "reg", "http", http_options(server))
    ids = add_devices(ready_ws, tmp_path, 2, clouds=("reg",))
    push(ready_ws, "reg", policy=FAST)
    devices.decommission_device(ready_ws, ids[0], reason="flood")
    (report,) = push(ready_ws, "reg", policy=FAST)
    assert (report.done, report.failed) == (1, 0)
    assert set(server.state.devices) == {ids[1]}
    deletes = [r for r in server.state.requests if r[0] == "DELETE"]
    assert [d for _, d, _, _ in deletes] == [ids[0]]
    status = {r.device_id: r.status for r in iter_status(ready_ws, "reg")}
    assert status == {ids[0]: "deregistered", ids[1]: "registered"}
