"""Phased firmware rollouts: the pure state machine, then the library on SQLite and
PostgreSQL (selection, step, thresholds, retry, abort, dynamic, timeouts, audit format),
then the CLI. The end-to-end run against the moto server is tests/test_rollout_aws.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import PASSPHRASE, FrozenClock
from sqlalchemy import select

from fleet.errors import Conflict, InvalidInput, NotFound
from fleet.firmware.images import add_image
from fleet.firmware.models import DeviceFirmware
from fleet.firmware.pins import pin_device
from fleet.firmware.reports import Report, record_reports
from fleet.firmware.rollout import machine
from fleet.firmware.rollouts import (
    RolloutSpec,
    abort_rollout,
    create_rollout,
    device_history,
    pause_rollout,
    resume_rollout,
    retry_failed,
    rollout_status,
    start_rollout,
    step,
)
from fleet.registry.audit import iter_audit_events
from fleet.registry.db import write_session
from fleet.registry.models import Device
from fleet.statuses import FirmwareSource
from fleet.workspace import Workspace

T0 = datetime(2027, 3, 1, 9, 0, 0, tzinfo=UTC)

# --- the pure state machine ---------------------------------------------------------------


def test_phases_parse_and_cut_offs() -> None:
    assert machine.parse_phases("1%,10%,50%,100%") == [1, 10, 50, 100]
    for bad in ("", "10%,5%,100%", "10%,50%", "0%,100%", "abc", "50%,150%"):
        with pytest.raises(InvalidInput):
            machine.parse_phases(bad)
    assert machine.phase_cutoffs(60, [10, 50, 100]) == [6, 30, 60]
    # at least one device per phase while devices last
    assert machine.phase_cutoffs(3, [1, 10, 50, 100]) == [1, 2, 3, 3]
    assert machine.phase_cutoffs(0, [50, 100]) == [0, 0]


def test_decide_pauses_advances_completes() -> None:
    rule = machine.Thresholds(max_failure_rate=0.05, min_executed=20)
    ok = {"succeeded": 19, "failed": 1}
    assert machine.decide(ok, 3, 0, 3, rule) == (machine.Next.NOTIFY, None)
    assert machine.decide(ok, 0, 0, 3, rule) == (machine.Next.ADVANCE, None)
    assert machine.decide(ok, 0, 2, 3, rule) == (machine.Next.COMPLETE, None)
    bad = {"succeeded": 17, "failed": 2, "timed-out": 1}
    move, reason = machine.decide(bad, 0, 0, 3, rule)
    assert move == machine.Next.PAUSE and reason is not None and "15.0%" in reason
    # below --min-executed the rate does not pause yet
    assert machine.decide({"failed": 5}, 0, 0, 3, rule)[0] == machine.Next.ADVANCE
    assert machine.failure_rate({"succeeded": 3, "failed": 1, "skipped": 9}) == (4, 1, 0.25)


def test_rollout_commands_allowed_by_state() -> None:
    assert machine.allowed("created", "start") and not machine.allowed("running", "start")
    assert machine.allowed("paused", "resume") and not machine.allowed("running", "resume")
    assert machine.allowed("paused", "abort") and not machine.allowed("completed", "abort")


# --- the library ------------------------------------------------------------------------


def _devices(ws: Workspace, ids: list[str], model: str = "pump") -> None:
    now = T0
    with write_session(ws.open_registry()) as session:
        for device_id in ids:
            session.add(
                Device(id=device_id, model=model, labels={}, created_at=now, updated_at=now)
            )


def _image(ws: Workspace, tmp_path: Path, version: str, *models: str) -> None:
    image = tmp_path / f"fw-{version}.bin"
    image.write_bytes(b"firmware " + version.encode())
    add_image(ws, image, version=version, models=list(models), passphrase=PASSPHRASE)


def _report(
    ws: Workspace, clock: FrozenClock, items: dict[str, tuple[str | None, str | None]]
) -> None:
    at = clock.advance(seconds=1)
    with write_session(ws.open_registry()) as session:
        record_reports(
            session,
            [
                Report(device_id, version, FirmwareSource.MANUAL, at, state)  # type: ignore[arg-type]
                for device_id, (version, state) in items.items()
            ],
        )


def _states(ws: Workspace, name: str) -> dict[str, int]:
    return {k: v for k, v in (rollout_status(ws, name).states or {}).items() if v}


@pytest.fixture
def fleet60(ready_ws: Workspace, tmp_path: Path, fleet_clock: FrozenClock) -> Workspace:
    _devices(ready_ws, [f"p-{i:03d}" for i in range(60)])
    _devices(ready_ws, ["v-000", "v-001"], model="valve")
    _image(ready_ws, tmp_path, "2.0.0", "pump")
    return ready_ws


def test_phases_advance_and_complete(fleet60: Workspace, fleet_clock: FrozenClock) -> None:
    ws = fleet60
    create_rollout(ws, RolloutSpec("spring", "pump@2.0.0", phases="10%,50%,100%", min_executed=5))
    _report(ws, fleet_clock, {"p-059": ("2.0.0", None)})
    counts = start_rollout(ws, "spring")
    assert counts == {"pending": 59, "skipped": 2, "already-installed": 1}
    status = rollout_status(ws, "spring")
    assert [sum(p.values()) for p in status.phase_states or []] == [7, 24, 31]
    [report] = step(ws)
    assert report.notified == 7 and report.phase == 0
    for _phase in (0, 1, 2):
        notified = _notified(ws, "spring")
        _report(ws, fleet_clock, {d: ("2.0.0", None) for d in notified})
        [report] = step(ws)
    assert report.state == "completed"
    assert _states(ws, "spring") == {"succeeded": 59, "skipped": 2, "already-installed": 1}
    actions = [e["action"] for e in iter_audit_events(ws, target="spring")]
    assert actions.count("rollout.phase") == 2 and actions[-1] == "rollout.complete"
    targets = [e for e in iter_audit_events(ws, target="spring", action="firmware.target")]
    assert sorted(d for e in targets for d in e["details"]["devices"]) == [
        f"p-{i:03d}" for i in range(59)
    ]
    assert all(e["details"]["version"] == "2.0.0" for e in targets)
    skipped = device_history(ws, "spring", "v-000")
    assert skipped["state"] == "skipped" and "model" in skipped["reason"]


def _notified(ws: Workspace, name: str) -> list[str]:
    from fleet.firmware.models import RolloutDevice

    with write_session(ws.open_registry()) as session:
        rows = session.execute(
            select(RolloutDevice.device_id).where(RolloutDevice.state == "notified")  # type: ignore[arg-type]
        )
        return sorted(rows.scalars())


def test_failure_rate_pauses_retry_recovers(fleet60: Workspace, fleet_clock: FrozenClock) -> None:
    ws = fleet60
    create_rollout(
        ws,
        RolloutSpec("r", "pump@2.0.0", phases="50%,100%", max_failure_rate="10%", min_executed=10),
    )
    start_rollout(ws, "r")
    step(ws)
    notified = _notified(ws, "r")
    assert len(notified) == 31
    _report(ws, fleet_clock, {d: (None, "in-progress") for d in notified[:5]})
    step(ws)
    assert _states(ws, "r")["in-progress"] == 5
    outcome = {d: ("2.0.0", None) for d in notified[5:]}
    outcome.update({d: (None, "failed") for d in notified[:5]})
    _report(ws, fleet_clock, outcome)
    step(ws)
    status = rollout_status(ws, "r")
    assert status.state == "paused" and status.reason and "exceeds" in status.reason
    assert status.to_dict()["failures"] == 5
    assert retry_failed(ws, "r") == 5
    resume_rollout(ws, "r")
    step(ws)  # the 5 are notified again (a second attempt)
    history = device_history(ws, "r", notified[0])
    assert history["attempts"] == 2
    assert [h.get("state") or h.get("target") for h in history["history"]] == [
        "2.0.0",
        "in-progress",
        "failed",
        "pending",
        "2.0.0",
    ]
    _report(ws, fleet_clock, {d: ("2.0.0", None) for d in notified[:5]})
    step(ws)
    assert rollout_status(ws, "r").phase == 1
    # counted once per device, whatever the retries
    assert sum((rollout_status(ws, "r").states or {}).values()) == 62


def test_timeouts_fire_with_the_clock(fleet60: Workspace, fleet_clock: FrozenClock) -> None:
    ws = fleet60
    create_rollout(ws, RolloutSpec("t", "pump@2.0.0", timeout="2h", max_failure_rate="100%"))
    start_rollout(ws, "t")
    step(ws)
    fleet_clock.advance(hours=1)
    step(ws)
    assert _states(ws, "t")["notified"] == 60
    fleet_clock.advance(hours=1, seconds=1)
    [report] = step(ws)
    assert report.changed == {"timed-out": 60} and report.state == "completed"


def test_pinned_skipped_dynamic_joins_rate_limit(
    fleet60: Workspace, fleet_clock: FrozenClock
) -> None:
    ws = fleet60
    pin_device(ws, "p-001", "1.0.0")
    pin_device(ws, "p-002", "2.0.0")  # pinned to the target itself: not skipped
    create_rollout(ws, RolloutSpec("d", "pump@2.0.0", dynamic=True, max_per_minute=20))
    start_rollout(ws, "d")
    assert device_history(ws, "d", "p-001")["reason"] == "pinned to 1.0.0"
    [report] = step(ws)
    assert report.notified == 20
    [report] = step(ws)
    assert report.notified == 0  # the minute's budget is spent
    fleet_clock.advance(seconds=61)
    _devices(ws, ["p-100"])
    [report] = step(ws)
    assert report.joined == 1 and report.notified == 20
    assert device_history(ws, "d", "p-100")["history"][0]["action"] == "rollout.join"


def test_abort_cancels_and_clears_targets(fleet60: Workspace, fleet_clock: FrozenClock) -> None:
    ws = fleet60
    create_rollout(ws, RolloutSpec("a", "pump@2.0.0", phases="50%,100%"))
    start_rollout(ws, "a")
    step(ws)
    pause_rollout(ws, "a")
    assert step(ws) == []
    assert abort_rollout(ws, "a") == {"cancelled": 60, "targets_cleared": 31}
    with write_session(ws.open_registry()) as session:
        rows = session.execute(select(DeviceFirmware.target_version)).scalars().all()  # type: ignore[call-overload]
    assert rows and all(v is None for v in rows)
    cleared = list(iter_audit_events(ws, target="a", action="firmware.target"))[-1]
    assert cleared["details"]["version"] is None and len(cleared["details"]["devices"]) == 31
    with pytest.raises(Conflict):
        resume_rollout(ws, "a")


def test_bad_input(fleet60: Workspace) -> None:
    ws = fleet60
    with pytest.raises(NotFound):
        create_rollout(ws, RolloutSpec("x", "pump@9.9.9"))
    with pytest.raises(InvalidInput):
        create_rollout(ws, RolloutSpec("x", "pump@2.0.0", phases="50%"))
    with pytest.raises(InvalidInput):
        create_rollout(ws, RolloutSpec("x", "pump@2.0.0", timeout="soon"))
    create_rollout(ws, RolloutSpec("x", "pump@2.0.0"))
    with pytest.raises(Conflict):
        create_rollout(ws, RolloutSpec("x", "pump@2.0.0"))
    with pytest.raises(NotFound):
        start_rollout(ws, "nope")
    assert json.loads(json.dumps(rollout_status(ws, "x").to_dict()))["state"] == "created"


# --- delivery (HTTP backend) and the CLI -------------------------------------------------


def test_http_backend_puts_the_target_on_the_firmware_url() -> None:
    """The generic HTTP backend's delivery, against ``httpx.MockTransport`` (the request
    is the observable): PUT on the default URL, then on a configured --firmware-url."""
    import httpx

    from fleet.cloud.base import DeviceRecord, FirmwareTarget
    from fleet.cloud.http.backend import HttpBackend

    seen: list[tuple[str, str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), json.loads(request.content)))
        return httpx.Response(204)

    device = DeviceRecord("pump 1", "p200", None, {}, "active", "", "", "")
    target = FirmwareTarget("2.0.0", "ab" * 32, 10, "https://fw/x.bin", "SIG")
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        options = HttpBackend.validate_options({"url": "https://reg.example/devices/{id}"})
        HttpBackend("h", options, client=client).deliver_firmware(device, target, {}, {})
        options = HttpBackend.validate_options(
            {"url": "https://reg.example/devices/{id}", "firmware_url": "https://ota.example/{id}"}
        )
        HttpBackend("h", options, client=client).deliver_firmware(device, None, {}, {})
    assert seen[0][:2] == ("PUT", "https://reg.example/devices/pump%201/firmware")
    assert seen[0][2] == {
        "firmware": {
            "version": "2.0.0",
            "url": "https://fw/x.bin",
            "sha256": "ab" * 32,
            "size": 10,
            "signature": "SIG",
        }
    }
    assert seen[1] == ("PUT", "https://ota.example/pump%201", {"firmware": None})
    with pytest.raises(InvalidInput):
        HttpBackend.validate_options({"url": "https://r/{id}", "firmware_url": "ftp://x/{id}"})


def test_cli(fleet60: Workspace, fleet_clock: FrozenClock) -> None:
    from helpers import Cli

    cli = Cli(fleet60)
    made = cli("rollout", "create", "c", "--firmware", "pump@2.0.0", "--phases", "50%,100%",
               "--timeout", "1h", "--max-failure-rate", "20%", "--json")  # fmt: skip
    assert made.exit_code == 0, made.stderr
    assert json.loads(made.stdout)["phases"] == [50, 100]
    assert cli("rollout", "start", "c").exit_code == 0
    stepped = cli("rollout", "step", "--json")
    assert json.loads(stepped.stdout)[0]["notified"] == 31
    shown = json.loads(cli("rollout", "status", "c", "--json").stdout)
    assert shown["states"]["notified"] == 31 and shown["devices"] == 62
    assert [sum(p.values()) for p in shown["phase_states"]] == [31, 31]
    table = cli("rollout", "status", "c")
    assert table.exit_code == 0 and "notified" in table.stdout
    history = json.loads(cli("rollout", "status", "c", "--device", "p-000", "--json").stdout)
    assert history["history"][0] == {
        "ts": history["history"][0]["ts"],
        "seq": history["history"][0]["seq"],
        "action": "firmware.target",
        "target": "2.0.0",
    }
    listed = json.loads(cli("rollout", "list", "--json").stdout)
    assert [r["name"] for r in listed] == ["c"]
    assert cli("rollout", "pause", "c").exit_code == 0
    again = cli("rollout", "pause", "c")
    assert again.exit_code == 4 and "cannot pause" in again.stderr
    assert cli("rollout", "status", "nope").exit_code == 3
    bad = cli("rollout", "create", "d", "--firmware", "pump@2.0.0", "--phases", "10%,5%")
    assert bad.exit_code == 2 and "Traceback" not in bad.stderr
    aborted = json.loads(cli("rollout", "abort", "c", "--json").stdout)
    assert aborted == {"name": "c", "state": "aborted", "cancelled": 60, "targets_cleared": 31}
    for command in ("create", "start", "step", "pause", "resume", "abort", "retry-failed",
                    "status", "list"):  # fmt: skip
        helped = cli("rollout", command, "--help")
        assert helped.exit_code == 0 and "Example:" in helped.stdout, command


def test_deprecated_image_is_never_a_target(fleet60: Workspace) -> None:
    from fleet.firmware.images import deprecate_image

    ws = fleet60
    create_rollout(ws, RolloutSpec("dep", "pump@2.0.0", phases="50%,100%"))
    start_rollout(ws, "dep")
    deprecate_image(ws, "2.0.0")
    [report] = step(ws)
    assert report.state == "paused" and report.notified == 0
    assert "deprecated" in (rollout_status(ws, "dep").reason or "")
    with pytest.raises(Conflict):
        create_rollout(ws, RolloutSpec("dep2", "pump@2.0.0"))
