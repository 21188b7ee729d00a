"""Every certificate the CA signs is recorded before it can leave the process.

Each test kills a real ``python -m fleet`` at one step of an issuing command (device add,
cert renew, provision, the export signer), either from a before-commit hook (the last thing
that runs before COMMIT, whatever the code's order) or at a named fault point
(``FLEET_FAULT_INJECT``). After the kill, every certificate file under the output folder or
the CA folder that this CA signed is in the registry (or, for the export signer, in the
audit trail) and in the audit trail, and `fleet cert revoke` knows it; re-running the
command finishes the job and leaves no staging or set-aside folder behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers import PASSPHRASE, child_env, run_fleet, snapshot
from sqlmodel import select

from fleet.faults import FAULT_ENV
from fleet.pki import ca
from fleet.pki.keys import serial_hex, verify_issued_by
from fleet.registry.db import read_session
from fleet.registry.models import AuditEvent, Certificate
from fleet.statuses import CertStatus
from fleet.workspace import Workspace

# Kills the process from a before-commit hook: after every write of the transaction, just
# before COMMIT. On the old code the bundle had already been renamed into place by then.
KILL_BEFORE_COMMIT = """
import os, signal, sys
from fleet.registry import db
db.add_before_commit_hook(lambda connection: os.kill(os.getpid(), signal.SIGKILL))
from fleet.cli import main
main()
"""
HOOK = "hook"


def fleet_args(ws: Workspace) -> list[str]:
    args = ["--home", str(ws.home)]
    if ws.db_url:
        args += ["--db", ws.db_url]
    return args


def killed(ws: Workspace, kill: str, *args: str) -> None:
    """Run ``fleet ARGS`` in a child that is SIGKILLed at ``kill`` (HOOK or a fault point)."""
    if kill == HOOK:
        command = [sys.executable, "-c", KILL_BEFORE_COMMIT, *fleet_args(ws), *args]
        env = child_env()
    else:
        command = [sys.executable, "-m", "fleet", *fleet_args(ws), *args]
        env = child_env({FAULT_ENV: kill})
    child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stderr)


def signed_on_disk(ws: Workspace, *folders: Path) -> dict[str, Path]:
    """Every certificate (by serial) in a file under ``folders`` that the issuing CA signed."""
    issuing, _root = ca.load_ca_certificates(ws.home)
    found: dict[str, Path] = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
            if b"-----BEGIN CERTIFICATE-----" not in data:
                continue
            for cert in x509.load_pem_x509_certificates(data):
                if verify_issued_by(cert, issuing):
                    found[serial_hex(cert.serial_number)] = path
    return found


def audit_details(ws: Workspace) -> str:
    with read_session(ws.open_registry()) as session:
        return "\n".join(e.details for e in session.exec(select(AuditEvent)).all())


def registered(ws: Workspace) -> dict[str, Certificate]:
    with read_session(ws.open_registry()) as session:
        return {c.serial: c for c in session.exec(select(Certificate)).all()}


def assert_all_recorded(ws: Workspace, out: Path, *, device_certs: bool = True) -> set[str]:
    """Every certificate on disk is in the registry (device certificates) and the audit
    trail; returns their serials."""
    on_disk = signed_on_disk(ws, out, ca.ca_dir(ws.home))
    trail = audit_details(ws)
    rows = registered(ws)
    for serial, path in on_disk.items():
        assert f'"{serial}"' in trail, f"{path}: certificate {serial} is not in the audit trail"
        # The CA's own signers (export signing, audit key) have no device: the trail alone
        # records them.
        own_signer = path.parent in (ca.ca_dir(ws.home), ws.home / "audit")
        if device_certs or not own_signer:
            assert serial in rows, f"{path}: certificate {serial} is not in the registry"
    return set(on_disk) & set(rows)


def assert_revocable(ws: Workspace, serials: set[str]) -> None:
    for serial in serials:
        result = run_fleet(*fleet_args(ws), "cert", "revoke", serial)
        assert result.returncode == 0, result.stderr


def assert_bundle_in_place(ws: Workspace, out: Path, device_id: str) -> None:
    """``OUT/ID`` holds the device's newest certificate and its key; nothing else is left."""
    rows = [c for c in registered(ws).values() if c.device_id == device_id]
    newest = max(rows, key=lambda c: (c.issued_at, c.serial))
    cert = x509.load_pem_x509_certificate((out / device_id / "cert.pem").read_bytes())
    assert serial_hex(cert.serial_number) == newest.serial
    key = serialization.load_pem_private_key((out / device_id / "key.pem").read_bytes(), None)
    assert key.public_key() == cert.public_key()
    assert (out / device_id / "key.pem").stat().st_mode & 0o777 == 0o600
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


ADD_KILLS = [HOOK, "after-stage", "before-commit", "after-commit", "after-complete"]
RENEW_KILLS = [*ADD_KILLS, "after-set-aside", "after-publish"]


@pytest.mark.slow
@pytest.mark.parametrize("kill", ADD_KILLS)
def test_device_add_killed_at_each_step(ready_ws: Workspace, tmp_path: Path, kill: str) -> None:
    out = tmp_path / "ids"
    killed(ready_ws, kill, "device", "add", "pump-1", "--out", str(out))
    serials = assert_all_recorded(ready_ws, out)
    again = run_fleet(*fleet_args(ready_ws), "device", "add", "pump-1", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert_bundle_in_place(ready_ws, out, "pump-1")
    assert_all_recorded(ready_ws, out)
    assert_revocable(ready_ws, serials)


@pytest.mark.slow
@pytest.mark.parametrize("kill", RENEW_KILLS)
@pytest.mark.parametrize("revoke_old", [False, True])
def test_cert_renew_killed_at_each_step(
    ready_sqlite_ws: Workspace, tmp_path: Path, kill: str, revoke_old: bool
) -> None:
    ws, out = ready_sqlite_ws, tmp_path / "ids"
    first = run_fleet(*fleet_args(ws), "device", "add", "pump-1", "--out", str(out))
    assert first.returncode == 0, first.stderr
    flags = ["--revoke-old"] if revoke_old else []
    killed(ws, kill, "cert", "renew", "pump-1", "--out", str(out), *flags)
    serials = assert_all_recorded(ws, out)
    again = run_fleet(*fleet_args(ws), "cert", "renew", "pump-1", "--out", str(out), *flags)
    assert again.returncode == 0, again.stderr
    assert_bundle_in_place(ws, out, "pump-1")
    assert_all_recorded(ws, out)
    # A later renew leaves nothing of the interrupted one behind either.
    later = run_fleet(*fleet_args(ws), "cert", "renew", "pump-1", "--out", str(out))
    assert later.returncode == 0, later.stderr
    assert_bundle_in_place(ws, out, "pump-1")
    active = {s for s in serials if registered(ws)[s].status == CertStatus.ACTIVE}
    assert_revocable(ws, active)


@pytest.mark.slow
@pytest.mark.parametrize("kill", [HOOK, "after-stage:1", "after-commit:1", "after-complete:1"])
def test_provision_killed_at_each_step(
    ready_sqlite_ws: Workspace, tmp_path: Path, kill: str
) -> None:
    ws, out = ready_sqlite_ws, tmp_path / "ids"
    source = tmp_path / "b.csv"
    source.write_text("id\n" + "".join(f"p-{i}\n" for i in range(5)))
    args = ("provision", str(source), "--out", str(out), "--workers", "1")
    killed(ws, kill, *args)
    serials = assert_all_recorded(ws, out)
    again = run_fleet(*fleet_args(ws), *args, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["failed"] == 0
    for i in range(5):
        assert_bundle_in_place(ws, out, f"p-{i}")
    assert_revocable(ws, serials)


@pytest.mark.slow
@pytest.mark.parametrize("kill", [HOOK, "after-commit"])
def test_export_signer_killed_at_each_step(
    ready_sqlite_ws: Workspace, tmp_path: Path, kill: str
) -> None:
    """The export-signing certificate has no device: the audit trail records it."""
    ws = ready_sqlite_ws
    target = tmp_path / "devices.csv"
    killed(ws, kill, "export", "-f", "csv", "--out", str(target))
    assert_all_recorded(ws, tmp_path, device_certs=False)
    again = run_fleet(*fleet_args(ws), "export", "-f", "csv", "--out", str(target))
    assert again.returncode == 0, again.stderr
    assert_all_recorded(ws, tmp_path, device_certs=False)
    assert [p.name for p in ca.ca_dir(ws.home).iterdir() if p.name.startswith(".")] == []


def test_a_failed_publish_leaves_nothing(ready_ws: Workspace, tmp_path: Path) -> None:
    """Refused before signing: an ``OUT/ID`` that is in the way changes nothing."""
    out = tmp_path / "ids"
    (out / "pump-1").mkdir(parents=True)
    before = snapshot(ready_ws, out)
    result = run_fleet(*fleet_args(ready_ws), "device", "add", "pump-1", "--out", str(out))
    assert result.returncode == 4, result.stderr
    assert snapshot(ready_ws, out) == before


# --- fleet doctor ----------------------------------------------------------------------------


@pytest.mark.slow
def test_doctor_reports_then_fixes_an_interrupted_renewal(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    ws, out = ready_sqlite_ws, tmp_path / "ids"
    first = run_fleet(*fleet_args(ws), "device", "add", "pump-1", "--out", str(out))
    assert first.returncode == 0, first.stderr
    killed(ws, "after-set-aside", "cert", "renew", "pump-1", "--out", str(out))
    found = run_fleet(*fleet_args(ws), "doctor", "--out", str(out), "--json")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert not report["ok"]
    assert {(i["kind"], i["action"]) for i in report["leftovers"]} == {
        ("unpublished", "publish"),
        ("set-aside", "restore"),  # decided again after the publish: then removed
    }
    fixed = run_fleet(*fleet_args(ws), "doctor", "--out", str(out), "--fix", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["ok"]
    assert_bundle_in_place(ws, out, "pump-1")
    clean = run_fleet(*fleet_args(ws), "doctor", "--out", str(out))
    assert clean.returncode == 0, clean.stderr
    assert "nothing to do" in clean.stderr


def test_doctor_reports_an_unrecorded_certificate_and_never_deletes_it(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    from fleet.pki.issue import issue_certificate
    from fleet.pki.profiles import load_profile

    ws, out = ready_sqlite_ws, tmp_path / "ids"
    issued = issue_certificate(
        ca.load_issuer(ws.home, PASSPHRASE), "ghost-1", load_profile("default")
    )
    (out / "ghost-1").mkdir(parents=True)
    (out / "ghost-1" / "cert.pem").write_text(issued.cert_pem)
    for args in ((), ("--fix",)):
        result = run_fleet(*fleet_args(ws), "doctor", "--out", str(out), "--json", *args)
        assert result.returncode == 1, result.stderr
        assert json.loads(result.stdout)["unrecorded"] == [
            {"serial": issued.serial, "path": str(out / "ghost-1" / "cert.pem")}
        ]
    assert (out / "ghost-1" / "cert.pem").read_text() == issued.cert_pem
