"""ThingsBoard backend against a strict local ThingsBoard (tests/helpers/thingsboard_server.py):
JWT login/refresh and API keys, X.509 device credentials, one profile per model, server
attributes, status, inventory, OTA firmware, through the outbox with faults. Every request
body fleet sends is checked against the models of ``tb-ce-client`` (ThingsBoard's own Python
client) by the server; an autouse fixture fails any test that left a violation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import PASSPHRASE, device_record, require_service, tb_models
from sqlmodel import select

from fleet import devices
from fleet.cloud.base import (
    ConflictError,
    FirmwareTarget,
    PermanentError,
    TransientError,
)
from fleet.cloud.clouds import add_cloud
from fleet.cloud.models import CloudJob, CloudRegistration
from fleet.cloud.pacing import PushPolicy
from fleet.cloud.push import push
from fleet.cloud.status import iter_status, sync
from fleet.cloud.testing import BackendContract
from fleet.cloud.thingsboard import ThingsBoardBackend
from fleet.errors import InvalidInput
from fleet.pki import ca
from fleet.pki.issuer import Issuer
from fleet.registry.db import read_session
from fleet.workspace import Workspace

if tb_models.available():
    from helpers.thingsboard_server import ThingsBoardServer

USER = "tenant@fleet.test"
PASSWORD = "tb-S3CRET-password-9f1c"
API_KEY = "tb-APIKEY-secret-77aa"
FAST = PushPolicy(base_delay=0.05, max_delay=0.2, max_wait=30.0)


@pytest.fixture
def tb(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThingsBoardServer]:
    """A fresh local ThingsBoard with a tenant admin; fails the test on any body that does
    not match tb-ce-client's models."""
    if not tb_models.available():
        require_service("tb-ce-client is not installed (pip install -e .[test])")
    server = ThingsBoardServer().start()
    server.state.add_user(USER, PASSWORD)
    server.state.add_api_key(API_KEY, USER)
    monkeypatch.setenv("TB_PASSWORD", PASSWORD)
    monkeypatch.setenv("TB_API_KEY", API_KEY)
    yield server
    server.stop()
    assert server.state.violations == []


def tb_options(server: ThingsBoardServer, **extra: Any) -> dict[str, Any]:
    given = {"base_url": server.url, "username": USER, "password_env": "TB_PASSWORD", **extra}
    if "api_key_env" in extra:
        given.pop("username")
        given.pop("password_env")
    return ThingsBoardBackend.validate_options(given)


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return ca.create_ca(tmp_path_factory.mktemp("ca"), "TB Test Fleet", "ec-p256", PASSPHRASE)


@pytest.fixture
def make_backend(tb: ThingsBoardServer) -> Iterator[Callable[..., ThingsBoardBackend]]:
    made: list[ThingsBoardBackend] = []

    def make(**extra: Any) -> ThingsBoardBackend:
        backend = ThingsBoardBackend("tb", tb_options(tb, **extra))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def read_device(server: ThingsBoardServer, name: str) -> dict[str, Any] | None:
    """The device as the server holds it (independent of fleet's client)."""
    with server.state.lock:
        device = server.state.device_by_name(name)
        if device is None:
            return None
        device_id = device["id"]["id"]
        creds = server.state.credentials[device_id]
        attrs = {
            scope: {k: v for k, (v, _ts) in values.items()}
            for scope, values in server.state.attributes.get(device_id, {}).items()
        }
    x509 = creds["credentialsType"] == "X509_CERTIFICATE"
    return {
        "id": device_id,
        "profile": device["type"],
        "certificate_pem": creds["credentialsValue"] if x509 else "",
        "active": x509,
        "credentials": creds,
        "attributes": attrs,
        "firmware_id": (device.get("firmwareId") or {}).get("id"),
    }


class TestThingsBoardBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, make_backend: Callable[..., ThingsBoardBackend]) -> ThingsBoardBackend:
        return make_backend()

    @pytest.fixture
    def read_back(self, tb: ThingsBoardServer) -> Any:
        return lambda device_id: read_device(tb, device_id)

    @pytest.fixture
    def secret_values(self) -> list[str]:
        return [PASSWORD, API_KEY]


class TestThingsBoardApiKeyContract(TestThingsBoardBackendContract):
    @pytest.fixture
    def backend(self, make_backend: Callable[..., ThingsBoardBackend]) -> ThingsBoardBackend:
        return make_backend(api_key_env="TB_API_KEY")


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "needs --base-url"),
        ({"base_url": "ftp://h"}, "http:// or https://"),
        ({"base_url": "https://u:p@h"}, "must not contain credentials"),
        ({"base_url": "https://h"}, "needs credentials"),
        ({"base_url": "https://h", "username": "u"}, "both --username and --password-env"),
        ({"base_url": "https://h", "username": "u", "password_env": "hunter 2"}, "environment"),
        ({"base_url": "https://h", "api_key_env": "K", "username": "u"}, "not both"),
        ({"base_url": "https://h", "api_key_env": "K", "on_deregister": "x"}, "delete or keep"),
        ({"base_url": "https://h", "api_key_env": "K", "region": "x"}, "does not take --region"),
        ({"base_url": "https://h", "api_key_env": "K", "timeout": 0}, "--timeout"),
    ],
)
def test_validate_options_refuses_bad_ones(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        ThingsBoardBackend.validate_options(options)
    assert fragment in str(info.value)


def test_options_store_only_env_var_names() -> None:
    stored = ThingsBoardBackend.validate_options(
        {"base_url": "https://tb.example.com/", "username": USER, "password_env": "TB_PASSWORD"}
    )
    assert stored == {
        "base_url": "https://tb.example.com",
        "username": USER,
        "password_env": "TB_PASSWORD",
        "on_deregister": "delete",
    }
    from fleet.cloud import plugins

    assert plugins.declared_options("thingsboard") is ThingsBoardBackend.declared_options


# --- register, profiles, attributes ----------------------------------------------------------


def test_register_writes_device_profile_and_server_attributes(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer, issuer: Issuer
) -> None:
    backend = make_backend()
    record = device_record(issuer, "pump-1", model="p200", labels={"site": "hamburg"})
    remote = backend.register(record, {})
    found = read_device(tb, "pump-1")
    assert found is not None
    assert remote == {
        "device_id": found["id"],
        "device_profile_id": remote["device_profile_id"],
        "credentials_id": found["credentials"]["credentialsId"],
    }
    assert found["profile"] == "p200"
    assert found["attributes"]["SERVER_SCOPE"] == {
        "active": False,
        "model": "p200",
        "serial": "SN-0001",
        "label_site": "hamburg",
        "fleet_state": "registered",
    }
    # registering again with other labels replaces them (stale label attributes deleted)
    backend.register(replace(record, labels={"line": "7"}), {})
    server_attrs = read_device(tb, "pump-1")["attributes"]["SERVER_SCOPE"]  # type: ignore[index]
    assert "label_site" not in server_attrs and server_attrs["label_line"] == "7"
    # nameConflictPolicy=FAIL travels as a query parameter of the create
    creates = [r for r in tb.state.requests if r[1] == "/api/device-with-credentials"]
    assert [r[2] for r in creates] == ["nameConflictPolicy=FAIL"]


def test_one_profile_per_model_created_once(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer, issuer: Issuer
) -> None:
    backend = make_backend()
    for i, model in enumerate(["p200", "p200", "x9", None, "x9"]):
        backend.register(device_record(issuer, f"m-{i}", model=model), {})
    assert dict(tb.state.profile_creations) == {"p200": 1, "x9": 1}
    # another backend (another process) finds the existing profiles instead of creating
    make_backend().register(device_record(issuer, "m-9", model="p200"), {})
    assert dict(tb.state.profile_creations) == {"p200": 1, "x9": 1}
    assert read_device(tb, "m-3")["profile"] == "default"  # type: ignore[index]


def test_same_name_with_foreign_credentials_is_a_conflict(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer, issuer: Issuer
) -> None:
    tb.state.add_device("pump-2", token="someone-elses-token")
    with pytest.raises(ConflictError, match="ACCESS_TOKEN"):
        make_backend().register(device_record(issuer, "pump-2"), {})
    assert tb.state.creations["pump-2"] == 1


# --- auth ------------------------------------------------------------------------------------


def test_expired_token_is_refreshed_then_login_again(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer, issuer: Issuer
) -> None:
    backend = make_backend()
    backend.register(device_record(issuer, "a-1"), {})
    assert (tb.state.logins, tb.state.refreshes) == (1, 0)
    tb.state.expire_tokens()
    backend.register(device_record(issuer, "a-2"), {})
    assert (tb.state.logins, tb.state.refreshes) == (1, 1)
    tb.state.expire_tokens(refresh_too=True)
    backend.register(device_record(issuer, "a-3"), {})
    assert (tb.state.logins, tb.state.refreshes) == (2, 1)
    assert read_device(tb, "a-3") is not None


def test_threads_share_one_refresh(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    backend = make_backend()
    assert backend.check().ok
    tb.state.expire_tokens()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: backend.check().ok, range(16)))
    assert all(results)
    assert (tb.state.logins, tb.state.refreshes) == (1, 1)


def test_wrong_password_is_permanent_and_never_shown(
    make_backend: Callable[..., ThingsBoardBackend],
    issuer: Issuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TB_PASSWORD", "not-the-password-1234")
    backend = make_backend()
    with pytest.raises(PermanentError) as info:
        backend.register(device_record(issuer, "w-1"), {})
    assert "$TB_PASSWORD" in str(info.value) and "not-the-password" not in str(info.value)
    result = backend.check()
    assert not result.ok and "refused the login" in result.message
    assert "not-the-password" not in result.message


def test_check_reports_role_and_reachability(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer
) -> None:
    ok = make_backend().check()
    assert ok.ok and USER in ok.message and "TENANT_ADMIN" in ok.message
    tb.state.add_user(USER, PASSWORD, authority="CUSTOMER_USER")
    result = make_backend().check()
    assert not result.ok and "tenant administrator" in result.message
    gone = ThingsBoardServer()
    gone.server_close()
    down = ThingsBoardBackend("tb", tb_options(gone, timeout=0.5))
    try:
        result = down.check()
    finally:
        down.close()
    assert not result.ok and "cannot reach" in result.message


def test_missing_secret_variable_is_transient_and_named(
    make_backend: Callable[..., ThingsBoardBackend],
    issuer: Issuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TB_API_KEY")
    with pytest.raises(TransientError, match="TB_API_KEY"):
        make_backend(api_key_env="TB_API_KEY").register(device_record(issuer, "k-1"), {})


# --- failures classified -----------------------------------------------------------------------


def test_classifies_failures(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer, issuer: Issuer
) -> None:
    backend = make_backend()
    record = device_record(issuer, "f-1")
    backend.check()  # logged in
    for fault, kind in (
        ("500", TransientError),
        ("503", TransientError),
        ("429:3", TransientError),
    ):
        tb.state.faults["*"] = [fault]
        with pytest.raises(kind) as info:
            backend.register(record, {})
        if fault == "429:3":
            assert info.value.retry_after == 3.0  # type: ignore[attr-defined]
    tb.state.faults["*"] = ["drop_before"]
    with pytest.raises(TransientError, match="cannot reach"):
        backend.register(record, {})
    with pytest.raises(PermanentError, match="no active certificate"):
        backend.register(replace(device_record(issuer, "f-2"), certificate_pem=""), {})


# --- through the outbox --------------------------------------------------------------------------


def add_tb_cloud(
    ws: Workspace,
    server: ThingsBoardServer,
    name: str = "tb",
    *,
    concurrency: int | None = None,
    **extra: Any,
) -> None:
    options = {**tb_options(server, **extra), "timeout": 2.0}
    add_cloud(ws, name, "thingsboard", options, concurrency=concurrency)


def test_every_job_registered_exactly_once_despite_faults(
    ready_ws: Workspace, tb: ThingsBoardServer, tmp_path: Path
) -> None:
    add_tb_cloud(ready_ws, tb)
    ids = [f"dev-{i:04d}" for i in range(8)]
    for i, device_id in enumerate(ids):
        devices.add_device(
            ready_ws, device_id, model=f"m{i % 2}", out_dir=tmp_path / "out", clouds=["tb"]
        )
    tb.state.faults = {
        ids[0]: ["500", "500"],
        ids[1]: ["429:1"],
        ids[2]: ["drop_before"],
        ids[3]: ["drop_after"],  # created, answer lost: the retry finds it, same certificate
        ids[4]: ["503", "drop_after"],
        "*": ["expire"],  # the first call after login finds its token expired
    }
    (report,) = push(ready_ws, "tb", policy=FAST)
    assert (report.done, report.failed, report.left) == (8, 0, 0)
    assert dict(tb.state.creations) == dict.fromkeys(ids, 1)
    assert dict(tb.state.profile_creations) == {"m0": 1, "m1": 1}
    assert tb.state.refreshes >= 1
    # 8 creates, then one per fault before the create; a lost answer (drop_after) is not
    # created again: the retry finds the device with the same certificate
    creates = [t for m, p, q, s, t in tb.state.requests if p == "/api/device-with-credentials"]
    assert len(creates) == 8 + 2 + 1 + 1 + 1
    with read_session(ready_ws.open_registry()) as session:
        regs = session.exec(select(CloudRegistration)).all()
        assert {r.device_id: r.status for r in regs} == dict.fromkeys(ids, "registered")
        remote = {r.device_id: r.remote for r in regs}
        assert remote[ids[3]]["device_id"] == read_device(tb, ids[3])["id"]  # type: ignore[index]
        assert {j.state for j in session.exec(select(CloudJob))} == {"done"}


def test_retry_after_is_honoured_on_the_wire(
    ready_sqlite_ws: Workspace, tb: ThingsBoardServer, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    add_tb_cloud(ws, tb)
    devices.add_device(ws, "r-1", out_dir=tmp_path / "out", clouds=["tb"])
    tb.state.faults = {"r-1": ["429:1"]}
    push(ws, "tb", policy=FAST)
    times = [t for m, p, q, s, t in tb.state.requests if p == "/api/device-with-credentials"]
    assert len(times) == 2 and times[1] - times[0] >= 0.95


def test_conflict_fails_that_job_only(
    ready_sqlite_ws: Workspace, tb: ThingsBoardServer, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    add_tb_cloud(ws, tb)
    tb.state.add_device("c-1", token="console-made")
    for device_id in ("c-0", "c-1", "c-2"):
        devices.add_device(ws, device_id, out_dir=tmp_path / "out", clouds=["tb"])
    (report,) = push(ws, "tb", policy=FAST)
    assert (report.done, report.failed) == (2, 1)
    assert "other credentials" in report.failures[0]["error"]
    status = {r.device_id: r.status for r in iter_status(ws, "tb")}
    assert status == {"c-0": "registered", "c-1": "failed", "c-2": "registered"}


@pytest.mark.parametrize("mode", ["delete", "keep"])
def test_decommission_deregisters(
    ready_sqlite_ws: Workspace, tb: ThingsBoardServer, tmp_path: Path, mode: str
) -> None:
    ws = ready_sqlite_ws
    add_tb_cloud(ws, tb, on_deregister=mode)
    for device_id in ("d-0", "d-1"):
        devices.add_device(ws, device_id, out_dir=tmp_path / "out", clouds=["tb"])
    push(ws, "tb", policy=FAST)
    devices.decommission_device(ws, "d-0", reason="flood")
    (report,) = push(ws, "tb", policy=FAST)
    assert (report.done, report.failed) == (1, 0)
    found = read_device(tb, "d-0")
    if mode == "delete":
        assert found is None
    else:
        assert found is not None and found["active"] is False
        assert found["credentials"]["credentialsType"] == "ACCESS_TOKEN"
        assert found["attributes"]["SERVER_SCOPE"]["fleet_state"] == "deregistered"
    assert read_device(tb, "d-1")["active"] is True  # type: ignore[index]
    status = {r.device_id: r.status for r in iter_status(ws, "tb")}
    assert status == {"d-0": "deregistered", "d-1": "registered"}


def test_kept_device_takes_a_new_certificate_on_register(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer, issuer: Issuer
) -> None:
    backend = make_backend(on_deregister="keep")
    first = device_record(issuer, "k-1")
    remote = backend.register(first, {})
    backend.deregister(first, remote, {})
    backend.deregister(first, remote, {})  # idempotent
    renewed = device_record(issuer, "k-1")
    backend.register(renewed, {})
    found = read_device(tb, "k-1")
    assert found is not None and found["certificate_pem"] == renewed.certificate_pem
    assert tb.state.creations["k-1"] == 1


def test_deregister_leaves_a_foreign_certificate_alone(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer, issuer: Issuer
) -> None:
    other = device_record(issuer, "x-1")
    tb.state.add_device("x-1", pem=other.certificate_pem)
    with pytest.raises(PermanentError, match="not fleet's"):
        make_backend().deregister(device_record(issuer, "x-1"), {}, {})
    assert read_device(tb, "x-1") is not None


def test_sync_pulls_status(
    ready_sqlite_ws: Workspace, tb: ThingsBoardServer, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    add_tb_cloud(ws, tb)
    for device_id in ("s-0", "s-1", "s-2"):
        devices.add_device(ws, device_id, out_dir=tmp_path / "out", clouds=["tb"])
    push(ws, "tb", policy=FAST)
    at = int(datetime(2026, 11, 24, 10, 0, tzinfo=UTC).timestamp() * 1000)
    s0 = read_device(tb, "s-0")["id"]  # type: ignore[index]
    s1 = read_device(tb, "s-1")["id"]  # type: ignore[index]
    tb.state.set_attribute(s0, "SERVER_SCOPE", "active", True)
    tb.state.set_attribute(s0, "SERVER_SCOPE", "lastActivityTime", at)
    tb.state.set_attribute(s0, "SERVER_SCOPE", "lastConnectTime", at - 5000)
    tb.state.set_attribute(s0, "CLIENT_SCOPE", "current_fw_version", "1.4.2")
    tb.state.timeseries[s1] = {"current_fw_version": (at, "2.0.0")}  # OTA protocol telemetry
    (report,) = sync(ws, "tb", policy=FAST)
    assert report.status_updated == 3
    rows = {r.device_id: r for r in iter_status(ws, "tb")}
    assert rows["s-0"].connected is True
    assert rows["s-0"].last_activity == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert rows["s-0"].firmware_version == "1.4.2"
    assert rows["s-1"].connected is False and rows["s-1"].firmware_version == "2.0.0"
    assert rows["s-2"].firmware_version is None
    from fleet.status.history import connection_of

    state = connection_of(ws, "s-0")
    assert (state.state, state.source) == ("online", "thingsboard")


# --- inventory, unknown devices ---------------------------------------------------------------


def test_inventory_pages_through_every_device(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer, issuer: Issuer
) -> None:
    backend = make_backend(on_deregister="keep")
    backend.inventory_requests_per_second = 10_000.0  # paging, not pacing, under test
    mine = device_record(issuer, "inv-mine")
    remote = backend.register(mine, {})
    gone = device_record(issuer, "inv-kept")
    backend.deregister(gone, backend.register(gone, {}), {})
    tb.state.set_attribute(remote["device_id"], "SERVER_SCOPE", "active", True)
    for i in range(120):
        tb.state.add_device(f"rogue-{i:03d}", token=f"t{i}")
    found = {d.device_id: d for d in backend.iter_inventory({})}
    assert len(found) == 122
    pages = [
        q for m, p, q, s, t in tb.state.requests if p == "/api/tenant/deviceInfos" and "page=1" in q
    ]
    assert pages  # a second page was read
    assert found["inv-mine"].enabled is True and found["inv-mine"].connected is True
    assert found["rogue-001"].connected is False
    assert [c.fingerprint_sha256 for c in found["inv-mine"].certificates] == [
        mine.fingerprint_sha256
    ]
    assert found["inv-mine"].remote == {
        "device_id": remote["device_id"],
        "credentials_type": "X509_CERTIFICATE",
    }
    assert found["inv-kept"].enabled is False and found["inv-kept"].certificates == ()
    assert found["rogue-007"].enabled is True and found["rogue-007"].certificates == ()
    backend.delete_unknown(found["rogue-007"], {})
    backend.delete_unknown(found["rogue-007"], {})  # idempotent
    assert tb.state.device_by_name("rogue-007") is None


def test_inventory_reads_are_paced(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer
) -> None:
    backend = make_backend()
    backend.inventory_requests_per_second = 20.0
    for i in range(4):
        tb.state.add_device(f"p-{i}", token=f"t{i}")
    backend.check()
    start = len(tb.state.requests)
    assert len(list(backend.iter_inventory({}))) == 4
    times = [t for *_, t in tb.state.requests[start:]]
    assert len(times) == 9  # one page, then credentials, and fleet_state (not X.509)
    assert times[-1] - times[0] >= 8 / 20.0 - 0.05


def test_inventory_retries_a_throttled_page(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer
) -> None:
    backend = make_backend()
    backend.inventory_requests_per_second = 10_000.0
    tb.state.add_device("t-0", token="t0")
    backend.check()
    tb.state.faults["*"] = ["429:0", "500"]
    assert [d.device_id for d in backend.iter_inventory({})] == ["t-0"]


# --- firmware ----------------------------------------------------------------------------------


def test_deliver_firmware_assigns_an_ota_package(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer, issuer: Issuer
) -> None:
    backend = make_backend()
    record = device_record(issuer, "fw-1", model="p200")
    remote = backend.register(record, {})
    target = FirmwareTarget(
        version="1.5.0",
        sha256="ab" * 32,
        size=1234,
        url="https://files.example.com/p200-1.5.0.bin",
        signature="-----BEGIN CMS-----\nMIIB\n-----END CMS-----\n",
    )
    backend.deliver_firmware(record, target, remote, {})
    backend.deliver_firmware(record, target, remote, {})  # idempotent: one package
    assert len(tb.state.packages) == 1
    found = read_device(tb, "fw-1")
    assert found is not None and found["firmware_id"] in tb.state.packages
    shared = found["attributes"]["SHARED_SCOPE"]
    assert shared["fw_title"] == "p200" and shared["fw_version"] == "1.5.0"
    assert shared["fw_url"] == target.url
    assert shared["fleet_fw_signature"] == target.signature
    (package,) = tb.state.packages.values()
    assert (package["checksumAlgorithm"], package["checksum"]) == ("SHA256", target.sha256)
    # a second device of the model reuses the package
    other = device_record(issuer, "fw-2", model="p200")
    backend.deliver_firmware(other, target, backend.register(other, {}), {})
    assert len(tb.state.packages) == 1
    backend.deliver_firmware(record, None, remote, {})
    cleared = read_device(tb, "fw-1")
    assert cleared is not None and cleared["firmware_id"] is None
    assert "fw_version" not in cleared["attributes"]["SHARED_SCOPE"]
    assert "fleet_fw_signature" not in cleared["attributes"]["SHARED_SCOPE"]
    with pytest.raises(PermanentError, match="no URL"):
        backend.deliver_firmware(
            record, FirmwareTarget("9.9", "cd" * 32, 1, None, "sig"), remote, {}
        )
    with pytest.raises(ConflictError, match="another checksum"):
        backend.deliver_firmware(
            record, FirmwareTarget("1.5.0", "ef" * 32, 1, target.url, "sig"), remote, {}
        )


# --- tb-ce-client validation, secrets ------------------------------------------------------------


def test_every_body_fleet_sends_is_checked_against_tb_ce_client(
    make_backend: Callable[..., ThingsBoardBackend], tb: ThingsBoardServer, issuer: Issuer
) -> None:
    """A full flow sends a body to every modelled endpoint; all round-trip through the
    tb-ce-client models (the fixture asserts no violation), and a wrong body is refused."""
    backend = make_backend(on_deregister="keep")
    record = device_record(issuer, "v-1", model="v200")
    remote = backend.register(record, {})
    tb.state.expire_tokens()
    target = FirmwareTarget("1.0", "ab" * 32, 10, "https://f/v.bin", "sig")
    backend.deliver_firmware(record, target, remote, {})
    backend.deregister(record, remote, {})
    models = {model for model, _route, _body in tb.state.bodies}
    assert models >= set(tb_models.REQUEST_MODELS.values())
    # the server really refuses what the models refuse
    token = list(tb.state.tokens)[-1]  # the newest (the first one expired)
    bad = {"device": {"name": "v-2", "colour": "red"}, "credentials": {
        "credentialsType": "X509", "credentialsId": "x"}}  # fmt: skip
    response = httpx.post(
        f"{tb.url}/api/device-with-credentials",
        json=bad,
        headers={"X-Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 400
    assert any("X509" in v or "colour" in v for v in tb.state.violations)
    tb.state.violations.clear()


def test_secrets_never_in_output_logs_or_config(
    ready_sqlite_ws: Workspace,
    tb: ThingsBoardServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from helpers import Cli

    caplog.set_level(logging.DEBUG)
    cli = Cli(ready_sqlite_ws)
    added = cli("cloud", "add", "tb", "--type", "thingsboard", "--base-url", tb.url,
                "--username", USER, "--password-env", "TB_PASSWORD", "--json")  # fmt: skip
    assert added.exit_code == 0, added.output
    devices.add_device(ready_sqlite_ws, "sec-1", out_dir=tmp_path / "out", clouds=["tb"])
    synced = cli("cloud", "sync", "tb", "--json")
    shown = cli("cloud", "show", "tb", "--json")
    assert synced.exit_code == 0, synced.output
    assert read_device(tb, "sec-1") is not None
    db = Path(str(ready_sqlite_ws.home)).rglob("*")
    stored = b"".join(p.read_bytes() for p in db if p.is_file())
    texts = [added.output, synced.output, shown.output, caplog.text]
    for secret in (PASSWORD, API_KEY):
        assert all(secret not in text for text in texts)
        assert secret.encode() not in stored
    assert "TB_PASSWORD" in shown.output


# --- the outbox's offline and crash cases, against ThingsBoard ------------------------------------


def test_unreachable_thingsboard_leaves_jobs_for_a_later_sync(
    ready_sqlite_ws: Workspace, tb: ThingsBoardServer, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    down = ThingsBoardServer()
    down.server_close()  # nothing listens on its port
    add_cloud(ws, "tb", "thingsboard", tb_options(down, timeout=0.5))
    for device_id in ("o-0", "o-1"):
        devices.add_device(ws, device_id, out_dir=tmp_path / "out", clouds=["tb"])
    quick = PushPolicy(base_delay=0.01, max_delay=0.05, max_wait=0.3)
    (report,) = push(ws, "tb", policy=quick)
    assert (report.done, report.failed, report.left) == (0, 0, 2)
    rows = list(iter_status(ws, "tb"))
    assert {r.status for r in rows} == {"pending"}
    assert all("cannot reach" in (r.last_error or "") for r in rows)


def test_crash_mid_push_loses_nothing(
    ready_ws: Workspace, tb: ThingsBoardServer, tmp_path: Path
) -> None:
    add_tb_cloud(ready_ws, tb, concurrency=1)
    ids = [f"cr-{i}" for i in range(5)]
    for device_id in ids:
        devices.add_device(ready_ws, device_id, out_dir=tmp_path / "out", clouds=["tb"])

    def crash(done: int, total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    policy = PushPolicy(base_delay=0.05, max_delay=0.2, max_wait=5.0, commit_every=1)
    with pytest.raises(KeyboardInterrupt):
        push(ready_ws, "tb", policy=policy, progress=crash)
    (report,) = push(ready_ws, "tb", policy=policy)
    assert report.left == 0
    assert dict(tb.state.creations) == dict.fromkeys(ids, 1)
    assert {r.status for r in iter_status(ready_ws, "tb")} == {"registered"}


def test_refused_api_key_is_permanent_and_never_shown(
    make_backend: Callable[..., ThingsBoardBackend],
    issuer: Issuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TB_API_KEY", "revoked-key-0000")
    backend = make_backend(api_key_env="TB_API_KEY")
    with pytest.raises(PermanentError, match="credentials refused") as info:
        backend.register(device_record(issuer, "ak-1"), {})
    result = backend.check()
    assert not result.ok and "credentials refused" in result.message
    assert "revoked-key" not in str(info.value) + result.message
