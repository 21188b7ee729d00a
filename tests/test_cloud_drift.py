"""``fleet cloud drift``: the comparison against an in-memory backend of this file, and the
AWS backend end to end against moto (devices registered through fleet, then changed behind
fleet's back with boto3)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import Cli, add_devices, require_service
from helpers.moto import ACCESS_KEY, REGION, SECRET_KEY, fake_aws_env, moto_server, reset_moto
from sqlalchemy import update
from sqlmodel import col, select

from fleet.certs import revoke_certificate
from fleet.cloud import drift as drift_module
from fleet.cloud.base import (
    CaMaterial,
    CheckResult,
    CloudBackend,
    DeviceRecord,
    RemoteCertificate,
    RemoteDevice,
    RemoteStatus,
    TransientError,
)
from fleet.cloud.clouds import add_cloud
from fleet.cloud.drift import drift
from fleet.cloud.models import CloudJob, CloudRegistration
from fleet.devices import decommission_device
from fleet.errors import InvalidInput
from fleet.registry.db import read_session, write_session
from fleet.registry.models import AuditEvent, Certificate
from fleet.statuses import JobState, RegistrationStatus
from fleet.workspace import Workspace

FOREIGN = "f0" * 32  # a fingerprint fleet never issued


class FakeBackend(CloudBackend):
    """An in-memory platform: ``devices`` is its inventory, listed ``page_size`` at a time."""

    type_name: ClassVar[str] = "fake"

    def __init__(self, devices: Sequence[RemoteDevice] = (), page_size: int = 100) -> None:
        super().__init__("fake", {})
        self.devices = {d.device_id: d for d in devices}
        self.page_size = page_size
        self.pages_read = 0
        self.deleted: list[str] = []

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        return dict(options)

    def check(self) -> CheckResult:
        return CheckResult(True, "fake")

    def prepare(self, ca: CaMaterial) -> dict[str, Any]:
        return {}

    def register(self, device: DeviceRecord, state: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def deregister(
        self, device: DeviceRecord, remote: Mapping[str, Any], state: Mapping[str, Any]
    ) -> None:
        return None

    def fetch_status(
        self, device_ids: Sequence[str], state: Mapping[str, Any]
    ) -> dict[str, RemoteStatus]:
        return {}

    def iter_inventory(self, state: Mapping[str, Any]) -> Iterator[RemoteDevice]:
        listed = sorted(self.devices.values(), key=lambda d: d.device_id, reverse=True)
        for start in range(0, len(listed), self.page_size):
            self.pages_read += 1
            yield from listed[start : start + self.page_size]

    def delete_unknown(self, remote: RemoteDevice, state: Mapping[str, Any]) -> None:
        self.devices.pop(remote.device_id, None)
        self.deleted.append(remote.device_id)


def remote(device_id: str, *certs: tuple[str, bool]) -> RemoteDevice:
    """A remote device holding certificates given as (fingerprint, active)."""
    certificates = tuple(RemoteCertificate(fp, active) for fp, active in certs)
    return RemoteDevice(device_id, any(a for _, a in certs), certificates)


def fingerprints(ws: Workspace) -> dict[str, str]:
    """Each device's newest certificate's fingerprint (any status), by device id."""
    with read_session(ws.open_registry()) as session:
        rows = session.exec(
            select(Certificate.device_id, Certificate.fingerprint_sha256).order_by(
                col(Certificate.issued_at)
            )
        ).all()
    return dict(rows)


def serial_of(ws: Workspace, device_id: str) -> str:
    with read_session(ws.open_registry()) as session:
        return session.exec(
            select(Certificate.serial).where(Certificate.device_id == device_id)
        ).one()


def mark_registered(ws: Workspace, cloud: str) -> None:
    """What a successful push leaves: every job done, every registration registered."""
    with write_session(ws.open_registry()) as session:
        session.execute(update(CloudJob).where(CloudJob.cloud == cloud).values(state=JobState.DONE))
        session.execute(
            update(CloudRegistration)
            .where(CloudRegistration.cloud == cloud)
            .values(status=RegistrationStatus.REGISTERED)
        )


@pytest.fixture
def fleet_ws(ready_ws: Workspace, tmp_path: Path) -> Workspace:
    """``fake`` (an http cloud whose backend the tests replace) with dev-0000..0006 added
    and registered; dev-0007 added with a pending registration."""
    add_cloud(ready_ws, "fake", "http", {"url": "https://reg.example/devices/{id}"})
    add_devices(ready_ws, tmp_path, 7, clouds=("fake",))
    mark_registered(ready_ws, "fake")
    from fleet.devices import add_device

    add_device(ready_ws, "dev-0007", out_dir=tmp_path / "out", clouds=("fake",))
    return ready_ws


def agreeing(ws: Workspace, ids: Sequence[str]) -> list[RemoteDevice]:
    fps = fingerprints(ws)
    return [remote(i, (fps[i], True)) for i in ids]


def test_clean_inventory_has_no_findings(fleet_ws: Workspace) -> None:
    ids = [f"dev-{i:04d}" for i in range(7)]
    backend = FakeBackend(agreeing(fleet_ws, ids), page_size=3)
    report = drift(fleet_ws, "fake", backend=backend)
    assert report.clean
    assert report.findings == []
    assert report.remote_devices == 7
    assert report.registrations == 8  # dev-0007 pending: not missing, its job is queued
    assert backend.pages_read == 3
    shown = report.to_dict()
    assert shown["clean"] is True
    assert set(shown["counts"].values()) == {0}
    assert shown["fix"] is None


def test_each_kind_is_found(fleet_ws: Workspace) -> None:
    fps = fingerprints(fleet_ws)
    decommission_device(fleet_ws, "dev-0003", reason="retired")
    revoke_certificate(fleet_ws, serial_of(fleet_ws, "dev-0005"), reason="keyCompromise")
    inventory = [
        remote("dev-0000", (fps["dev-0000"], True)),  # agrees
        # dev-0001 absent: missing
        remote("dev-0002", (fps["dev-0002"], True), (FOREIGN, True)),  # extra certificate
        remote("dev-0003", (fps["dev-0003"], True)),  # decommissioned, still enabled
        remote("dev-0004", (fps["dev-0004"], False)),  # disabled remotely
        remote("dev-0005", (fps["dev-0005"], True)),  # revoked certificate active
        remote("dev-0006", ("ab" * 32, True)),  # another certificate instead of its own
        remote("rogue-1", (FOREIGN, True)),  # unknown
    ]
    report = drift(fleet_ws, "fake", backend=FakeBackend(inventory))
    found = {(f.device_id, str(f.kind), f.security, f.fix) for f in report.findings}
    assert found == {
        ("dev-0001", "missing-in-cloud", False, "register"),
        ("dev-0002", "certificate-mismatch", False, "register"),
        ("dev-0003", "decommissioned-but-enabled", True, "deregister"),
        ("dev-0004", "disabled-in-cloud", False, "register"),
        ("dev-0005", "decommissioned-but-enabled", True, "deregister"),
        ("dev-0006", "certificate-mismatch", False, "register"),
        ("rogue-1", "unknown-in-cloud", False, "delete"),
    }
    shown = report.to_dict()
    assert shown["counts"] == {
        "missing-in-cloud": 1,
        "unknown-in-cloud": 1,
        "certificate-mismatch": 2,
        "decommissioned-but-enabled": 2,
        "disabled-in-cloud": 1,
    }
    assert shown["security_findings"] == 2
    by_id = {f["device_id"]: f for f in shown["findings"]}
    assert set(by_id["dev-0002"]) == {
        "device_id", "kind", "security", "detail", "fix", "device_status", "registration",
        "expected_fingerprint", "remote",
    }  # fmt: skip
    assert by_id["dev-0002"]["expected_fingerprint"] == fps["dev-0002"]
    assert by_id["dev-0002"]["remote"]["certificates"][1] == {
        "fingerprint_sha256": FOREIGN,
        "active": True,
        "remote_id": None,
    }
    assert by_id["dev-0001"]["remote"] is None
    assert "revoked certificate" in by_id["dev-0005"]["detail"]
    assert by_id["rogue-1"]["device_status"] is None


def test_revoked_certificate_beside_the_current_one_is_a_security_finding(
    fleet_ws: Workspace, tmp_path: Path
) -> None:
    """A renewed device's old (revoked) certificate re-enabled in the cloud: register fixes it
    (the backend keeps only the device's own certificates)."""
    old = fingerprints(fleet_ws)["dev-0000"]
    from fleet.certs import renew_certificate

    renew_certificate(fleet_ws, "dev-0000", out_dir=tmp_path / "out")
    revoke_certificate(fleet_ws, serial_of_fp(fleet_ws, old), reason="superseded")
    new = fingerprints(fleet_ws)["dev-0000"]
    inventory = [remote("dev-0000", (new, True), (old, True))]
    inventory += agreeing(fleet_ws, [f"dev-{i:04d}" for i in range(1, 7)])
    report = drift(fleet_ws, "fake", backend=FakeBackend(inventory))
    [finding] = report.findings
    assert (finding.kind, finding.security, finding.fix) == (
        "decommissioned-but-enabled",
        True,
        "register",
    )


def serial_of_fp(ws: Workspace, fingerprint: str) -> str:
    with read_session(ws.open_registry()) as session:
        return session.exec(
            select(Certificate.serial).where(Certificate.fingerprint_sha256 == fingerprint)
        ).one()


def test_paging_batches_and_repeats(
    ready_sqlite_ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inventory pages, comparison batches and registry pages all cut at odd places; a
    device listed twice counts once."""
    ws = ready_sqlite_ws
    add_cloud(ws, "fake", "http", {"url": "https://reg.example/devices/{id}"})
    ids = add_devices(ws, tmp_path, 23, clouds=("fake",))
    mark_registered(ws, "fake")
    monkeypatch.setattr(drift_module, "BATCH", 4)
    monkeypatch.setattr(drift_module, "PAGE", 5)
    listed = agreeing(ws, ids[:20]) + agreeing(ws, ids[:2])
    listed += [remote(f"zz-{i:03d}", (FOREIGN, False)) for i in range(9)]
    backend = FakeBackend([], page_size=7)
    backend.iter_inventory = lambda state: iter(listed)  # type: ignore[method-assign]
    seen: list[int] = []
    report = drift(ws, "fake", backend=backend, progress=lambda n, total: seen.append(n))
    assert report.remote_devices == 29
    assert seen == sorted(seen) and seen[-1] == 29
    kinds = {(f.device_id, str(f.kind)) for f in report.findings}
    missing = {(i, "missing-in-cloud") for i in ids[20:]}
    unknown = {(f"zz-{i:03d}", "unknown-in-cloud") for i in range(9)}
    assert kinds == missing | unknown


def test_fix_queues_jobs_with_audit_and_deletes_unknown_only_when_asked(
    fleet_ws: Workspace,
) -> None:
    fps = fingerprints(fleet_ws)
    decommission_device(fleet_ws, "dev-0003", reason="retired")
    with write_session(fleet_ws.open_registry()) as session:  # as the pushed job leaves it
        session.execute(
            update(CloudJob).where(CloudJob.device_id == "dev-0003").values(state=JobState.DONE)
        )
        session.execute(
            update(CloudRegistration)
            .where(CloudRegistration.device_id == "dev-0003")
            .values(status=RegistrationStatus.DEREGISTERED)
        )
    inventory = [
        remote("dev-0000", (fps["dev-0000"], True)),
        remote("dev-0002", (fps["dev-0002"], True), (FOREIGN, True)),
        remote("dev-0003", (fps["dev-0003"], True)),
        remote("dev-0004", (fps["dev-0004"], False)),
        remote("dev-0005", (fps["dev-0005"], True)),
        remote("dev-0006", (fps["dev-0006"], True)),
        remote("rogue-1", (FOREIGN, True)),
    ]
    backend = FakeBackend(inventory)
    report = drift(fleet_ws, "fake", fix=True, backend=backend)
    assert report.fix is not None
    assert (report.fix.register, report.fix.deregister) == (3, 1)
    assert backend.deleted == []
    with read_session(fleet_ws.open_registry()) as session:
        jobs = session.exec(
            select(CloudJob.device_id, CloudJob.action).where(CloudJob.state == JobState.PENDING)
        ).all()
        events = session.exec(
            select(AuditEvent.target, AuditEvent.details).where(AuditEvent.action == "cloud.drift")
        ).all()
    assert set(jobs) == {
        ("dev-0001", "register"),
        ("dev-0002", "register"),
        ("dev-0004", "register"),
        ("dev-0003", "deregister"),
        ("dev-0007", "register"),  # queued before, untouched
    }
    assert {t: json.loads(d)["kind"] for t, d in events} == {
        "dev-0001": "missing-in-cloud",
        "dev-0002": "certificate-mismatch",
        "dev-0003": "decommissioned-but-enabled",
        "dev-0004": "disabled-in-cloud",
    }
    again = drift(fleet_ws, "fake", fix=True, backend=backend)  # already queued: no new jobs
    assert again.fix is not None and (again.fix.register, again.fix.deregister) == (0, 0)

    with pytest.raises(InvalidInput, match="--delete-unknown goes with --fix"):
        drift(fleet_ws, "fake", delete_unknown=True, backend=backend)
    deleting = drift(fleet_ws, "fake", fix=True, delete_unknown=True, backend=backend)
    assert deleting.fix is not None and deleting.fix.deleted == ["rogue-1"]
    assert backend.deleted == ["rogue-1"]
    with read_session(fleet_ws.open_registry()) as session:
        event = session.exec(
            select(AuditEvent).where(AuditEvent.action == "cloud.delete-unknown")
        ).one()
    assert event.target == "rogue-1"
    assert json.loads(event.details) == {"cloud": "fake", "certificates": [FOREIGN]}


def test_cli_exit_codes_and_json(
    fleet_ws: Workspace, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = agreeing(fleet_ws, [f"dev-{i:04d}" for i in range(7)])
    backend = FakeBackend(inventory)
    monkeypatch.setattr(drift_module, "make_backend", lambda cloud, client=None: backend)
    clean = cli("cloud", "drift", "fake", "--json")
    assert clean.exit_code == 0, clean.stderr
    assert json.loads(clean.stdout)["clean"] is True
    backend.devices["rogue-1"] = remote("rogue-1", (FOREIGN, True))
    drifted = cli("cloud", "drift", "fake", "--json")
    assert drifted.exit_code == 8
    shown = json.loads(drifted.stdout)
    assert [(f["device_id"], f["kind"]) for f in shown["findings"]] == [
        ("rogue-1", "unknown-in-cloud")
    ]
    human = cli("cloud", "drift", "fake")
    assert human.exit_code == 8
    assert "rogue-1" in human.stdout
    assert "drift: 1 unknown-in-cloud" in human.stderr
    usage = cli("cloud", "drift", "fake", "--delete-unknown")
    assert usage.exit_code == 2
    assert usage.stderr == "error: --delete-unknown goes with --fix\n"


def test_backend_without_inventory_is_a_clear_error(fleet_ws: Workspace, cli: Cli) -> None:
    result = cli("cloud", "drift", "fake")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cloud 'fake': cloud type 'http' cannot list")
    assert result.stdout == ""
    missing = cli("cloud", "drift", "nope")
    assert missing.exit_code == 3


def test_a_cloud_failing_mid_inventory_is_one_line_and_exit_1(
    fleet_ws: Workspace, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FakeBackend(agreeing(fleet_ws, ["dev-0000", "dev-0001"]))

    def failing(state: Mapping[str, Any]) -> Iterator[RemoteDevice]:
        yield from backend.devices.values()
        raise TransientError("AWS IoT ListThings: ThrottlingException: Rate exceeded")

    backend.iter_inventory = failing  # type: ignore[method-assign]
    monkeypatch.setattr(drift_module, "make_backend", lambda cloud, client=None: backend)
    result = cli("cloud", "drift", "fake", "--fix")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: cloud 'fake': reading the inventory failed: AWS IoT ListThings: "
        "ThrottlingException: Rate exceeded\n"
    )
    with read_session(fleet_ws.open_registry()) as session:  # nothing queued on a failed read
        drifted = session.exec(select(AuditEvent).where(AuditEvent.action == "cloud.drift"))
        assert drifted.all() == []


# --- AWS IoT end to end, against moto -------------------------------------------------------

try:
    import boto3
except ImportError:  # pragma: no cover - depends on the environment
    boto3 = None


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A moto server on 127.0.0.1 (tests/helpers/moto.py)."""
    if boto3 is None:
        require_service("boto3 is not installed (pip install -e .[test])")
    yield from moto_server()


@pytest.fixture
def iot(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A reset moto with AWS-accurate certificate ids, fake credentials, and boto3's client
    (the independent reader and the hand behind fleet's back)."""
    fake_aws_env(monkeypatch, tmp_path, region=None)
    reset_moto(moto_url, monkeypatch)
    return boto3.client(
        "iot",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def arn_of(iot: Any, thing: str) -> str:
    [principal] = iot.list_thing_principals(thingName=thing)["principals"]
    return str(principal)


def drift_json(cli: Cli, *args: str, cloud: str = "aws") -> tuple[int, dict[str, Any]]:
    result = cli("cloud", "drift", cloud, "--json", *args)
    assert result.exit_code in (0, 8), result.stderr
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.slow
def test_aws_drift_fix_and_delete_unknown_against_moto(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, moto_url: str, iot: Any, tmp_path: Path
) -> None:
    cli = sqlite_cli
    added = cli(
        "cloud", "add", "aws", "--type", "aws-iot", "--region", REGION,
        "--endpoint-url", moto_url, "--list-rate", "1000", "--no-rate-limit",
    )  # fmt: skip
    assert added.exit_code == 0, added.stderr
    ids = [f"gw-{i}" for i in range(7)]
    for device_id in ids:
        made = cli("device", "add", device_id, "--out", str(tmp_path / "o"))
        assert made.exit_code == 0, made.stderr
    assert cli("cloud", "register", "aws", "--all").exit_code == 0
    code, first = drift_json(cli)
    assert (code, first["clean"], first["remote_devices"]) == (0, True, 7)

    # fleet revokes gw-3's certificate and decommissions gw-5; both are pushed
    serial = serial_of(ready_sqlite_ws, "gw-3")
    assert cli("cert", "revoke", serial, "--reason", "keyCompromise").exit_code == 0
    assert cli("device", "decommission", "gw-5").exit_code == 0
    revoked_arn, retired_arn = arn_of(iot, "gw-3"), arn_of(iot, "gw-5")
    assert cli("cloud", "sync", "aws").exit_code == 0
    assert iot.list_thing_principals(thingName="gw-3")["principals"] == []

    # behind fleet's back:
    gone = arn_of(iot, "gw-1")
    iot.detach_thing_principal(thingName="gw-1", principal=gone)
    iot.delete_thing(thingName="gw-1")
    extra = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName="gw-2", principal=extra["certificateArn"])
    for arn in (revoked_arn, retired_arn):  # re-enabled and re-attached
        iot.update_certificate(certificateId=arn.rsplit("/", 1)[1], newStatus="ACTIVE")
    iot.attach_thing_principal(thingName="gw-3", principal=revoked_arn)
    iot.attach_thing_principal(thingName="gw-5", principal=retired_arn)
    disabled = arn_of(iot, "gw-4")
    iot.update_certificate(certificateId=disabled.rsplit("/", 1)[1], newStatus="INACTIVE")
    rogue = iot.create_keys_and_certificate(setAsActive=True)
    iot.create_thing(thingName="rogue-1")
    iot.attach_thing_principal(thingName="rogue-1", principal=rogue["certificateArn"])

    code, report = drift_json(cli)
    assert code == 8
    assert {(f["device_id"], f["kind"], f["security"]) for f in report["findings"]} == {
        ("gw-1", "missing-in-cloud", False),
        ("gw-2", "certificate-mismatch", False),
        ("gw-3", "decommissioned-but-enabled", True),
        ("gw-4", "disabled-in-cloud", False),
        ("gw-5", "decommissioned-but-enabled", True),
        ("rogue-1", "unknown-in-cloud", False),
    }
    assert report["remote_devices"] == 7  # gw-0, gw-2...gw-6, rogue-1
    by_id = {f["device_id"]: f for f in report["findings"]}
    held = by_id["gw-2"]["remote"]["certificates"]
    # moto's certificate ids are SHA-256 fingerprints, as AWS's are
    assert {c["remote_id"] for c in held} == {
        extra["certificateId"],
        by_id["gw-2"]["expected_fingerprint"],
    }
    assert all(c["active"] for c in held)

    code, fixing = drift_json(cli, "--fix")
    assert code == 8
    assert (fixing["fix"]["register"], fixing["fix"]["deregister"]) == (3, 2)
    synced = cli("cloud", "sync", "aws")
    assert synced.exit_code == 0, synced.stderr
    code, after = drift_json(cli)
    assert code == 8
    assert [(f["device_id"], f["kind"]) for f in after["findings"]] == [
        ("rogue-1", "unknown-in-cloud")
    ]
    # what the fixes did, read back by boto3
    assert set(iot.list_thing_principals(thingName="gw-2")["principals"]) == {arn_of(iot, "gw-2")}
    extra_status = iot.describe_certificate(certificateId=extra["certificateId"])
    assert extra_status["certificateDescription"]["status"] == "ACTIVE"  # foreign: detached only
    for arn in (revoked_arn, retired_arn):
        described = iot.describe_certificate(certificateId=arn.rsplit("/", 1)[1])
        assert described["certificateDescription"]["status"] == "INACTIVE"

    code, deleting = drift_json(cli, "--fix", "--delete-unknown")
    assert code == 8
    assert deleting["fix"]["deleted"] == ["rogue-1"]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="rogue-1")
    rogue_status = iot.describe_certificate(certificateId=rogue["certificateId"])
    assert rogue_status["certificateDescription"]["status"] == "INACTIVE"
    code, final = drift_json(cli)
    assert (code, final["clean"]) == (0, True)


class StepTimer:
    """Simulated monotonic time: sleeping advances it, nothing really waits."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(0.0, seconds)


def test_aws_inventory_pages_within_each_apis_rate_and_retries_throttling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ListThings pages with nextToken, each list API at most 10 calls/s by default (on
    simulated time), a ThrottlingException waits for its Retry-After. MockTransport answers
    in AWS's documented shapes: moto neither throttles nor needs pacing."""
    import httpx
    from cryptography import x509

    from fleet.cloud.aws import AwsIotBackend, inventory
    from fleet.pki import keys

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFLEETTEST0000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fleet-test-secret")
    timer = StepTimer()
    calls: list[tuple[str, float]] = []
    pem = _self_signed_pem()
    throttled = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        path, token = request.url.path, request.url.params.get("nextToken")
        if path == "/things":
            calls.append(("ListThings", timer.t))
            if token is None and throttled[0]:
                throttled[0] = False
                return httpx.Response(
                    400,
                    headers={"x-amzn-ErrorType": "ThrottlingException", "Retry-After": "3"},
                    json={"message": "Rate exceeded"},
                )
            page = int(token or 0)
            things = [{"thingName": f"t-{page}-{i}", "thingArn": "arn"} for i in range(2)]
            return httpx.Response(
                200, json={"things": things, **({"nextToken": str(page + 1)} if page < 2 else {})}
            )
        if path.endswith("/principals"):
            calls.append(("ListThingPrincipals", timer.t))
            return httpx.Response(200, json={"principals": [f"arn:aws:iot:r:1:cert/{'ab' * 32}"]})
        calls.append(("DescribeCertificate", timer.t))
        described = {"certificatePem": pem, "status": "ACTIVE", "certificateId": "ab" * 32}
        return httpx.Response(200, json={"certificateDescription": described})

    options = AwsIotBackend.validate_options({"region": REGION})
    backend = AwsIotBackend(
        "aws", options, client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    listing = inventory.Inventory(backend.api, 10.0, timer=timer)
    found = list(listing.things())
    assert [d.device_id for d in found] == [f"t-{p}-{i}" for p in range(3) for i in range(2)]
    fingerprint = keys.fingerprint_sha256(x509.load_pem_x509_certificate(pem.encode()))
    assert all(d.enabled and d.certificates[0].fingerprint_sha256 == fingerprint for d in found)
    assert 3.0 in timer.sleeps  # the Retry-After
    for operation in ("ListThings", "ListThingPrincipals"):
        times = [t for op, t in calls if op == operation]
        assert all(b - a >= 0.1 for a, b in itertools.pairwise(times)), operation
    # one certificate attached to six things: described once
    assert sum(1 for op, _ in calls if op == "DescribeCertificate") == 1
    assert len([op for op, _ in calls if op == "ListThings"]) == 4  # throttled + 3 pages
    assert AwsIotBackend.iter_inventory is not CloudBackend.iter_inventory


def _self_signed_pem() -> str:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foreign")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.slow
def test_aws_register_keeps_only_the_devices_certificates(
    moto_url: str, iot: Any, tmp_path: Path
) -> None:
    """What register does to a thing holding the device's certificate and others: a
    re-enabled old certificate of fleet's is detached and deactivated, another device's
    (attached elsewhere too) and a foreign one only detached."""
    from helpers import device_record

    issuer, backend, state = aws_backend(tmp_path, moto_url)
    old = backend.register(device_record(issuer, "gw-old"), state)  # an old cert of gw-x
    iot.detach_thing_principal(thingName="gw-old", principal=old["certificate_arn"])
    neighbour = backend.register(device_record(issuer, "gw-y"), state)
    current = device_record(issuer, "gw-x")
    mine = backend.register(current, state)
    foreign = iot.create_keys_and_certificate(setAsActive=True)
    for arn in (old["certificate_arn"], neighbour["certificate_arn"], foreign["certificateArn"]):
        iot.attach_thing_principal(thingName="gw-x", principal=arn)

    backend.register(current, state)
    assert iot.list_thing_principals(thingName="gw-x")["principals"] == [mine["certificate_arn"]]

    def status(cert_id: str) -> str:
        return str(
            iot.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"]
        )

    assert status(old["certificate_id"]) == "INACTIVE"
    assert status(neighbour["certificate_id"]) == "ACTIVE"
    assert status(foreign["certificateId"]) == "ACTIVE"
    assert status(mine["certificate_id"]) == "ACTIVE"
    backend.close()


def aws_backend(tmp_path: Path, moto_url: str, **options: Any) -> tuple[Any, Any, Any]:
    """A fleet CA, an AWS backend against moto, and its prepared state."""
    from helpers import PASSPHRASE

    from fleet.cloud.aws import AwsIotBackend
    from fleet.pki import ca, keys
    from fleet.pki.issue import verification_certificate

    issuer = ca.create_ca(tmp_path / "ca", "Drift Fleet", "ec-p256", PASSPHRASE)
    material = CaMaterial(
        issuing_pem=keys.cert_pem(issuer.cert).decode(),
        root_pem=keys.cert_pem(issuer.root).decode(),
        sign_verification_cert=lambda cn, key: verification_certificate(issuer, cn, key),
    )
    valid = AwsIotBackend.validate_options({"region": REGION, "endpoint_url": moto_url, **options})
    backend = AwsIotBackend("aws", valid)
    return issuer, backend, backend.prepare(material)


@pytest.mark.slow
def test_aws_inventory_of_a_thing_group_leaves_other_things_alone(
    moto_url: str, iot: Any, tmp_path: Path
) -> None:
    """With a thing group, the inventory is that group's things: another application's thing
    in the same account is neither reported nor deletable as unknown."""
    from helpers import device_record

    issuer, backend, state = aws_backend(tmp_path, moto_url, thing_group="plant-7")
    for device_id in ("gw-a", "gw-b"):
        backend.register(device_record(issuer, device_id), state)
    iot.create_thing(thingName="billing-meter")
    listed = list(backend.iter_inventory(state))
    assert sorted(d.device_id for d in listed) == ["gw-a", "gw-b"]
    assert all(d.enabled and len(d.certificates) == 1 for d in listed)
    everything = ungrouped_backend(moto_url)
    assert "billing-meter" in {d.device_id for d in everything.iter_inventory(state)}
    backend.close()
    everything.close()


def ungrouped_backend(moto_url: str) -> Any:
    """An AWS backend against moto with no thing group: it lists every thing."""
    from fleet.cloud.aws import AwsIotBackend

    valid = AwsIotBackend.validate_options({"region": REGION, "endpoint_url": moto_url})
    return AwsIotBackend("aws-all", valid)


# --- ThingsBoard, against the strict local server of tests/helpers -----------------------------


def test_thingsboard_drift_fix_and_delete_unknown(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """drift is backend-neutral: the same run against ThingsBoard's inventory (a device
    deleted in the console, one created there), fixed, pushed, clean."""
    from helpers import tb_models

    if not tb_models.available():
        require_service("tb-ce-client is not installed (pip install -e .[test])")
    from helpers.thingsboard_server import ThingsBoardServer

    server = ThingsBoardServer().start()
    try:
        server.state.add_user("tenant@fleet.test", "tb-drift-password")
        monkeypatch.setenv("TB_PASSWORD", "tb-drift-password")
        cli = sqlite_cli
        added = cli("cloud", "add", "tb", "--type", "thingsboard", "--base-url", server.url,
                    "--username", "tenant@fleet.test", "--password-env", "TB_PASSWORD",
                    "--no-rate-limit")  # fmt: skip
        assert added.exit_code == 0, added.output
        add_devices(ready_sqlite_ws, tmp_path, 3, clouds=("tb",))
        assert cli("cloud", "sync", "tb").exit_code == 0
        assert drift_json(cli, cloud="tb")[0] == 0

        with server.state.lock:  # deleted in the console; another device created there
            gone = server.state.device_by_name("dev-0001")
            assert gone is not None
            del server.state.devices[gone["id"]["id"]]
            del server.state.credentials[gone["id"]["id"]]
        server.state.add_device("rogue-tb", token="rogue-token")
        code, report = drift_json(cli, cloud="tb")
        assert code == 8
        assert {(f["device_id"], f["kind"]) for f in report["findings"]} == {
            ("dev-0001", "missing-in-cloud"),
            ("rogue-tb", "unknown-in-cloud"),
        }
        code, fixing = drift_json(cli, "--fix", "--delete-unknown", cloud="tb")
        assert (fixing["fix"]["register"], fixing["fix"]["deleted"]) == (1, ["rogue-tb"])
        assert cli("cloud", "sync", "tb").exit_code == 0
        code, after = drift_json(cli, cloud="tb")
        assert (code, after["clean"], after["remote_devices"]) == (0, True, 3)
        assert server.state.device_by_name("rogue-tb") is None
    finally:
        server.stop()
    assert server.state.violations == []
