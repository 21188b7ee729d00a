"""Devices and their identities, through the CLI and the library, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from helpers import PASSPHRASE, Cli, snapshot

from fleet import devices, listing
from fleet.errors import Conflict, InvalidInput, NotFound
from fleet.pki.issue import device_details
from fleet.registry.models import Device
from fleet.statuses import CertStatus, DeviceStatus, KeyOrigin
from fleet.views import DeviceView
from fleet.workspace import Workspace


def make_csr(common_name: str | None, key: object | None = None) -> tuple[bytes, object]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM), key


def test_add_writes_bundle_and_registry_row(ready_ws: Workspace, cli: Cli, out_dir: Path) -> None:
    result = cli(
        "device", "add", "pump-0001", "--model", "p200", "--serial", "SN1",
        "--label", "site=hamburg", "--label", "line=3", "--out", str(out_dir), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    device = json.loads(result.stdout)
    assert device["id"] == "pump-0001"
    assert device["model"] == "p200"
    assert device["serial"] == "SN1"
    assert device["labels"] == {"site": "hamburg", "line": "3"}
    assert device["status"] == "active"
    assert device["created_at"].endswith("Z")
    [cert] = device["certificates"]
    assert set(cert) >= {"serial", "fingerprint_sha256", "not_before", "not_after", "status"}
    assert cert["status"] == "active"
    assert cert["serial"] == cert["serial"].lower()

    bundle = out_dir / "pump-0001"
    assert sorted(p.name for p in bundle.iterdir()) == ["cert.pem", "chain.pem", "key.pem"]
    assert stat.S_IMODE((bundle / "key.pem").stat().st_mode) == 0o600
    key = serialization.load_pem_private_key((bundle / "key.pem").read_bytes(), None)
    assert b"BEGIN PRIVATE KEY" in (bundle / "key.pem").read_bytes()  # PKCS#8
    leaf = x509.load_pem_x509_certificate((bundle / "cert.pem").read_bytes())
    assert leaf.public_key() == key.public_key()
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pump-0001"
    assert format(leaf.serial_number, "x") == cert["serial"]
    assert leaf.fingerprint(hashes.SHA256()).hex() == cert["fingerprint_sha256"]
    chain = x509.load_pem_x509_certificates((bundle / "chain.pem").read_bytes())
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=Test Fleet Issuing CA,O=Test Fleet",
        "CN=Test Fleet Root CA,O=Test Fleet",
    ]
    leaf.verify_directly_issued_by(chain[0])

    shown = json.loads(cli("device", "show", "pump-0001", "--json").stdout)
    assert shown.pop("connection")["state"] is None  # never seen connecting
    assert shown.pop("firmware")["reported"]["version"] is None  # never reported
    assert shown.pop("clouds") == {}  # registered with no cloud
    assert shown == device


def test_serials_are_random_positive_and_at_most_20_octets(
    ready_sqlite_ws: Workspace, out_dir: Path
) -> None:
    serials = set()
    for n in range(20):
        device = devices.add_device(
            ready_sqlite_ws, f"d{n}", out_dir=out_dir, passphrase=PASSPHRASE
        )
        serial = int(device.certificates[0].serial, 16)
        assert 0 < serial < 2**159
        serials.add(serial)
    assert len(serials) == 20


def test_add_with_csr_writes_no_key(ready_ws: Workspace, cli: Cli, tmp_path: Path) -> None:
    pem, key = make_csr("sensor-7")
    csr_path = tmp_path / "sensor-7.csr"
    csr_path.write_bytes(pem)
    result = cli("device", "add", "sensor-7", "--csr", str(csr_path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.stderr
    bundle = tmp_path / "o" / "sensor-7"
    assert sorted(p.name for p in bundle.iterdir()) == ["cert.pem", "chain.pem"]
    leaf = x509.load_pem_x509_certificate((bundle / "cert.pem").read_bytes())
    assert leaf.public_key() == key.public_key()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("bad_id", "rule"),
    [
        ("", "must not be empty"),
        ("a" * 65, "limit is 64"),
        ("-lead", "must start with a letter or digit"),
        ("has space", "contains ' '"),
        ("slash/id", "contains '/'"),
        ("ümlaut", "contains 'ü'"),
    ],
)
def test_invalid_ids_name_the_rule(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, out_dir: Path, bad_id: str, rule: str
) -> None:
    before = snapshot(ready_sqlite_ws, out_dir)
    result = sqlite_cli("device", "add", "--out", str(out_dir), "--", bad_id)
    assert result.exit_code == InvalidInput.exit_code
    assert rule in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert result.stdout == ""
    assert snapshot(ready_sqlite_ws, out_dir) == before


def test_id_edge_cases_accepted(ready_sqlite_ws: Workspace, out_dir: Path) -> None:
    for device_id in ("a", "0", "A" * 64, "plant-1:line_2.cell-3"):
        devices.add_device(ready_sqlite_ws, device_id, out_dir=out_dir, passphrase=PASSPHRASE)
    assert {d.id for d in listing.list_devices(ready_sqlite_ws)} == {
        "a", "0", "A" * 64, "plant-1:line_2.cell-3",
    }  # fmt: skip


def test_duplicate_is_refused_and_changes_nothing(
    ready_ws: Workspace, cli: Cli, tmp_path: Path
) -> None:
    assert cli("device", "add", "dup-1", "--out", str(tmp_path / "a")).exit_code == 0
    before = snapshot(ready_ws, tmp_path / "b")
    result = cli("device", "add", "dup-1", "--out", str(tmp_path / "b"))
    assert result.exit_code == Conflict.exit_code
    assert "already exists" in result.stderr
    assert snapshot(ready_ws, tmp_path / "b") == before
    assert not (tmp_path / "b").exists()


def test_existing_bundle_folder_is_not_overwritten(
    ready_sqlite_ws: Workspace, out_dir: Path
) -> None:
    (out_dir / "x1").mkdir(parents=True)
    (out_dir / "x1" / "key.pem").write_text("precious")
    before = snapshot(ready_sqlite_ws, out_dir)
    with pytest.raises(Conflict, match="already exists"):
        devices.add_device(ready_sqlite_ws, "x1", out_dir=out_dir, passphrase=PASSPHRASE)
    assert snapshot(ready_sqlite_ws, out_dir) == before


def test_wrong_passphrase_changes_nothing(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_CA_PASSPHRASE", "not the passphrase")
    before = snapshot(ready_sqlite_ws, out_dir)
    result = sqlite_cli("device", "add", "p1", "--out", str(out_dir))
    assert result.exit_code == 6
    assert "wrong CA passphrase" in result.stderr
    assert PASSPHRASE not in result.stderr + result.stdout
    assert snapshot(ready_sqlite_ws, out_dir) == before


def test_missing_passphrase_without_terminal_is_a_clear_error(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEET_CA_PASSPHRASE")
    result = sqlite_cli("device", "add", "p1", "--out", str(out_dir))
    assert result.exit_code == 6
    assert "FLEET_CA_PASSPHRASE" in result.stderr


def test_failed_commit_removes_the_bundle(
    ready_sqlite_ws: Workspace, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash inside the transaction (after the bundle was renamed in) leaves nothing."""
    before = snapshot(ready_sqlite_ws, out_dir)

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(devices.audit, "append", explode)
    with pytest.raises(RuntimeError):
        devices.add_device(ready_sqlite_ws, "p1", out_dir=out_dir, passphrase=PASSPHRASE)
    assert snapshot(ready_sqlite_ws, out_dir) == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: make_csr("other-id")[0], "does not match device ID"),
        (lambda: make_csr("c1", rsa.generate_private_key(65537, 1024))[0], "too small"),
        (
            lambda: make_csr("c1", ec.generate_private_key(ec.SECP256K1()))[0],
            "unsupported elliptic curve",
        ),
        (lambda: b"not a csr at all", "not a valid certificate signing request"),
        (lambda: tamper(make_csr("c1")[0]), "signature does not verify"),
    ],
)
def test_bad_csrs_are_refused(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path, make: object, message: str
) -> None:
    csr_path = tmp_path / "c1.csr"
    csr_path.write_bytes(make())  # type: ignore[operator]
    out = tmp_path / "out"
    before = snapshot(ready_sqlite_ws, out)
    result = sqlite_cli("device", "add", "c1", "--csr", str(csr_path), "--out", str(out))
    assert result.exit_code == InvalidInput.exit_code, result.stdout
    assert message in result.stderr
    assert snapshot(ready_sqlite_ws, out) == before


def tamper(pem: bytes) -> bytes:
    """Flip one byte of the CSR's signature, keeping it parseable."""
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    broken = der[:-3] + bytes([der[-3] ^ 0x01]) + der[-2:]
    return x509.load_der_x509_csr(broken).public_bytes(serialization.Encoding.PEM)


def test_csr_without_cn_is_accepted(ready_sqlite_ws: Workspace, tmp_path: Path) -> None:
    pem, _ = make_csr(None)
    (tmp_path / "x.csr").write_bytes(pem)
    device = devices.add_device(
        ready_sqlite_ws, "no-cn-1", csr=tmp_path / "x.csr", out_dir=tmp_path, passphrase=PASSPHRASE
    )
    assert device.certificates[0].key_origin == "csr"


def test_library_returns_frozen_views_whose_dicts_are_the_json(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, out_dir: Path
) -> None:
    device = devices.add_device(
        ready_sqlite_ws, "v-1", labels={"k": "v"}, out_dir=out_dir, passphrase=PASSPHRASE
    )
    assert isinstance(device, DeviceView)
    assert device.status is DeviceStatus.ACTIVE
    [cert] = device.certificates
    assert (cert.status, cert.key_origin) == (CertStatus.ACTIVE, KeyOrigin.GENERATED)
    assert cert.not_after.tzinfo is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        device.model = "changed"  # type: ignore[misc]
    shown = json.loads(sqlite_cli("device", "show", "v-1", "--json").stdout)
    assert devices.show_device(ready_sqlite_ws, "v-1").to_dict() == shown
    assert shown.pop("connection") == {
        "state": None, "since": None, "last_seen": None, "source": None, "reason": None,
        "reported_firmware": None,
    }  # fmt: skip
    assert shown.pop("firmware")["pinned_version"] is None
    assert shown.pop("clouds") == {}  # device show lists its clouds (none here)
    assert device.to_dict() == shown


def test_unreadable_csr_file(ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path) -> None:
    result = sqlite_cli("device", "add", "c1", "--csr", str(tmp_path / "missing.csr"))
    assert result.exit_code == InvalidInput.exit_code
    assert "cannot read CSR" in result.stderr


def test_list_filters(ready_ws: Workspace, cli: Cli, out_dir: Path) -> None:
    for device_id, model, site in [("a1", "p200", "hh"), ("a2", "p200", "b"), ("a3", "p300", "hh")]:
        devices.add_device(
            ready_ws, device_id, model=model, labels={"site": site}, out_dir=out_dir,
            passphrase=PASSPHRASE,
        )  # fmt: skip
    devices.decommission_device(ready_ws, "a2")

    def ids(*args: str) -> list[str]:
        result = cli("device", "list", *args, "--json")
        assert result.exit_code == 0, result.stderr
        return [d["id"] for d in json.loads(result.stdout)]

    assert ids() == ["a1", "a2", "a3"]
    assert ids("--model", "p200") == ["a1", "a2"]
    assert ids("--label", "site=hh") == ["a1", "a3"]
    assert ids("--status", "decommissioned") == ["a2"]
    assert ids("--model", "p200", "--label", "site=hh", "--status", "active") == ["a1"]
    assert ids("--model", "nope") == []
    human = cli("device", "list")
    assert "a1" in human.stdout and "p300" in human.stdout


def test_update_records_changes(ready_ws: Workspace, cli: Cli, out_dir: Path) -> None:
    devices.add_device(
        ready_ws, "u1", labels={"a": "1", "b": "2"}, out_dir=out_dir, passphrase=PASSPHRASE
    )
    result = cli(
        "device", "update", "u1", "--model", "m2", "--label", "a=9", "--remove-label", "b", "--json"
    )
    assert result.exit_code == 0, result.stderr
    device = json.loads(result.stdout)
    assert device["model"] == "m2"
    assert device["labels"] == {"a": "9"}
    events = json.loads(cli("audit", "log", "--json").stdout)
    assert events[-1]["action"] == "device.update"
    assert events[-1]["details"]["changes"]["labels"] == {
        "from": {"a": "1", "b": "2"}, "to": {"a": "9"},
    }  # fmt: skip


def test_decommission_revokes_and_keeps_history(
    ready_ws: Workspace, cli: Cli, out_dir: Path
) -> None:
    devices.add_device(ready_ws, "old-1", out_dir=out_dir, passphrase=PASSPHRASE)
    result = cli("device", "decommission", "old-1", "--reason", "flooded", "--json")
    assert result.exit_code == 0, result.stderr
    device = json.loads(result.stdout)
    assert device["status"] == "decommissioned"
    assert device["decommission_reason"] == "flooded"
    assert [c["status"] for c in device["certificates"]] == ["revoked"]
    assert device["certificates"][0]["revocation_reason"] == "cessationOfOperation"
    again = cli("device", "decommission", "old-1")
    assert again.exit_code == Conflict.exit_code
    assert json.loads(cli("device", "show", "old-1", "--json").stdout)["id"] == "old-1"


def test_unknown_device(ready_ws: Workspace, cli: Cli) -> None:
    for args in (
        ("device", "show", "ghost"),
        ("device", "decommission", "ghost"),
        ("device", "update", "ghost", "--model", "x"),
        ("cert", "renew", "ghost"),
    ):
        result = cli(*args)
        assert result.exit_code == NotFound.exit_code, args
        assert "no device 'ghost'" in result.stderr


def test_audit_details_read_a_row_or_its_column_values() -> None:
    """Bulk writers (provisioning) hold column values, not rows: both record the same."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    values = {"id": "d1", "model": "p200", "serial": None, "labels": {"site": "hh"},
              "status": "active", "created_at": now, "updated_at": now}  # fmt: skip
    expected = {"model": "p200", "serial": None, "labels": {"site": "hh"}, "status": "active"}
    assert device_details(Device(**values)) == device_details(values) == expected
