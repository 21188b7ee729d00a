"""``fleet status``: the figures of a hand-counted registry, the JSON shape, the screen, the
CRL warnings (none published, next update near, past) on stdout and stderr, an empty
registry. Registries on SQLite and PostgreSQL; cloud jobs go to a real local HTTP registry."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from cloudserver import RegistryServer
from helpers import PASSPHRASE, Cli, FrozenClock
from sqlalchemy import func, select

import fleet
from fleet import certs, devices
from fleet.cloud.clouds import add_cloud
from fleet.cloud.pacing import PushPolicy
from fleet.cloud.push import push
from fleet.errors import InvalidInput
from fleet.pki.crl import publish_crl
from fleet.registry.db import read_session
from fleet.registry.models import AuditEvent
from fleet.status.summary import fleet_status, format_span
from fleet.workspace import Workspace

FAST = PushPolicy(base_delay=0.05, max_delay=0.2, max_wait=30.0)
DAY = 86400


def event_count(ws: Workspace) -> int:
    with read_session(ws.open_registry()) as session:
        query = select(func.count()).select_from(AuditEvent)
        return int(session.connection().execute(query).scalar_one())


def build_fleet(ws: Workspace, server: RegistryServer, out: Path, fleet_clock: FrozenClock) -> None:
    """Devices added over a year (default profile: 365 days), so that at day 390:

    ======  =======  ==========  ===================================================
    day     device   model       certificate at day 390 / cloud "reg"
    ======  =======  ==========  ===================================================
    0       a1 a2    p200        expired 25 days ago, still active
    0       a3       p200        revoked (device decommissioned on day 1)
    30      b1       p200        expires in 5 days; registered on reg
    30      b2       gw-1        expires in 5 days; registration failed (HTTP 400)
    50      c1       gw-1        revoked on day 51
    50      c2       (none)      expires in 25 days; pending on reg (job from day 50)
    100     d1       (none)      expires in 75 days; pending on reg (job from day 100)
    200     e1 / e2  p200 / z-1  expires in 175 days
    ======  =======  ==========  ===================================================

    CRLs: number 1 on day 2, number 2 at day 383.5 (next update in 12 hours at day 390).
    Cloud "idle" has nothing.
    """
    start = fleet_clock.now

    def at(day: float) -> None:
        fleet_clock.now = start + timedelta(days=day)

    add_cloud(ws, "reg", "http", {"url": server.url, "timeout": 2.0})
    add_cloud(ws, "idle", "http", {"url": server.url, "timeout": 2.0})
    for device_id in ("a1", "a2", "a3"):
        devices.add_device(ws, device_id, model="p200", out_dir=out)
    at(1)
    devices.decommission_device(ws, "a3")
    at(2)
    publish_crl(ws, passphrase=PASSPHRASE)
    at(30)
    devices.add_device(ws, "b1", model="p200", out_dir=out, clouds=["reg"])
    devices.add_device(ws, "b2", model="gw-1", out_dir=out, clouds=["reg"])
    server.state.faults["b2"] = ["400"]
    (report,) = push(ws, "reg", policy=FAST)
    assert (report.done, report.failed) == (1, 1)
    at(50)
    c1 = devices.add_device(ws, "c1", model="gw-1", out_dir=out)
    devices.add_device(ws, "c2", out_dir=out, clouds=["reg"])
    at(51)
    certs.revoke_certificate(ws, c1.certificates[0].serial)
    at(100)
    devices.add_device(ws, "d1", out_dir=out, clouds=["reg"])
    at(200)
    devices.add_device(ws, "e1", model="p200", out_dir=out)
    devices.add_device(ws, "e2", model="z-1", out_dir=out)
    at(383.5)
    publish_crl(ws, passphrase=PASSPHRASE)
    at(390)


@pytest.fixture
def built(
    ready_ws: Workspace, server: RegistryServer, out_dir: Path, fleet_clock: FrozenClock
) -> Workspace:
    build_fleet(ready_ws, server, out_dir, fleet_clock)
    return ready_ws


def test_figures_of_a_hand_counted_fleet(built: Workspace, fleet_clock: FrozenClock) -> None:
    result = fleet_status(built, top=2)
    data = result.to_dict()
    assert data["at"] == "2028-03-25T09:00:00Z"  # day 390 of the fixture's clock
    assert data["devices"] == {
        "total": 10,
        "by_status": {"active": 9, "decommissioned": 1},
        # gw-1 and "no model" tie at 2: a named model first
        "by_model": [{"model": "p200", "count": 5}, {"model": "gw-1", "count": 2}],
        "other": {"models": 2, "count": 3},
    }
    assert data["certificates"] == {
        "active": 8,
        "revoked": 2,
        "expired_active": 2,
        "expiring_within": {"7d": 2, "30d": 3, "90d": 4},
    }
    crl = data["crl"]
    assert (crl["number"], crl["revoked_count"]) == (2, 2)
    # CRL times are whole seconds (the clock had .25 s): 12 h minus the fraction, floored.
    assert crl["next_update_in_seconds"] == 12 * 3600 - 1
    assert crl["next_update"] == "2028-03-25T21:00:00Z"
    assert data["crl_warn_seconds"] == DAY
    assert data["clouds"] == [
        {
            "name": "idle",
            "type": "http",
            "registrations": {"pending": 0, "registered": 0, "failed": 0, "deregistered": 0},
            "jobs": {"open": 0, "retrying": 0, "failed": 0, "oldest_open_age_seconds": None},
        },
        {
            "name": "reg",
            "type": "http",
            "registrations": {"pending": 2, "registered": 1, "failed": 1, "deregistered": 0},
            "jobs": {
                "open": 2,
                "retrying": 0,
                "failed": 1,
                "oldest_open_age_seconds": 340 * DAY,  # c2's job, queued on day 50
            },
        },
    ]
    events = event_count(built)
    assert data["audit"]["events"] == data["audit"]["head_seq"] == events
    (warning,) = data["warnings"]
    assert warning.startswith("CRL 2 expires in 11h 59m (2028-03-25T21:00:00Z), within the 1d")
    assert "brokers reject every client once a CRL expires" in warning
    # The public API, and every model with a big enough top.
    assert fleet.fleet_status is fleet_status
    wide = fleet_status(built, top=10).devices
    assert [(m.model, m.count) for m in wide.by_model] == [
        ("p200", 5),
        ("gw-1", 2),
        (None, 2),
        ("z-1", 1),
    ]
    assert (wide.other_models, wide.other_devices) == (0, 0)
    assert fleet_status(built, crl_warn=timedelta(hours=6)).warnings == ()


def test_audit_head_is_the_trails_last_link(built: Workspace) -> None:
    last = list(fleet.iter_audit_events(built))[-1]
    audit = fleet_status(built).audit
    assert (audit.events, audit.head_hash) == (last["seq"], last["hash"])


def test_cli_screen_and_json(built: Workspace) -> None:
    cli = Cli(built)
    result = cli("status", "--json", "--top", "2")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == fleet_status(built, top=2).to_dict()
    assert result.stderr.startswith("warning: CRL 2 expires in 11h 59m")
    assert len(result.stderr.splitlines()) == 1

    screen = cli("status", "--top", "2")
    assert screen.exit_code == 0, screen.stderr
    out = screen.stdout
    for expected in (
        "Devices: 10 (9 active, 1 decommissioned)",
        "p200",
        "other (2 models)",
        "Certificates: 8 active, 2 revoked",
        "2 within 7d, 3 within 30d, 4 within 90d",
        "expired but still active: 2",
        "CRL: number 2, next update 2028-03-25T21:00:00Z (in 11h 59m)",
        "WARNING: CRL 2 expires in 11h 59m",
        "340d",  # the oldest open job on reg
        f"Audit trail: {event_count(built)} events",
    ):
        assert expected in out, expected
    reg_row = next(line for line in out.splitlines() if "│ reg" in line)
    assert [cell.strip() for cell in reg_row.strip("│ ").split("│")] == [
        "reg", "http", "1", "2", "1", "2", "1", "340d",
    ]  # fmt: skip
    assert "warning: CRL 2 expires" in screen.stderr

    quiet = cli("status", "--crl-warn", "6h")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert "WARNING" not in quiet.stdout


def test_empty_registry(ready_ws: Workspace) -> None:
    result = Cli(ready_ws)("status", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["devices"] == {
        "total": 0,
        "by_status": {"active": 0, "decommissioned": 0},
        "by_model": [],
        "other": {"models": 0, "count": 0},
    }
    assert data["certificates"] == {
        "active": 0,
        "revoked": 0,
        "expired_active": 0,
        "expiring_within": {"7d": 0, "30d": 0, "90d": 0},
    }
    assert data["crl"] is None and data["clouds"] == []
    assert data["audit"]["events"] == event_count(ready_ws)
    assert list(data) == [
        "at", "devices", "certificates", "crl", "crl_warn_seconds", "clouds", "audit",
        "connections", "warnings",
    ]  # fmt: skip
    assert data["connections"] == {"online": 0, "offline": 0, "longest_offline": []}
    (warning,) = data["warnings"]
    assert warning.startswith("no CRL was ever published: publish one with `fleet ca crl`")
    assert result.stderr == f"warning: {warning}\n"
    screen = Cli(ready_ws)("status")
    assert "CRL: none published" in screen.stdout and "Clouds: none configured" in screen.stdout
    assert "WARNING: no CRL was ever published" in screen.stdout


@pytest.mark.parametrize(
    ("days_after", "warn", "expected"),
    [
        (1, "24h", None),  # 6 days left
        (6.5, "24h", "CRL 1 expires in 11h 59m (2027-03-08T09:00:00Z), within the 1d "),
        (6.5, "6h", None),
        (6.5, "1", "within the 1d warning threshold"),  # a bare number is days
        (6.9, "3h", "CRL 1 expires in 2h 23m"),
        (6.9, "2h", None),
        (8, "24h", "CRL 1 expired 1d ago (2027-03-08T09:00:00Z): brokers reject every client"),
    ],
)
def test_crl_warnings(
    ready_sqlite_ws: Workspace,
    fleet_clock: FrozenClock,
    days_after: float,
    warn: str,
    expected: str | None,
) -> None:
    publish_crl(ready_sqlite_ws, passphrase=PASSPHRASE)
    fleet_clock.advance(days=days_after)
    result = Cli(ready_sqlite_ws)("status", "--crl-warn", warn)
    assert result.exit_code == 0, result.stderr
    if expected is None:
        assert result.stderr == "" and "WARNING" not in result.stdout
    else:
        assert expected in result.stderr and result.stderr.startswith("warning: CRL 1 ")
        assert "WARNING: CRL 1 " in result.stdout


def test_bad_options(ready_sqlite_ws: Workspace) -> None:
    cli = Cli(ready_sqlite_ws)
    for args, text in [
        (("--top", "0"), "--top must be 1 to 1000"),
        (("--crl-warn", "soon"), "--crl-warn 'soon': use a number with a unit"),
        (("--crl-warn", "-1h"), "--crl-warn '-1h': use a number with a unit"),
    ]:
        result = cli("status", *args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith(f"error: {text}") and result.stdout == ""
    with pytest.raises(InvalidInput):
        fleet_status(ready_sqlite_ws, crl_warn=timedelta(seconds=-1))


def test_no_workspace(tmp_path: Path) -> None:
    result = Cli(Workspace(home=tmp_path / "none"))("status")
    assert result.exit_code == 5 and "run `fleet init`" in result.stderr


def test_format_span() -> None:
    assert [format_span(s) for s in (0, 42, 60, 725, 3600, 18720, 86400, 273600, -90)] == [
        "0s", "42s", "1m", "12m 5s", "1h", "5h 12m", "1d", "3d 4h", "1m 30s",
    ]  # fmt: skip


def test_connections_online_offline_and_longest_offline(
    ready_ws: Workspace, tmp_path: Path, fleet_clock: FrozenClock
) -> None:
    """Counts from each device's last connection event; the longest offline first."""
    from fleet.status.events import Seen, record
    from fleet.statuses import ConnectionState, EventSource

    for device_id in ("n1", "n2", "n3", "n4"):
        devices.add_device(ready_ws, device_id, out_dir=tmp_path / "ids", passphrase=PASSPHRASE)
    start = fleet_clock.now

    def seen(device_id: str, state: ConnectionState, hours: int) -> Seen:
        return Seen(device_id, state, EventSource.INGEST, start + timedelta(hours=hours))

    on, off = ConnectionState.ONLINE, ConnectionState.OFFLINE
    record(ready_ws, [seen("n1", on, 1), seen("n2", off, 2), seen("n3", off, 5), seen("n3", on, 4)])
    fleet_clock.now = start + timedelta(hours=10)
    data = fleet_status(ready_ws).to_dict()["connections"]
    assert (data["online"], data["offline"]) == (1, 2)
    assert [d["device_id"] for d in data["longest_offline"]] == ["n2", "n3"]
    screen = Cli(ready_ws)("status")
    assert "Connections: 1 online, 2 offline, 1 active never seen" in screen.stdout
    assert "offline 8h" in screen.stdout and "n2" in screen.stdout
