"""The export cache (``export_row``, see fleet/export/cache.py): after every kind of write it
must give byte for byte what the live tables and the audit trail (``--as-of``) give. On
SQLite and PostgreSQL, with a real local HTTP registration server for the cloud columns."""

from __future__ import annotations

import csv
import io
import json
import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cloudserver import RegistryServer
from helpers import PASSPHRASE, Cli
from sqlalchemy import inspect, text

from fleet import certs, devices, export
from fleet.cloud import jobs
from fleet.cloud.clouds import add_cloud, remove_cloud
from fleet.cloud.pacing import PushPolicy
from fleet.cloud.push import push
from fleet.export import batches as export_batches
from fleet.export import cache as export_cache
from fleet.export.render import line, render
from fleet.export.snapshot import snapshot_connection
from fleet.provision import provision
from fleet.registry import migrations
from fleet.workspace import Workspace

FORMATS = ("csv", "json", "jsonl")
TRIGGERS = {
    "export_dirty_device_insert",
    "export_dirty_device_update",
    "export_dirty_certificate_insert",
    "export_dirty_certificate_update",
    "export_dirty_cloud_registration_insert",
    "export_dirty_cloud_registration_update",
    "export_dirty_cloud_registration_delete",
}
QUICK = PushPolicy(base_delay=0.01, max_delay=0.05, max_attempts=3)


def export_text(ws: Workspace, fmt: str, **kwargs: Any) -> str:
    buffer = io.StringIO(newline="")
    export.write_devices(ws, buffer, fmt=fmt, **kwargs)
    return buffer.getvalue()


def dirty(ws: Workspace) -> int:
    with ws.open_registry().connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM export_dirty")).scalar_one())


def assert_paths_agree(ws: Workspace) -> dict[str, Any]:
    """Cache, live tables and audit replay print the same bytes; return the JSON rows."""
    assert dirty(ws) == 0, "a write left export rows stale"
    moment = datetime.now(UTC) + timedelta(seconds=1)
    for fmt in FORMATS:
        cached = export_text(ws, fmt, now=moment)
        live = export_text(ws, fmt, now=moment, use_cache=False)
        replayed = export_text(ws, fmt, as_of=moment)
        assert cached == live, fmt
        assert cached == replayed, fmt
        with tempfile.TemporaryDirectory() as folder:  # a file: bytes go straight to its buffer
            target = Path(folder) / f"devices.{fmt}"
            export.export_devices(ws, fmt=fmt, out=target, sign=False, now=moment)
            assert target.read_bytes() == cached.encode(), fmt
    return {row["id"]: row for row in map(json.loads, export_text(ws, "jsonl").splitlines())}


def test_every_write_keeps_the_cache_current(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    ws, out = ready_ws, tmp_path / "out"
    assert_paths_agree(ws)  # empty registry
    add_cloud(ws, "plant", "http", {"url": server.url, "timeout": 2.0})
    tricky = {"site": 'Köln "Nord", 2', "z": "=1+2", "a": "back\\slash ✓"}
    devices.add_device(ws, "pump-1", out_dir=out, model="=cmd|calc", serial='a,b"c', labels=tricky)
    devices.add_device(ws, "pump-2", out_dir=out, model="p200", clouds=["plant"])
    devices.add_device(ws, "pump-3", out_dir=out, model="+p3")
    rows = assert_paths_agree(ws)
    assert rows["pump-1"]["labels"] == tricky and rows["pump-2"]["clouds"] == []  # queued only

    (report,) = push(ws, "plant", policy=QUICK)
    assert report.done == 1
    rows = assert_paths_agree(ws)
    assert rows["pump-2"]["clouds"] == ["plant"]

    add_cloud(ws, "backup", "http", {"url": server.url, "timeout": 2.0})
    jobs.queue_registrations(ws, "backup", all_devices=True)
    push(ws, "backup", policy=QUICK)
    rows = assert_paths_agree(ws)
    assert rows["pump-2"]["clouds"] == ["backup", "plant"]
    assert next(csv.DictReader(io.StringIO(export_text(ws, "csv"))))["clouds"] == "backup"

    devices.update_device(ws, "pump-1", serial="@sn", set_labels={"z": "-x"}, remove_labels=["a"])
    certs.renew_certificate(ws, "pump-2", out_dir=out, passphrase=PASSPHRASE)
    assert_paths_agree(ws)
    # pump-2 is registered with its old certificate; asking again re-queues it (audited)
    jobs.queue_registrations(ws, "plant", ["pump-2"])
    rows = assert_paths_agree(ws)
    assert rows["pump-2"]["clouds"] == ["backup"]
    # the server holds the old certificate: a new one conflicts (rotation is not supported
    # yet), the job fails, and the device stays off the list
    (report,) = push(ws, "plant", policy=QUICK)
    assert report.failed == 1
    assert assert_paths_agree(ws)["pump-2"]["clouds"] == ["backup"]

    serial = rows["pump-3"]["certificate"]["serial"]
    certs.revoke_certificate(ws, serial, reason="keyCompromise")  # queues a deregistration
    push(ws, "backup", policy=QUICK)
    rows = assert_paths_agree(ws)
    assert rows["pump-3"]["certificate"]["status"] == "revoked"
    assert rows["pump-3"]["clouds"] == []

    devices.decommission_device(ws, "pump-1", reason="=retired")
    remove_cloud(ws, "backup", force=True)
    rows = assert_paths_agree(ws)
    assert rows["pump-1"]["status"] == "decommissioned"
    assert [r["clouds"] for r in rows.values()] == [[], [], []]


def test_bulk_provisioning_keeps_the_cache_current(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    add_cloud(ready_ws, "plant", "http", {"url": server.url, "timeout": 2.0})
    source = tmp_path / "batch.csv"
    source.write_text(
        "id,model,serial,labels\n"
        + "".join(f'm-{i:03d},+m{i % 3},"S,{i}","site=x {i};b=q""r"\n' for i in range(40))
    )
    summary = provision(
        ready_ws, source, out_dir=tmp_path / "ids", workers=1, passphrase=PASSPHRASE,
        clouds=["plant"],
    )  # fmt: skip
    assert summary.provisioned == 40
    push(ready_ws, "plant", policy=QUICK)
    rows = assert_paths_agree(ready_ws)
    assert len(rows) == 40 and all(r["clouds"] == ["plant"] for r in rows.values())


def test_rows_written_around_fleet_are_refreshed_or_read_live(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    devices.add_device(ws, "d1", out_dir=tmp_path / "out", model="old")
    before = export_text(ws, "csv")
    with ws.open_registry().begin() as conn:  # not through write_session: the trigger notes it
        conn.execute(text("UPDATE device SET model = 'edited' WHERE id = 'd1'"))
    assert dirty(ws) == 1

    # A read-only copy cannot refresh: the export reads the live tables instead.
    readonly = Workspace(
        home=ws.home, db_url=f"sqlite:///file:{ws.home / 'registry.db'}?mode=ro&uri=true"
    )
    from_copy = export_text(readonly, "csv")
    readonly.close()
    assert "edited" in from_copy and from_copy == before.replace("old", "edited")
    assert dirty(ws) == 1

    # A writable registry is refreshed first, then read from the cache.
    assert export_text(ws, "csv") == from_copy
    assert dirty(ws) == 0
    # (the audit trail never heard of the edit, so --as-of would not show it)
    assert export_text(ws, "jsonl") == export_text(ws, "jsonl", use_cache=False)


def test_expiry_is_decided_at_export_time(ready_ws: Workspace, tmp_path: Path) -> None:
    # multi-byte text before the status: the cache patches it at a byte offset
    devices.add_device(
        ready_ws, "d1", out_dir=tmp_path / "out", model="Zähler ✓", labels={"ort": "Köln"}
    )
    devices.add_device(ready_ws, "d2", out_dir=tmp_path / "out")
    rows = assert_paths_agree(ready_ws)
    not_after = datetime.fromisoformat(rows["d1"]["certificate"]["not_after"])
    certs.revoke_certificate(ready_ws, rows["d2"]["certificate"]["serial"])
    for moment, status in ((not_after, "active"), (not_after + timedelta(seconds=1), "expired")):
        for fmt in FORMATS:
            cached = export_text(ready_ws, fmt, now=moment)
            assert cached == export_text(ready_ws, fmt, now=moment, use_cache=False), fmt
        for use_cache in (True, False):
            got = export_text(ready_ws, "jsonl", now=moment, use_cache=use_cache)
            by_id = {r["id"]: r for r in map(json.loads, got.splitlines())}
            assert by_id["d1"]["certificate"]["status"] == status, (moment, use_cache)
            assert by_id["d2"]["certificate"]["status"] == "revoked"
            only = export.parse_filters(where=[f"cert_status={status}"])
            filtered = export_text(ready_ws, "csv", now=moment, use_cache=use_cache, filters=only)
            assert [r["device_id"] for r in csv.DictReader(io.StringIO(filtered))] == ["d1"]


def test_triggers_exist_at_head(ready_ws: Workspace) -> None:
    """A migration that rebuilds a watched table (SQLite batch mode) drops its triggers;
    this fails until it re-creates them."""
    with ready_ws.open_registry().connect() as conn:
        if conn.dialect.name == "postgresql":
            query = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
        else:
            query = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        names = {row[0] for row in conn.execute(text(query))}
    assert names >= TRIGGERS


@pytest.mark.parametrize("start", ["0002", "0003"])
def test_upgrade_renders_existing_devices(
    ready_ws: Workspace, cli: Cli, tmp_path: Path, start: str
) -> None:
    """From before the cache (0002) and from its first layout (0003, text around the status)."""
    for i in range(3):
        devices.add_device(ready_ws, f"old-{i}", out_dir=tmp_path / "out", model=f"=m{i}")
    expected = {fmt: export_text(ready_ws, fmt) for fmt in FORMATS}
    from alembic import command

    with ready_ws.engine.begin() as conn:
        command.downgrade(migrations._alembic_config(conn), start)
    tables = inspect(ready_ws.engine).get_table_names()
    if start == "0002":
        assert "export_row" not in tables
    else:
        columns = {c["name"] for c in inspect(ready_ws.engine).get_columns("export_row")}
        assert {"text_a", "text_b"} <= columns and "line" not in columns
        with ready_ws.engine.connect() as conn:  # not open_registry: the schema is old
            assert conn.execute(text("SELECT count(*) FROM export_dirty")).scalar_one() == 3
    upgraded = cli("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.stderr
    with ready_ws.open_registry().connect() as conn:
        rows = conn.execute(text("SELECT format, count(*) FROM export_row GROUP BY format"))
        assert dict(rows.all()) == {"csv": 3, "json": 3}
    assert dirty(ready_ws) == 0
    assert {fmt: export_text(ready_ws, fmt) for fmt in FORMATS} == expected


def _nasty_text(rng: random.Random) -> str:
    alphabet = ['"', ",", "\\", "'", "=", "+", "-", "@", " ", "ü", "✓", "\u2028", "\x7f", "a", "Z"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))


def test_rendered_rows_equal_csv_writer_and_json_dumps() -> None:
    """render() writes its own CSV quoting and JSON text: it must give what csv.writer and
    json.dumps give for the same row, for any text a user may store."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    layout = export.LAYOUT
    rng = random.Random(5)
    for n in range(300):
        cells: list[Any] = [
            _nasty_text(rng) if rng.random() < 0.8 else None for _ in range(layout.width)
        ]
        cells[layout.labels] = export.canonical_labels(json.dumps({"k": _nasty_text(rng)}))
        cells[layout.cell(None, "clouds")] = rng.choice([None, "plant", "a;b"])
        cells[layout.cert_status] = rng.choice(["active", "revoked"])
        cells[layout.cert_not_after] = "2030-01-01T00:00:00Z"
        if n % 5 == 0:  # no certificate
            start = layout.cell("certificate", "serial")
            cells[start : start + len(export.CERT_FIELDS)] = [None] * len(export.CERT_FIELDS)
        rendered = render(cells)
        moment = "2026-01-01T00:00:00Z"

        expected_csv = io.StringIO(newline="")
        safe = [
            export.csv_safe(v) if v and layout.kinds[i] == "text" else v
            for i, v in enumerate(cells)
        ]
        csv.writer(expected_csv, lineterminator="\r\n").writerow(safe)
        assert line(rendered, "csv", moment) + "\r\n" == expected_csv.getvalue(), n
        assert line(rendered, "json", moment) == encode(export.row_to_object(cells)), n


def test_concurrent_writers_on_one_device_leave_it_current(
    ready_ws: Workspace, tmp_path: Path
) -> None:
    """Two writers changing the same device at once (on PostgreSQL their transactions
    overlap): the export row ends up rendered from both changes."""
    import threading

    devices.add_device(ready_ws, "shared", out_dir=tmp_path / "out")
    errors: list[BaseException] = []

    def run(work: Any) -> None:
        try:
            work()
        except BaseException as exc:  # reported below
            errors.append(exc)

    def relabel() -> None:
        for i in range(12):
            devices.update_device(ready_ws, "shared", set_labels={"step": str(i)})

    def renew() -> None:
        for _ in range(4):
            certs.renew_certificate(
                ready_ws, "shared", out_dir=tmp_path / "renewed", passphrase=PASSPHRASE
            )

    threads = [threading.Thread(target=run, args=(w,)) for w in (relabel, renew)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    rows = assert_paths_agree(ready_ws)
    assert rows["shared"]["labels"] == {"step": "11"}


def test_a_failing_output_stops_the_export_with_its_error(
    ready_ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are written from a second thread; an error there (a full disk, a closed pipe)
    surfaces in the caller, and the export stops mid-read (on PostgreSQL mid-COPY), leaving
    the registry's connections fit for the next export."""
    for i in range(3):
        devices.add_device(ready_ws, f"d{i}", out_dir=tmp_path / "out")
    expected = {fmt: export_text(ready_ws, fmt) for fmt in FORMATS}
    monkeypatch.setattr(export_batches, "BATCH_ROWS", 1)  # one row a batch: the read is still going

    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    for fmt in FORMATS:
        stream = FullDisk()
        with pytest.raises(OSError, match="No space left"):
            export.write_devices(ready_ws, stream, fmt=fmt)
        assert stream.getvalue() == "", fmt
        assert export_text(ready_ws, fmt) == expected[fmt], fmt
    # the writer thread may fail only after the read has ended: stop one mid-read here
    with snapshot_connection(ready_ws.open_registry()) as conn, conn.begin():
        moment = export.iso_moment(datetime.now(UTC))
        query = export_cache.cached_query("jsonl", export.ExportFilters(), moment)
        batches = export_cache.cached_batches(conn, query)
        assert [json.loads(line)["id"] for line in next(batches)] == ["d0"]
        batches.close()
        assert conn.execute(text("SELECT count(*) FROM device")).scalar_one() == 3
