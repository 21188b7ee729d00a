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

from fleet import ca
from fleet.cloud.aws import AwsIotBackend, query_string, thing_name_for, uri_label
from fleet.cloud.base import (
    CaMaterial,
    ConflictError,
    DeviceRecord,
    PermanentError,
    TransientError,
)
from fleet.cloud.sigv4 import BotocoreSigV4Auth
from fleet.errors import InvalidInput
from fleet.profiles import load_profile
from tests.conftest import PASSPHRASE, require_service

REGION = "eu-west-1"
ACCESS_KEY = "AKIAFLEETTEST0000001"
SECRET_KEY = "fleet-test-SECRET-do-not-leak-4f2a9c"
SESSION_TOKEN = "fleet-test-TOKEN-do-not-leak-8d1e"

try:
    import boto3
    from moto.server import ThreadedMotoServer
except ImportError:  # pragma: no cover - depends on the environment
    boto3 = None
    ThreadedMotoServer = None


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A moto server on 127.0.0.1, port chosen by the OS (port 0), for this module."""
    if ThreadedMotoServer is None or boto3 is None:
        require_service("moto[server] and boto3 are not installed (pip install -e .[test])")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials in env; the developer's own AWS config is never read."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def moto(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A freshly reset moto, with AWS-accurate certificate IDs (SHA-256 of the DER).

    moto's HTTP config API does not expose that IoT switch; the server runs in this process,
    so it is set in moto's own config dict.
    """
    from moto.core.config import default_user_config

    httpx.post(f"{moto_url}/moto-api/reset").raise_for_status()
    monkeypatch.setitem(default_user_config, "iot", {"use_valid_cert": True})
    return moto_url


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
def issuer(tmp_path_factory: pytest.TempPathFactory) -> ca.Issuer:
    """A real fleet CA (root + issuing)."""
    return ca.create_ca(tmp_path_factory.mktemp("ca"), "AWS Test Fleet", "ec-p256", PASSPHRASE)


@pytest.fixture(scope="module")
def foreign_issuer(tmp_path_factory: pytest.TempPathFactory) -> ca.Issuer:
    """Another fleet CA that AWS was never told about."""
    return ca.create_ca(tmp_path_factory.mktemp("ca2"), "Foreign Fleet", "ec-p256", PASSPHRASE)


def ca_material(issuer: ca.Issuer) -> CaMaterial:
    """What the outbox gives ``prepare``: fleet's CA, able to sign a verification cert."""

    def sign(common_name: str, public_key_pem: bytes) -> str:
        from cryptography.hazmat.primitives import serialization

        now = datetime.now(UTC)
        public_key = serialization.load_pem_public_key(public_key_pem)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuer.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now.replace(year=now.year + 1))
            .sign(issuer.key, ca.signature_hash(issuer.key))
        )
        return ca.cert_pem(cert).decode()

    return CaMaterial(
        issuing_pem=ca.cert_pem(issuer.cert).decode(),
        root_pem=ca.cert_pem(issuer.root).decode(),
        sign_verification_cert=sign,
    )


def device_record(
    issuer: ca.Issuer,
    device_id: str,
    *,
    model: str | None = "gw-200",
    serial: str | None = "SN-0001",
    labels: dict[str, str] | None = None,
) -> DeviceRecord:
    """A device with a real certificate issued by ``issuer``."""
    key = ca.generate_key("ec-p256")
    cert = ca.issue_device_certificate(issuer, device_id, key.public_key(), load_profile("default"))
    return DeviceRecord(
        device_id=device_id,
        model=model,
        serial=serial,
        labels=labels or {},
        status="active",
        certificate_pem=ca.cert_pem(cert).decode(),
        certificate_serial=ca.serial_hex(cert.serial_number),
        fingerprint_sha256=ca.fingerprint_sha256(cert),
    )


@pytest.fixture
def make_backend(moto: str) -> Iterator[Callable[..., AwsIotBackend]]:
    """Build backends against moto from ``fleet cloud add``-style options."""
    made: list[AwsIotBackend] = []

    def make(**options: Any) -> AwsIotBackend:
        valid = AwsIotBackend.validate_options(
            {"region": REGION, "endpoint_url": moto, **options}
        )
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
def state(backend: AwsIotBackend, issuer: ca.Issuer) -> dict[str, Any]:
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


class TestAwsIotBackendContract:
    """The shared contract, spelled out for AWS (register, idempotency, conflict, deregister,
    status, secrets), each result read back with boto3."""

    def test_register_then_read_back(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: ca.Issuer, iot: Any
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
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: ca.Issuer, iot: Any
    ) -> None:
        device = device_record(issuer, "gw-0002")
        first = backend.register(device, state)
        second = backend.register(device, state)
        assert first["certificate_arn"] == second["certificate_arn"]
        assert len(iot.list_certificates()["certificates"]) == 1
        assert len(iot.list_things()["things"]) == 1
        assert read_back(iot, "gw-0002")["principals"] == [first["certificate_arn"]]  # type: ignore[index]

    def test_register_updates_attributes(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: ca.Issuer, iot: Any
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
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: ca.Issuer, iot: Any
    ) -> None:
        backend.register(device_record(issuer, "gw-0004"), state)
        rival = device_record(issuer, "gw-0004")
        with pytest.raises(ConflictError, match="another principal"):
            backend.register(rival, state)
        # The rival certificate was never uploaded, the thing still holds the first one.
        assert len(iot.list_certificates()["certificates"]) == 1
        assert len(read_back(iot, "gw-0004")["principals"]) == 1  # type: ignore[index]

    def test_deregister_then_read_back(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: ca.Issuer, iot: Any
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
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: ca.Issuer, iot: Any
    ) -> None:
        device = device_record(issuer, "gw-0006")
        remote = backend.register(device, state)
        backend.deregister(device, remote, state)
        backend.deregister(device, remote, state)
        backend.deregister(device, {}, state)
        status = iot.describe_certificate(certificateId=remote["certificate_id"])
        assert status["certificateDescription"]["status"] == "INACTIVE"

    def test_deregister_unknown_device_is_success(
        self, backend: AwsIotBackend, state: dict[str, Any], issuer: ca.Issuer
    ) -> None:
        backend.deregister(device_record(issuer, "never-registered"), {}, state)

    def test_fetch_status_has_registered_ids_only(
        self,
        backend: AwsIotBackend,
        state: dict[str, Any],
        issuer: ca.Issuer,
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
        issuer: ca.Issuer,
        foreign_issuer: ca.Issuer,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
        caplog.set_level(logging.DEBUG)
        texts = [repr(backend), repr(backend._control_auth), str(backend.options), str(state)]
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
        assert "Signature=" not in caplog.text or SECRET_KEY not in caplog.text
        for secret in (SECRET_KEY, SESSION_TOKEN):
            assert secret not in joined


def _same_cert(a: str | None, b: str) -> bool:
    assert a is not None
    return ca.fingerprint_sha256(x509.load_pem_x509_certificate(a.encode())) == (
        ca.fingerprint_sha256(x509.load_pem_x509_certificate(b.encode()))
    )


def _dead() -> str:
    """A URL on which nothing listens."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
