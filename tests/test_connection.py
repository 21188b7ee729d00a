"""Connection status: events recorded once, state derived by the ordering rules, stray events
kept aside, ingest of the platforms' shapes, pruning and history (fleet/status/)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import PASSPHRASE, FrozenClock

from fleet import devices
from fleet.status.events import Seen, record
from fleet.status.history import connection_of, iter_history, prune, stray_summary
from fleet.status.ingest import ingest
from fleet.statuses import ConnectionState, EventSource
from fleet.workspace import Workspace

T0 = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)
ON, OFF = ConnectionState.ONLINE, ConnectionState.OFFLINE


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def fleet_ws(ready_ws: Workspace, tmp_path: Path, fleet_clock: FrozenClock) -> Workspace:
    for device_id in ("gw-1", "gw-2", "gw-old"):
        devices.add_device(ready_ws, device_id, out_dir=tmp_path / "ids", passphrase=PASSPHRASE)
    devices.decommission_device(ready_ws, "gw-old")
    return ready_ws


def seen(device: str, state: ConnectionState, minute: float, **extra: str) -> Seen:
    return Seen(device, state, EventSource.INGEST, at(minute), **extra)  # type: ignore[arg-type]


def test_state_follows_the_newest_event_and_nothing_older(fleet_ws: Workspace) -> None:
    report = record(fleet_ws, [seen("gw-1", ON, 0), seen("gw-1", OFF, 10), seen("gw-2", ON, 5)])
    assert (report.recorded, report.duplicates, report.changed) == (3, 0, 2)
    state = connection_of(fleet_ws, "gw-1")
    assert (state.state, state.since, state.last_seen) == ("offline", at(10), at(10))
    # an older event arriving late does not override; a duplicate is recorded once
    late = record(fleet_ws, [seen("gw-1", ON, 7), seen("gw-1", OFF, 10)])
    assert (late.recorded, late.duplicates, late.changed) == (1, 1, 0)
    assert connection_of(fleet_ws, "gw-1").state == "offline"
    # a tie changes nothing; a newer one does, and `since` moves with the transition only
    record(fleet_ws, [seen("gw-1", ON, 10)])
    assert connection_of(fleet_ws, "gw-1").state == "offline"
    record(fleet_ws, [seen("gw-1", ON, 20), seen("gw-1", ON, 25)])
    state = connection_of(fleet_ws, "gw-1")
    assert (state.state, state.since, state.last_seen) == ("online", at(20), at(25))
    assert [e.source_time for e in iter_history(fleet_ws, "gw-1")] == [
        at(0), at(7), at(10), at(10), at(20), at(25),
    ]  # fmt: skip


def test_markers_order_events_of_one_source(fleet_ws: Workspace) -> None:
    """AWS versionNumber decides within AWS even when the clocks disagree."""

    def aws(state: ConnectionState, minute: float, version: int) -> Seen:
        return Seen("gw-1", state, EventSource.AWS, at(minute), marker=f"{version:020d}")

    record(fleet_ws, [aws(ON, 10, 5)])
    record(fleet_ws, [aws(OFF, 12, 4)])  # later clock, older version: ignored
    assert connection_of(fleet_ws, "gw-1").state == "online"
    record(fleet_ws, [aws(OFF, 11, 6)])
    assert connection_of(fleet_ws, "gw-1").state == "offline"
    assert connection_of(fleet_ws, "gw-1").last_seen == at(12)


def test_unknown_and_decommissioned_devices_are_kept_aside(fleet_ws: Workspace) -> None:
    report = record(fleet_ws, [seen("ghost", ON, 1), seen("gw-old", ON, 2), seen("gw-2", ON, 3)])
    assert (report.recorded, report.stray) == (1, 2)
    assert sorted(report.stray_ids) == ["ghost", "gw-old"]
    assert stray_summary(fleet_ws) == {"unknown": 1, "decommissioned": 1}
    assert connection_of(fleet_ws, "gw-old").state is None
    again = record(fleet_ws, [seen("ghost", ON, 1)])
    assert (again.stray, again.duplicates) == (0, 1)


def test_ingest_reads_every_shape_and_reports_bad_lines(
    fleet_ws: Workspace, tmp_path: Path
) -> None:
    lines = [
        {"clientId": "gw-1", "timestamp": int(at(1).timestamp() * 1000), "eventType": "connected",
         "sessionIdentifier": "s-1", "principalIdentifier": "abc", "versionNumber": 1},
        {"id": "e1", "eventType": "Microsoft.Devices.DeviceConnected",
         "eventTime": "2027-03-01T08:02:00.1234567Z", "subject": "devices/gw-2",
         "data": {"deviceId": "gw-2", "hubName": "h",
                  "deviceConnectionStateEventInfo": {"sequenceNumber": "0" * 63 + "1"}}},
        {"specversion": "1.0", "type": "Microsoft.Devices.DeviceDisconnected",
         "time": "2027-03-01T08:03:00Z", "source": "/hub",
         "data": {"deviceId": "gw-2",
                  "deviceConnectionStateEventInfo": {"sequenceNumber": "0" * 63 + "2"}}},
        {"device_id": "gw-1", "state": "offline", "time": "2027-03-01T08:04:00Z",
         "reason": "power", "firmware": "1.2.0"},
    ]  # fmt: skip
    text = "\n".join(json.dumps(line) for line in lines)
    text += '\nnot json\n{"device_id": "gw-1", "state": "asleep", "time": "2027-03-01"}\n[]\n\n'
    report_path = tmp_path / "bad.csv"
    report = ingest(fleet_ws, io.BytesIO(text.encode()), report_path=report_path)
    assert report.recorded.recorded == 4 and report.bad_count == 3
    assert [n for n, _ in report.bad] == [5, 6, 7]
    assert report_path.read_text().splitlines()[0] == "line,error"
    gw1, gw2 = connection_of(fleet_ws, "gw-1"), connection_of(fleet_ws, "gw-2")
    assert (gw1.state, gw1.reason, gw1.reported_firmware) == ("offline", "power", "1.2.0")
    assert (gw2.state, gw2.since) == ("offline", at(3))
    history = [e.source for e in iter_history(fleet_ws, "gw-1")]
    assert history == ["aws", "ingest"]
    again = ingest(fleet_ws, io.BytesIO(text.encode()))
    assert again.recorded.recorded == 0 and again.recorded.duplicates == 4


def test_a_long_ingest_parses_in_a_worker_with_the_same_result(
    ready_sqlite_ws: Workspace,
    tmp_path: Path,
    fleet_clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On SQLite a stream of more than one chunk is parsed in a worker process while the
    previous chunk is recorded: bad lines keep their numbers across chunks, and the tables
    and report are those of the one-process path."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial
    from typing import Any

    from fleet.status import events
    from fleet.status import ingest as ingest_module

    batches = _random_batches(ready_sqlite_ws, tmp_path)
    lines = []
    for batch in batches:
        for event in batch:
            line = {"device_id": event.device_id, "state": event.state, "source": event.source,
                    "time": event.source_time.isoformat(), "reason": event.reason,
                    "firmware": event.firmware, "marker": event.marker}  # fmt: skip
            lines.append(json.dumps({k: v for k, v in line.items() if v is not None}))
        lines += ["not json", "", '{"device_id": "gw-1", "state": "up", "time": "2027-03-01"}']
    body = ("\n".join(lines) + "\n").encode()
    pools = []

    class Pool(ProcessPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pools.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 1500)  # about 15 lines a chunk
    parallel = ingest(ready_sqlite_ws, io.BytesIO(body))
    fast = _tables(ready_sqlite_ws)
    assert pools == [(1,)]  # one worker process parsed the chunks
    _empty(ready_sqlite_ws)
    # the same chunks, parsed here
    monkeypatch.setattr(ingest_module, "_parsed_ahead", partial(map, ingest_module._parse_job))
    serial = ingest(ready_sqlite_ws, io.BytesIO(body))
    assert fast == _tables(ready_sqlite_ws)
    assert fast["connection_state"] and fast["stray_connection_event"]
    numbers = [n for n, line in enumerate(lines, start=1) if line == "not json" or "up" in line]
    assert [n for n, _ in parallel.bad] == [n for n, _ in serial.bad] == numbers
    assert parallel.bad[1][1] == "'state' must be 'online' or 'offline'"
    assert parallel.lines == serial.lines == len(lines)
    assert parallel.to_dict() == serial.to_dict()
    assert parallel.recorded.recorded > 0 and parallel.recorded.stray > 0
    # in one chunk: the rules over each device's events in (time, marker) order, as the
    # parser sorts them, leave what the generic path leaves applying them in global order
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", len(body))
    _empty(ready_sqlite_ws)
    whole = ingest(ready_sqlite_ws, io.BytesIO(body))
    one_chunk = _tables(ready_sqlite_ws)
    _empty(ready_sqlite_ws)
    monkeypatch.setattr(events, "SQLITE_DRIVER", False)
    generic = ingest(ready_sqlite_ws, io.BytesIO(body))
    assert one_chunk == _tables(ready_sqlite_ws)
    assert whole.to_dict() == generic.to_dict()


@pytest.mark.parametrize("chunk_bytes", [1, 40, 1500])
def test_ingest_blocks_end_on_line_ends(
    fleet_ws: Workspace, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int
) -> None:
    """The reader hands out whole lines in blocks (a worker splits them): CRLF line ends,
    blank lines and a last line without a newline give the same events and line numbers
    for any block size."""
    from fleet.status import ingest as ingest_module

    lines = [
        '{"device_id": "gw-1", "state": "online", "time": "2027-03-01T08:01:00Z"}',
        "",
        "not json",
        '{"device_id": "gw-2", "state": "online", "time": "2027-03-01T08:02:00Z"}',
        '{"device_id": "gw-1",\r"state": "offline", "time": "2027-03-01T08:03:00Z"}',
        "[]",
        '{"device_id": "gw-2", "state": "offline", "time": "2027-03-01T08:04:00Z"}',
    ]
    body = "\r\n".join(lines).encode()  # no newline after the last line
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", chunk_bytes)
    blocks = list(ingest_module._chunks(io.BytesIO(body), ingest_module.IngestReport()))
    assert b"".join(block for _, block in blocks) == body
    assert all(block.endswith(b"\n") for _, block in blocks[:-1])
    assert [first for first, _ in blocks] == [
        1 + sum(block.count(b"\n") for _, block in blocks[:index]) for index in range(len(blocks))
    ]
    report = ingest(fleet_ws, io.BytesIO(body))
    assert report.lines == 7 and [n for n, _ in report.bad] == [3, 6]
    assert report.recorded.recorded == 4
    gw1, gw2 = connection_of(fleet_ws, "gw-1"), connection_of(fleet_ws, "gw-2")
    assert (gw1.state, gw1.since, gw2.state, gw2.since) == ("offline", at(3), "offline", at(4))


def test_prune_keeps_the_current_state(fleet_ws: Workspace, fleet_clock: FrozenClock) -> None:
    record(fleet_ws, [seen("gw-1", ON, 0), seen("gw-1", OFF, 60 * 24 * 50)])
    fleet_clock.now = at(60 * 24 * 100)
    pruned = prune(fleet_ws, timedelta(days=90))
    assert (pruned.events, pruned.stray) == (1, 0)
    assert [e.state for e in iter_history(fleet_ws, "gw-1")] == ["offline"]
    assert connection_of(fleet_ws, "gw-1").state == "offline"


def test_history_pages_and_windows(fleet_ws: Workspace) -> None:
    record(fleet_ws, [seen("gw-1", ON if i % 2 == 0 else OFF, i) for i in range(10)])
    events = list(iter_history(fleet_ws, "gw-1"))
    first = list(iter_history(fleet_ws, "gw-1", limit=4))
    rest = list(iter_history(fleet_ws, "gw-1", after=first[-1].id))
    assert first + rest == events
    window = list(iter_history(fleet_ws, "gw-1", since=at(3), until=at(6)))
    assert [e.source_time for e in window] == [at(3), at(4), at(5)]


def test_device_list_by_connection_state(fleet_ws: Workspace, fleet_clock: FrozenClock) -> None:
    """--online / --offline / --offline-for read connection_state; never-seen devices match
    neither; results equal a scan."""
    from fleet import listing

    fleet_clock.now = at(60 * 48)
    record(fleet_ws, [seen("gw-1", OFF, 0), seen("gw-2", ON, 60 * 47)])
    ids = lambda **f: [d.id for d in listing.iter_devices(fleet_ws, **f)]  # noqa: E731
    assert ids(connection="online") == ["gw-2"]
    assert ids(connection="offline") == ["gw-1"]
    assert ids(offline_for=timedelta(hours=24)) == ["gw-1"]
    assert ids(offline_for=timedelta(hours=49)) == []
    assert listing.count_devices(fleet_ws, connection="offline") == 1
    assert [d["id"] for d in listing.iter_device_dicts(fleet_ws, connection="online")] == ["gw-2"]
    with pytest.raises(Exception, match="excludes --online"):
        ids(connection="online", offline_for=timedelta(hours=1))


def test_cli_show_history_and_list(fleet_ws: Workspace, fleet_clock: FrozenClock) -> None:
    from helpers import Cli

    cli = Cli(fleet_ws)
    fleet_clock.now = at(60 * 48)
    record(fleet_ws, [seen("gw-1", ON, 0), seen("gw-1", OFF, 5, reason="power")])
    shown = json.loads(cli("device", "show", "gw-1", "--json").stdout)
    assert shown["connection"] == {
        "state": "offline", "since": "2027-03-01T08:05:00Z", "last_seen": "2027-03-01T08:05:00Z",
        "source": "ingest", "reason": "power", "reported_firmware": None,
    }  # fmt: skip
    assert json.loads(cli("device", "show", "gw-2", "--json").stdout)["connection"]["state"] is None
    table = cli("device", "show", "gw-2")
    assert "never seen" in table.stdout
    assert "connection" not in json.loads(cli("device", "list", "--json").stdout)[0]

    events = json.loads(cli("device", "history", "gw-1", "--json").stdout)
    assert [(e["state"], e["time"]) for e in events] == [
        ("online", "2027-03-01T08:00:00Z"), ("offline", "2027-03-01T08:05:00Z"),
    ]  # fmt: skip
    page = json.loads(cli("device", "history", "gw-1", "--json", "--limit", "1").stdout)
    assert page["next_after"] == str(events[0]["id"])
    missing = cli("device", "history", "nope")
    assert missing.exit_code == 3 and "no device 'nope'" in missing.stderr

    offline = cli("device", "list", "--offline-for", "24h", "--jsonl")
    assert [json.loads(line)["id"] for line in offline.stdout.splitlines()] == ["gw-1"]
    both = cli("device", "list", "--online", "--offline")
    assert both.exit_code == 2 and "--online excludes" in both.stderr


def test_cli_ingest_and_prune(
    fleet_ws: Workspace, tmp_path: Path, fleet_clock: FrozenClock
) -> None:
    from helpers import Cli

    cli = Cli(fleet_ws)
    good = {"device_id": "gw-1", "state": "online", "time": "2027-03-01T08:00:00Z"}
    source = tmp_path / "events.jsonl"
    source.write_text(json.dumps(good) + "\n{broken\n", encoding="utf-8")
    result = cli("status", "ingest", str(source), "--report", str(tmp_path / "bad.csv"), "--json")
    assert result.exit_code == 1  # a bad line: the good ones are recorded all the same
    body = json.loads(result.stdout)
    assert (body["recorded"], body["bad"], body["bad_lines"][0]["line"]) == (1, 1, 2)
    assert (tmp_path / "bad.csv").read_text().startswith("line,error\n2,")
    piped = cli("status", "ingest", "-", input=json.dumps(good) + "\n")
    assert piped.exit_code == 0 and "0 event(s) recorded, 1 already known" in piped.stderr
    missing = cli("status", "ingest", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2 and missing.stderr.startswith("error: cannot read")

    fleet_clock.now = at(60 * 24 * 100)
    pruned = cli("status", "prune", "--older-than", "90d", "--json")
    assert json.loads(pruned.stdout)["events"] == 1
    assert connection_of(fleet_ws, "gw-1").state == "online"
    bad = cli("status", "prune", "--older-than", "soon")
    assert bad.exit_code == 2


def _random_batches(ws: Workspace, tmp_path: Path) -> list[list[Seen]]:
    """Devices gw-1..3 (active), gw-old (decommissioned); 25 random batches of events with
    time and marker ties, duplicates within and across batches, strays (gw-old, the unknown
    ghost), firmware and two sources."""
    import random

    for device_id in ("gw-1", "gw-2", "gw-3", "gw-old"):
        devices.add_device(ws, device_id, out_dir=tmp_path / "ids", passphrase=PASSPHRASE)
    devices.decommission_device(ws, "gw-old")
    chance = random.Random(11)
    batches: list[list[Seen]] = []
    for _ in range(25):
        batch = []
        for _ in range(chance.randrange(1, 40)):
            source = chance.choice([EventSource.INGEST, EventSource.AWS])
            marker = None if chance.random() < 0.3 else f"{chance.randrange(6):020d}"
            event = Seen(
                chance.choice(["gw-1", "gw-2", "gw-3", "gw-old", "ghost"]),
                chance.choice([ON, OFF]),
                source,
                at(chance.randrange(40)).astimezone(timezone(timedelta(hours=2))),
                marker=marker,
                reason=chance.choice([None, "idle", "lost"]),
                firmware=chance.choice([None, None, "1.0", "1.1"]),
            )
            batch += [event] * chance.choice([1, 1, 2])
        batches.append(
            batch + chance.sample(batches[-1], min(3, len(batches[-1]))) if batches else batch
        )
    return batches


_TABLES = ("connection_event", "connection_state", "stray_connection_event", "device_firmware")


def _tables(ws: Workspace) -> dict[str, list[tuple[object, ...]]]:
    from sqlalchemy import text

    with ws.open_registry().connect() as connection:
        rows = {
            table: connection.execute(text(f"SELECT * FROM {table} ORDER BY 2")).all()
            for table in _TABLES
        }
    for table in ("connection_event", "stray_connection_event"):
        rows[table] = [row[1:] for row in rows[table]]  # without the autoincrement ID
    return rows


def _empty(ws: Workspace) -> None:
    from sqlalchemy import text

    with ws.open_registry().begin() as connection:
        for table in _TABLES:
            connection.execute(text(f"DELETE FROM {table}"))


def test_sqlite_fast_path_applies_the_same_rules(
    ready_sqlite_ws: Workspace,
    tmp_path: Path,
    fleet_clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite records through its driver (fleet/status/sqlite_record.py); a random stream
    leaves the same tables and reports as the SQLAlchemy path."""
    from fleet.status import events

    batches = _random_batches(ready_sqlite_ws, tmp_path)

    def run() -> tuple[list[dict[str, object]], dict[str, list[tuple[object, ...]]]]:
        _empty(ready_sqlite_ws)
        engine = ready_sqlite_ws.open_registry()
        reports = []
        for index, batch in enumerate(batches):
            report = record(engine, batch, now=at(100 + index))
            reports.append({**report.to_dict(), "stray_ids": report.stray_ids})
        return reports, _tables(ready_sqlite_ws)

    fast = run()
    monkeypatch.setattr(events, "SQLITE_DRIVER", False)
    generic = run()
    assert fast[0] == generic[0]
    assert fast[1] == generic[1]
    assert fast[1]["connection_state"] and fast[1]["stray_connection_event"]


@pytest.mark.parametrize("tx_devices", [1, 1000])
def test_sqlite_batches_share_a_transaction_with_the_same_result(
    ready_sqlite_ws: Workspace,
    tmp_path: Path,
    fleet_clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
    tx_devices: int,
) -> None:
    """On SQLite, ``record_batches`` records many batches in one transaction, keeping the
    state rows in memory and writing them when it ends (after TX_DEVICES devices or
    TX_SECONDS): the tables are those of one ``record`` per batch, and ``changed`` counts
    a device once per transaction."""
    from fleet.status import events

    batches = _random_batches(ready_sqlite_ws, tmp_path)
    stream = [event for batch in batches for event in batch]
    monkeypatch.setattr(events, "TX_DEVICES", tx_devices)
    chunked = events.record_batches(ready_sqlite_ws, stream, batch=7)
    fast = _tables(ready_sqlite_ws)

    _empty(ready_sqlite_ws)
    monkeypatch.setattr(events, "SQLITE_DRIVER", False)
    engine = ready_sqlite_ws.open_registry()
    per_batch = [record(engine, stream[start : start + 7]) for start in range(0, len(stream), 7)]
    assert fast == _tables(ready_sqlite_ws)
    assert fast["connection_state"] and fast["device_firmware"]
    wanted = {
        name: sum(getattr(report, name) for report in per_batch)
        for name in ("recorded", "duplicates", "stray")
    }
    assert {name: getattr(chunked, name) for name in wanted} == wanted
    if tx_devices == 1:  # every batch its own transaction: the same count
        assert chunked.changed == sum(report.changed for report in per_batch)
    else:  # fewer transactions: a device changing in several batches counts once per one
        assert 0 < chunked.changed < sum(report.changed for report in per_batch)


def test_a_long_sqlite_ingest_commits_every_tx_seconds(
    ready_sqlite_ws: Workspace,
    tmp_path: Path,
    fleet_clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Other writers (``fleet watch``) wait for an ingest's transaction: it ends once it has
    run TX_SECONDS, and what it recorded is committed then."""
    import sqlite3
    from contextlib import closing

    from fleet.status import events

    batches = _random_batches(ready_sqlite_ws, tmp_path)
    seen_committed = []

    def stream() -> Iterator[Seen]:
        for batch in batches:
            # another connection, reading while the ingest holds the write lock
            other = sqlite3.connect(ready_sqlite_ws.home / "registry.db")
            with closing(other):
                (count,) = other.execute("SELECT count(*) FROM connection_event").fetchone()
            seen_committed.append(count)
            yield from batch

    monkeypatch.setattr(events, "TX_SECONDS", 0.0)  # every batch its own transaction
    report = events.record_batches(ready_sqlite_ws, stream(), batch=len(batches[0]))
    assert report.recorded > 0
    assert seen_committed[-1] > 0  # another connection saw the earlier transactions' events
    seen_committed.clear()
    _empty(ready_sqlite_ws)
    monkeypatch.setattr(events, "TX_SECONDS", 3600.0)
    events.record_batches(ready_sqlite_ws, stream(), batch=len(batches[0]))
    assert set(seen_committed) == {0}  # one transaction: nothing visible until its end


@pytest.mark.parametrize(
    "time_text",
    [
        "2027-03-01T08:00:00.250000+00:00",  # cut from the text
        "2027-03-01T08:00:00+00:00",  # cut, whole seconds
        "2027-03-01T08:00:00-00:00",
        "2027-03-01T10:00:00.250000+02:00",  # formatted: another offset
        "2027-03-01T08:00:00.25+00:00",
        "2027-03-01T08:00:00Z",
        "2027-03-01 08:00:00.250000+00:00",
        "2027-03-01T08:00:00.250000",
        "2027-03-01",
    ],
)
def test_parsed_time_text_is_the_formatted_one(time_text: str) -> None:
    """Where ingest cuts the stored time text from the line instead of formatting it, it is
    the same text, so the event's key is the same either way."""
    from fleet.registry.bulk import utc_text as formatted
    from fleet.status.ingest import parse_event

    event = parse_event({"device_id": "gw-1", "state": "online", "time": time_text})
    assert event.time_text in (None, formatted(event.source_time))
    assert event.key == event._replace(time_text=None).key
    assert event.key.startswith(formatted(event.source_time))


def test_ingest_refuses_state_and_source_of_the_wrong_type(fleet_ws: Workspace) -> None:
    """A list or object where a name belongs is a bad line, not a crash (a dict lookup of an
    unhashable value raised TypeError)."""
    lines = [
        {"device_id": "gw-1", "state": ["online"], "time": "2027-03-01T08:00:00Z"},
        {"device_id": "gw-1", "state": "online", "source": {"x": 1}, "time": "2027-03-01"},
        {"device_id": "gw-1", "state": "online", "time": "2027-03-01T08:00:00Z"},
    ]
    text = "\n".join(json.dumps(line) for line in lines).encode()
    report = ingest(fleet_ws, io.BytesIO(text))
    assert (report.recorded.recorded, report.bad_count) == (1, 2)
    assert [n for n, _ in report.bad] == [1, 2]


def test_migration_0008_rekeys_recorded_events(fleet_ws: Workspace) -> None:
    """Keys start with the event's time since 0008; the events recorded before are re-keyed
    (and back on downgrade), so a source re-sending one of them is still a duplicate."""
    import hashlib

    from alembic import command
    from sqlalchemy import text

    from fleet.registry.migrations import _alembic_config, upgrade

    events = [
        seen("gw-1", ON, 0),
        seen("gw-1", OFF, 10.5, reason="power"),
        Seen("gw-2", ON, EventSource.AWS, at(3), marker="0" * 19 + "4", session="s-1"),
    ]
    record(fleet_ws, events)
    engine = fleet_ws.engine

    def keys() -> list[str]:
        with engine.connect() as conn:
            return [
                r[0] for r in conn.execute(text("SELECT key FROM connection_event ORDER BY id"))
            ]

    assert keys() == [e.key for e in events]
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0007")
    old = [
        hashlib.sha256(
            "\x1f".join(
                (e.source, e.device_id, e.state, e.source_time.isoformat(), e.marker or "",
                 e.session or "")
            ).encode()
        ).hexdigest()
        for e in events
    ]  # fmt: skip
    assert keys() == old
    upgrade(engine)
    assert keys() == [e.key for e in events]
    again = record(fleet_ws, events)
    assert (again.recorded, again.duplicates) == (0, 3)


def test_migration_0009_drops_the_unread_received_at_index(fleet_ws: Workspace) -> None:
    """No query reads events by ``received_at``; 0009 drops its index (and its downgrade
    restores it)."""
    from alembic import command
    from sqlalchemy import inspect

    from fleet.registry.migrations import _alembic_config, upgrade

    engine = fleet_ws.engine

    def indexes() -> set[str]:
        return {str(i["name"]) for i in inspect(engine).get_indexes("connection_event")}

    assert "ix_connection_event_received_at" not in indexes()
    assert "ix_connection_event_device_time" in indexes()
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0008")
    assert "ix_connection_event_received_at" in indexes()
    upgrade(engine)
    assert "ix_connection_event_received_at" not in indexes()
