"""The Azure IoT Hub backend against a strict local hub (tests/helpers/azure_hub.py): the
shared contract, SAS signing (and Microsoft's own service SDK on the same inputs, slow),
identities with thumbprints, bulk imports with per-device failures through the outbox, 429 /
412 / 5xx handling, renewal windows, inventory, unknown-device deletion and firmware
delivery. Registry tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, add_devices, device_record, require_service
from helpers.azure_hub import HOST, KEY, KEY_NAME, HubServer, connection_string
from sqlmodel import select

from fleet import certs, clock, devices
from fleet.cloud.azure import AzureIotHubBackend
from fleet.cloud.azure.sas import RENEW_BEFORE, TOKEN_TTL, SasAuth, sas_token
from fleet.cloud.base import (
    CloudBackend,
    ConflictError,
    DeviceRecord,
    FirmwareTarget,
    PermanentError,
    TransientError,
)
from fleet.cloud.clouds import add_cloud, check_cloud
from fleet.cloud.models import Cloud, CloudJob
from fleet.cloud.pacing import PushPolicy
from fleet.cloud.push import push, register
from fleet.cloud.status import sync
from fleet.cloud.testing import BackendContract, MakeDevice
from fleet.cloud.work import load_work
from fleet.errors import InvalidInput
from fleet.pki import ca
from fleet.pki.issuer import Issuer
from fleet.registry.db import read_session
from fleet.registry.models import AuditEvent, Certificate
from fleet.workspace import Workspace

ENV = "FLEET_TEST_HUB"
FAST = PushPolicy(base_delay=0.05, max_delay=0.2, max_wait=30.0)


@pytest.fixture
def hub() -> Iterator[HubServer]:
    server = HubServer().start()
    yield server
    server.stop()


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ENV, connection_string())
    return ENV


def hub_options(hub: HubServer, **extra: Any) -> dict[str, Any]:
    options = {"connection_string_env": ENV, "endpoint_url": hub.base, **extra}
    return AzureIotHubBackend.validate_options(options)


@pytest.fixture
def backend(hub: HubServer, hub_env: str) -> Iterator[AzureIotHubBackend]:
    instance = AzureIotHubBackend("hub", hub_options(hub, query_rate_per_minute=60000))
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return ca.create_ca(tmp_path_factory.mktemp("azure-ca"), "Azure CA", "ec-p256", "pass phrase")


def identity(hub: HubServer, device_id: str) -> dict[str, Any] | None:
    with hub.state.lock:
        found = hub.state.devices.get(device_id)
        return dict(found) if found is not None else None


def thumbprints(hub: HubServer, device_id: str) -> tuple[str | None, str | None]:
    found = identity(hub, device_id)
    assert found is not None
    prints = found["authentication"]["x509Thumbprint"]
    return prints["primaryThumbprint"], prints["secondaryThumbprint"]


class TestAzureIotHubContract(BackendContract):
    pems: dict[str, str]

    @pytest.fixture
    def make_device(self, fleet_issuer: Issuer) -> MakeDevice:
        """Remembers each certificate by its thumbprint: the hub only holds thumbprints."""
        self.pems = {}

        def make(device_id: str) -> DeviceRecord:
            record = device_record(fleet_issuer, device_id)
            self.pems[record.fingerprint_sha256.upper()] = record.certificate_pem
            return record

        return make

    @pytest.fixture
    def backend(self, hub: HubServer, hub_env: str) -> Iterator[CloudBackend]:
        instance = AzureIotHubBackend("contract", hub_options(hub))
        yield instance
        instance.close()

    @pytest.fixture
    def read_back(self, hub: HubServer) -> Any:
        def read(device_id: str) -> dict[str, Any] | None:
            found = identity(hub, device_id)
            if found is None:
                return None
            primary = found["authentication"]["x509Thumbprint"]["primaryThumbprint"]
            return {
                "certificate_pem": self.pems.get(primary, ""),
                "active": found["status"] == "enabled",
            }

        return read

    @pytest.fixture
    def secret_values(self) -> list[str]:
        return [KEY, connection_string()]


# --- options, SAS -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "needs --connection-string-env"),
        ({"connection_string_env": connection_string()}, "variable NAME"),
        ({"connection_string_env": "X", "auth": "x509"}, "--auth must be one of"),
        ({"connection_string_env": "X", "deregister_mode": "purge"}, "--deregister-mode"),
        ({"connection_string_env": "X", "endpoint_url": "ftp://h"}, "--endpoint-url"),
        ({"connection_string_env": "X", "timeout": 0}, "--timeout"),
        ({"connection_string_env": "X", "region": "eu"}, "does not take --region"),
    ],
)
def test_validate_options_refuses_bad_ones(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        AzureIotHubBackend.validate_options(options)
    assert fragment in str(info.value)
    assert KEY not in str(info.value)


def test_stored_options_name_the_variable_only() -> None:
    stored = AzureIotHubBackend.validate_options({"connection_string_env": "HUB_CS", "auth": "ca"})
    assert stored == {"connection_string_env": "HUB_CS", "auth": "ca", "deregister_mode": "disable"}


def test_sas_token_shape_and_signature() -> None:
    token = sas_token(HOST, KEY, KEY_NAME, 1_800_000_000)
    assert token.startswith(f"SharedAccessSignature sr={HOST}&sig=")
    assert token.endswith("&se=1800000000&skn=registryReadWrite")
    # a key that is not base64 is refused without showing it
    with pytest.raises(ValueError, match="not base64") as info:
        sas_token(HOST, "not*base64", KEY_NAME, 1)
    assert "not*base64" not in str(info.value)


def test_sas_token_is_renewed_before_it_expires(
    hub_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_800_000_000.0]
    auth = SasAuth(ENV, clock=lambda: now[0])
    first = auth.token()
    assert auth.expiry == 1_800_000_000 + TOKEN_TTL
    now[0] += TOKEN_TTL - RENEW_BEFORE - 1
    assert auth.token() == first  # still well valid: reused
    now[0] += 2
    second = auth.token()
    assert second != first and auth.expiry > 1_800_000_000 + TOKEN_TTL
    # a new key in the variable gives a new token at once
    monkeypatch.setenv(ENV, connection_string(key="B" * 43 + "="))
    assert auth.token() != second


def test_hub_refuses_a_bad_signature_and_check_says_why(
    hub: HubServer, backend: AzureIotHubBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert backend.check().ok
    wrong = "A" * 43 + "="
    monkeypatch.setenv(ENV, connection_string(key=wrong))
    result = backend.check()
    assert not result.ok and "refused the signature (401" in result.message
    assert wrong not in result.message and KEY not in result.message
    monkeypatch.delenv(ENV)
    result = backend.check()
    assert not result.ok and f"environment variable {ENV} is not set" in result.message
    monkeypatch.setenv(ENV, "HostName=h;DeviceId=d;SharedAccessKey=" + KEY)
    result = backend.check()
    assert not result.ok and "lacks SharedAccessKeyName" in result.message
    assert KEY not in result.message
    with hub.state.lock:  # a policy without registry rights
        hub.state.policies["reader"] = (KEY, frozenset())
    monkeypatch.setenv(ENV, connection_string(key_name="reader"))
    result = backend.check()
    assert not result.ok and "403" in result.message and "registry" in result.message


def test_check_says_when_the_hub_is_unreachable(hub_env: str) -> None:
    down = HubServer()
    base = down.base
    down.server_close()
    backend = AzureIotHubBackend(
        "hub",
        AzureIotHubBackend.validate_options({"connection_string_env": ENV, "endpoint_url": base}),
    )
    try:
        result = backend.check()
    finally:
        backend.close()
    assert not result.ok and "cannot reach IoT Hub" in result.message


# --- identities ---------------------------------------------------------------------------


def test_register_sends_thumbprint_and_tags(
    hub: HubServer, backend: AzureIotHubBackend, issuer: Issuer
) -> None:
    record = device_record(issuer, "gw-1", labels={"site": "hh", "line.no": "4"})
    remote = backend.register(record, {})
    assert remote["primary_thumbprint"] == record.fingerprint_sha256.upper()
    assert thumbprints(hub, "gw-1") == (record.fingerprint_sha256.upper(), None)
    with hub.state.lock:
        tags = hub.state.twins["gw-1"]["tags"]["fleet"]
    assert tags["labels"] == {"site": "hh", "line%2Eno": "4"} and tags["model"] == "gw-200"
    # labels that went away are removed from the twin (merge patch with null)
    backend.register(device_record(issuer, "gw-1", labels={"site": "hh"}).__class__(
        **{**record.__dict__, "labels": {"site": "hh"}}), {})  # fmt: skip
    with hub.state.lock:
        assert hub.state.twins["gw-1"]["tags"]["fleet"]["labels"] == {"site": "hh"}


def test_register_rereads_the_etag_on_412(
    hub: HubServer, backend: AzureIotHubBackend, issuer: Issuer
) -> None:
    record = device_record(issuer, "gw-2")
    backend.register(record, {})
    with hub.state.lock:
        hub.state.devices["gw-2"]["status"] = "disabled"
        hub.state.faults["PUT /devices/gw-2"] = ["412"]
    backend.register(record, {})
    assert identity(hub, "gw-2")["status"] == "enabled"  # type: ignore[index]
    puts = [r for r in hub.state.requests if r[:2] == ("PUT", "/devices/gw-2")]
    assert len(puts) == 3  # create, the 412, the retry with the fresh etag
    with hub.state.lock:
        hub.state.faults["PUT /devices/gw-2"] = ["412"] * 5
        hub.state.devices["gw-2"]["status"] = "disabled"
    with pytest.raises(TransientError, match="kept changing"):
        backend.register(record, {})


def test_throttling_and_server_errors_are_transient(
    hub: HubServer, backend: AzureIotHubBackend, issuer: Issuer
) -> None:
    record = device_record(issuer, "gw-3")
    hub.state.faults["*"] = ["429:7"]
    with pytest.raises(TransientError) as info:
        backend.register(record, {})
    assert info.value.retry_after == 7.0 and "429 ThrottlingException" in str(info.value)
    hub.state.faults["*"] = ["503"]
    with pytest.raises(TransientError):
        backend.register(record, {})
    with hub.state.lock:
        hub.state.policies[KEY_NAME] = (KEY, frozenset({"RegistryRead"}))
    with pytest.raises(PermanentError, match="403"):
        backend.register(record, {})


def test_ca_mode_registers_certificate_authority_identities(
    hub: HubServer, hub_env: str, issuer: Issuer
) -> None:
    backend = AzureIotHubBackend("hub", hub_options(hub, auth="ca"))
    try:
        record = device_record(issuer, "gw-ca")
        backend.register(record, {})
        backend.register(record, {})
        with pytest.raises(ConflictError):  # the hub's tag names another fleet certificate
            backend.register(device_record(issuer, "gw-ca"), {})
    finally:
        backend.close()
    found = identity(hub, "gw-ca")
    assert found is not None and found["authentication"]["type"] == "certificateAuthority"


# --- through the outbox ---------------------------------------------------------------------


def add_hub_cloud(ws: Workspace, hub: HubServer, name: str = "hub", **options: Any) -> None:
    add_cloud(
        ws,
        name,
        "azure-iot-hub",
        {"connection_string_env": ENV, "endpoint_url": hub.base, "timeout": 5, **options},
        unlimited_rate=True,
    )


def job_states(ws: Workspace) -> dict[str, str]:
    with read_session(ws.open_registry()) as session:
        return {j.device_id: j.state for j in session.exec(select(CloudJob))}


def test_outbox_registers_in_import_batches_with_per_device_failures(
    ready_ws: Workspace, hub: HubServer, hub_env: str, tmp_path: Path
) -> None:
    add_hub_cloud(ready_ws, hub)
    ids = add_devices(ready_ws, tmp_path, 5, clouds=("hub",))
    with hub.state.lock:
        hub.state.import_errors[ids[1]] = "InvalidX509Thumbprint"  # permanent, this device only
        hub.state.import_errors[ids[2]] = "DeviceAlreadyExists"  # created meanwhile: retried
        hub.state.import_errors[ids[3]] = "ThrottlingException"  # retried too
    (report,) = push(ready_ws, "hub", policy=FAST)
    assert (report.done, report.failed, report.left) == (4, 1, 0)
    assert report.failures[0]["device_id"] == ids[1]
    assert "InvalidX509Thumbprint" in report.failures[0]["error"]
    # one import for the batch; the two retried devices go again together, or one by one
    # when their backoffs end in different rounds (timing: a loaded machine)
    assert hub.state.import_sizes[0] == 5
    assert sum(hub.state.import_sizes[1:]) <= 2
    assert set(hub.state.devices) == set(ids) - {ids[1]}
    assert dict(hub.state.creations) == dict.fromkeys(set(ids) - {ids[1]}, 1)
    with hub.state.lock:
        assert hub.state.twins[ids[0]]["tags"]["fleet"]["certificate_sha256"]
    # Registering again sends nothing: the query shows all in place.
    with hub.state.lock:
        hub.state.import_sizes.clear()
    assert register(ready_ws, "hub", [ids[0]]).queued == 0


def test_outbox_rides_out_429_and_5xx(
    ready_ws: Workspace, hub: HubServer, hub_env: str, tmp_path: Path
) -> None:
    add_hub_cloud(ready_ws, hub)
    ids = add_devices(ready_ws, tmp_path, 3, clouds=("hub",))
    with hub.state.lock:
        hub.state.faults["*"] = ["429:0.2", "503", "500"]
    (report,) = push(ready_ws, "hub", policy=FAST)
    assert (report.done, report.failed, report.left) == (3, 0, 0)
    assert set(hub.state.devices) == set(ids)
    assert dict(hub.state.creations) == dict.fromkeys(ids, 1)


def test_retry_after_schedules_the_retry(
    ready_sqlite_ws: Workspace, hub: HubServer, hub_env: str, tmp_path: Path
) -> None:
    from test_cloud_outbox import fake_time

    ws = ready_sqlite_ws
    add_hub_cloud(ws, hub)
    ids = add_devices(ws, tmp_path, 2, clouds=("hub",))
    hub.state.faults["POST /devices/query"] = ["429:7"]
    with fake_time() as timer:
        push(ws, "hub", policy=PushPolicy(base_delay=1.0, max_wait=0.0), timer=timer)
        with read_session(ws.open_registry()) as session:
            waiting = list(session.exec(select(CloudJob)))
        assert {j.next_attempt_at for j in waiting} == {clock.now() + timedelta(seconds=7)}
        assert {j.state for j in waiting} == {"retry"}
        (report,) = push(ws, "hub", policy=PushPolicy(max_wait=60.0), timer=timer)
    assert (report.done, report.left) == (2, 0) and set(hub.state.devices) == set(ids)


def test_unreachable_hub_leaves_jobs_for_a_later_sync(
    ready_sqlite_ws: Workspace, hub_env: str, tmp_path: Path
) -> None:
    down = HubServer()
    port = down.server_address[1]
    down.server_close()
    add_hub_cloud(ready_sqlite_ws, down)
    ids = add_devices(ready_sqlite_ws, tmp_path, 3, clouds=("hub",))
    quick = PushPolicy(base_delay=0.01, max_delay=0.05, max_wait=0.3)
    (report,) = push(ready_sqlite_ws, "hub", policy=quick)
    assert (report.done, report.failed, report.left) == (0, 0, 3)
    up = HubServer(port).start()
    try:
        (again,) = sync(ready_sqlite_ws, "hub", policy=FAST)
        assert (again.push.done, again.push.left) == (3, 0)
        assert dict(up.state.creations) == dict.fromkeys(ids, 1)
    finally:
        up.stop()


def test_outbox_crash_mid_push_registers_exactly_once(
    ready_ws: Workspace, hub: HubServer, hub_env: str, tmp_path: Path
) -> None:
    add_hub_cloud(ready_ws, hub)
    ids = add_devices(ready_ws, tmp_path, 4, clouds=("hub",))

    def crash(done: int, total: int) -> None:
        raise KeyboardInterrupt  # right after the first commit of outcomes

    policy = PushPolicy(base_delay=0.05, max_delay=0.2, max_wait=5.0, commit_every=1)
    with pytest.raises(KeyboardInterrupt):
        push(ready_ws, "hub", policy=policy, progress=crash)
    (report,) = push(ready_ws, "hub", policy=policy)
    assert report.left == 0 and set(job_states(ready_ws).values()) == {"done"}
    assert dict(hub.state.creations) == dict.fromkeys(ids, 1)


def test_renewal_keeps_the_previous_thumbprint_as_secondary(
    ready_ws: Workspace, hub: HubServer, hub_env: str, tmp_path: Path
) -> None:
    add_hub_cloud(ready_ws, hub)
    (device_id,) = add_devices(ready_ws, tmp_path, 1, clouds=("hub",))
    push(ready_ws, "hub", policy=FAST)
    old, _ = thumbprints(hub, device_id)
    new = certs.renew_certificate(ready_ws, device_id, out_dir=tmp_path / "out")
    assert register(ready_ws, "hub", [device_id], policy=FAST).queued == 1
    assert thumbprints(hub, device_id) == (new.fingerprint_sha256.upper(), old)
    # Once the old certificate is revoked, the next registration of the device (here: the
    # outbox's work for a register job, as drift's fix queues it) drops it.
    with read_session(ready_ws.open_registry()) as session:
        serial = session.exec(
            select(Certificate.serial).where(Certificate.fingerprint_sha256 == old.lower())  # type: ignore[union-attr]
        ).one()
    certs.revoke_certificate(ready_ws, serial, reason="superseded")
    job = CloudJob(id=0, device_id=device_id, cloud="hub", action="register",
                   state="pending", attempts=0, idempotency_key="k")  # fmt: skip
    with read_session(ready_ws.open_registry()) as session:
        (work,) = load_work(session, [job])
    assert work.record is not None and work.record.previous_fingerprint_sha256 == ""
    backend = AzureIotHubBackend("hub", hub_options(hub))
    try:
        backend.register(work.record, {})
    finally:
        backend.close()
    assert thumbprints(hub, device_id) == (new.fingerprint_sha256.upper(), None)


def test_revoking_the_previous_certificate_queues_a_registration_that_drops_it(
    ready_ws: Workspace, hub: HubServer, hub_env: str, tmp_path: Path
) -> None:
    """The hub accepts a renewed device's previous thumbprint as secondary; revoking that
    certificate must reach the hub without anything else re-registering the device."""
    add_hub_cloud(ready_ws, hub)
    (device_id,) = add_devices(ready_ws, tmp_path, 1, clouds=("hub",))
    push(ready_ws, "hub", policy=FAST)
    old, _ = thumbprints(hub, device_id)
    new = certs.renew_certificate(ready_ws, device_id, out_dir=tmp_path / "out")
    register(ready_ws, "hub", [device_id], policy=FAST)
    assert thumbprints(hub, device_id) == (new.fingerprint_sha256.upper(), old)
    with read_session(ready_ws.open_registry()) as session:
        serial = session.exec(
            select(Certificate.serial).where(Certificate.fingerprint_sha256 == old.lower())  # type: ignore[union-attr]
        ).one()
    certs.revoke_certificate(ready_ws, serial, reason="keyCompromise")
    (report,) = push(ready_ws, "hub", policy=FAST)
    assert (report.done, report.failed) == (1, 0)
    assert thumbprints(hub, device_id) == (new.fingerprint_sha256.upper(), None)


@pytest.mark.parametrize("mode", ["disable", "delete"])
def test_decommission_disables_or_deletes(
    ready_ws: Workspace, hub: HubServer, hub_env: str, tmp_path: Path, mode: str
) -> None:
    add_hub_cloud(ready_ws, hub, deregister_mode=mode)
    ids = add_devices(ready_ws, tmp_path, 2, clouds=("hub",))
    push(ready_ws, "hub", policy=FAST)
    devices.decommission_device(ready_ws, ids[0])
    with hub.state.lock:  # changed meanwhile: the etag is read again
        hub.state.faults[f"PUT /devices/{ids[0]}"] = ["412"]
    (report,) = push(ready_ws, "hub", policy=FAST)
    assert (report.done, report.failed) == (1, 0)
    found = identity(hub, ids[0])
    if mode == "delete":
        assert found is None
    else:
        assert found is not None and found["status"] == "disabled"
    assert identity(hub, ids[1])["status"] == "enabled"  # type: ignore[index]


def test_status_sync_pages_through_the_query(
    ready_ws: Workspace, hub: HubServer, hub_env: str, tmp_path: Path
) -> None:
    add_hub_cloud(ready_ws, hub)
    ids = add_devices(ready_ws, tmp_path, 5, clouds=("hub",))
    push(ready_ws, "hub", policy=FAST)
    hub.state.set_connection(ids[0], True, firmware="1.4.2")
    hub.state.set_connection(ids[1], False)
    hub.state.max_page = 2  # the hub answers fewer than asked: three pages
    before = len(hub.state.requests)
    backend = AzureIotHubBackend("hub", hub_options(hub))
    try:
        status = backend.fetch_status([*ids, "never-seen"], {})
    finally:
        backend.close()
    assert set(status) == set(ids)
    assert status[ids[0]].connected is True and status[ids[0]].firmware_version == "1.4.2"
    assert status[ids[0]].last_activity is not None
    assert status[ids[1]].connected is False and status[ids[2]].last_activity is None
    continued = [r for r in hub.state.requests[before:] if r[1] == "/devices/query"]
    assert len(continued) == 3
    (report,) = sync(ready_ws, "hub", policy=FAST)
    assert report.push.left == 0


# --- inventory, unknown devices, firmware --------------------------------------------------


def test_inventory_delete_unknown_and_firmware(
    hub: HubServer, backend: AzureIotHubBackend, issuer: Issuer
) -> None:
    records = [device_record(issuer, f"inv-{i}") for i in range(5)]
    assert all(isinstance(r, dict) for r in backend.register_many(records, {}))
    with hub.state.lock:
        hub.state.devices["inv-4"]["status"] = "disabled"
    hub.state.set_connection("inv-0", True)
    hub.state.max_page = 2
    found = {d.device_id: d for d in backend.iter_inventory({})}
    assert set(found) == {r.device_id for r in records}
    assert found["inv-0"].connected is True and found["inv-4"].enabled is False
    assert found["inv-1"].certificates[0].fingerprint_sha256 == records[1].fingerprint_sha256
    backend.delete_unknown(found["inv-3"], {})
    backend.delete_unknown(found["inv-3"], {})  # idempotent
    assert identity(hub, "inv-3") is None
    target = FirmwareTarget("2.0.1", "ab" * 32, 1234, "https://fw.example/2.0.1", "PEM")
    backend.deliver_firmware(records[0], target, {"device_id": "inv-0"}, {})
    with hub.state.lock:
        desired = hub.state.twins["inv-0"]["properties"]["desired"]["firmware"]
    assert desired == {"version": "2.0.1", "url": "https://fw.example/2.0.1",
                       "sha256": "ab" * 32, "size": 1234, "signature": "PEM"}  # fmt: skip
    backend.deliver_firmware(records[0], None, {"device_id": "inv-0"}, {})
    with hub.state.lock:
        assert "firmware" not in hub.state.twins["inv-0"]["properties"]["desired"]
    with pytest.raises(PermanentError, match="not registered"):
        backend.deliver_firmware(records[3], target, {}, {})


def test_drift_against_the_hub_finds_fixes_and_deletes(
    ready_ws: Workspace, hub: HubServer, hub_env: str, tmp_path: Path, issuer: Issuer
) -> None:
    """``fleet cloud drift`` over the hub's inventory: a device deleted in the portal, one
    disabled there, one decommissioned in fleet but left enabled (security), one the hub
    alone knows; ``--fix`` + sync + ``--delete-unknown`` leave it clean."""
    from fleet.cloud.drift import drift

    add_hub_cloud(ready_ws, hub)
    ids = add_devices(ready_ws, tmp_path, 4, clouds=("hub",))
    push(ready_ws, "hub", policy=FAST)
    assert drift(ready_ws, "hub").clean
    with hub.state.lock:
        del hub.state.devices[ids[0]]
        hub.state.devices[ids[1]]["status"] = "disabled"
    backend = AzureIotHubBackend("hub", hub_options(hub))
    try:
        (rogue,) = backend.register_many([device_record(issuer, "rogue-1")], {})
    finally:
        backend.close()
    assert isinstance(rogue, dict)
    devices.decommission_device(ready_ws, ids[2])
    assert job_states(ready_ws)[ids[2]] == "pending"  # its deregistration has not run yet
    report = drift(ready_ws, "hub")
    found = {(f.device_id, str(f.kind)) for f in report.findings}
    assert found == {
        (ids[0], "missing-in-cloud"),
        (ids[1], "disabled-in-cloud"),
        (ids[2], "decommissioned-but-enabled"),
        ("rogue-1", "unknown-in-cloud"),
    }
    assert [f.device_id for f in report.findings if f.security] == [ids[2]]
    fixed = drift(ready_ws, "hub", fix=True, delete_unknown=True)
    assert fixed.fix is not None and fixed.fix.to_dict()["deleted"] == ["rogue-1"]
    push(ready_ws, "hub", policy=FAST)
    after = drift(ready_ws, "hub")
    assert after.clean, [f.to_dict() for f in after.findings]
    assert identity(hub, ids[0]) is not None and identity(hub, "rogue-1") is None


# --- secrets --------------------------------------------------------------------------------


def test_secret_never_stored_shown_or_logged(
    ready_ws: Workspace,
    hub: HubServer,
    hub_env: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    add_hub_cloud(ready_ws, hub)
    add_devices(ready_ws, tmp_path, 2, clouds=("hub",))
    push(ready_ws, "hub", policy=FAST)
    result = check_cloud(ready_ws, "hub")
    tokens = set(hub.state.tokens)
    signatures = {t.split("sig=")[1].split("&")[0] for t in tokens}
    with read_session(ready_ws.open_registry()) as session:
        stored = repr(list(session.exec(select(Cloud)))) + repr(
            list(session.exec(select(AuditEvent)))
        )
    seen = "\n".join([stored, caplog.text, result.message])
    for secret in [KEY, connection_string(), *signatures]:
        assert secret not in seen
    assert ENV in stored  # the variable's name is what is stored


def test_cli_add_check_and_register(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, hub: HubServer, hub_env: str, tmp_path: Path
) -> None:
    help_text = sqlite_cli("cloud", "add", "--help").stdout
    assert "--connection-string-env" in help_text and "--deregister-mode" in help_text
    result = sqlite_cli(
        "cloud", "add", "hub", "--type", "azure-iot-hub", "--connection-string-env", ENV,
        "--endpoint-url", hub.base, "--no-rate-limit",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert sqlite_cli("cloud", "check", "hub").exit_code == 0
    out = tmp_path / "out"
    assert sqlite_cli("device", "add", "cli-1", "--out", str(out)).exit_code == 0
    result = sqlite_cli("cloud", "register", "hub", "cli-1", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["push"]["done"] == 1
    os.environ[ENV] = connection_string(key="C" * 43 + "=")
    result = sqlite_cli("cloud", "check", "hub")
    assert result.exit_code == 1 and "refused the signature" in result.stderr
    for text in (result.stdout, result.stderr):
        assert KEY not in text and "C" * 43 not in text


# --- Microsoft's service SDK, on the same inputs (slow) ------------------------------------

SDK_VERSION = "2.7.0"
OTHER_KEY = "c2VjcmV0IGtleSB3aXRoIC8gYW5kICsgY2hhcnM/Pz8+"


def sdk_python() -> Path:
    """A virtualenv with ``azure-iot-hub`` (its own, since it pins uamqp<2), built once under
    the cache dir. If uamqp cannot be built here, ``--no-deps`` installs the SDK alone: the
    test imports only its ``sastoken`` module (which needs ``six``)."""
    cache = Path(os.environ.get("FLEET_TEST_CACHE", Path(tempfile.gettempdir()) / "fleet-cache"))
    venv = cache / f"azure-iot-hub-{SDK_VERSION}"
    python = venv / "bin" / "python"
    marker = venv / ".ready"
    if marker.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # sastoken.py imports six, which the SDK does not declare.
    full = subprocess.run(
        [*pip, f"azure-iot-hub=={SDK_VERSION}", "six"], capture_output=True, timeout=600
    )
    if full.returncode != 0:
        subprocess.run([*pip, "six"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            [*pip, "--no-deps", f"azure-iot-hub=={SDK_VERSION}"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    marker.write_text("ok\n")
    return python


SDK_SCRIPT = """
import importlib.util, json, site, sys, time, pathlib
for base in site.getsitepackages():
    path = pathlib.Path(base) / "azure" / "iot" / "hub" / "sastoken.py"
    if path.exists():
        break
spec = importlib.util.spec_from_file_location("sastoken", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
cases = json.loads(sys.stdin.read())
out = []
for host, key, name, now, ttl in cases:
    time.time = lambda now=now: now
    out.append(str(module.SasToken(host, key, name, ttl)))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_sas_token_matches_microsofts_service_sdk() -> None:
    """Byte for byte the token of ``azure.iot.hub.sastoken.SasToken`` (azure-iot-hub 2.7.0),
    run in its own virtualenv with its clock set to the same moment. The virtualenv gets the
    full SDK with uamqp<2 where uamqp installs (it does on this project's machines), else the
    SDK alone with ``--no-deps``; either way only its ``sastoken`` module is loaded (by
    path, so the package's AMQP imports never run)."""
    try:
        python = sdk_python()
    except (subprocess.SubprocessError, OSError) as exc:
        # a skip on a laptop without network; a failure under CI=true
        require_service(f"cannot build the azure-iot-hub {SDK_VERSION} virtualenv: {exc}")
    cases: list[tuple[str, str, str, float, int]] = [
        (HOST, KEY, KEY_NAME, 1_800_000_000.25, 3600),
        ("My-Hub.azure-devices.net", OTHER_KEY, "iothubowner", 1_765_432_100.9, 600),
        ("hub.azure-devices.net/devices/a b", KEY, "service", 1_700_000_000.0, 86400),
    ]
    run = subprocess.run(
        [str(python), "-c", SDK_SCRIPT],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    theirs = json.loads(run.stdout)
    ours = [sas_token(host, key, name, int(now + ttl)) for host, key, name, now, ttl in cases]
    assert ours == theirs
    assert any("%2F" in token or "/" in token.split("sig=")[1] for token in ours)
