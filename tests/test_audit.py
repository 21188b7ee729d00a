"""The hash-chained audit trail: every mutation is recorded, and tampering is detected."""

from __future__ import annotations

import getpass
import itertools
import json
from pathlib import Path

import pytest
from helpers import PASSPHRASE, Cli, FrozenClock
from sqlalchemy import text

from fleet import certs, devices
from fleet.pki import crl
from fleet.registry import audit
from fleet.registry.db import write_session
from fleet.workspace import Workspace


@pytest.fixture
def busy_ws(ready_ws: Workspace, tmp_path: Path) -> Workspace:
    """A registry with one of every kind of mutation."""
    out = tmp_path / "out"
    devices.add_device(ready_ws, "a1", labels={"k": "v"}, out_dir=out, passphrase=PASSPHRASE)
    devices.add_device(ready_ws, "a2", out_dir=out, passphrase=PASSPHRASE)
    devices.update_device(ready_ws, "a1", model="m2")
    certs.renew_certificate(ready_ws, "a1", out_dir=out, revoke_old=True, passphrase=PASSPHRASE)
    serial = devices.show_device(ready_ws, "a2").certificates[0].serial
    certs.revoke_certificate(ready_ws, serial, reason="keyCompromise")
    devices.decommission_device(ready_ws, "a2")
    crl.publish_crl(ready_ws, passphrase=PASSPHRASE)
    return ready_ws


def test_every_mutation_is_recorded_with_actor(busy_ws: Workspace, cli: Cli) -> None:
    result = cli("audit", "log", "--json")
    assert result.exit_code == 0, result.stderr
    events = json.loads(result.stdout)
    assert [(e["action"], e["target"]) for e in events] == [
        ("ca.init", "Test Fleet"),
        ("device.add", "a1"),
        ("device.add", "a2"),
        ("device.update", "a1"),
        ("cert.renew", "a1"),
        ("cert.revoke", "a2"),
        ("device.decommission", "a2"),
        ("ca.crl", "crl-1"),
    ]
    assert {e["actor"] for e in events} == {"tester"}
    assert [e["seq"] for e in events] == list(range(1, 9))
    assert events[0]["prev_hash"] == "0" * 64
    for previous, event in itertools.pairwise(events):
        assert event["prev_hash"] == previous["hash"]
    assert events[4]["details"]["revoked"]  # the superseded certificate is named
    blob = result.stdout
    assert PASSPHRASE not in blob and "PRIVATE KEY" not in blob

    verify = cli("audit", "verify")
    assert verify.exit_code == 0, verify.stderr
    assert "8 events" in verify.stderr


def test_hash_is_reproducible_from_the_documented_canonical_form(busy_ws: Workspace) -> None:
    """An auditor can recompute each hash with nothing but json + sha256."""
    import hashlib

    for event in audit.iter_audit_events(busy_ws):
        body = {k: v for k, v in event.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canonical.encode()).hexdigest() == event["hash"]


def test_actor_falls_back_to_os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_ACTOR")
    monkeypatch.setattr(getpass, "getuser", lambda: "field-tech-7")
    assert audit.current_actor() == "field-tech-7"


def _tamper(ws: Workspace, sql: str) -> None:
    with ws.engine.begin() as conn:
        conn.execute(text(sql))


@pytest.mark.parametrize(
    ("sql", "bad_seq", "reason"),
    [
        ("UPDATE audit_event SET actor = 'mallory' WHERE seq = 3", 3, "edited"),
        (
            "UPDATE audit_event SET details = '{\"labels\":{}}' WHERE seq = 2",
            2,
            "edited",
        ),
        ("DELETE FROM audit_event WHERE seq = 4", 5, "missing"),
        # swap the contents of two rows (a reorder), keeping seq numbers in place
        (
            "UPDATE audit_event SET seq = CASE seq WHEN 5 THEN 1005 WHEN 6 THEN 1006 END "
            "WHERE seq IN (5, 6); "
            "UPDATE audit_event SET seq = 6 WHERE seq = 1005; "
            "UPDATE audit_event SET seq = 5 WHERE seq = 1006",
            5,
            "reordered",
        ),
        ("DELETE FROM audit_event WHERE seq = 8", 8, "removed from the end"),
    ],
)
def test_tampering_is_detected(
    busy_ws: Workspace, cli: Cli, sql: str, bad_seq: int, reason: str
) -> None:
    for statement in sql.split("; "):
        _tamper(busy_ws, statement)
    result = cli("audit", "verify")
    assert result.exit_code == 7
    assert f"broken at event {bad_seq}" in result.stderr
    assert reason in result.stderr
    assert result.stderr.count("\n") == 1


def test_recomputed_hash_after_edit_still_breaks_the_link(busy_ws: Workspace, cli: Cli) -> None:
    """A forger who re-hashes the edited row still breaks the next row's prev_hash."""
    with busy_ws.engine.begin() as conn:
        row = conn.execute(text("SELECT * FROM audit_event WHERE seq = 3")).mappings().one()
        fields = dict(row)
        fields["actor"] = "mallory"
        new_hash = audit.event_hash(fields)
        conn.execute(
            text("UPDATE audit_event SET actor = 'mallory', hash = :h WHERE seq = 3"),
            {"h": new_hash},
        )
    result = cli("audit", "verify")
    assert result.exit_code == 7
    assert "broken at event 4" in result.stderr


def test_log_since_filters_by_time(busy_ws: Workspace, cli: Cli) -> None:
    assert len(json.loads(cli("audit", "log", "--since", "1h", "--json").stdout)) == 8
    assert json.loads(cli("audit", "log", "--since", "2999-01-01", "--json").stdout) == []
    bad = cli("audit", "log", "--since", "yesterday-ish")
    assert bad.exit_code == 2
    assert "cannot parse time" in bad.stderr
    human = cli("audit", "log")
    assert "device.decommission" in human.stdout


def test_events_are_stamped_by_fleet_clock(
    ready_ws: Workspace, cli: Cli, fleet_clock: FrozenClock
) -> None:
    """Event times and relative ages (``--since 2d``) both read ``fleet.clock``."""
    with write_session(ready_ws.engine) as session:
        audit.append(session, "test.tick", "t1", {})
        fleet_clock.advance(days=3)
        audit.append(session, "test.tick", "t2", {})
    *_, first, second = audit.iter_audit_events(ready_ws)
    assert (first["ts"], second["ts"]) == (
        "2027-03-01T09:00:00.250000Z",
        "2027-03-04T09:00:00.250000Z",
    )
    recent = json.loads(cli("audit", "log", "--since", "2d", "--json").stdout)
    assert [event["target"] for event in recent] == ["t2"]
