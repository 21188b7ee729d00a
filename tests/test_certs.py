"""Certificate list, renew and revoke."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers import PASSPHRASE, Cli, snapshot
from sqlalchemy import text

from fleet import certs, devices, listing
from fleet.errors import Conflict, InvalidInput, NotFound
from fleet.workspace import Workspace


def test_renew_replaces_bundle_and_optionally_revokes_old(
    ready_ws: Workspace, cli: Cli, out_dir: Path
) -> None:
    devices.add_device(ready_ws, "r1", out_dir=out_dir, passphrase=PASSPHRASE)
    old_cert = (out_dir / "r1" / "cert.pem").read_bytes()
    old_serial = devices.show_device(ready_ws, "r1").certificates[0].serial

    result = cli("cert", "renew", "r1", "--out", str(out_dir), "--json")
    assert result.exit_code == 0, result.stderr
    renewed = json.loads(result.stdout)
    assert renewed["serial"] != old_serial
    new_cert = (out_dir / "r1" / "cert.pem").read_bytes()
    assert new_cert != old_cert
    key = serialization.load_pem_private_key((out_dir / "r1" / "key.pem").read_bytes(), None)
    assert x509.load_pem_x509_certificate(new_cert).public_key() == key.public_key()
    assert [p.name for p in out_dir.iterdir()] == ["r1"]  # no staging or backup left behind
    statuses = {c.serial: c.status for c in devices.show_device(ready_ws, "r1").certificates}
    assert statuses == {old_serial: "active", renewed["serial"]: "active"}  # rollover window

    third = json.loads(
        cli("cert", "renew", "r1", "--out", str(out_dir), "--revoke-old", "--json").stdout
    )
    statuses = {c.serial: c.status for c in devices.show_device(ready_ws, "r1").certificates}
    assert statuses == {
        old_serial: "revoked",
        renewed["serial"]: "revoked",
        third["serial"]: "active",
    }
    superseded = listing.list_certificates(ready_ws, status="revoked")
    assert {c.revocation_reason for c in superseded} == {"superseded"}


def test_renew_failure_keeps_old_bundle(
    ready_sqlite_ws: Workspace, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices.add_device(ready_sqlite_ws, "r2", out_dir=out_dir, passphrase=PASSPHRASE)
    before = snapshot(ready_sqlite_ws, out_dir)

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(certs.audit, "append", explode)
    with pytest.raises(RuntimeError):
        certs.renew_certificate(ready_sqlite_ws, "r2", out_dir=out_dir, passphrase=PASSPHRASE)
    assert snapshot(ready_sqlite_ws, out_dir) == before


def test_renew_decommissioned_device_is_refused(ready_sqlite_ws: Workspace, out_dir: Path) -> None:
    devices.add_device(ready_sqlite_ws, "r3", out_dir=out_dir, passphrase=PASSPHRASE)
    devices.decommission_device(ready_sqlite_ws, "r3")
    with pytest.raises(Conflict, match="decommissioned"):
        certs.renew_certificate(ready_sqlite_ws, "r3", out_dir=out_dir, passphrase=PASSPHRASE)


def test_revoke_errors(ready_ws: Workspace, cli: Cli, out_dir: Path) -> None:
    devices.add_device(ready_ws, "v1", out_dir=out_dir, passphrase=PASSPHRASE)
    serial = devices.show_device(ready_ws, "v1").certificates[0].serial
    unknown = cli("cert", "revoke", "abcdef")
    assert unknown.exit_code == NotFound.exit_code
    assert "no certificate with serial abcdef" in unknown.stderr
    not_hex = cli("cert", "revoke", "xyz")
    assert not_hex.exit_code == InvalidInput.exit_code
    bad_reason = cli("cert", "revoke", serial, "--reason", "felt-like-it")
    assert bad_reason.exit_code == InvalidInput.exit_code
    assert "keyCompromise" in bad_reason.stderr
    # colon-separated upper-case serials, as other tools print them, are accepted
    colons = ":".join(serial.upper().zfill(40)[i : i + 2] for i in range(0, 40, 2))
    ok = cli("cert", "revoke", colons, "--reason", "superseded", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "revoked"
    again = cli("cert", "revoke", serial)
    assert again.exit_code == Conflict.exit_code
    assert "already revoked" in again.stderr


def test_list_filters(ready_ws: Workspace, cli: Cli, out_dir: Path) -> None:
    for device_id in ("l1", "l2", "l3"):
        devices.add_device(ready_ws, device_id, out_dir=out_dir, passphrase=PASSPHRASE)
    serial = {
        d: devices.show_device(ready_ws, d).certificates[0].serial for d in ("l1", "l2", "l3")
    }
    certs.revoke_certificate(ready_ws, serial["l2"])
    # l3's certificate: make it expire in 5 days; l1's: already expired
    with ready_ws.engine.begin() as conn:
        for device_id, delta in (("l3", timedelta(days=5)), ("l1", timedelta(days=-1))):
            conn.execute(
                text("UPDATE certificate SET not_after = :t WHERE serial = :s"),
                {"t": (datetime.now(UTC) + delta).replace(tzinfo=None)
                 if ready_ws.db_url is None else datetime.now(UTC) + delta, "s": serial[device_id]},
            )  # fmt: skip

    def serials(*args: str) -> set[str]:
        result = cli("cert", "list", *args, "--json")
        assert result.exit_code == 0, result.stderr
        return {c["serial"] for c in json.loads(result.stdout)}

    assert serials() == set(serial.values())
    assert serials("--status", "revoked") == {serial["l2"]}
    assert serials("--status", "expired") == {serial["l1"]}
    assert serials("--status", "active") == {serial["l3"]}
    assert serials("--expiring-within", "30") == {serial["l3"]}
    assert serials("--expiring-within", "2") == set()
    assert serials("--device", "l2") == {serial["l2"]}
    unknown = cli("cert", "list", "--device", "ghost")
    assert unknown.exit_code == NotFound.exit_code
    bad = cli("cert", "list", "--status", "sleepy")
    assert bad.exit_code == InvalidInput.exit_code
    human = cli("cert", "list")
    assert serial["l1"] in human.stdout and "expired" in human.stdout
