"""The audit trail at scale: the fast verification judges every chain as the original did,
``--from`` ranges, progress, and ``audit log`` paging and filters."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from helpers import REPO, Cli, FrozenClock
from helpers.cli import child_env
from sqlalchemy import text

from fleet.registry import audit
from fleet.registry.audit import Anchor, VerifyResult, verification
from fleet.registry.db import read_session, write_session
from fleet.workspace import Workspace

ACTIONS = ("device.add", "cert.renew", "device.update")


def _append(ws: Workspace, count: int, *, first: int = 0) -> None:
    """``count`` events, with details of every JSON kind (non-ASCII, escapes, nesting)."""
    events = [
        audit.PendingEvent(
            ACTIONS[n % 3],
            f"dev-{n % 7}",
            {
                "n": n,
                "labels": {"zone": "süd", "quote": 'a"b\\c\n', "z": [1, 2.5, None, True]},
                "empty": {},
            },
        )
        for n in range(first, first + count)
    ]
    with write_session(ws.engine) as session:
        audit.append_many(session, events)


@pytest.fixture
def chain_ws(ready_ws: Workspace, fleet_clock: FrozenClock) -> Workspace:
    """ca.init plus 30 events, appended 10 at a time one day apart."""
    for batch in range(3):
        fleet_clock.advance(days=1)
        _append(ready_ws, 10, first=batch * 10)
    return ready_ws


def _reference_verify(ws: Workspace) -> VerifyResult:
    """The verification as fleet did it before streaming: ORM rows, every event re-hashed
    from its parsed details."""
    with read_session(ws.open_registry()) as session:
        expected, prev, count = 1, audit.GENESIS_HASH, 0
        for event in audit.iter_events(session):
            count += 1
            if event.seq != expected:
                reason = f"event {expected} is missing (next event is {event.seq})"
                return VerifyResult(False, count, prev, event.seq, reason)
            if event.prev_hash != prev:
                reason = "prev_hash does not match the previous event's hash (reordered or removed)"
                return VerifyResult(False, count, prev, event.seq, reason)
            if audit.event_hash(event.model_dump()) != event.hash:
                reason = "content does not match its hash (edited)"
                return VerifyResult(False, count, prev, event.seq, reason)
            prev, expected = event.hash, expected + 1
        return verification._check_end(session, (), 1, count, prev)


def _sql(ws: Workspace, *statements: str, **params: Any) -> None:
    with ws.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)


SWAP = (
    "UPDATE audit_event SET seq = CASE seq WHEN 12 THEN 1012 WHEN 13 THEN 1013 END "
    "WHERE seq IN (12, 13)",
    "UPDATE audit_event SET seq = 13 WHERE seq = 1012",
    "UPDATE audit_event SET seq = 12 WHERE seq = 1013",
)


@pytest.mark.parametrize(
    ("statements", "bad_seq"),
    [
        ((), None),
        (("UPDATE audit_event SET actor = 'mallory' WHERE seq = 9",), 9),
        (("UPDATE audit_event SET target = 'dev-\u00e9' WHERE seq = 20",), 20),
        (("UPDATE audit_event SET ts = '2001-01-01T00:00:00.000000Z' WHERE seq = 2",), 2),
        (("UPDATE audit_event SET details = '[]' WHERE seq = 7",), 7),
        (("UPDATE audit_event SET details = 'not json' WHERE seq = 7",), 7),
        (("UPDATE audit_event SET hash = upper(hash) WHERE seq = 30",), 30),
        (("DELETE FROM audit_event WHERE seq = 4",), 5),
        (SWAP, 12),
        (("DELETE FROM audit_event WHERE seq = 31",), 31),
        (("DELETE FROM audit_event WHERE seq = 1",), 2),
    ],
)
def test_verify_judges_as_before(
    chain_ws: Workspace, statements: tuple[str, ...], bad_seq: int | None
) -> None:
    _sql(chain_ws, *statements)
    result = audit.verify_audit(chain_ws)
    assert result.bad_seq == bad_seq
    if "not json" not in "".join(statements):  # the reference crashed on those
        assert result == _reference_verify(chain_ws)


def test_equal_details_in_another_formatting_still_verify(chain_ws: Workspace) -> None:
    """Details stored as the same JSON value, formatted otherwise, verified before: still do."""
    with chain_ws.engine.connect() as conn:
        stored = conn.execute(text("SELECT details FROM audit_event WHERE seq = 15")).scalar_one()
    value = json.loads(stored)
    reformatted = json.dumps(dict(reversed(list(value.items()))), indent=1, ensure_ascii=True)
    assert reformatted != stored and json.loads(reformatted) == value
    _sql(chain_ws, "UPDATE audit_event SET details = :d WHERE seq = 15", d=reformatted)
    assert audit.verify_audit(chain_ws).ok
    assert _reference_verify(chain_ws).ok
    value["n"] = 99
    _sql(chain_ws, "UPDATE audit_event SET details = :d WHERE seq = 15", d=json.dumps(value))
    assert audit.verify_audit(chain_ws).bad_seq == 15


def test_from_checks_the_range_and_the_link_into_it(chain_ws: Workspace, cli: Cli) -> None:
    result = audit.verify_audit(chain_ws, start=20)
    assert (result.ok, result.events) == (True, 12)
    assert audit.verify_audit(chain_ws, start=31).events == 1
    assert audit.verify_audit(chain_ws, start=1) == audit.verify_audit(chain_ws)
    ok = cli("audit", "verify", "--from", "20")
    assert ok.exit_code == 0, ok.stderr
    assert "12 events" in ok.stderr
    # an edit before the range is outside it...
    _sql(chain_ws, "UPDATE audit_event SET actor = 'mallory' WHERE seq = 10")
    assert audit.verify_audit(chain_ws, start=20).ok
    # ...but the event the range links to is checked, and so is the link itself
    _sql(chain_ws, "UPDATE audit_event SET hash = :h WHERE seq = 19", h="f" * 64)
    broken = audit.verify_audit(chain_ws, start=20)
    assert (broken.ok, broken.bad_seq) == (False, 19)
    assert audit.verify_audit(chain_ws, start=21).ok
    _sql(chain_ws, "UPDATE audit_event SET prev_hash = :h WHERE seq = 25", h="e" * 64)
    assert audit.verify_audit(chain_ws, start=25).bad_seq == 25
    _sql(chain_ws, "DELETE FROM audit_event WHERE seq = 27")
    assert audit.verify_audit(chain_ws, start=28).bad_seq == 27
    failed = cli("audit", "verify", "--from", "20")
    assert failed.exit_code == 7
    assert "broken at event 19" in failed.stderr


@pytest.mark.parametrize("start", ["0", "-3", "32", "1000"])
def test_from_outside_the_chain_is_refused(chain_ws: Workspace, cli: Cli, start: str) -> None:
    result = cli("audit", "verify", "--from", start)
    assert result.exit_code == 2
    assert "--from" in result.stderr
    assert result.stderr.count("\n") == 1


def test_anchors_apply_from_the_range_on(chain_ws: Workspace) -> None:
    wrong = [Anchor(25, "a" * 64, "old.jsonl"), Anchor(5, "b" * 64, "older.jsonl")]
    assert audit.verify_audit(chain_ws, wrong, start=27).ok
    rewritten = audit.verify_audit(chain_ws, wrong, start=10)
    assert (rewritten.bad_seq, "old.jsonl" in (rewritten.reason or "")) == (25, True)
    # the event the range links to is checked against its anchors too
    assert audit.verify_audit(chain_ws, wrong, start=26).bad_seq == 25
    cut = audit.verify_audit(chain_ws, [Anchor(40, "c" * 64, "cp")], start=30)
    assert cut.bad_seq == 32 and "removed from the end" in (cut.reason or "")


def test_progress_is_reported(chain_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verification, "PROGRESS_EVERY", 4)
    calls: list[tuple[int, int]] = []
    assert audit.verify_audit(chain_ws, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (31, 31)
    assert len(calls) >= 31 // 4
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_verify_json(chain_ws: Workspace, cli: Cli) -> None:
    ok = cli("audit", "verify", "--json")
    assert ok.exit_code == 0, ok.stderr
    outcome = json.loads(ok.stdout)
    assert outcome == {
        "ok": True,
        "events": 31,
        "head": outcome["head"],
        "bad_seq": None,
        "reason": None,
    }
    _sql(chain_ws, "UPDATE audit_event SET actor = 'mallory' WHERE seq = 3")
    broken = cli("audit", "verify", "--json")
    assert broken.exit_code == 7
    assert json.loads(broken.stdout)["bad_seq"] == 3


# --- audit log ---------------------------------------------------------------------------


def _all_events(ws: Workspace) -> list[dict[str, Any]]:
    return list(audit.iter_audit_events(ws))


def test_log_pages_never_skip_or_repeat_while_events_are_added(
    chain_ws: Workspace, cli: Cli
) -> None:
    seen: list[int] = []
    after: str | None = None
    added = 0
    while True:
        args = ["audit", "log", "--json", "--limit", "7"] + (["--after", after] if after else [])
        page = json.loads(cli(*args).stdout)
        seen += [event["seq"] for event in page["items"]]
        after = page["next_after"]
        if added < 3:  # appended between pages
            _append(chain_ws, 4, first=100 + added * 4)
            added += 1
        if after is None:
            break
    assert seen == [event["seq"] for event in _all_events(chain_ws)]
    assert seen == list(range(1, 32 + 12))


@pytest.mark.parametrize(
    "filters",
    [
        {"target": "dev-3"},
        {"action": "cert.renew"},
        {"action": ["cert.renew", "device.update"]},
        {"target": "dev-2", "action": "device.add"},
        {"since": 1},
        {"until": 2},
        {"since": 1, "until": 3, "target": "dev-5"},
        {"after": 12},
        {"target": "nothing"},
    ],
)
def test_log_filters_equal_a_full_scan(
    chain_ws: Workspace, cli: Cli, fleet_clock: FrozenClock, filters: dict[str, Any]
) -> None:
    events = _all_events(chain_ws)
    first_day = fleet_clock.now - timedelta(days=3)
    query = dict(filters)
    for edge in ("since", "until"):
        if edge in query:
            query[edge] = first_day + timedelta(days=query[edge], hours=1)
    expected = [e for e in events if _matches(e, query)]
    assert list(audit.iter_audit_events(chain_ws, **query)) == expected
    assert audit.count_audit_events(chain_ws, **query) == len(expected)
    assert list(audit.iter_audit_events(chain_ws, **query, limit=2)) == expected[:2]
    args = ["audit", "log", "--jsonl"]
    for name, value in query.items():
        for one in value if isinstance(value, list) else [value]:
            args += [f"--{name}", one.isoformat() if hasattr(one, "isoformat") else str(one)]
    lines = cli(*args).stdout.splitlines()
    assert [json.loads(line) for line in lines] == expected
    assert cli(*args[:2], *args[3:], "--count").stdout == f"{len(expected)}\n"


def _matches(event: dict[str, Any], query: dict[str, Any]) -> bool:
    actions = query.get("action")
    if isinstance(actions, str):
        actions = [actions]
    return (
        ("target" not in query or event["target"] == query["target"])
        and (actions is None or event["action"] in actions)
        and ("since" not in query or event["ts"] >= audit.format_ts(query["since"]))
        and ("until" not in query or event["ts"] < audit.format_ts(query["until"]))
        and ("after" not in query or event["seq"] > query["after"])
    )


def test_log_output_forms(chain_ws: Workspace, cli: Cli) -> None:
    events = _all_events(chain_ws)
    whole = cli("audit", "log", "--json")
    assert json.loads(whole.stdout) == events
    page = json.loads(cli("audit", "log", "--json", "--limit", "5", "--after", "3").stdout)
    assert page == {"items": events[3:8], "next_after": "8"}
    last = json.loads(cli("audit", "log", "--json", "--limit", "5", "--after", "28").stdout)
    assert last == {"items": events[28:], "next_after": None}
    table = cli("audit", "log", "--limit", "10")
    assert table.exit_code == 0
    assert "21 more" in table.stderr and "--after 10" in table.stderr
    assert json.loads(cli("audit", "log", "--count", "--json").stdout) == {"count": 31}
    bad = cli("audit", "log", "--after", "x")
    assert bad.exit_code == 2 and "--after" in bad.stderr
    both = cli("audit", "log", "--json", "--jsonl")
    assert both.exit_code == 2


def test_bench_runs_at_tiny_n() -> None:
    """bench/audit_verify.py at a tiny N, as a correctness check (no timing is asserted)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "audit_verify.py"), "--events", "1500", "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok=True" in result.stdout and "x of it" in result.stdout
