"""``fleet provision``: bulk provisioning from CSV / JSON Lines, on SQLite and PostgreSQL.

The crash tests kill a real ``python -m fleet provision`` child process, either at named
points inside a batch (``FLEET_FAULT_INJECT``, read only by :mod:`fleet.provision`) or from
outside once it is under way, then re-run it and check the registry, bundles, manifest and
audit trail.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers import PASSPHRASE, REPO, Cli, run_fleet, snapshot
from sqlalchemy import create_engine, text
from sqlmodel import select
from test_devices import make_csr

from fleet import clock, devices
from fleet.errors import InvalidInput
from fleet.pki import issue
from fleet.provision import BATCH_SIZE, FAULT_ENV, provision
from fleet.registry import audit
from fleet.registry.bulk import bind_converter
from fleet.registry.db import read_session
from fleet.registry.models import AuditEvent, Certificate, Device, UTCDateTime
from fleet.views import DeviceView
from fleet.workspace import Workspace


def write_csv(
    path: Path, rows: list[dict[str, str]], *, bom: bool = False, crlf: bool = False
) -> Path:
    columns = list(rows[0]) if rows else ["id"]
    newline = "\r\n" if crlf else "\n"
    lines = [",".join(columns)] + [",".join(r.get(c, "") for c in columns) for r in rows]
    path.write_bytes((("\ufeff" if bom else "") + newline.join(lines) + newline).encode("utf-8"))
    return path


def numbered(count: int, prefix: str = "dev") -> list[dict[str, str]]:
    return [
        {"id": f"{prefix}-{n:05d}", "model": "p200", "serial": f"SN{n}", "labels": f"site=hh;n={n}"}
        for n in range(count)
    ]


def fleet_args(ws: Workspace) -> list[str]:
    args = ["--home", str(ws.home)]
    if ws.db_url:
        args += ["--db", ws.db_url]
    return args


def registry_state(ws: Workspace) -> tuple[dict[str, Device], dict[str, list[Certificate]]]:
    with read_session(ws.open_registry()) as session:
        found = {d.id: d for d in session.exec(select(Device)).all()}
        certs: dict[str, list[Certificate]] = {}
        for cert in session.exec(select(Certificate)).all():
            certs.setdefault(cert.device_id, []).append(cert)
    return found, certs


def assert_complete(ws: Workspace, out: Path, ids: list[str]) -> None:
    """Every device once, one active certificate each, complete bundles, a full manifest,
    one ``device.add`` event per device and a verifying audit trail."""
    found, certs = registry_state(ws)
    assert set(ids) <= set(found)
    assert set(certs) == set(found), "certificate without device or device without certificate"
    for device_id in ids:
        active = [c for c in certs[device_id] if c.status == "active"]
        assert len(active) == 1, device_id
        bundle = out / device_id
        assert sorted(p.name for p in bundle.iterdir()) == ["cert.pem", "chain.pem", "key.pem"]
        leaf = x509.load_pem_x509_certificate((bundle / "cert.pem").read_bytes())
        key = serialization.load_pem_private_key((bundle / "key.pem").read_bytes(), None)
        assert leaf.public_key() == key.public_key()
        assert format(leaf.serial_number, "x") == active[0].serial
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    with (out / "manifest.csv").open(newline="") as handle:
        manifest = list(csv.DictReader(handle))
    assert [m["id"] for m in manifest] == ids
    for row in manifest:
        [active] = [c for c in certs[row["id"]] if c.status == "active"]
        assert row["serial"] == active.serial
        assert row["fingerprint_sha256"] == active.fingerprint_sha256
    with read_session(ws.open_registry()) as session:
        result = audit.verify(session)
        adds = session.exec(
            select(AuditEvent.target).where(AuditEvent.action == "device.add")
        ).all()
    assert result.ok, result.reason
    assert sorted(adds) == sorted(set(adds)), "a device was added twice"
    assert set(ids) <= set(adds)


def add_reference(ws: Workspace, tmp_path: Path) -> DeviceView:
    """``ref-1`` added by `fleet device add`, with the attributes of ``numbered``'s first row."""
    return devices.add_device(
        ws,
        "ref-1",
        model="p200",
        serial="SN0",
        labels={"site": "hh", "n": "0"},
        out_dir=tmp_path / "ref",
        passphrase=PASSPHRASE,
    )


# --- the happy path -------------------------------------------------------------------------


def test_csv_devices_look_like_device_add(ready_ws: Workspace, cli: Cli, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "batch.csv", numbered(3), bom=True, crlf=True)
    out = tmp_path / "out"
    result = cli("provision", str(source), "--out", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["provisioned"], summary["skipped"], summary["failed"]) == (3, 0, 0)
    assert summary["elapsed_seconds"] >= 0
    ids = ["dev-00000", "dev-00001", "dev-00002"]
    assert_complete(ready_ws, out, ids)

    reference = add_reference(ready_ws, tmp_path).to_dict()
    shown = devices.show_device(ready_ws, "dev-00000").to_dict()
    assert shown["labels"] == {"site": "hh", "n": "0"}
    strip = {"id", "serial", "fingerprint_sha256", "subject", "device_id"}
    for key in ("model", "serial", "labels", "status", "decommissioned_at"):
        assert shown[key] == reference[key]
    [mine], [theirs] = shown["certificates"], reference["certificates"]
    assert {k: v for k, v in mine.items() if k not in strip | {"not_before", "not_after"}} == {
        k: v for k, v in theirs.items() if k not in strip | {"not_before", "not_after"}
    }
    bundle = out / "dev-00000"
    assert stat.S_IMODE((bundle / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.stat().st_mode) == stat.S_IMODE(
        (tmp_path / "ref" / "ref-1").stat().st_mode
    )
    assert (bundle / "chain.pem").read_bytes() == (tmp_path / "ref/ref-1/chain.pem").read_bytes()

    # The audit event carries exactly what `device add` records.
    with read_session(ready_ws.open_registry()) as session:
        events = {
            e.target: json.loads(e.details)
            for e in session.exec(select(AuditEvent).where(AuditEvent.action == "device.add"))
        }
        device = session.get(Device, "dev-00001")
        assert device is not None
        [cert] = session.exec(select(Certificate).where(Certificate.device_id == "dev-00001"))
        expected = {
            **issue.device_details(device),
            "certificate": issue.certificate_details(cert),
        }
    assert events["dev-00001"] == expected
    assert set(events["dev-00001"]) == set(events["ref-1"])
    assert set(events["dev-00001"]["certificate"]) == set(events["ref-1"]["certificate"])


def raw_row(ws: Workspace, table: str, column: str, value: str) -> dict[str, Any]:
    """A row as SQLite stores it (no SQLAlchemy type processing): ``{name: (value, type)}``."""
    with contextlib.closing(sqlite3.connect(ws.home / "registry.db")) as db:
        db.row_factory = sqlite3.Row
        where = f'FROM "{table}" WHERE "{column}" = ?'
        [row] = db.execute(f"SELECT * {where}", (value,)).fetchall()
        names: list[str] = row.keys()  # iterating a Row gives its values
        kinds = ", ".join(f'typeof("{name}")' for name in names)
        types = db.execute(f"SELECT {kinds} {where}", (value,)).fetchone()
    return {name: (row[name], kind) for name, kind in zip(names, types, strict=True)}


def test_bulk_rows_are_stored_as_the_orm_stores_them(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    """On SQLite provision inserts device and certificate rows through the driver, around the
    ORM: the stored text must be exactly what `fleet device add` (the ORM) stores."""
    ws = ready_sqlite_ws
    add_reference(ws, tmp_path)
    moment = clock.now().replace(microsecond=0)  # SQLite DATETIME still writes .000000
    with clock.frozen(moment):
        source = write_csv(tmp_path / "b.csv", numbered(1))
        provision(ws, source, out_dir=tmp_path / "out", passphrase=PASSPHRASE, workers=1)
    tables = {"device": (Device, "id"), "certificate": (Certificate, "device_id")}
    ours = {t: raw_row(ws, t, key, "dev-00000") for t, (_, key) in tables.items()}
    theirs = {t: raw_row(ws, t, key, "ref-1") for t, (_, key) in tables.items()}
    assert ours["device"]["created_at"][0] == f"{moment:%Y-%m-%d %H:%M:%S}.000000"
    assert ours["device"]["labels"] == theirs["device"]["labels"]
    for table, (model, _) in tables.items():
        for column in model.__table__.columns:
            (value, kind), (other, other_kind) = (
                ours[table][column.name],
                theirs[table][column.name],
            )
            assert kind == other_kind, (table, column.name)
            if isinstance(column.type, UTCDateTime) and value is not None:
                assert re.sub(r"\d", "0", value) == re.sub(r"\d", "0", other), (table, column.name)

    # Both ways round: each row read through the ORM and converted as provision converts it
    # is the very text stored, whichever of the two wrote it.
    engine = ws.open_registry()
    with read_session(engine) as session:
        for device_id in ("ref-1", "dev-00000"):
            for table, (model, key) in tables.items():
                [loaded] = session.exec(select(model).where(getattr(model, key) == device_id))
                stored = raw_row(ws, table, key, device_id)
                for column in model.__table__.columns:
                    value = getattr(loaded, column.name)
                    convert = bind_converter(column.type, engine.dialect)
                    sent = value if convert is None else convert(value)
                    assert sent == stored[column.name][0], (device_id, table, column.name)


def test_jsonl_with_csr_and_profile_columns(ready_sqlite_ws: Workspace, tmp_path: Path) -> None:
    pem, key = make_csr("sensor-1")
    (tmp_path / "csrs").mkdir()
    (tmp_path / "csrs" / "sensor-1.csr").write_bytes(pem)
    lines = [
        {"id": "sensor-1", "csr": "csrs/sensor-1.csr", "labels": {"site": "b"}},
        {"id": "big-1", "profile": "rsa", "model": "m"},
        {"id": "plain-1"},
    ]
    source = tmp_path / "batch.jsonl"
    source.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    out = tmp_path / "out"
    summary = provision(ready_sqlite_ws, source, out_dir=out, passphrase=PASSPHRASE, workers=1)
    assert (summary.provisioned, summary.failed) == (3, 0)
    assert sorted(p.name for p in (out / "sensor-1").iterdir()) == ["cert.pem", "chain.pem"]
    leaf = x509.load_pem_x509_certificate((out / "sensor-1" / "cert.pem").read_bytes())
    assert leaf.public_key() == key.public_key()  # type: ignore[attr-defined]
    shown = {d: devices.show_device(ready_sqlite_ws, d) for d in ("sensor-1", "big-1", "plain-1")}
    assert shown["sensor-1"].certificates[0].key_origin == "csr"
    assert shown["sensor-1"].labels == {"site": "b"}
    assert shown["big-1"].certificates[0].key_type == "rsa-3072"
    assert shown["big-1"].certificates[0].profile == "rsa"
    assert shown["plain-1"].certificates[0].profile == "default"
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "id,serial,fingerprint_sha256,not_after"
    assert [m.split(",")[0] for m in manifest[1:]] == ["sensor-1", "big-1", "plain-1"]


def test_progress_is_reported_up_to_the_total(ready_sqlite_ws: Workspace, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "b.csv", numbered(BATCH_SIZE + 20))
    calls: list[tuple[int, int]] = []
    summary = provision(
        ready_sqlite_ws,
        source,
        out_dir=tmp_path / "o",
        passphrase=PASSPHRASE,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert summary.provisioned == BATCH_SIZE + 20
    assert calls[-1] == (BATCH_SIZE + 20, BATCH_SIZE + 20)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# --- idempotence, errors, dry runs ---------------------------------------------------------


def test_rerun_skips_everything(ready_ws: Workspace, cli: Cli, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "b.csv", numbered(5))
    out = tmp_path / "out"
    assert cli("provision", str(source), "--out", str(out)).exit_code == 0
    manifest = (out / "manifest.csv").read_text()
    before = snapshot(ready_ws, out)
    again = cli("provision", str(source), "--out", str(out), "--json")
    assert again.exit_code == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["provisioned"], summary["skipped"], summary["failed"]) == (0, 5, 0)
    assert snapshot(ready_ws, out) == before
    assert (out / "manifest.csv").read_text() == manifest


def test_row_errors_go_to_the_report(ready_ws: Workspace, cli: Cli, tmp_path: Path) -> None:
    bad_csr, _ = make_csr("someone-else")
    (tmp_path / "wrong.csr").write_bytes(bad_csr)
    source = tmp_path / "b.csv"
    source.write_text(
        "id,model,labels,csr,profile\n"
        "ok-1,p1,,,\n"
        "bad id,p1,,,\n"
        "ok-2,p1,a=1,,\n"
        "ok-2,p1,a=1,,\n"  # identical duplicate: skipped
        "ok-2,p2,a=1,,\n"  # conflicting duplicate: failed
        "lab-1,p1,novalue,,\n"
        "csr-1,p1,,wrong.csr,\n"
        "csr-2,p1,,missing.csr,\n"
        "prof-1,p1,,,nosuchprofile\n"
        "short-1,p1\n"
        "ok-3,,,,\n"
        "manifest.csv,,,,\n",
        encoding="utf-8",
    )
    report = tmp_path / "report.csv"
    result = cli(
        "provision", str(source), "--out", str(tmp_path / "out"), "--report", str(report), "--json"
    )
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["provisioned"], summary["skipped"], summary["failed"]) == (3, 1, 8)
    with report.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_line = {int(r["line"]): r for r in rows}
    assert sorted(by_line) == [3, 6, 7, 8, 9, 10, 11, 13]
    assert "clash with the manifest" in by_line[13]["error"]
    assert "contains ' '" in by_line[3]["error"]
    assert by_line[6]["id"] == "ok-2" and "duplicate of line 4" in by_line[6]["error"]
    assert "KEY=VALUE" in by_line[7]["error"]
    assert "does not match device ID" in by_line[8]["error"]
    assert "cannot read CSR" in by_line[9]["error"]
    assert "no certificate profile named 'nosuchprofile'" in by_line[10]["error"]
    assert "expected 5 fields" in by_line[11]["error"]
    found, _ = registry_state(ready_ws)
    assert set(found) == {"ok-1", "ok-2", "ok-3"}
    assert found["ok-2"].model == "p1"
    human = cli("provision", str(source), "--out", str(tmp_path / "out"))
    assert human.exit_code == 1
    assert "line 3 (bad id)" in human.stderr


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("id,model,colour\nx,y,z\n", ".csv", "unknown column(s) 'colour'; allowed: id, model"),
        ('{"id": "a"}\n{"id": "b", "colour": "red"}\n', ".jsonl", "unknown column(s) 'colour'"),
        ("model,serial\nx,y\n", ".csv", "no 'id' column"),
        ("", ".csv", "is empty"),
        ("id\nx\n", ".txt", "give --format"),
    ],
)
def test_bad_files_are_refused_before_anything_is_written(
    ready_sqlite_ws: Workspace,
    sqlite_cli: Cli,
    tmp_path: Path,
    content: str,
    suffix: str,
    message: str,
) -> None:
    source = tmp_path / f"b{suffix}"
    source.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    before = snapshot(ready_sqlite_ws, out)
    result = sqlite_cli(  # --strict: unknown columns are refused, not ignored with a warning
        "provision", str(source), "--out", str(out), "--report", str(tmp_path / "r.csv"), "--strict"
    )
    assert result.exit_code == InvalidInput.exit_code
    assert message in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert snapshot(ready_sqlite_ws, out) == before
    assert not out.exists() and not (tmp_path / "r.csv").exists()


def test_not_utf8_is_refused(ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "b.csv"
    source.write_bytes("id,model\nx,caf\u00e9\n".encode("latin-1"))
    result = sqlite_cli("provision", str(source), "--out", str(tmp_path / "out"))
    assert result.exit_code == InvalidInput.exit_code
    assert "not UTF-8" in result.stderr


def test_wrong_passphrase_writes_nothing(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_CA_PASSPHRASE", "nope")
    source = write_csv(tmp_path / "b.csv", numbered(3))
    out = tmp_path / "out"
    before = snapshot(ready_sqlite_ws, out)
    result = sqlite_cli("provision", str(source), "--out", str(out))
    assert result.exit_code == 6
    assert snapshot(ready_sqlite_ws, out) == before


def test_dry_run_validates_and_writes_nothing(
    ready_ws: Workspace, cli: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert (
        cli(
            "provision", str(write_csv(tmp_path / "first.csv", numbered(2))), "--out", str(out)
        ).exit_code
        == 0
    )
    devices.decommission_device(ready_ws, "dev-00001")
    (out / "taken-1").mkdir()
    (out / "taken-1" / "key.pem").write_text("someone else's")
    pem, _ = make_csr("other")
    (tmp_path / "other.csr").write_bytes(pem)
    source = tmp_path / "b.csv"
    source.write_text(
        "id,csr\ndev-00000,\ndev-00001,\nnew-1,\nnew-1,\ntaken-1,\nbad-csr,other.csr\nnew-2,\n",
        encoding="utf-8",
    )
    before = snapshot(ready_ws, out)
    result = cli("provision", str(source), "--out", str(out), "--dry-run", "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["dry_run"] is True
    assert (summary["would_provision"], summary["skipped"], summary["failed"]) == (2, 2, 3)
    errors = {e["id"]: e["error"] for e in summary["errors"]}
    assert "decommissioned" in errors["dev-00001"]
    assert "already exists" in errors["taken-1"]
    assert "does not match device ID" in errors["bad-csr"]
    assert summary["provisioned"] == 0
    assert snapshot(ready_ws, out) == before


def test_orphan_bundle_is_replaced_foreign_folder_is_not(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # An orphan: a complete bundle this CA signed, for a device the registry never recorded
    # (what a crash between renaming a bundle into place and committing leaves behind).
    devices.add_device(
        ready_sqlite_ws, "orphan-1", out_dir=tmp_path / "elsewhere", passphrase=PASSPHRASE
    )
    out.mkdir()
    os.rename(tmp_path / "elsewhere" / "orphan-1", out / "orphan-2")
    orphan_cert = (out / "orphan-2" / "cert.pem").read_bytes()
    (out / "foreign-1").mkdir()
    (out / "foreign-1" / "notes.txt").write_text("keep me")
    source = tmp_path / "b.csv"
    source.write_text("id\norphan-2\nforeign-1\n", encoding="utf-8")
    summary = provision(ready_sqlite_ws, source, out_dir=out, passphrase=PASSPHRASE)
    assert (summary.provisioned, summary.failed) == (0, 2)  # orphan-1's cert has CN orphan-1
    assert (out / "foreign-1" / "notes.txt").read_text() == "keep me"

    # A real orphan of orphan-2: signed for orphan-2 by this CA, never registered.
    from fleet.pki import ca
    from fleet.pki.profiles import load_profile

    issuer = ca.load_issuer(ready_sqlite_ws.home, PASSPHRASE)
    issued = issue.issue_certificate(issuer, "orphan-2", load_profile("default"))
    (out / "orphan-2" / "cert.pem").write_bytes(issued.cert_pem.encode())
    summary = provision(ready_sqlite_ws, source, out_dir=out, passphrase=PASSPHRASE)
    assert (summary.provisioned, summary.failed) == (1, 1)
    assert (out / "orphan-2" / "cert.pem").read_bytes() not in (
        orphan_cert,
        issued.cert_pem.encode(),
    )
    assert_complete(ready_sqlite_ws, out, ["orphan-2"])


# --- crashes and concurrency with real processes --------------------------------------------


def start_provision(
    ws: Workspace, source: Path, out: Path, env: dict[str, str] | None = None, *extra: str
) -> subprocess.Popen[str]:
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet",
            *fleet_args(ws),
            "provision",
            str(source),
            "--out",
            str(out),
            "--workers",
            "2",
            *extra,
        ],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


CRASH_ROWS = BATCH_SIZE * 2 + 37


def crash_and_resume(ws: Workspace, tmp_path: Path, fault: str) -> None:
    rows = numbered(CRASH_ROWS)
    source = write_csv(tmp_path / "b.csv", rows)
    out = tmp_path / "out"
    child = start_provision(ws, source, out, {FAULT_ENV: fault})
    _, stderr = child.communicate(timeout=240)
    assert child.returncode == -signal.SIGKILL, stderr
    assert_window(ws, out, fault.partition(":")[0])
    again = run_fleet(
        *fleet_args(ws), "provision", str(source), "--out", str(out), "--json", timeout=240
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["provisioned"] + summary["skipped"] == CRASH_ROWS
    assert summary["failed"] == 0
    assert_complete(ws, out, [r["id"] for r in rows])
    verify = run_fleet(*fleet_args(ws), "audit", "verify")
    assert verify.returncode == 0, verify.stderr


def assert_window(ws: Workspace, out: Path, point: str) -> None:
    """The kill really left the state that the named window leaves."""
    registered = set(registry_state(ws)[0])
    bundles = {p.name for p in out.iterdir() if not p.name.startswith(".")} - {"manifest.csv"}
    staged = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    if point in ("after-stage", "after-rename", "before-commit"):
        # nothing reaches OUT/ID before its certificate is recorded
        assert staged and bundles == registered
    elif point == "after-commit":
        # recorded, not yet published: a re-run publishes the staged bundles
        assert len(registered) == BATCH_SIZE and bundles == set()
        assert len(staged) >= BATCH_SIZE
        assert not (out / "manifest.csv").exists()
    elif point == "manifest":
        assert len(registered) == CRASH_ROWS
        assert any(name.startswith(".manifest.csv.tmp-") for name in staged)
        assert not (out / "manifest.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    ["after-stage:2", "after-rename:2", "before-commit:2", "after-commit:1", "manifest:1"],
)
def test_killed_at_each_point_then_rerun_completes(
    ready_sqlite_ws: Workspace, tmp_path: Path, fault: str
) -> None:
    crash_and_resume(ready_sqlite_ws, tmp_path, fault)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["after-rename:2", "before-commit:3"])
def test_killed_inside_the_transaction_on_each_backend(
    ready_ws: Workspace, tmp_path: Path, fault: str
) -> None:
    crash_and_resume(ready_ws, tmp_path, fault)


def device_count(ws: Workspace) -> int:
    engine = create_engine(ws.registry_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM device")).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_killed_from_outside_midway_then_rerun_completes(
    ready_ws: Workspace, tmp_path: Path
) -> None:
    rows = numbered(BATCH_SIZE * 6)
    source = write_csv(tmp_path / "b.csv", rows)
    out = tmp_path / "out"
    child = start_provision(ready_ws, source, out)
    deadline = time.monotonic() + 120
    while device_count(ready_ws) < BATCH_SIZE and child.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, "finished before it could be killed"
    assert 0 < device_count(ready_ws) < len(rows)
    again = run_fleet(
        *fleet_args(ready_ws), "provision", str(source), "--out", str(out), "--json", timeout=240
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["skipped"] >= BATCH_SIZE
    assert summary["provisioned"] + summary["skipped"] == len(rows)
    assert_complete(ready_ws, out, [r["id"] for r in rows])


def test_two_processes_on_one_registry(ready_ws: Workspace, tmp_path: Path) -> None:
    first, second = numbered(BATCH_SIZE + 100, "a"), numbered(BATCH_SIZE + 100, "b")
    jobs = [
        start_provision(
            ready_ws, write_csv(tmp_path / "a.csv", first), tmp_path / "out-a", None, "--json"
        ),
        start_provision(
            ready_ws, write_csv(tmp_path / "b.csv", second), tmp_path / "out-b", None, "--json"
        ),
    ]
    for job in jobs:
        stdout, stderr = job.communicate(timeout=240)
        assert job.returncode == 0, stderr
        assert json.loads(stdout)["provisioned"] == BATCH_SIZE + 100
    assert_complete(ready_ws, tmp_path / "out-a", [r["id"] for r in first])
    assert_complete(ready_ws, tmp_path / "out-b", [r["id"] for r in second])


def test_two_processes_racing_for_the_same_ids(ready_ws: Workspace, tmp_path: Path) -> None:
    """Both runs list the same devices (in opposite orders) into one folder: each device is
    provisioned once, by one of them, and both runs succeed."""
    rows = numbered(BATCH_SIZE + 100, "s")
    out = tmp_path / "out"
    jobs = [
        start_provision(ready_ws, write_csv(tmp_path / "a.csv", rows), out, None, "--json"),
        start_provision(ready_ws, write_csv(tmp_path / "b.csv", rows[::-1]), out, None, "--json"),
    ]
    summaries = []
    for job in jobs:
        stdout, stderr = job.communicate(timeout=240)
        assert job.returncode == 0, stderr
        summaries.append(json.loads(stdout))
    assert sum(s["provisioned"] for s in summaries) == len(rows)
    assert sum(s["skipped"] for s in summaries) == len(rows)
    found, certs = registry_state(ready_ws)
    assert set(found) == {r["id"] for r in rows}
    for device_id in found:
        [active] = certs[device_id]
        leaf = x509.load_pem_x509_certificate((out / device_id / "cert.pem").read_bytes())
        key = serialization.load_pem_private_key((out / device_id / "key.pem").read_bytes(), None)
        assert format(leaf.serial_number, "x") == active.serial
        assert leaf.public_key() == key.public_key()
    assert [p.name for p in out.iterdir() if ".tmp-" in p.name] == []
    with read_session(ready_ws.open_registry()) as session:
        assert audit.verify(session).ok


def test_no_progress_bar_off_a_terminal_json_on_stdout(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "b.csv", numbered(3))
    result = run_fleet(
        *fleet_args(ready_sqlite_ws), "provision", str(source), "--out", str(tmp_path / "o")
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "Provisioned 3, skipped 0, failed 0" in result.stderr
    assert "\r" not in result.stderr and "ETA" not in result.stderr


def test_progress_bar_on_a_terminal(ready_sqlite_ws: Workspace, tmp_path: Path) -> None:
    """stderr is a pseudo-terminal, as in an interactive shell."""
    import pty

    source = write_csv(tmp_path / "b.csv", numbered(BATCH_SIZE + 10))
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120", "TERM": "xterm"}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet",
            *fleet_args(ready_sqlite_ws),
            "provision",
            str(source),
            "--out",
            str(tmp_path / "o"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    child.wait(timeout=120)
    os.close(leader)
    assert child.returncode == 0
    text_seen = seen.decode("utf-8", "replace")
    assert "provisioning" in text_seen and "devices/s" in text_seen and "ETA" in text_seen
    assert f"{BATCH_SIZE + 10}/{BATCH_SIZE + 10}" in text_seen


def test_bench_runs_at_small_n(tmp_path: Path) -> None:
    """The benchmark's CI mode: a tiny N, checking that it runs end to end and reports."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FLEET_CA_PASSPHRASE", None)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "provision.py"),
            "--n",
            "200",
            "--openssl-sample",
            "5",
            "--workdir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for figure in (
        "devices/s",
        "peak RSS",
        "x the in-process floor",
        "x the openssl loop",
        "CSR mode",
    ):
        assert figure in result.stdout, figure
