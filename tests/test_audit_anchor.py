"""The audit trail anchored outside the registry: signed checkpoints, earlier exports, the
live tables against the trail, and CRLs that never drop a revocation.

Every tampering here is done with direct SQL on the registry, as someone holding the database
(but not the CA passphrase) could; each must be reported with exit code 7 and one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import PASSPHRASE, Cli, FrozenClock
from sqlalchemy import text

from fleet import certs, devices
from fleet.audit_anchor import checkpoints
from fleet.export import export_audit
from fleet.pki import audit_key, crl
from fleet.registry import audit
from fleet.workspace import Workspace


@pytest.fixture
def busy_ws(ready_ws: Workspace, tmp_path: Path) -> Workspace:
    """Two devices, an update, a renewal, a revocation, a decommissioning and a CRL."""
    out = tmp_path / "out"
    devices.add_device(ready_ws, "a1", labels={"k": "v"}, out_dir=out, passphrase=PASSPHRASE)
    devices.add_device(ready_ws, "a2", model="m1", out_dir=out, passphrase=PASSPHRASE)
    devices.update_device(ready_ws, "a1", model="m2")
    certs.renew_certificate(ready_ws, "a1", out_dir=out, revoke_old=True, passphrase=PASSPHRASE)
    serial = devices.show_device(ready_ws, "a2").certificates[0].serial
    certs.revoke_certificate(ready_ws, serial, reason="keyCompromise")
    devices.decommission_device(ready_ws, "a2")
    crl.publish_crl(ready_ws, passphrase=PASSPHRASE)
    return ready_ws


def _sql(ws: Workspace, *statements: str) -> None:
    """Run ``statements`` on the registry directly, in one transaction, bypassing fleet."""
    with ws.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def _rehash_from(ws: Workspace, first: int, **changes: str) -> None:
    """Edit event ``first`` and re-hash it and every later event, head included: a chain
    that verifies on its own."""
    with ws.engine.begin() as conn:
        rows = conn.execute(
            text("SELECT * FROM audit_event WHERE seq >= :s ORDER BY seq"), {"s": first}
        ).mappings()
        events = [dict(row) for row in rows]
        prev = events[0]["prev_hash"]
        events[0].update(changes)
        for event in events:
            event["prev_hash"] = prev
            event["hash"] = prev = audit.event_hash(event)
            conn.execute(
                text(
                    "UPDATE audit_event SET actor = :actor, details = :details, "
                    "prev_hash = :prev_hash, hash = :hash WHERE seq = :seq"
                ),
                event,
            )
        conn.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": prev})


def _fails(cli: Cli, *args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 7, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    return str(result.stderr)


def test_every_commit_leaves_a_signed_checkpoint(
    busy_ws: Workspace, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = busy_ws.home / "audit"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct((folder / "audit.key.pem").stat().st_mode & 0o777) == "0o600"
    lines = [json.loads(line) for line in (folder / "checkpoints.jsonl").read_text().splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, 9))
    head = list(audit.iter_audit_events(busy_ws))[-1]
    assert (lines[-1]["seq"], lines[-1]["hash"]) == (head["seq"], head["hash"])
    # a write that needs no CA passphrase is checkpointed too
    monkeypatch.delenv("FLEET_CA_PASSPHRASE")
    assert cli("device", "update", "a1", "--model", "m3").exit_code == 0
    last = json.loads((folder / "checkpoints.jsonl").read_text().splitlines()[-1])
    assert last["seq"] == 9
    ok = cli("audit", "verify")
    assert ok.exit_code == 0, ok.stderr
    assert "9 events" in ok.stderr
    assert "checked against 9 checkpoints (newest: event 9" in ok.stderr


def test_truncating_the_trail_and_its_head_is_detected(busy_ws: Workspace, cli: Cli) -> None:
    sixth = next(e for e in audit.iter_audit_events(busy_ws) if e["seq"] == 6)
    _sql(
        busy_ws,
        "DELETE FROM audit_event WHERE seq > 6",
        f"UPDATE audit_head SET seq = 6, hash = '{sixth['hash']}' WHERE id = 1",
    )
    error = _fails(cli, "audit", "verify")
    assert "broken at event 7" in error
    assert "the chain ends at event 6" in error and "recorded event 8" in error


def test_deleting_the_whole_trail_is_detected(busy_ws: Workspace, cli: Cli) -> None:
    _sql(busy_ws, "DELETE FROM audit_event", "DELETE FROM audit_head")
    error = _fails(cli, "audit", "verify")
    assert "the chain ends at event 0" in error


def test_an_edit_with_every_later_hash_recomputed_is_detected(busy_ws: Workspace, cli: Cli) -> None:
    _rehash_from(busy_ws, 3, actor="mallory")
    error = _fails(cli, "audit", "verify")
    assert "broken at event 3" in error and "history rewritten" in error


def test_a_forged_or_removed_checkpoint_file_is_detected(busy_ws: Workspace, cli: Cli) -> None:
    path = checkpoints.checkpoint_path(busy_ws.home)
    original = path.read_text()
    lines = original.splitlines()
    forged = json.loads(lines[-1])
    forged["hash"] = "0" * 64
    path.write_text("\n".join([*lines[:-1], json.dumps(forged)]) + "\n")
    assert "bad signature" in _fails(cli, "audit", "verify")
    path.unlink()
    assert "checkpoints removed" in _fails(cli, "audit", "verify")
    path.write_text(original)
    assert cli("audit", "verify").exit_code == 0


def _rewrite_with_the_audit_key(ws: Workspace) -> None:
    """Someone holding the database AND the workspace's files: rewrites event 3 and the
    chain after it, and replaces the checkpoints with one of the new head."""
    _rehash_from(ws, 3, actor="mallory")
    checkpoints.checkpoint_path(ws.home).unlink()
    checkpoints._last.clear()
    key = audit_key.load_audit_key(ws.home)
    assert key is not None
    head = list(audit.iter_audit_events(ws))[-1]
    checkpoints.append_checkpoint(ws.home, key, head["seq"], head["hash"])


def test_an_earlier_signed_audit_export_detects_a_later_rewrite(
    busy_ws: Workspace, cli: Cli, tmp_path: Path
) -> None:
    kept = tmp_path / "auditor" / "audit-q3.jsonl"
    kept.parent.mkdir()
    export_audit(busy_ws, out=kept, passphrase=PASSPHRASE)
    assert cli("audit", "verify", "--against", str(kept)).exit_code == 0
    _rewrite_with_the_audit_key(busy_ws)
    assert cli("audit", "verify").exit_code == 0  # the local evidence was replaced too
    error = _fails(cli, "audit", "verify", "--against", str(kept))
    assert "audit-q3.jsonl" in error and "history rewritten" in error


def test_a_copied_checkpoint_file_detects_a_later_rewrite(
    busy_ws: Workspace, cli: Cli, tmp_path: Path
) -> None:
    copy = tmp_path / "checkpoints-copy.jsonl"
    shutil.copy(checkpoints.checkpoint_path(busy_ws.home), copy)
    _rewrite_with_the_audit_key(busy_ws)
    error = _fails(cli, "audit", "verify", "--against", str(copy))
    assert "checkpoints-copy.jsonl line" in error and "history rewritten" in error


def test_a_tampered_export_is_refused_as_evidence(
    busy_ws: Workspace, cli: Cli, tmp_path: Path
) -> None:
    kept = tmp_path / "audit.jsonl"
    export_audit(busy_ws, out=kept, passphrase=PASSPHRASE)
    kept.write_text(kept.read_text().replace("tester", "mallory", 1))
    assert "does not verify" in _fails(cli, "audit", "verify", "--against", str(kept))


def test_state_matches_history(busy_ws: Workspace, cli: Cli) -> None:
    result = cli("audit", "verify", "--state")
    assert result.exit_code == 0, result.stderr


def test_a_device_edited_behind_fleet_is_reported(busy_ws: Workspace, cli: Cli) -> None:
    _sql(busy_ws, "UPDATE device SET model = 'evil' WHERE id = 'a1'")
    assert cli("audit", "verify").exit_code == 0  # the trail itself is intact
    error = _fails(cli, "audit", "verify", "--state")
    assert "device a1 model: recorded 'm2', live 'evil'" in error


def _unrevoke(ws: Workspace) -> str:
    serial = devices.show_device(ws, "a2").certificates[0].serial
    _sql(
        ws,
        "UPDATE certificate SET status = 'active', revoked_at = NULL, "
        f"revocation_reason = NULL WHERE serial = '{serial}'",
        "UPDATE device SET status = 'active', decommissioned_at = NULL, "
        "decommission_reason = NULL WHERE id = 'a2'",
    )
    return serial


def test_an_unrevoked_certificate_is_reported(busy_ws: Workspace, cli: Cli) -> None:
    serial = _unrevoke(busy_ws)
    result = cli("audit", "verify", "--state")
    assert result.exit_code == 7
    assert f"certificate {serial} status: recorded 'revoked', live 'active'" in result.stderr
    assert "device a2 status: recorded 'decommissioned', live 'active'" in result.stderr


def test_a_crl_never_drops_a_revoked_certificate(busy_ws: Workspace, cli: Cli) -> None:
    serial = _unrevoke(busy_ws)
    before = list(audit.iter_audit_events(busy_ws))
    error = _fails(cli, "ca", "crl")
    assert f"refusing to publish CRL 2: certificate {serial} was revoked" in error
    assert list(audit.iter_audit_events(busy_ws)) == before  # nothing published or recorded


def test_a_crl_still_lists_every_revocation(busy_ws: Workspace, cli: Cli) -> None:
    from cryptography import x509

    result = cli("ca", "crl")
    assert result.exit_code == 0, result.stderr
    listed = {f"{entry.serial_number:x}" for entry in x509.load_pem_x509_crl(result.stdout_bytes)}
    assert len(listed) == 2  # a1's superseded certificate and a2's


def test_a_process_without_the_audit_key_commits_and_says_so(
    busy_ws: Workspace, cli: Cli, caplog: pytest.LogCaptureFixture
) -> None:
    key = busy_ws.home / "audit" / "audit.key.pem"
    key.unlink()
    key.mkdir()  # unreadable as a key, whoever runs the test
    audit_key._cache.clear()
    result = cli("device", "update", "a1", "--model", "m9")
    assert result.exit_code == 0
    assert "audit checkpoint of event 9 skipped" in caplog.text
    assert devices.show_device(busy_ws, "a1").model == "m9"


def test_checkpoint_command(busy_ws: Workspace, cli: Cli) -> None:
    result = cli("audit", "checkpoint", "--json")
    assert result.exit_code == 0, result.stderr
    made = json.loads(result.stdout)
    assert made["seq"] == 8
    last = checkpoints.checkpoint_path(busy_ws.home).read_text().splitlines()[-1]
    assert json.loads(last)["hash"] == made["hash"]


def test_an_expired_certificate_may_leave_the_crl(
    ready_ws: Workspace, cli: Cli, tmp_path: Path, fleet_clock: FrozenClock
) -> None:
    devices.add_device(ready_ws, "old", out_dir=tmp_path / "out", passphrase=PASSPHRASE)
    serial = devices.show_device(ready_ws, "old").certificates[0].serial
    certs.revoke_certificate(ready_ws, serial, reason="keyCompromise")
    _sql(
        ready_ws,
        "UPDATE certificate SET status = 'active', revoked_at = NULL, "
        f"revocation_reason = NULL WHERE serial = '{serial}'",
    )
    assert "refusing to publish CRL 1" in _fails(cli, "ca", "crl")
    fleet_clock.advance(days=400)  # past the certificate's not_after: no longer trusted anyway
    assert cli("ca", "crl").exit_code == 0


def test_a_signed_device_export_is_an_anchor_too(
    busy_ws: Workspace, cli: Cli, tmp_path: Path
) -> None:
    kept = tmp_path / "devices.csv"
    assert cli("export", "--format", "csv", "--out", str(kept)).exit_code == 0
    sixth = next(e for e in audit.iter_audit_events(busy_ws) if e["seq"] == 6)
    _sql(
        busy_ws,
        "DELETE FROM audit_event WHERE seq > 6",
        f"UPDATE audit_head SET seq = 6, hash = '{sixth['hash']}' WHERE id = 1",
    )
    checkpoints.checkpoint_path(busy_ws.home).unlink()
    key = audit_key.load_audit_key(busy_ws.home)
    assert key is not None
    checkpoints.append_checkpoint(busy_ws.home, key, 6, sixth["hash"])
    assert cli("audit", "verify").exit_code == 0
    manifest = tmp_path / "devices.csv.manifest.json"
    error = _fails(cli, "audit", "verify", "--against", str(manifest))
    assert "devices.csv (exported" in error and "events removed from the end" in error
