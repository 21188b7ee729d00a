"""AWS IoT Core backend, end to end against the AWS IoT emulator of ``moto[server]``.

A ``ThreadedMotoServer`` bound to 127.0.0.1 on a free port plays AWS; every result is read
back with boto3, an independent client. moto does not verify certificate chains, model
fleet-indexing connectivity or throttle, and its SigV4 check rejects boto3's own GET and
percent-encoded requests; those parts are tested with ``httpx.MockTransport`` answering in
AWS's documented shapes, and the signature by comparing with boto3's own signing of the same
request. Each such test says so in its docstring.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from helpers import PASSPHRASE, device_record, require_service
from helpers.moto import fake_aws_env, moto_server, reset_moto

from fleet.cloud.aws import AwsIotBackend, query_string, thing_name_for, uri_label
from fleet.cloud.aws.sigv4 import BotocoreSigV4Auth
from fleet.cloud.base import (
    CaMaterial,
    ConflictError,
    DeviceRecord,
    PermanentError,
    TransientError,
)
from fleet.cloud.testing import BackendContract
from fleet.errors import InvalidInput
from fleet.pki import ca, keys
from fleet.pki.issue import verification_certificate
from fleet.pki.issuer import Issuer

REGION = "eu-west-1"
CERT_ARN = f"arn:aws:iot:{REGION}:123456789012:cert/{'ab' * 32}"
ACCESS_KEY = "AKIAFLEETTEST0000001"
SECRET_KEY = "fleet-test-SECRET-do-not-leak-4f2a9c"
SESSION_TOKEN = "fleet-test-TOKEN-do-not-leak-8d1e"

try:
    import boto3
except ImportError:  # pragma: no cover - depends on the environment
    boto3 = None


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A moto server on 127.0.0.1, port chosen by the OS (port 0), for this module."""
    if boto3 is None:
        require_service("boto3 is not installed (pip install -e .[test])")
    yield from moto_server()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials in env; the developer's own AWS config is never read."""
    fake_aws_env(monkeypatch, tmp_path, access_key=ACCESS_KEY, secret_key=SECRET_KEY)


@pytest.fixture
def moto(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A freshly reset moto, with AWS-accurate certificate IDs (SHA-256 of the DER)."""
    return reset_moto(moto_url, monkeypatch)


@pytest.fixture
def iot(moto: str) -> Any:
    """boto3's IoT client: the independent reader of what fleet did."""
    return boto3.client(
        "iot",
        endpoint_url=moto,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture
def iot_data(moto: str) -> Any:
    return boto3.client(
        "iot-data",
        endpoint_url=moto,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    """A real fleet CA (root + issuing)."""
    return ca.create_ca(tmp_path_factory.mktemp("ca"), "AWS Test Fleet", "ec-p256", PASSPHRASE)


@pytest.fixture(scope="module")
def foreign_issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    """Another fleet CA that AWS was never told about."""
    return ca.create_ca(tmp_path_factory.mktemp("ca2"), "Foreign Fleet", "ec-p256", PASSPHRASE)


def ca_material(issuer: Issuer) -> CaMaterial:
    """What the outbox gives ``prepare``: fleet's CA, able to sign a verification cert."""

    def sign(common_name: str, public_key_pem: bytes) -> str:
        return verification_certificate(issuer, common_name, public_key_pem)

    return CaMaterial(
        issuing_pem=keys.cert_pem(issuer.cert).decode(),
        root_pem=keys.cert_pem(issuer.root).decode(),
        sign_verification_cert=sign,
    )


@pytest.fixture
def make_backend(moto: str) -> Iterator[Callable[..., AwsIotBackend]]:
    """Build backends against moto from ``fleet cloud add``-style options."""
    made: list[AwsIotBackend] = []

    def make(**options: Any) -> AwsIotBackend:
        valid = AwsIotBackend.validate_options({"region": REGION, "endpoint_url": moto, **options})
        backend = AwsIotBackend("aws-test", valid)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make_backend: Callable[..., AwsIotBackend]) -> AwsIotBackend:
    return make_backend(thing_group="fleet-test")


@pytest.fixture
def state(backend: AwsIotBackend, issuer: Issuer) -> dict[str, Any]:
    return backend.prepare(ca_material(issuer))


# --- contract ---------------------------------------------------------------------------------


def read_back(iot: Any, device_id: str) -> dict[str, Any] | None:
    """The device as AWS holds it, read by boto3; None when the thing does not exist."""
    try:
        thing = iot.describe_thing(thingName=device_id)
    except iot.exceptions.ResourceNotFoundException:
        return None
    principals = iot.list_thing_principals(thingName=device_id)["principals"]
    certs = [
        iot.describe_certificate(certificateId=p.rsplit("/", 1)[1])["certificateDescription"]
        for p in principals
    ]
    return {
        "attributes": thing.get("attributes", {}),
        "certificate_pem": certs[0]["certificatePem"] if certs else None,
        "active": bool(certs) and all(c["status"] == "ACTIVE" for c in certs),
        "principals": principals,
    }


class TestAwsIotBackendContract(BackendContract):
    """The shared backend contract (fleet/cloud/testing.py) against moto."""

    @pytest.fixture
    def backend(self, make_backend: Callable[..., AwsIotBackend]) -> AwsIotBackend:
        return make_backend(thing_group="contract")

    @pytest.fixture
    def backend_state(self, backend: AwsIotBackend, fleet_issuer: Issuer) -> dict[str, Any]:
        return backend.prepare(ca_material(fleet_issuer))

    @pytest.fixture
    def read_back(self, iot: Any) -> Callable[[str], dict[str, Any] | None]:
        return lambda device_id: read_back(iot, device_id)

    @pytest.fixture
    def secret_values(self) -> list[str]:
        return [SECRET_KEY, SESSION_TOKEN]


class TestAwsRegistration:
    """Register, idempotency, conflict, deregister, status and secrets in AWS terms, each
    result read back with boto3."""

    def test_register_then_read_back(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: Issuer, iot: Any
    ) -> None:
        device = device_record(issuer, "gw-0001", labels={"site": "plant-7"})
        remote = backend.register(device, state)
        found = read_back(iot, "gw-0001")
        assert found is not None
        assert found["active"]
        assert found["attributes"] == {"model": "gw-200", "serial": "SN-0001", "site": "plant-7"}
        assert _same_cert(found["certificate_pem"], device.certificate_pem)
        assert remote["thing_name"] == "gw-0001"
        assert remote["certificate_id"] == device.fingerprint_sha256
        assert found["principals"] == [remote["certificate_arn"]]

    def test_register_twice_is_success(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: Issuer, iot: Any
    ) -> None:
        device = device_record(issuer, "gw-0002")
        first = backend.register(device, state)
        second = backend.register(device, state)
        assert first["certificate_arn"] == second["certificate_arn"]
        assert len(iot.list_certificates()["certificates"]) == 1
        assert len(iot.list_things()["things"]) == 1
        assert read_back(iot, "gw-0002")["principals"] == [first["certificate_arn"]]  # type: ignore[index]

    def test_register_updates_attributes(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: Issuer, iot: Any
    ) -> None:
        device = device_record(issuer, "gw-0003", labels={"site": "a"})
        backend.register(device, state)
        moved = DeviceRecord(**{**device.__dict__, "labels": {}, "model": "gw-300"})
        backend.register(moved, state)
        assert read_back(iot, "gw-0003")["attributes"] == {  # type: ignore[index]
            "model": "gw-300",
            "serial": "SN-0001",
        }

    def test_other_certificate_is_conflict(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: Issuer, iot: Any
    ) -> None:
        backend.register(device_record(issuer, "gw-0004"), state)
        rival = device_record(issuer, "gw-0004")
        with pytest.raises(ConflictError, match="another principal"):
            backend.register(rival, state)
        # The rival certificate was never uploaded, the thing still holds the first one.
        assert len(iot.list_certificates()["certificates"]) == 1
        assert len(read_back(iot, "gw-0004")["principals"]) == 1  # type: ignore[index]

    def test_deregister_then_read_back(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: Issuer, iot: Any
    ) -> None:
        device = device_record(issuer, "gw-0005")
        remote = backend.register(device, state)
        backend.deregister(device, remote, state)
        found = read_back(iot, "gw-0005")
        assert found is not None and found["principals"] == []
        cert = iot.describe_certificate(certificateId=remote["certificate_id"])
        assert cert["certificateDescription"]["status"] == "INACTIVE"
        assert iot.list_attached_policies(target=remote["certificate_arn"])["policies"] == []

    def test_deregister_twice_is_success(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: Issuer, iot: Any
    ) -> None:
        device = device_record(issuer, "gw-0006")
        remote = backend.register(device, state)
        backend.deregister(device, remote, state)
        backend.deregister(device, remote, state)
        backend.deregister(device, {}, state)
        status = iot.describe_certificate(certificateId=remote["certificate_id"])
        assert status["certificateDescription"]["status"] == "INACTIVE"

    def test_deregister_unknown_device_is_success(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: Issuer, iot: Any
    ) -> None:
        """Already gone counts as done: no error, and nothing appears on the platform."""
        things_before = iot.list_things()["things"]
        backend.deregister(device_record(issuer, "never-registered"), {}, state)
        assert iot.list_things()["things"] == things_before
        assert "never-registered" not in {t["thingName"] for t in things_before}

    def test_fetch_status_has_registered_ids_only(
        self,
        backend: AwsIotBackend,
        state: dict[str, Any],
        issuer: Issuer,
        iot_data: Any,
    ) -> None:
        """moto's SearchIndex reports every thing as connected (it does not model
        connectivity); what is checked here is the lookup, the shadow read and absence."""
        for device_id in ("gw-0007", "gw:0008"):
            backend.register(device_record(issuer, device_id), state)
        iot_data.update_thing_shadow(
            thingName="gw:0008",
            shadowName="firmware",
            payload=json.dumps({"state": {"reported": {"firmware_version": "2.1.0"}}}),
        )
        statuses = backend.fetch_status(["gw-0007", "gw:0008", "gw-none", "bad.id"], state)
        assert set(statuses) == {"gw-0007", "gw:0008"}
        assert statuses["gw:0008"].firmware_version == "2.1.0"
        assert statuses["gw-0007"].firmware_version is None

    def test_secrets_never_in_errors_reprs_or_logs(
        self,
        backend: AwsIotBackend,
        state: dict[str, Any],
        issuer: Issuer,
        foreign_issuer: Issuer,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
        caplog.set_level(logging.DEBUG)
        texts = [repr(backend), repr(backend.api.control_auth), str(backend.options), str(state)]
        backend.register(device_record(issuer, "gw-0009"), state)
        failing = [
            lambda: backend.register(device_record(issuer, "gw-0009"), state),
            lambda: backend.register(device_record(foreign_issuer, "gw-0010"), state),
            lambda: backend.register(device_record(issuer, "gw.0011"), state),
        ]
        for call in failing:
            with pytest.raises(PermanentError) as info:
                call()
            texts.append(str(info.value))
            texts.append(repr(info.value))
        offline = AwsIotBackend(
            "offline", AwsIotBackend.validate_options({"region": REGION, "endpoint_url": _dead()})
        )
        texts.append(offline.check().message)
        joined = "\n".join([*texts, caplog.text])
        for secret in (SECRET_KEY, SESSION_TOKEN):
            assert secret not in joined


def _same_cert(a: str | None, b: str) -> bool:
    assert a is not None
    return keys.fingerprint_sha256(x509.load_pem_x509_certificate(a.encode())) == (
        keys.fingerprint_sha256(x509.load_pem_x509_certificate(b.encode()))
    )


def _dead() -> str:
    """A URL on which nothing listens."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- SigV4: the bytes sent are the bytes boto3 would sign ------------------------------------


class _Captured(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


def boto3_request(service: str, operation: str, **params: Any) -> Any:
    """The request boto3 would send (URL, headers, body), captured before it leaves."""
    if boto3 is None:
        require_service("boto3 is not installed (pip install -e .[test])")
    client = boto3.client(
        service,
        endpoint_url="https://iot.eu-west-1.amazonaws.com",
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=SESSION_TOKEN,
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Captured(request)

    client.meta.events.register("before-send", capture)
    with pytest.raises(_Captured) as info:
        getattr(client, operation)(**params)
    return info.value.request


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both signers read the same fixed time (botocore's clock)."""
    import botocore.auth

    fixed = datetime(2026, 11, 25, 3, 0, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: fixed)


@pytest.mark.parametrize(
    ("service", "signing_name", "operation", "params", "method", "path"),
    [
        (
            "iot",
            "iot",
            "describe_thing",
            {"thingName": "gw:01"},
            "GET",
            "/things/" + uri_label("gw:01"),
        ),
        (
            "iot",
            "iot",
            "update_certificate",
            {"certificateId": "ab" * 32, "newStatus": "INACTIVE"},
            "PUT",
            "/certificates/" + "ab" * 32 + query_string(newStatus="INACTIVE"),
        ),
        (
            "iot",
            "iot",
            "describe_endpoint",
            {"endpointType": "iot:Data-ATS"},
            "GET",
            "/endpoint" + query_string(endpointType="iot:Data-ATS"),
        ),
        (
            "iot",
            "iot",
            "list_attached_policies",
            {"target": CERT_ARN, "recursive": False, "pageSize": 100},
            "POST",
            "/attached-policies/"
            + uri_label(CERT_ARN)
            + query_string(recursive="false", pageSize="100"),
        ),
        (
            "iot",
            "iot",
            "attach_thing_principal",
            {"thingName": "gw:01", "principal": CERT_ARN},
            "PUT",
            "/things/" + uri_label("gw:01") + "/principals",
        ),
        (
            "iot-data",
            "iotdata",
            "get_thing_shadow",
            {"thingName": "gw:01", "shadowName": "firmware"},
            "GET",
            "/things/" + uri_label("gw:01") + "/shadow" + query_string(name="firmware"),
        ),
    ],
)
def test_signature_equals_boto3s(
    frozen_clock: None,
    monkeypatch: pytest.MonkeyPatch,
    service: str,
    signing_name: str,
    operation: str,
    params: dict[str, Any],
    method: str,
    path: str,
) -> None:
    """moto's own SigV4 check rejects boto3's GETs and ``%3A`` paths too, so it cannot judge;
    the reference is boto3 itself: same wire path and query, same Authorization header, for a
    thing name with ``:`` and a query value with ``:``."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    reference = boto3_request(service, operation, **params)
    headers = {"x-amzn-principal": params["principal"]} if "principal" in params else {}
    ours = httpx.Request(method, "https://iot.eu-west-1.amazonaws.com" + path, headers=headers)
    BotocoreSigV4Auth(signing_name, REGION).sign(ours)
    # Same path bytes; same query pairs (boto3 sends them in model order, fleet sorted: the
    # signature sorts them anyway).
    sent_path, _, sent_query = ours.url.raw_path.decode().partition("?")
    ref_path, _, ref_query = reference.url.split(".com", 1)[1].partition("?")
    assert sent_path == ref_path
    assert sorted(sent_query.split("&")) == sorted(ref_query.split("&"))
    assert (
        ours.headers["x-amz-security-token"] == reference.headers["X-Amz-Security-Token"].decode()
    )
    assert ours.headers["authorization"] == reference.headers["Authorization"].decode()


def test_signature_of_json_body_equals_boto3s(
    frozen_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same as above for a POST with a JSON body (CreateThing on a name with ``:``)."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    reference = boto3_request(
        "iot", "create_thing", thingName="gw:01", attributePayload={"attributes": {"m": "x"}}
    )
    ours = httpx.Request(
        "POST",
        reference.url,
        content=reference.body,
        headers={"Content-Type": reference.headers["Content-Type"].decode()},
    )
    BotocoreSigV4Auth("iot", REGION).sign(ours)
    assert ours.url.raw_path == b"/things/gw%3A01"
    assert ours.headers["authorization"] == reference.headers["Authorization"].decode()


def test_colon_thing_name_end_to_end(
    backend: AwsIotBackend, state: dict[str, Any], issuer: Issuer, iot: Any
) -> None:
    device = device_record(issuer, "site:7:gw-01")
    remote = backend.register(device, state)
    assert remote["thing_name"] == "site:7:gw-01"
    found = read_back(iot, "site:7:gw-01")
    assert found is not None and found["active"]
    backend.deregister(device, remote, state)
    assert read_back(iot, "site:7:gw-01")["principals"] == []  # type: ignore[index]


def test_signer_repr_and_missing_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = BotocoreSigV4Auth("iot", REGION, profile=None)
    assert SECRET_KEY not in repr(auth)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    backend = AwsIotBackend("x", AwsIotBackend.validate_options({"region": REGION}))
    result = backend.check()
    assert not result.ok
    assert "no AWS credentials found" in result.message


def test_named_profile_from_shared_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make_backend: Callable[..., AwsIotBackend]
) -> None:
    """Credentials of a named profile in the shared credentials file sign the requests."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (tmp_path / "aws-credentials").write_text(
        f"[ops]\naws_access_key_id = AKIAPROFILE0000000001\naws_secret_access_key = {SECRET_KEY}\n"
    )
    assert make_backend(profile="ops").check().ok
    result = make_backend(profile="missing").check()
    assert not result.ok and "missing" in result.message
    assert SECRET_KEY not in result.message


# --- prepare ------------------------------------------------------------------------------------


def recording_client(log: list[tuple[httpx.Request, httpx.Response]]) -> httpx.Client:
    """A real client (to moto) that records each request and response."""

    def on_response(response: httpx.Response) -> None:
        response.read()
        log.append((response.request, response))

    return httpx.Client(timeout=10, event_hooks={"response": [on_response]})


def test_prepare_registers_ca_with_verification_cert(moto: str, issuer: Issuer, iot: Any) -> None:
    """DEFAULT mode: the verification certificate's CN is the registration code AWS gave, and
    fleet's issuing CA signed it (moto does not check this, so the test does)."""
    log: list[tuple[httpx.Request, httpx.Response]] = []
    options = AwsIotBackend.validate_options({"region": REGION, "endpoint_url": moto})
    backend = AwsIotBackend("aws", options, client=recording_client(log))
    state = backend.prepare(ca_material(issuer))
    code = next(r.json()["registrationCode"] for q, r in log if q.url.path == "/registrationcode")
    register = next(q for q, _ in log if q.url.path == "/cacertificate")
    assert dict(register.url.params) == {"setAsActive": "true", "allowAutoRegistration": "false"}
    body = json.loads(register.content)
    assert body["certificateMode"] == "DEFAULT"
    verification = x509.load_pem_x509_certificate(body["verificationCertificate"].encode())
    cn = verification.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == code
    assert keys.verify_issued_by(verification, issuer.cert)
    described = iot.describe_ca_certificate(certificateId=state["ca_certificate_id"])
    assert described["certificateDescription"]["status"] == "ACTIVE"
    assert _same_cert(
        described["certificateDescription"]["certificatePem"], keys.cert_pem(issuer.cert).decode()
    )
    backend.close()


def test_prepare_sni_only_sends_no_verification(moto: str, issuer: Issuer) -> None:
    log: list[tuple[httpx.Request, httpx.Response]] = []
    options = AwsIotBackend.validate_options(
        {"region": REGION, "endpoint_url": moto, "ca_mode": "SNI_ONLY"}
    )
    backend = AwsIotBackend("aws", options, client=recording_client(log))
    backend.prepare(ca_material(issuer))
    body = json.loads(next(q for q, _ in log if q.url.path == "/cacertificate").content)
    assert body["certificateMode"] == "SNI_ONLY"
    assert "verificationCertificate" not in body
    assert all(q.url.path != "/registrationcode" for q, _ in log)


def test_prepare_is_idempotent_and_creates_least_privilege_policy(
    make_backend: Callable[..., AwsIotBackend], issuer: Issuer, iot: Any
) -> None:
    backend = make_backend(thing_group="plant-7", thing_type="gateway")
    first = backend.prepare(ca_material(issuer))
    second = backend.prepare(ca_material(issuer))
    assert first == second
    assert iot.describe_thing_group(thingGroupName="plant-7")["thingGroupName"] == "plant-7"
    assert iot.describe_thing_type(thingTypeName="gateway")["thingTypeName"] == "gateway"
    policy = json.loads(iot.get_policy(policyName="fleet-device")["policyDocument"])
    connect, pubrecv, subscribe = policy["Statement"]
    me = "${iot:Connection.Thing.ThingName}"
    assert connect["Action"] == "iot:Connect"
    assert connect["Resource"] == f"arn:aws:iot:{REGION}:*:client/{me}"
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    assert pubrecv["Action"] == ["iot:Publish", "iot:Receive"]
    assert pubrecv["Resource"] == [
        f"arn:aws:iot:{REGION}:*:topic/things/{me}/*",
        f"arn:aws:iot:{REGION}:*:topic/$aws/things/{me}/shadow/*",
    ]
    assert subscribe["Resource"] == [
        f"arn:aws:iot:{REGION}:*:topicfilter/things/{me}/*",
        f"arn:aws:iot:{REGION}:*:topicfilter/$aws/things/{me}/shadow/*",
    ]
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    assert "*" not in json.dumps([s["Action"] for s in policy["Statement"]])


def test_prepare_keeps_an_existing_policy(
    make_backend: Callable[..., AwsIotBackend], issuer: Issuer, iot: Any
) -> None:
    mine = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "iot:*"}]}
    iot.create_policy(policyName="custom", policyDocument=json.dumps(mine))
    make_backend(policy="custom").prepare(ca_material(issuer))
    assert json.loads(iot.get_policy(policyName="custom")["policyDocument"]) == mine


# --- register: AWS rules, chain, groups, status ----------------------------------------------


def test_register_reads_back_principals_policy_group(
    backend: AwsIotBackend, state: dict[str, Any], issuer: Issuer, iot: Any
) -> None:
    remote = backend.register(device_record(issuer, "gw-0100"), state)
    cert = iot.describe_certificate(certificateId=remote["certificate_id"])
    assert cert["certificateDescription"]["status"] == "ACTIVE"
    assert iot.list_principal_things(principal=remote["certificate_arn"])["things"] == ["gw-0100"]
    policies = iot.list_attached_policies(target=remote["certificate_arn"])["policies"]
    assert [p["policyName"] for p in policies] == ["fleet-device"]
    groups = iot.list_thing_groups_for_thing(thingName="gw-0100")["thingGroups"]
    assert [g["groupName"] for g in groups] == ["fleet-test"]
    listed = iot.list_certificates_by_ca(caCertificateId=state["ca_certificate_id"])
    assert [c["certificateId"] for c in listed["certificates"]] == [remote["certificate_id"]]


def test_dot_in_id_is_refused_before_any_call(
    backend: AwsIotBackend, state: dict[str, Any], issuer: Issuer, iot: Any
) -> None:
    with pytest.raises(PermanentError, match=r"contains '\.'.*letters, digits, ':', '_' and '-'"):
        backend.register(device_record(issuer, "gw.0101"), state)
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    with pytest.raises(PermanentError, match="1-128"):
        thing_name_for("")


def test_foreign_ca_certificate_is_refused(
    backend: AwsIotBackend, state: dict[str, Any], foreign_issuer: Issuer, iot: Any
) -> None:
    """moto would accept any certificate: fleet checks the chain itself first."""
    with pytest.raises(PermanentError, match="not issued by the CA registered"):
        backend.register(device_record(foreign_issuer, "gw-0102"), state)
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []


def test_unprepared_cloud_is_refused(backend: AwsIotBackend, issuer: Issuer) -> None:
    with pytest.raises(PermanentError, match="not prepared"):
        backend.register(device_record(issuer, "gw-0103"), {})


def test_attribute_limits(
    make_backend: Callable[..., AwsIotBackend], issuer: Issuer, iot: Any
) -> None:
    untyped = make_backend()
    state = untyped.prepare(ca_material(issuer))
    many = {"site": "a", "rack": "b"}
    with pytest.raises(PermanentError, match="allows 3 on a thing without a thing type"):
        untyped.register(device_record(issuer, "gw-0104", labels=many), state)
    with pytest.raises(PermanentError, match="not a valid AWS IoT attribute value"):
        untyped.register(device_record(issuer, "gw-0104", labels={"site": "hall 7"}), state)
    with pytest.raises(PermanentError, match="clashes"):
        untyped.register(device_record(issuer, "gw-0104", labels={"model": "x"}), state)
    assert iot.list_things()["things"] == []
    typed = make_backend(thing_type="gateway")
    state = typed.prepare(ca_material(issuer))
    typed.register(device_record(issuer, "gw-0104", labels=many), state)
    thing = iot.describe_thing(thingName="gw-0104")
    assert thing["thingTypeName"] == "gateway"
    assert thing["attributes"] == {"model": "gw-200", "serial": "SN-0001", **many}


@pytest.mark.parametrize(
    ("options", "status", "thing_kept"),
    [
        ({}, "INACTIVE", True),
        ({"deregister_mode": "revoke"}, "REVOKED", True),
        ({"deregister_mode": "revoke", "delete_thing": True}, "REVOKED", False),
    ],
)
def test_deregister_modes(
    make_backend: Callable[..., AwsIotBackend],
    issuer: Issuer,
    iot: Any,
    options: dict[str, Any],
    status: str,
    thing_kept: bool,
) -> None:
    backend = make_backend(**options)
    state = backend.prepare(ca_material(issuer))
    device = device_record(issuer, "gw-0105")
    remote = backend.register(device, state)
    iot.create_policy(policyName="extra", policyDocument=json.dumps({"Statement": []}))
    iot.attach_policy(policyName="extra", target=remote["certificate_arn"])
    backend.deregister(device, remote, state)
    backend.deregister(device, remote, state)  # idempotent
    cert = iot.describe_certificate(certificateId=remote["certificate_id"])
    assert cert["certificateDescription"]["status"] == status
    assert iot.list_principal_things(principal=remote["certificate_arn"])["things"] == []
    assert iot.list_attached_policies(target=remote["certificate_arn"])["policies"] == []
    assert (read_back(iot, "gw-0105") is not None) is thing_kept


def test_reregister_after_inactive_reactivates_but_revoked_is_final(
    make_backend: Callable[..., AwsIotBackend], issuer: Issuer, iot: Any
) -> None:
    backend = make_backend()
    state = backend.prepare(ca_material(issuer))
    device = device_record(issuer, "gw-0106")
    remote = backend.register(device, state)
    backend.deregister(device, remote, state)
    backend.register(device, state)
    cert = iot.describe_certificate(certificateId=remote["certificate_id"])
    assert cert["certificateDescription"]["status"] == "ACTIVE"

    revoking = make_backend(deregister_mode="revoke")
    revoking.deregister(device, remote, state)
    with pytest.raises(PermanentError, match="REVOKED in AWS IoT, which is final"):
        backend.register(device, state)
    # INACTIVE asked of a REVOKED certificate: revoked is stronger, so that is success.
    backend.deregister(device, remote, state)


# --- what moto does not model: MockTransport with AWS's documented shapes ----------------------

THROTTLED = {
    "status_code": 400,
    "headers": {
        "x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazonaws.iot/",
        "x-amzn-RequestId": "5f2c6d3a-0000-0000-0000-000000000000",
        "Retry-After": "3",
    },
    "json": {"message": "Rate exceeded"},
}


def mock_backend(
    handler: Callable[[httpx.Request], httpx.Response], **options: Any
) -> AwsIotBackend:
    valid = AwsIotBackend.validate_options(
        {"region": REGION, "endpoint_url": "https://iot.eu-west-1.amazonaws.com", **options}
    )
    return AwsIotBackend("mock", valid, client=httpx.Client(transport=httpx.MockTransport(handler)))


def test_throttling_is_transient_with_retry_after(issuer: Issuer) -> None:
    """moto never throttles: AWS's documented ThrottlingException (HTTP 400, type in
    x-amzn-ErrorType) comes from a MockTransport."""
    backend = mock_backend(lambda request: httpx.Response(**THROTTLED))
    state = {"issuing_pem": keys.cert_pem(issuer.cert).decode()}
    with pytest.raises(TransientError) as info:
        backend.register(device_record(issuer, "gw-0200"), state)
    assert info.value.retry_after == 3.0
    assert "ThrottlingException: Rate exceeded" in str(info.value)


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (httpx.Response(503, json={"message": "busy"}), TransientError),
        (httpx.Response(429, headers={"Retry-After": "1"}), TransientError),
        (
            httpx.Response(
                500,
                headers={"x-amzn-ErrorType": "InternalFailureException"},
                json={"message": "oops"},
            ),
            TransientError,
        ),
        (
            httpx.Response(
                400,
                headers={"x-amzn-ErrorType": "InvalidRequestException:http://internal/"},
                json={"message": "bad"},
            ),
            PermanentError,
        ),
        (
            httpx.Response(403, json={"__type": "AccessDeniedException", "message": "no"}),
            PermanentError,
        ),
    ],
)
def test_error_classification(
    issuer: Issuer, response: httpx.Response, kind: type[Exception]
) -> None:
    """Documented AWS error shapes (MockTransport: moto cannot produce them on demand)."""
    backend = mock_backend(lambda request: response)
    state = {"issuing_pem": keys.cert_pem(issuer.cert).decode()}
    with pytest.raises(kind) as info:
        backend.register(device_record(issuer, "gw-0201"), state)
    if kind is PermanentError:
        assert not isinstance(info.value, TransientError)


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ReadTimeout])
def test_network_failures_are_transient(issuer: Issuer, failure: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure("down", request=request)  # type: ignore[call-arg]

    state = {"issuing_pem": keys.cert_pem(issuer.cert).decode()}
    with pytest.raises(TransientError):
        mock_backend(handler).register(device_record(issuer, "gw-0202"), state)


def test_fetch_status_connectivity_and_firmware() -> None:
    """moto reports every thing as connected with no real timestamp, so SearchIndex answers
    come from a MockTransport in AWS's documented shape (connectivity.connected, timestamp in
    epoch milliseconds, named shadows in the ``shadow`` JSON string); the firmware of a thing
    whose shadow is not indexed is read from the data plane (GetThingShadow, ``iotdata``)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/indices/search":
            return httpx.Response(
                200,
                json={
                    "things": [
                        {
                            "thingName": "gw-1",
                            "thingId": "1b7ea4a4-0000-0000-0000-000000000001",
                            "attributes": {"model": "gw-200"},
                            "shadow": json.dumps(
                                {"name": {"firmware": {"reported": {"firmware_version": "1.4.2"}}}}
                            ),
                            "connectivity": {"connected": True, "timestamp": 1764039600000},
                        },
                        {
                            "thingName": "gw:2",
                            "thingId": "1b7ea4a4-0000-0000-0000-000000000002",
                            "connectivity": {
                                "connected": False,
                                "timestamp": 1764036000000,
                                "disconnectReason": "CLIENT_INITIATED_DISCONNECT",
                            },
                        },
                    ],
                    "thingGroups": [],
                },
            )
        if request.url.path == "/things/gw%3A2/shadow" or request.url.raw_path.startswith(
            b"/things/gw%3A2/shadow"
        ):
            return httpx.Response(
                200, json={"state": {"reported": {"firmware_version": "1.3.0"}}, "version": 4}
            )
        return httpx.Response(404, json={"message": "nope"})

    backend = mock_backend(handler, data_endpoint_url="https://abc-ats.iot.eu-west-1.amazonaws.com")
    statuses = backend.fetch_status(["gw-1", "gw:2", "gw-3"], {})
    assert set(statuses) == {"gw-1", "gw:2"}
    assert statuses["gw-1"].connected is True
    assert statuses["gw-1"].last_activity == datetime(2025, 11, 25, 3, 0, tzinfo=UTC)
    assert statuses["gw-1"].firmware_version == "1.4.2"
    assert statuses["gw:2"].connected is False
    assert statuses["gw:2"].firmware_version == "1.3.0"
    search = json.loads(seen[0].content)
    assert search["indexName"] == "AWS_Things"
    assert search["queryString"] == r"thingName:gw\-1 OR thingName:gw\:2 OR thingName:gw\-3"
    assert "/iot/aws4_request" in seen[0].headers["authorization"]
    shadow = seen[1]
    assert shadow.url.host == "abc-ats.iot.eu-west-1.amazonaws.com"
    assert shadow.url.raw_path == b"/things/gw%3A2/shadow?name=firmware"
    assert "/iotdata/aws4_request" in shadow.headers["authorization"]


def test_fetch_status_without_fleet_indexing_says_how_to_enable() -> None:
    """AWS answers ResourceNotFoundException when fleet indexing is off (MockTransport)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404,
            headers={"x-amzn-ErrorType": "ResourceNotFoundException"},
            json={"message": "Index AWS_Things does not exist"},
        )

    with pytest.raises(PermanentError, match="thingConnectivityIndexingMode=STATUS"):
        mock_backend(handler).fetch_status(["gw-1"], {"data_endpoint": "https://x"})


# --- check --------------------------------------------------------------------------------------


def test_check_ok_against_moto(make_backend: Callable[..., AwsIotBackend]) -> None:
    result = make_backend().check()
    assert result.ok, result.message
    assert "credentials from env accepted" in result.message


def test_check_unreachable_endpoint() -> None:
    backend = AwsIotBackend(
        "dead", AwsIotBackend.validate_options({"region": REGION, "endpoint_url": _dead()})
    )
    result = backend.check()
    assert not result.ok
    assert "cannot reach" in result.message


def test_check_unknown_access_key_with_moto_auth(
    moto: str, make_backend: Callable[..., AwsIotBackend]
) -> None:
    """moto's IAM authentication (switched on through its reset-auth API) refuses an access
    key it does not know, as AWS does."""
    httpx.post(f"{moto}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        result = make_backend().check()
    finally:
        httpx.post(f"{moto}/moto-api/reset-auth", content=b"inf").raise_for_status()
    assert not result.ok
    assert "InvalidClientTokenId" in result.message
    assert "access key is not known to AWS" in result.message


@pytest.mark.parametrize(
    ("error_type", "hint"),
    [
        ("UnrecognizedClientException", "access key is not known"),
        ("InvalidSignatureException", "secret key does not match"),
        ("ExpiredTokenException", "expired"),
        ("AccessDeniedException", "lack permission"),
    ],
)
def test_check_messages_for_rejected_credentials(error_type: str, hint: str) -> None:
    """AWS's documented 403 shapes for each credential problem (MockTransport: moto's signature
    check is not reliable for GET requests)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            403,
            headers={"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/"},
            json={"message": "The security token included in the request is invalid."},
        )

    result = mock_backend(handler).check()
    assert not result.ok
    assert error_type in result.message and hint in result.message
    assert SECRET_KEY not in result.message


def test_validate_options() -> None:
    with pytest.raises(InvalidInput, match="needs --region"):
        AwsIotBackend.validate_options({})
    with pytest.raises(InvalidInput, match="not an AWS region"):
        AwsIotBackend.validate_options({"region": "Europe"})
    with pytest.raises(InvalidInput, match="unknown option"):
        AwsIotBackend.validate_options({"region": REGION, "secret_key": "x"})
    with pytest.raises(InvalidInput, match="--thing-group"):
        AwsIotBackend.validate_options({"region": REGION, "thing_group": "a.b"})
    with pytest.raises(InvalidInput, match="--deregister-mode"):
        AwsIotBackend.validate_options({"region": REGION, "deregister_mode": "delete"})
    assert AwsIotBackend.validate_options({"region": REGION, "endpoint_url": None}) == {
        "region": REGION,
        "policy": "fleet-device",
        "shadow_name": "firmware",
        "firmware_field": "firmware_version",
        "ca_mode": "default",
        "deregister_mode": "inactive",
        "delete_thing": False,
    }


# --- through the CLI and the outbox -------------------------------------------------------------


def test_cli_register_sync_decommission_against_moto(
    ready_sqlite_ws: Any,
    sqlite_cli: Any,
    moto: str,
    iot: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``fleet cloud add/register/sync/status`` and ``device decommission`` end to end: the
    outbox prepares the cloud (fleet's CA registered), pushes, pulls status, deregisters.
    The AWS secret key and session token appear in no output, log record or registry file."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    caplog.set_level(logging.DEBUG)
    cli = sqlite_cli
    added = cli(
        "cloud", "add", "aws", "--type", "aws-iot", "--region", REGION,
        "--endpoint-url", moto, "--thing-group", "plant-7",
    )  # fmt: skip
    assert added.exit_code == 0, added.stderr
    checked = cli("cloud", "check", "aws")
    assert checked.exit_code == 0, checked.stderr
    for device_id in ("gw:1", "gw-2"):
        made = cli("device", "add", device_id, "--model", "gw-200", "--out", str(tmp_path / "o"))
        assert made.exit_code == 0, made.stderr
    pushed = cli("cloud", "register", "aws", "--all", "--json")
    assert pushed.exit_code == 0, pushed.stderr
    assert {t["thingName"] for t in iot.list_things()["things"]} == {"gw:1", "gw-2"}
    issuing, _ = ca.load_ca_certificates(ready_sqlite_ws.home)
    registered_ca = iot.describe_ca_certificate(certificateId=keys.fingerprint_sha256(issuing))
    assert registered_ca["certificateDescription"]["status"] == "ACTIVE"
    synced = cli("cloud", "sync", "aws")
    assert synced.exit_code == 0, synced.stderr
    status = json.loads(cli("cloud", "status", "aws", "--json").stdout)
    assert {(s["device_id"], s["status"]) for s in status} == {
        ("gw:1", "registered"),
        ("gw-2", "registered"),
    }
    gone = cli("device", "decommission", "gw:1", "--reason", "retired")
    assert gone.exit_code == 0, gone.stderr
    cli("cloud", "sync", "aws")
    principals = iot.list_thing_principals(thingName="gw:1")["principals"]
    assert principals == []
    certs = iot.list_certificates()["certificates"]
    assert sorted(c["status"] for c in certs) == ["ACTIVE", "INACTIVE"]
    outputs = [added, checked, pushed, synced, gone]
    joined = "\n".join(r.stdout + r.stderr for r in outputs) + caplog.text
    stored = b"".join(p.read_bytes() for p in ready_sqlite_ws.home.rglob("*") if p.is_file())
    assert b"arn:aws:iot" in stored  # the registry (with the remote ids) was scanned
    for secret in (SECRET_KEY, SESSION_TOKEN):
        assert secret not in joined
        assert secret.encode() not in stored


def test_data_endpoint_is_looked_up_once_on_real_aws() -> None:
    """Without an endpoint override, the shadow endpoint comes from DescribeEndpoint
    (iot:Data-ATS), as on real AWS (MockTransport in AWS's documented shapes)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}{request.url.raw_path.decode()}")
        if request.url.path == "/endpoint":
            return httpx.Response(
                200, json={"endpointAddress": "a1b2c3-ats.iot.eu-west-1.amazonaws.com"}
            )
        if request.url.path == "/indices/search":
            thing = {"thingName": "gw-1", "connectivity": {"connected": True}}
            return httpx.Response(200, json={"things": [thing]})
        return httpx.Response(200, json={"state": {"reported": {"firmware_version": 7}}})

    options = AwsIotBackend.validate_options({"region": REGION})
    backend = AwsIotBackend(
        "real", options, client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    for _ in range(2):
        statuses = backend.fetch_status(["gw-1"], {})
        assert statuses["gw-1"].firmware_version == "7"
        assert statuses["gw-1"].last_activity is None
    assert seen == [
        "iot.eu-west-1.amazonaws.com/indices/search",
        "iot.eu-west-1.amazonaws.com/endpoint?endpointType=iot%3AData-ATS",
        "a1b2c3-ats.iot.eu-west-1.amazonaws.com/things/gw-1/shadow?name=firmware",
        "iot.eu-west-1.amazonaws.com/indices/search",
        "a1b2c3-ats.iot.eu-west-1.amazonaws.com/things/gw-1/shadow?name=firmware",
    ]


def test_check_unreachable_region_names_the_region() -> None:
    """A DNS or connection failure on the real endpoint (MockTransport raising ConnectError):
    the message points at --region."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("name resolution failed", request=request)

    options = AwsIotBackend.validate_options({"region": "eu-west-9"})
    client = httpx.Client(transport=httpx.MockTransport(handler))
    result = AwsIotBackend("r", options, client=client).check()
    assert not result.ok
    assert "cannot reach https://iot.eu-west-9.amazonaws.com" in result.message
    assert "check --region 'eu-west-9'" in result.message


def test_delete_thing_refused_while_foreign_principals_remain(
    make_backend: Callable[..., AwsIotBackend], issuer: Issuer, iot: Any
) -> None:
    backend = make_backend(delete_thing=True)
    state = backend.prepare(ca_material(issuer))
    device = device_record(issuer, "gw-0300")
    remote = backend.register(device, state)
    # Someone attaches a certificate of their own to fleet's thing.
    foreign = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName="gw-0300", principal=foreign["certificateArn"])
    with pytest.raises(PermanentError, match="principals fleet did not attach"):
        backend.deregister(device, remote, state)
    cert = iot.describe_certificate(certificateId=remote["certificate_id"])
    assert cert["certificateDescription"]["status"] == "INACTIVE"
    assert iot.list_thing_principals(thingName="gw-0300")["principals"] == [
        foreign["certificateArn"]
    ]
    foreign_status = iot.describe_certificate(certificateId=foreign["certificateId"])
    assert foreign_status["certificateDescription"]["status"] == "ACTIVE"


def test_delete_thing_still_attached_is_transient() -> None:
    """AWS applies DetachThingPrincipal asynchronously: a DeleteThing right after it may still
    be refused (InvalidRequestException, documented message). MockTransport, since moto
    detaches at once."""
    cert_id = "cd" * 32
    still_attached = "Cannot delete. Thing gw-1 is still attached to one or more principals"
    arn = f"arn:aws:iot:{REGION}:123456789012:cert/{cert_id}"

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/principals") and request.method == "GET":
            return httpx.Response(200, json={"principals": [arn]})
        if path == f"/certificates/{cert_id}" and request.method == "GET":
            description = {"certificateArn": arn, "certificateId": cert_id, "status": "ACTIVE"}
            return httpx.Response(200, json={"certificateDescription": description})
        if path.startswith("/attached-policies/"):
            return httpx.Response(200, json={"policies": []})
        if request.method == "DELETE" and path == "/things/gw-1":
            return httpx.Response(
                409,
                headers={"x-amzn-ErrorType": "InvalidRequestException"},
                json={"message": still_attached},
            )
        return httpx.Response(200, json={})

    backend = mock_backend(handler, delete_thing=True)
    device = DeviceRecord("gw-1", None, None, {}, "active", "", "", cert_id)
    with pytest.raises(TransientError, match="still attached") as info:
        backend.deregister(device, {"thing_name": "gw-1", "certificate_id": cert_id}, {})
    assert info.value.retry_after == 5.0
