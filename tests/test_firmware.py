"""Firmware: the signed catalogue, per-device reports and pins, compliance, and the export's
firmware and connection columns (fleet/firmware/, fleet/export/telemetry.py)."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from helpers import PASSPHRASE, Cli, FrozenClock
from sqlalchemy import func, select, update

from fleet import devices, export
from fleet.errors import Conflict, InvalidInput, NotFound
from fleet.firmware.compliance import compliance
from fleet.firmware.images import add_image, deprecate_image, show_image
from fleet.firmware.models import DeviceFirmware
from fleet.firmware.pins import pin_device, report_manual, unpin_device
from fleet.firmware.reports import Report, record_reports
from fleet.firmware.versions import compare_versions, parse_version
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.registry.models import AuditEvent
from fleet.status.events import Seen, record
from fleet.status.ingest import ingest
from fleet.status.mapping import IdMap, Tracker
from fleet.status.sparkplug import encode_payload
from fleet.statuses import ConnectionState, EventSource, FirmwareSource
from fleet.workspace import Workspace

T0 = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)


def image(tmp_path: Path, name: str = "fw.bin", size: int = 300_000, seed: int = 1) -> Path:
    path = tmp_path / name
    path.write_bytes(bytes((i * seed + i // 7) % 256 for i in range(size)))
    return path


def actions(ws: Workspace) -> list[tuple[str, str]]:
    with read_session(ws.open_registry()) as session:
        rows = session.execute(
            select(AuditEvent.action, AuditEvent.target).order_by(AuditEvent.seq)
        )  # type: ignore[call-overload]
        return [(a, t) for a, t in rows if not a.startswith(("ca.init", "ca.create"))]


def firmware_row(ws: Workspace, device_id: str) -> DeviceFirmware | None:
    with read_session(ws.open_registry()) as session:
        return session.get(DeviceFirmware, device_id)


# --- versions -----------------------------------------------------------------------------


def test_versions_are_semver_ordered_by_packaging() -> None:
    assert compare_versions("1.2.3-rc.1", "1.2.3") == -1
    assert compare_versions("1.10.0", "1.9.9") == 1
    assert compare_versions("1.2.3-alpha.1", "1.2.3-beta.1") == -1
    assert compare_versions("2.0.0", "2.0.0+build.7") == -1  # packaging orders local versions
    assert str(parse_version("1.2.3-rc.1")) == "1.2.3rc1"
    for bad in ("v1.2.3", "1.2.3-x.7", "01.2.3", "", "1.2.3.4", "latest", "1.2.3 "):
        with pytest.raises(InvalidInput):
            parse_version(bad)


# --- the catalogue ------------------------------------------------------------------------


def test_add_list_show_deprecate(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    ws, cli = ready_sqlite_ws, sqlite_cli
    first = image(tmp_path)
    done = cli(
        "firmware",
        "add",
        str(first),
        "--version",
        "1.4.0",
        "--model",
        "p200",
        "--model",
        "p210",
        "--requires-min",
        "1.2.0",
        "--notes",
        "fixes",
        "--json",
    )
    assert done.exit_code == 0, done.stderr
    added = json.loads(done.stdout)
    assert added["added_models"] == ["p200", "p210"]
    shown = added["image"]
    stored = ws.home / "firmware" / shown["sha256"]
    assert stored.read_bytes() == first.read_bytes()
    assert (shown["size"], shown["requires_min"], shown["notes"]) == (300_000, "1.2.0", "fixes")
    # the same content again for another model extends the image; again changes nothing
    assert (
        cli("firmware", "add", str(first), "--version", "1.4.0", "--model", "p300").exit_code == 0
    )
    again = cli("firmware", "add", str(first), "--version", "1.4.0", "--model", "p200")
    assert "nothing changed" in again.stderr
    remote = add_image(
        ws,
        image(tmp_path, "r.bin", 1000, 3),
        version="1.5.0-rc.1",
        models=["p200"],
        url="https://fw.example/p200-1.5.0rc1.bin",
    )
    assert remote.image.path is None and remote.image.url is not None
    assert sorted(p.name for p in (ws.home / "firmware").iterdir()) == [shown["sha256"]]
    listed = json.loads(cli("firmware", "list", "--json").stdout)
    assert [(i["version"], i["models"]) for i in listed] == [
        ("1.4.0", ["p200", "p210", "p300"]),
        ("1.5.0-rc.1", ["p200"]),
    ]
    assert "signature_pem" not in listed[0]
    assert json.loads(cli("firmware", "list", "--model", "p300", "--count").stdout) == 1
    show = json.loads(cli("firmware", "show", "1.4.0", "--json").stdout)
    assert show["signature_pem"].startswith("-----BEGIN PKCS7-----")
    assert cli("firmware", "show", "9.9.9").exit_code == NotFound.exit_code
    # deprecate: flagged once, audited once
    assert cli("firmware", "deprecate", "1.4.0").exit_code == 0
    assert "already deprecated" in cli("firmware", "deprecate", "1.4.0").stderr
    assert show_image(ws, "1.4.0").deprecated
    with pytest.raises(NotFound):
        deprecate_image(ws, "1.5.0-rc.1", "p999")
    assert [a for a in actions(ws) if a[0].startswith(("firmware.", "ca.firmware"))] == [
        ("ca.firmware_signer", "firmware-signing"),
        ("firmware.add", "1.4.0"),
        ("firmware.add", "1.4.0"),
        ("firmware.add", "1.5.0-rc.1"),
        ("firmware.deprecate", "1.4.0"),
    ]
    assert cli("audit", "verify").exit_code == 0


def test_signature_verifies_with_openssl_and_a_changed_byte_fails(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    content = image(tmp_path, size=2_500_000)
    result = add_image(ws, content, version="2.0.0", models=["gw"], passphrase=PASSPHRASE)
    signature = tmp_path / "fw.p7s"
    signature.write_bytes(sqlite_cli("firmware", "show", "2.0.0", "--signature").stdout_bytes)
    root = ws.home / "ca" / "root.cert.pem"

    def openssl_verify(path: Path) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "openssl",
                "cms",
                "-verify",
                "-binary",
                "-content",
                str(path),
                "-inform",
                "PEM",
                "-in",
                str(signature),
                "-CAfile",
                str(root),
                "-purpose",
                "any",
                "-out",
                os.devnull,
            ],
            capture_output=True,
            check=False,
        )

    assert openssl_verify(result.image.path).returncode == 0  # type: ignore[arg-type]
    changed = tmp_path / "changed.bin"
    data = bytearray(content.read_bytes())
    data[1_234_567] ^= 0x01
    changed.write_bytes(bytes(data))
    failed = openssl_verify(changed)
    assert failed.returncode != 0 and b"verification failure" in failed.stderr.lower()
    assert sqlite_cli("firmware", "verify", "2.0.0").exit_code == 0
    assert sqlite_cli("firmware", "verify", "2.0.0", "--file", str(changed)).exit_code == 7
    # the signer: issued by the issuing CA, codeSigning only, its key 0600
    cert = x509.load_pem_x509_certificate(
        (ws.home / "ca" / "firmware-signing.cert.pem").read_bytes()
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = ws.home / "ca" / "firmware-signing.key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED" in key.read_bytes()
    issuing = x509.load_pem_x509_certificate((ws.home / "ca" / "issuing.cert.pem").read_bytes())
    assert cert.issuer == issuing.subject
    assert format(cert.serial_number, "x") == result.image.signer_serial
    # the profile is never a device's: a device with codeSigning could sign firmware
    refused = sqlite_cli("device", "add", "x-1", "--profile", "firmware-signing")
    assert refused.exit_code == 2 and "signing certificate" in refused.stderr


def test_bad_input_leaves_nothing_written(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    ws, cli = ready_sqlite_ws, sqlite_cli
    good = image(tmp_path)
    before = actions(ws)
    refusals = [
        (["firmware", "add", str(good), "--version", "1.2", "--model", "p"], 0),  # fine
        (["firmware", "add", str(good), "--version", "bad", "--model", "p"], 2),
        (["firmware", "add", str(tmp_path / "nope.bin"), "--version", "1.0.0", "--model", "p"], 2),
        (["firmware", "add", str(tmp_path), "--version", "1.0.0", "--model", "p"], 2),
        (
            [
                "firmware",
                "add",
                str(good),
                "--version",
                "1.0.0",
                "--model",
                "p",
                "--url",
                "ftp://x",
            ],
            2,
        ),
        (
            [
                "firmware",
                "add",
                str(good),
                "--version",
                "1.0.0",
                "--model",
                "p",
                "--requires-min",
                "x",
            ],
            2,
        ),
        (["firmware", "add", str(good), "--version", "1.0.0", "--model", ""], 2),
    ]
    # on a fresh workspace, a refused add creates no signing key and no image folder
    for args, code in refusals[1:]:
        result = cli(*args)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert not (ws.home / "ca" / "firmware-signing.key.pem").exists()
    assert not (ws.home / "firmware").exists()
    assert actions(ws) == before
    assert cli(*refusals[0][0]).exit_code == 0
    after_first = actions(ws)
    # the same MODEL@VERSION with other content: a conflict; nothing stored or recorded
    other = image(tmp_path, "other.bin", seed=5)
    clash = cli("firmware", "add", str(other), "--version", "1.2", "--model", "q", "--model", "p")
    assert clash.exit_code == Conflict.exit_code and "already catalogued" in clash.stderr
    assert len(list((ws.home / "firmware").iterdir())) == 1
    assert actions(ws) == after_first
    assert json.loads(cli("firmware", "list", "--count", "--json").stdout) == {"count": 1}


# --- per device ---------------------------------------------------------------------------


@pytest.fixture
def fleet_ws(ready_ws: Workspace, tmp_path: Path) -> Workspace:
    for device_id, model in (("a-1", "p200"), ("a-2", "p200"), ("a-3", "p200"), ("b-1", "gw")):
        devices.add_device(ready_ws, device_id, model=model, out_dir=tmp_path / "ids")
    devices.add_device(ready_ws, "old", model="p200", out_dir=tmp_path / "ids")
    devices.decommission_device(ready_ws, "old")
    return ready_ws


def test_record_reports_newest_wins_and_unknown_devices(fleet_ws: Workspace) -> None:
    ws = fleet_ws
    src = FirmwareSource.INGEST
    with write_session(ws.open_registry()) as session:
        done = record_reports(
            session,
            [
                Report("a-1", "1.0.0", src, T0),
                Report("a-1", "1.1.0", src, T0 + timedelta(minutes=2)),  # newer in the same batch
                Report("a-2", "1.0.0", src, T0),
                Report("ghost", "1.0.0", src, T0),
                Report("old", "1.0.0", src, T0),  # decommissioned
                Report("a-3", "x" * 65, src, T0),  # not safe text: too long, a formula, a comma
                Report("a-3", "=1.0.0", src, T0),
                Report("a-3", "1,0", src, T0),
            ],
        )
    assert (done.recorded, done.stale, done.unknown, done.invalid) == (2, 1, 2, 3)
    assert done.unknown_ids == ["ghost", "old"]
    with write_session(ws.open_registry()) as session:
        late = record_reports(
            session,
            [
                Report("a-1", "0.9.0", src, T0 + timedelta(minutes=1)),  # older: ignored
                Report("a-2", "1.0.0", src, T0),  # the same moment: ignored
                Report(
                    "a-2", None, FirmwareSource.MANUAL, T0 + timedelta(minutes=3), "failed", "E42"
                ),
            ],
        )
    assert (late.recorded, late.stale) == (1, 2)
    a1, a2 = firmware_row(ws, "a-1"), firmware_row(ws, "a-2")
    assert a1 is not None and a2 is not None
    assert (a1.reported_version, a1.reported_at, a1.reported_source) == (
        "1.1.0",
        T0 + timedelta(minutes=2),
        "ingest",
    )
    # a report without a version keeps the version and says what the update did
    assert (a2.reported_version, a2.update_state, a2.update_detail, a2.reported_source) == (
        "1.0.0",
        "failed",
        "E42",
        "manual",
    )
    assert firmware_row(ws, "old") is None and firmware_row(ws, "a-3") is None


def test_report_pin_unpin_and_device_show(fleet_ws: Workspace, cli: Cli) -> None:
    ws = fleet_ws
    assert cli("firmware", "report", "a-1", "1.2.0").exit_code == 0
    assert (
        cli("firmware", "report", "a-1", "--state", "in-progress", "--detail", "50%").exit_code == 0
    )
    assert cli("firmware", "report", "ghost", "1.0.0").exit_code == NotFound.exit_code
    assert cli("firmware", "report", "a-1", "nope").exit_code == 2
    assert cli("firmware", "report", "a-1", "1.0.0", "--state", "done").exit_code == 2
    assert cli("firmware", "report", "a-1").exit_code == 2
    assert cli("device", "pin", "a-1", "1.2.0").exit_code == 0
    assert "already pinned" in cli("device", "pin", "a-1", "1.2.0").stderr
    assert cli("device", "pin", "a-2", "1.3.0").exit_code == 0
    assert cli("device", "pin", "old", "1.3.0").exit_code == Conflict.exit_code
    assert cli("device", "pin", "a-2", "bad").exit_code == 2
    shown = json.loads(cli("device", "show", "a-1", "--json").stdout)["firmware"]
    assert shown["reported"]["version"] == "1.2.0"
    assert (shown["reported"]["source"], shown["reported"]["update_state"]) == (
        "manual",
        "in-progress",
    )
    assert shown["reported"]["update_detail"] == "50%"
    assert shown["pinned_version"] == "1.2.0" and shown["target"] == {
        "version": None,
        "rollout": None,
    }
    table = cli("device", "show", "a-1").stdout
    assert "1.2.0" in table and "firmware_pin" in table
    assert unpin_device(ws, "a-2") == "1.3.0"
    assert unpin_device(ws, "a-2") is None  # nothing to do: no event
    assert pin_device(ws, "b-1", "2.0.0") is None
    assert report_manual(ws, "b-1", "2.0.0").recorded == 1
    pins = [(a, t) for a, t in actions(ws) if a.startswith("device.") and "pin" in a]
    assert pins == [
        ("device.pin", "a-1"),
        ("device.pin", "a-2"),
        ("device.unpin", "a-2"),
        ("device.pin", "b-1"),
    ]
    # reports are telemetry: no audit event
    assert not any(a.startswith("firmware.report") for a, _ in actions(ws))
    b1 = firmware_row(ws, "b-1")
    assert b1 is not None and (b1.pinned_version, b1.reported_version) == ("2.0.0", "2.0.0")


# --- compliance ---------------------------------------------------------------------------


def test_compliance_counts_a_hand_counted_fleet(fleet_ws: Workspace, tmp_path: Path) -> None:
    ws = fleet_ws
    devices.add_device(ws, "a-4", model="p200", out_dir=tmp_path / "ids")
    devices.add_device(ws, "n-1", out_dir=tmp_path / "ids")  # no model
    add_image(ws, image(tmp_path), version="1.0.0", models=["p200"])
    add_image(ws, image(tmp_path, "b.bin", seed=2), version="1.1.0", models=["p200", "gw"])
    deprecate_image(ws, "1.0.0")
    src = FirmwareSource.INGEST
    with write_session(ws.open_registry()) as session:
        record_reports(
            session,
            [
                Report("a-1", "1.0.0", src, T0),  # deprecated
                Report("a-2", "1.1.0", src, T0),  # catalogued
                Report("a-3", "1.10.0-dev", src, T0),  # not a version fleet knows: unknown
                Report("b-1", "1.0.0", src, T0),  # 1.0.0 is not catalogued for gw: unknown
                Report("old", "1.1.0", src, T0),  # decommissioned: not counted
            ],
        )
        # targets as a rollout sets them: a-1 and a-2 should run 1.1.0 (a-2 does)
        session.execute(
            update(DeviceFirmware)
            .where(DeviceFirmware.device_id.in_(["a-1", "a-2"]))  # type: ignore[attr-defined]
            .values(target_version="1.1.0")
        )
    result = compliance(ws).to_dict()
    by_model = {m["model"]: m for m in result["models"]}
    assert list(by_model) == ["gw", "p200", None]
    assert by_model["p200"] == {
        "model": "p200",
        "devices": 4,
        "versions": [
            {"version": "1.0.0", "devices": 1, "status": "deprecated"},
            {"version": "1.1.0", "devices": 1, "status": "catalogued"},
            {"version": "1.10.0-dev", "devices": 1, "status": "unknown"},
        ],
        "no_report": 1,
        "behind_target": 1,
        "deprecated": 1,
        "unknown": 1,
    }
    assert by_model["gw"]["versions"] == [{"version": "1.0.0", "devices": 1, "status": "unknown"}]
    assert by_model[None]["no_report"] == 1
    assert result["totals"] == {
        "devices": 6,
        "no_report": 2,
        "behind_target": 1,
        "deprecated": 1,
        "unknown": 2,
    }
    only = compliance(ws, model="gw").to_dict()
    assert [m["model"] for m in only["models"]] == ["gw"]


# --- exports ------------------------------------------------------------------------------


def _rows(ws: Workspace, fmt: str = "csv", as_of: datetime | None = None) -> dict[str, dict]:  # type: ignore[type-arg]
    out = io.StringIO()
    export.write_devices(ws, out, fmt=fmt, as_of=as_of, replay_workers=1)
    if fmt == "csv":
        table = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
        assert tuple(table[0]) == export.CSV_COLUMNS
        return {r[0]: dict(zip(table[0], r, strict=True)) for r in table[1:]}
    text = out.getvalue()
    objects = json.loads(text) if fmt == "json" else list(map(json.loads, text.splitlines()))
    return {o["id"]: o for o in objects}


def test_export_columns_live_and_as_of(
    ready_ws: Workspace, tmp_path: Path, fleet_clock: FrozenClock
) -> None:
    ws = ready_ws
    for device_id in ("d-1", "d-2", "d-3"):
        devices.add_device(ws, device_id, model="p200", out_dir=tmp_path / "ids")
    fleet_clock.advance(minutes=1)

    def target(version: str | None, ids: list[str], rollout: str = "r1") -> None:
        # what a rollout does: the targets and their audit event, in one transaction
        with write_session(ws.open_registry()) as session:
            session.execute(
                update(DeviceFirmware)
                .where(DeviceFirmware.device_id.in_(ids))  # type: ignore[attr-defined]
                .values(target_version=version)
            )
            audit.append(session, "firmware.target", rollout, {"version": version, "devices": ids})

    with write_session(ws.open_registry()) as session:  # a device's own text, as ingested
        record_reports(session, [Report("d-1", "1.0.0 (é7)", FirmwareSource.INGEST, fleet_clock())])
    report_manual(ws, "d-2", "1.0.0")
    record(ws, [Seen("d-1", ConnectionState.ONLINE, EventSource.INGEST, fleet_clock())])
    target("1.1.0", ["d-1", "d-2"])
    first = fleet_clock()
    fleet_clock.advance(minutes=1)
    target(None, ["d-2"], "r2")
    live = _rows(ws)
    assert {k: live["d-1"][k] for k in export.CSV_COLUMNS[-4:]} == {
        "firmware_reported": "1.0.0 (é7)",
        "firmware_target": "1.1.0",
        "connection_state": "online",
        "last_seen": first.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert [live["d-2"][k] for k in export.CSV_COLUMNS[-4:]] == ["1.0.0", "", "", ""]
    assert [live["d-3"][k] for k in export.CSV_COLUMNS[-4:]] == ["", "", "", ""]
    as_json = _rows(ws, "jsonl")
    assert as_json["d-1"]["firmware_reported"] == "1.0.0 (é7)"
    assert (as_json["d-2"]["firmware_target"], as_json["d-3"]["last_seen"]) == (None, None)
    # the live tables (no cache) give the same bytes
    for fmt in ("csv", "json"):  # the cache appends them in SQL, the live path in Python
        cached, uncached = io.StringIO(), io.StringIO()
        export.write_devices(ws, cached, fmt=fmt)
        export.write_devices(ws, uncached, fmt=fmt, use_cache=False)
        assert cached.getvalue() == uncached.getvalue()
    # --as-of: the target as audited at that moment; reports and connection are not audited
    then = _rows(ws, as_of=first)
    assert [then["d-1"][k] for k in export.CSV_COLUMNS[-4:]] == ["", "1.1.0", "", ""]
    assert then["d-2"]["firmware_target"] == "1.1.0"  # cleared only later, by r2
    now = _rows(ws, "json", as_of=fleet_clock())
    assert (now["d-1"]["firmware_target"], now["d-2"]["firmware_target"]) == ("1.1.0", None)
    assert now["d-1"]["connection_state"] is None and now["d-1"]["firmware_reported"] is None


def test_reports_do_not_re_render_the_export_cache(fleet_ws: Workspace) -> None:
    from fleet.export.models import ExportRow

    ws = fleet_ws
    with read_session(ws.open_registry()) as session:
        before = session.execute(select(func.count()).select_from(ExportRow)).scalar_one()
        lines = dict(session.execute(select(ExportRow.device_id, ExportRow.line)).all())  # type: ignore[call-overload]
    report_manual(ws, "a-1", "1.0.0")
    record(ws, [Seen("a-1", ConnectionState.ONLINE, EventSource.INGEST, T0)])
    with read_session(ws.open_registry()) as session:
        assert session.execute(select(func.count()).select_from(ExportRow)).scalar_one() == before
        assert dict(session.execute(select(ExportRow.device_id, ExportRow.line)).all()) == lines  # type: ignore[call-overload]


# --- other report sources -----------------------------------------------------------------


def test_ingest_and_sparkplug_births_record_firmware(fleet_ws: Workspace) -> None:
    ws = fleet_ws
    lines = [
        {
            "device_id": "a-1",
            "state": "online",
            "time": "2027-03-01T08:00:00Z",
            "firmware": "1.2.0",
        },
        {
            "device_id": "a-1",
            "state": "offline",
            "time": "2027-03-01T07:00:00Z",
            "firmware": "1.1.0",
        },
        {
            "device_id": "ghost",
            "state": "online",
            "time": "2027-03-01T08:00:00Z",
            "firmware": "9.0.0",
        },
        {"device_id": "a-2", "state": "online", "time": "2027-03-01T08:00:00Z"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    report = ingest(ws, io.BytesIO(text.encode()))
    assert report.recorded.recorded == 3 and report.recorded.stray == 1
    a1 = firmware_row(ws, "a-1")
    assert a1 is not None
    assert (a1.reported_version, a1.reported_source, a1.reported_at) == ("1.2.0", "ingest", T0)
    assert firmware_row(ws, "a-2") is None  # no firmware said: nothing recorded
    # a Sparkplug NBIRTH carrying a firmware metric, as the watcher records it
    tracker = Tracker(IdMap("{node}", "{node}:{device}"), None)
    payload = encode_payload(
        int((T0 + timedelta(hours=1)).timestamp() * 1000),
        metrics={"bdSeq": 1, "Properties/Firmware Version": "2.4.1"},
    )
    seen = tracker.handle("spBv1.0/plant/NBIRTH/b-1", payload, T0 + timedelta(hours=1))
    record(ws, seen)
    b1 = firmware_row(ws, "b-1")
    assert b1 is not None
    assert (b1.reported_version, b1.reported_source) == ("2.4.1", "sparkplug")
    assert b1.reported_at == T0 + timedelta(hours=1)
