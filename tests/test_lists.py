"""Lists at fleet scale: keyset pages, index-answered filters, the label index, streamed JSON
(``fleet device list``, ``fleet cert list``, ``fleet cloud status``; see fleet/listing.py and
fleet/cli/_listing.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from helpers import PASSPHRASE, Cli, FrozenClock
from sqlalchemy import select, text

from fleet import devices, listing
from fleet.cli._common import json_line
from fleet.cli._listing import TABLE_LIMIT
from fleet.provision import provision
from fleet.registry import migrations
from fleet.registry.db import read_session
from fleet.registry.models import DeviceLabel
from fleet.statuses import CertStatus
from fleet.workspace import Workspace

MODELS = ("p200", "p300", "x1")
SITES = ("hamburg", "bremen", "münchen")


def provision_rows(ws: Workspace, tmp_path: Path, rows: list[dict[str, Any]], name: str) -> None:
    """Provision ``rows`` (id, model, labels) through fleet's bulk path."""
    source = tmp_path / f"{name}.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    summary = provision(ws, source, out_dir=tmp_path / "ids", workers=1, passphrase=PASSPHRASE)
    assert summary.failed == 0


def fleet_of(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` devices with random models and labels (some without any)."""
    chance = random.Random(seed)
    rows = []
    for i in range(count):
        labels = {"site": chance.choice(SITES), "rack": f"r{chance.randrange(4)}"}
        if i % 9 == 0:
            labels = {}
        rows.append({"id": f"dev-{i:04d}", "model": chance.choice(MODELS), "labels": labels})
    return rows


@pytest.fixture
def varied_ws(ready_ws: Workspace, tmp_path: Path, fleet_clock: FrozenClock) -> Workspace:
    """60 devices from provisioning plus hand-made ones: renewed, revoked, decommissioned,
    expired, with non-ASCII labels."""
    provision_rows(ready_ws, tmp_path, fleet_of(60), "batch")
    out = tmp_path / "ids"
    devices.add_device(
        ready_ws, "zz-renewed", labels={"site": "köln"}, out_dir=out, passphrase=PASSPHRASE
    )
    fleet_clock.advance(days=1)
    from fleet import certs

    certs.renew_certificate(
        ready_ws, "zz-renewed", out_dir=out, revoke_old=True, passphrase=PASSPHRASE
    )
    devices.add_device(ready_ws, "zz-retired", model="p200", out_dir=out, passphrase=PASSPHRASE)
    devices.decommission_device(ready_ws, "zz-retired", reason="flood")
    devices.update_device(ready_ws, "dev-0001", set_labels={"site": "kiel"})
    devices.update_device(ready_ws, "dev-0002", remove_labels=["rack"])
    fleet_clock.advance(days=400)  # every certificate has expired by now...
    devices.add_device(ready_ws, "zz-fresh", labels={"site": "kiel"}, out_dir=out,
                       passphrase=PASSPHRASE)  # fmt: skip
    return ready_ws


def label_rows(ws: Workspace) -> set[tuple[str, str, str]]:
    with read_session(ws.open_registry()) as session:
        rows = session.exec(select(DeviceLabel)).all()  # type: ignore[call-overload]
        return {(row[0].device_id, row[0].key, row[0].value) for row in rows}


def json_labels(ws: Workspace) -> set[tuple[str, str, str]]:
    return {
        (device.id, key, value)
        for device in listing.iter_devices(ws)
        for key, value in device.labels.items()
    }


def test_label_index_follows_every_write_path(varied_ws: Workspace) -> None:
    """Provisioning, ``device add`` and ``device update`` (set and remove) all keep
    ``device_label`` equal to the devices' labels, in their own transactions."""
    assert label_rows(varied_ws) == json_labels(varied_ws)
    assert ("dev-0001", "site", "kiel") in label_rows(varied_ws)
    assert not any(d == "dev-0002" and k == "rack" for d, k, _ in label_rows(varied_ws))


def test_device_dicts_equal_the_views(varied_ws: Workspace) -> None:
    """The fast JSON path (times and statuses from SQL) says what the views say: expired,
    revoked, renewed (newest first), decommissioned, non-ASCII labels."""
    views = [device.to_dict() for device in listing.iter_devices(varied_ws)]
    fast = list(listing.iter_device_dicts(varied_ws))
    assert fast == views
    by_id = {device["id"]: device for device in fast}
    assert [c["status"] for c in by_id["zz-renewed"]["certificates"]] == ["expired", "revoked"]
    assert by_id["zz-fresh"]["certificates"][0]["status"] == "active"
    assert by_id["zz-retired"]["status"] == "decommissioned"


TRICKY = [
    'quote " backslash \\ slash / tab \t newline \n cr \r',
    "controls \x01\x02\x08\x0b\x0c\x1b\x1f del \x7f",
    "unicode é ß 漢字 emoji \U0001f600 separators \u2028 \u2029 bom \ufeff nbsp \xa0",
    "</script> & <b> '",
    "",
]


def test_device_json_texts_equal_the_dicts_on_tricky_data(varied_ws: Workspace) -> None:
    """The texts SQLite writes (``device list --json`` on SQLite) are byte for byte what
    orjson writes for the dicts: quotes, backslashes, control characters, non-ASCII, line
    separators; labels stored escaped (``\\u00e9``, ``\\/``) or spaced as the JSON type
    stores them; NULLs; devices with several or no certificates."""
    ids = [d["id"] for d in listing.iter_device_dicts(varied_ws)]
    stored_labels = [
        '{"site": "k\\u00f6ln", "path": "a\\/b", "q": "say \\"hi\\""}',
        '{"emoji":"\U0001f600","sep":"\u2028","plain":"x"}',
        "{}",
        '{"b": "2", "a": "1"}',
    ]
    engine = varied_ws.open_registry()
    # PostgreSQL text cannot hold NUL; SQLite's can
    tricky = TRICKY + (["nul \x00 inside"] if engine.dialect.name == "sqlite" else [])
    with engine.begin() as connection:
        for index, (device_id, value) in enumerate(zip(ids, tricky, strict=False)):
            connection.execute(
                text(
                    "UPDATE device SET model = :v, serial = :v, decommission_reason = :v, "
                    "labels = :labels WHERE id = :id"
                ),
                {"v": value, "labels": stored_labels[index % len(stored_labels)], "id": device_id},
            )
        connection.execute(
            text("UPDATE device SET model = NULL, serial = NULL WHERE id = :id"), {"id": ids[-1]}
        )
    texts = list(listing.iter_device_json(varied_ws))
    expected = [json_line(d) for d in listing.iter_device_dicts(varied_ws)]
    assert texts == expected
    assert [d.to_dict() for d in listing.iter_devices(varied_ws)] == [json.loads(t) for t in texts]
    by_id = {json.loads(t)["id"]: t for t in texts}
    assert '"labels":{"site":"köln","path":"a/b","q":"say \\"hi\\""}' in by_id[ids[0]]
    assert "\\u0001" in by_id[ids[1]] and "\x7f" in by_id[ids[1]]  # escaped / kept as is
    # pages from a cursor, with a limit, and filters answer the same texts
    assert list(listing.iter_device_json(varied_ws, after=ids[2], limit=3)) == expected[3:6]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"model": "p200"},
        {"status": "decommissioned"},
        {"labels": {"site": "hamburg"}},
        {"labels": {"site": "bremen", "rack": "r1"}},
        {"labels": {"site": "münchen"}, "model": "x1"},
        {"labels": {"site": "nowhere"}},
        {"labels": {"site": "kiel"}, "status": "active", "model": None},
    ],
)
def test_filters_equal_a_full_scan(varied_ws: Workspace, filters: dict[str, Any]) -> None:
    everything = listing.list_devices(varied_ws)
    wanted = [
        d.id
        for d in everything
        if (filters.get("model") is None or d.model == filters["model"])
        and (filters.get("status") is None or d.status == filters["status"])
        and all(d.labels.get(k) == v for k, v in filters.get("labels", {}).items())
    ]
    assert [d.id for d in listing.iter_devices(varied_ws, **filters)] == wanted
    assert [d["id"] for d in listing.iter_device_dicts(varied_ws, **filters)] == wanted
    texts = list(listing.iter_device_json(varied_ws, **filters))
    assert [json.loads(t)["id"] for t in texts] == wanted
    assert texts == [json_line(d) for d in listing.iter_device_dicts(varied_ws, **filters)]
    assert listing.count_devices(varied_ws, **filters) == len(wanted)
    # paged by 7 from the cursor, the pages add up to the same list
    paged: list[str] = []
    after = None
    while True:
        page = [d.id for d in listing.iter_devices(varied_ws, **filters, after=after, limit=7)]
        paged += page
        if len(page) < 7:
            break
        after = page[-1]
    assert paged == wanted


def test_certificate_filters_equal_a_full_scan(varied_ws: Workspace) -> None:
    from datetime import timedelta

    everything = listing.list_certificates(varied_ws)
    assert [c.serial for c in everything] == sorted(c.serial for c in everything)
    for status in CertStatus:
        wanted = [c.serial for c in everything if c.status == status]
        assert [c.serial for c in listing.iter_certificates(varied_ws, status=status)] == wanted
        assert listing.count_certificates(varied_ws, status=status) == len(wanted)
    soon = listing.list_certificates(varied_ws, expiring_within=timedelta(days=400))
    assert [c.device_id for c in soon] == ["zz-fresh"]
    assert listing.list_certificates(varied_ws, expiring_within=timedelta(days=30)) == []


def test_pages_never_skip_or_repeat_while_devices_arrive(
    ready_ws: Workspace, tmp_path: Path
) -> None:
    """Between pages, devices are added before, inside and after the cursor: every device
    there at the start is listed exactly once, and the list stays in ID order."""
    provision_rows(ready_ws, tmp_path, fleet_of(40), "start")
    at_start = {d.id for d in listing.iter_devices(ready_ws)}
    seen: list[str] = []
    after = None
    round_ = 0
    while True:
        page = [d.id for d in listing.iter_devices(ready_ws, after=after, limit=6)]
        seen += page
        if len(page) < 6:
            break
        after = page[-1]
        round_ += 1
        # one before the cursor, one just after it, one at the end
        arrivals = [f"dev-0000x{round_}", f"{after}x{round_}", f"dev-0038x{round_}"]
        provision_rows(
            ready_ws, tmp_path, [{"id": i, "model": "p200"} for i in arrivals], f"r{round_}"
        )
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    assert at_start <= set(seen)


def test_cli_table_pages_and_says_what_follows(sqlite_cli: Cli, tmp_path: Path) -> None:
    ws = sqlite_cli.ws
    from fleet.pki.authority import init_workspace

    init_workspace(ws, name="Lists", passphrase=PASSPHRASE)
    provision_rows(ws, tmp_path, fleet_of(TABLE_LIMIT + 5), "many")

    first = sqlite_cli("device", "list")
    assert first.exit_code == 0, first.stderr
    assert "dev-0099" in first.stdout and "dev-0100" not in first.stdout
    assert "100 devices shown, 5 more: `--after dev-0099`" in first.stderr
    rest = sqlite_cli("device", "list", "--after", "dev-0099")
    assert "dev-0100" in rest.stdout and "dev-0099" not in rest.stdout
    assert rest.stderr.strip() == "5 devices"
    every = sqlite_cli("device", "list", "--all")
    assert "dev-0104" in every.stdout and every.stderr.strip() == f"{TABLE_LIMIT + 5} devices"

    counted = sqlite_cli("device", "list", "--count", "--label", "site=hamburg")
    hamburg = sum(1 for r in fleet_of(TABLE_LIMIT + 5) if r["labels"].get("site") == "hamburg")
    assert counted.stdout == f"{hamburg}\n"
    as_json = sqlite_cli("device", "list", "--count", "--json", "--model", "p200")
    p200 = sum(1 for r in fleet_of(TABLE_LIMIT + 5) if r["model"] == "p200")
    assert json.loads(as_json.stdout) == {"count": p200}


def test_cli_json_streams_and_pages(sqlite_cli: Cli, tmp_path: Path) -> None:
    ws = sqlite_cli.ws
    from fleet.pki.authority import init_workspace

    init_workspace(ws, name="Lists", passphrase=PASSPHRASE)
    provision_rows(ws, tmp_path, fleet_of(12), "few")

    whole = sqlite_cli("device", "list", "--json")
    assert [d["id"] for d in json.loads(whole.stdout)] == [f"dev-{i:04d}" for i in range(12)]
    assert whole.stderr == ""

    page = sqlite_cli("device", "list", "--json", "--limit", "5", "--after", "dev-0002")
    body = json.loads(page.stdout)
    assert [d["id"] for d in body["items"]] == [f"dev-{i:04d}" for i in range(3, 8)]
    assert body["next_after"] == "dev-0007"
    last = json.loads(sqlite_cli("device", "list", "--json", "--limit", "5", "--after",
                                 "dev-0007").stdout)  # fmt: skip
    assert [d["id"] for d in last["items"]] == [f"dev-{i:04d}" for i in range(8, 12)]
    assert last["next_after"] is None
    empty = json.loads(sqlite_cli("device", "list", "--json", "--limit", "5", "--after",
                                  "dev-9999").stdout)  # fmt: skip
    assert empty == {"items": [], "next_after": None}

    lines = sqlite_cli("device", "list", "--jsonl", "--limit", "4")
    assert [json.loads(line)["id"] for line in lines.stdout.splitlines()] == [
        f"dev-{i:04d}" for i in range(4)
    ]
    assert lines.stderr.strip() == "next: --after dev-0003"
    every = sqlite_cli("device", "list", "--jsonl")
    assert len(every.stdout.splitlines()) == 12 and every.stderr == ""

    certs = sqlite_cli("cert", "list", "--json", "--limit", "3")
    cert_page = json.loads(certs.stdout)
    serials = [c["serial"] for c in cert_page["items"]]
    assert serials == sorted(serials) and cert_page["next_after"] == serials[-1]
    rest = json.loads(sqlite_cli("cert", "list", "--json", "--after", serials[-1]).stdout)
    assert len(rest) == 9 and all(c["serial"] > serials[-1] for c in rest)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["device", "list", "--all", "--limit", "5"], "--all and --limit exclude each other"),
        (["device", "list", "--json", "--jsonl"], "--json and --jsonl exclude each other"),
        (["device", "list", "--limit", "0"], "greater than or equal to 1"),
        (["device", "list", "--status", "asleep"], "device status must be one of"),
        (["device", "list", "--label", "site"], "KEY=VALUE"),
        (["cert", "list", "--expiring-within", "soon"], "--expiring-within 'soon'"),
        (["cert", "list", "--expiring-within", "-3"], "--expiring-within '-3'"),
        (["cloud", "status", "--after", "no-slash"], "CLOUD/DEVICE"),
    ],
)
def test_cli_bad_list_options(ready_sqlite_ws: Workspace, args: list[str], needle: str) -> None:
    result = Cli(ready_sqlite_ws)(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("span", ["30", "30d", "720h"])
def test_expiring_within_accepts_every_duration_form(
    varied_ws: Workspace, fleet_clock: FrozenClock, span: str
) -> None:
    """``30``, ``30d`` and ``720h`` are the same span (a bare number is days)."""
    fleet_clock.advance(days=340)  # zz-fresh now expires within 25 days
    result = Cli(varied_ws)("cert", "list", "--expiring-within", span, "--json")
    assert result.exit_code == 0, result.stderr
    assert [c["device_id"] for c in json.loads(result.stdout)] == ["zz-fresh"]


def test_label_filter_reads_the_index(ready_sqlite_ws: Workspace) -> None:
    """A label filter is a range of device_label's key, not a scan of every device."""
    engine = ready_sqlite_ws.open_registry()
    query, key = listing._device_query(
        [listing._device.c.id], listing.DeviceFilter(labels={"site": "hh"}), after="a"
    )
    compiled = query.order_by(key).limit(50).compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        plan = " | ".join(row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "SEARCH device_label USING PRIMARY KEY (key=? AND value=? AND device_id>?)" in plan
    assert "SCAN device" not in plan and "TEMP B-TREE" not in plan, plan


def test_migration_carries_existing_labels_over(ws: Workspace) -> None:
    """A registry at 0004 with labelled devices gets its labels indexed by 0005."""
    ws.home.mkdir(parents=True)
    engine = ws.engine
    migrations.upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO device (id, model, serial, labels, status, created_at, updated_at) "
                "VALUES ('a-1', 'p200', NULL, :l, 'active', :t, :t)"
            ),
            {"l": json.dumps({"site": "hamburg", "rack": "r1"}), "t": "2026-01-01 00:00:00"},
        )
    migrations.upgrade(engine)
    assert label_rows(ws) == {("a-1", "site", "hamburg"), ("a-1", "rack", "r1")}


def test_cloud_status_pages_across_clouds(
    ready_ws: Workspace, cli: Cli, server: Any, tmp_path: Path
) -> None:
    """Registrations list by (cloud, device); the cursor is the device within one cloud and
    CLOUD/DEVICE across clouds; pages add up to the whole list."""
    for name in ("a-cloud", "b-cloud"):
        added = cli("cloud", "add", name, "--type", "http", "--url", server.url)
        assert added.exit_code == 0, added.stderr
    rows = [{"id": f"dev-{i:04d}", "model": "p200"} for i in range(5)]
    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = provision(
        ready_ws,
        source,
        out_dir=tmp_path / "ids",
        workers=1,
        passphrase=PASSPHRASE,
        clouds=("a-cloud", "b-cloud"),
    )
    assert summary.failed == 0
    whole = [
        (r["cloud"], r["device_id"]) for r in json.loads(cli("cloud", "status", "--json").stdout)
    ]
    assert whole == [(c, f"dev-{i:04d}") for c in ("a-cloud", "b-cloud") for i in range(5)]
    page = json.loads(cli("cloud", "status", "--json", "--limit", "4").stdout)
    assert page["next_after"] == "a-cloud/dev-0003"
    rest = json.loads(cli("cloud", "status", "--json", "--after", "a-cloud/dev-0003").stdout)
    assert [(r["cloud"], r["device_id"]) for r in rest] == whole[4:]
    one = json.loads(cli("cloud", "status", "b-cloud", "--json", "--limit", "2", "--after",
                         "dev-0001").stdout)  # fmt: skip
    assert [r["device_id"] for r in one["items"]] == ["dev-0002", "dev-0003"]
    assert one["next_after"] == "dev-0003"
    assert cli("cloud", "status", "b-cloud", "--count").stdout == "5\n"
    table = cli("cloud", "status", "--limit", "3")
    assert "7 more: `--after a-cloud/dev-0002`" in table.stderr


def test_the_more_line_stops_counting_at_its_cap(
    sqlite_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MORE_CAP the table says "more than N" instead of counting a million rows."""
    from fleet.cli import _listing
    from fleet.pki.authority import init_workspace

    init_workspace(sqlite_cli.ws, name="Lists", passphrase=PASSPHRASE)
    provision_rows(sqlite_cli.ws, tmp_path, fleet_of(12), "few")
    monkeypatch.setattr(_listing, "MORE_CAP", 5)
    monkeypatch.setattr("fleet.cli.device_cmds.MORE_CAP", 5)
    assert listing.count_devices(sqlite_cli.ws, after="dev-0001", at_most=5) == 6
    capped = sqlite_cli("device", "list", "--limit", "2")
    assert "2 devices shown, more than 5 more: `--after dev-0001`" in capped.stderr
    exact = sqlite_cli("device", "list", "--limit", "8")
    assert "8 devices shown, 4 more" in exact.stderr
