"""Auditor exports (``fleet export``, ``fleet audit export``, ``fleet export verify``) on SQLite
and PostgreSQL, checked with the real ``openssl`` CLI and pkilint."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from helpers import PASSPHRASE, REPO, Cli, run_fleet, snapshot
from pkitools import pkilint_cert, pkilint_chain

from fleet import certs, devices, export
from fleet import clock as fleet_clock
from fleet.errors import AuthError, IntegrityError, InvalidInput
from fleet.export import device_export, replay
from fleet.pki import cms, keys, signers
from fleet.pki.authority import init_workspace
from fleet.registry.audit import iter_audit_events
from fleet.views import DeviceView
from fleet.workspace import Workspace

OPENSSL = shutil.which("openssl")


def add(ws: Workspace, device_id: str, out: Path, **kwargs: Any) -> DeviceView:
    return devices.add_device(ws, device_id, out_dir=out, passphrase=PASSPHRASE, **kwargs)


def text_export(ws: Workspace, fmt: str, **kwargs: Any) -> str:
    buffer = io.StringIO(newline="")
    export.export_devices(ws, fmt=fmt, stream=buffer, **kwargs)
    return buffer.getvalue()


def openssl_cms_verify(file: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """The exact command docs/export.md gives auditors."""
    if OPENSSL is None:
        pytest.fail("openssl is not installed")
    return subprocess.run(
        [
            OPENSSL, "cms", "-verify", "-binary", "-inform", "PEM",
            "-in", f"{file}.p7s", "-content", str(file),
            "-CAfile", str(root), "-purpose", "any", "-out", os.devnull,
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def auditor_root(ws: Workspace, tmp_path: Path) -> Path:
    """The root certificate alone, as an auditor would hold it."""
    target = tmp_path / "auditor" / "root.pem"
    target.parent.mkdir(exist_ok=True)
    shutil.copy(ws.home / "ca" / "root.cert.pem", target)
    return target


# --- content and formats ----------------------------------------------------------------


def test_export_rows_in_every_format(ready_ws: Workspace, cli: Cli, out_dir: Path) -> None:
    add(ready_ws, "pump-1", out_dir, model="=HYPERLINK(1)", serial='a,b"c', labels={"site": "hh"})
    add(ready_ws, "pump-2", out_dir, model="+p2", serial="-5", labels={"z": "@x", "a": "1"})
    add(ready_ws, "pump-3", out_dir, model="p3")
    certs.renew_certificate(ready_ws, "pump-2", out_dir=out_dir, passphrase=PASSPHRASE)
    devices.decommission_device(ready_ws, "pump-3", reason="@retired")

    result = cli("export", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    raw = result.stdout_bytes.decode("utf-8")  # .stdout would turn CRLF into LF
    assert raw.count("\r\n") == 4 and "\n" not in raw.replace("\r\n", "")
    table = list(csv.reader(io.StringIO(raw, newline="")))
    assert tuple(table[0]) == export.CSV_COLUMNS
    rows = {r[0]: dict(zip(table[0], r, strict=True)) for r in table[1:]}
    assert list(rows) == ["pump-1", "pump-2", "pump-3"]
    # formula injection: a leading = + - @ gets a quote; RFC 4180 quoting survives a round trip
    assert rows["pump-1"]["model"] == "'=HYPERLINK(1)"
    assert rows["pump-1"]["serial"] == 'a,b"c'
    assert rows["pump-2"]["model"] == "'+p2"
    assert rows["pump-2"]["serial"] == "'-5"
    assert rows["pump-3"]["decommission_reason"] == "'@retired"
    assert rows["pump-2"]["labels"] == '{"a":"1","z":"@x"}'  # canonical JSON, starts with {

    jsonl = cli("export", "--format", "jsonl").stdout.splitlines()
    objects = [json.loads(line) for line in jsonl]
    as_array = json.loads(cli("export", "--format", "json").stdout)
    assert as_array == objects
    for obj in objects:
        shown = json.loads(cli("device", "show", obj["id"], "--json").stdout)
        newest = shown["certificates"][0]
        assert obj["certificate"] == {k: newest[k] for k in export.CERT_FIELDS}
        assert obj["clouds"] == []  # registered nowhere (tests/test_export_cache.py has some)
        joined = ("firmware_reported", "firmware_target", "connection_state", "last_seen")
        assert {k: obj[k] for k in joined} == dict.fromkeys(joined)  # none reported or seen
        assert {k: obj[k] for k in obj if k not in ("certificate", "clouds", *joined)} == {
            k: shown[k] for k in export.DEVICE_FIELDS
        }
        flat = rows[obj["id"]]
        assert flat["cert_serial"] == obj["certificate"]["serial"]
        assert flat["cert_not_after"] == obj["certificate"]["not_after"]
    by_id = {o["id"]: o for o in objects}
    assert by_id["pump-1"]["model"] == "=HYPERLINK(1)"  # JSON is not escaped
    assert by_id["pump-2"]["labels"] == {"a": "1", "z": "@x"}
    assert by_id["pump-3"]["status"] == "decommissioned"
    assert by_id["pump-3"]["certificate"]["status"] == "revoked"
    assert by_id["pump-3"]["certificate"]["revocation_reason"] == "cessationOfOperation"
    everything = result.stdout + "\n".join(jsonl)
    assert "PRIVATE KEY" not in everything and "BEGIN CERTIFICATE" not in everything


def test_empty_registry_exports_header_or_empty_array(ready_ws: Workspace, cli: Cli) -> None:
    assert cli("export").stdout_bytes == (",".join(export.CSV_COLUMNS) + "\r\n").encode()
    assert json.loads(cli("export", "-f", "json").stdout) == []
    assert cli("export", "-f", "jsonl").stdout == ""


def test_filters(ready_ws: Workspace, cli: Cli, out_dir: Path) -> None:
    add(ready_ws, "a-1", out_dir, model="p1", labels={"site": "hh", "line": "1"})
    add(ready_ws, "a-2", out_dir, model="p1", labels={"site": "ber"}, serial="S2")
    add(ready_ws, "a-3", out_dir, model="p2", labels={"site": "hh"})
    add(ready_ws, "a-4", out_dir, model="p2")
    devices.decommission_device(ready_ws, "a-4")
    serial = devices.show_device(ready_ws, "a-3").certificates[0].serial
    certs.revoke_certificate(ready_ws, serial)

    def ids(*args: str) -> list[str]:
        result = cli("export", "-f", "jsonl", *args)
        assert result.exit_code == 0, result.stderr
        return [json.loads(line)["id"] for line in result.stdout.splitlines()]

    assert ids() == ["a-1", "a-2", "a-3", "a-4"]
    assert ids("--model", "p1") == ["a-1", "a-2"]
    assert ids("--label", "site=hh") == ["a-1", "a-3"]
    assert ids("--label", "site=hh", "--label", "line=1") == ["a-1"]
    assert ids("--where", "label.site=ber") == ["a-2"]
    assert ids("--status", "decommissioned") == ["a-4"]
    assert ids("--where", "serial=S2") == ["a-2"]
    assert ids("--where", "cert_status=revoked") == ["a-3", "a-4"]
    assert ids("--where", "cert_status=active", "--model", "p1") == ["a-1", "a-2"]
    # quotes in filter values stay values (on PostgreSQL the cache is read by COPY, whose
    # parameters psycopg binds client-side)
    add(ready_ws, "a-5", out_dir, model="p'3", labels={"site": "x'); DROP TABLE device; --"})
    assert ids("--model", "p'3") == ["a-5"]
    assert ids("--label", "site=x'); DROP TABLE device; --") == ["a-5"]
    assert ids("--model", "p'3", "--where", "cert_status=active") == ["a-5"]
    assert len(ids()) == 5
    # the same filters on a rebuilt (--as-of) registry
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert ids("--as-of", later, "--label", "site=hh") == ["a-1", "a-3"]
    assert ids("--as-of", later, "--where", "cert_status=revoked") == ["a-3", "a-4"]
    assert ids("--as-of", later, "--model", "p2", "--status", "active") == ["a-3"]

    for args, words in [
        (("--where", "colour=red"), "unknown filter field 'colour'"),
        (("--where", "model"), "must be FIELD=VALUE"),
        (("--status", "sleeping"), "device status must be one of"),
        (("--where", "cert_status=bogus"), "certificate status must be one of"),
        (("--label", "novalue"), "must be KEY=VALUE"),
        (("--format", "xml"), "format must be one of"),
    ]:
        result = cli("export", *args)
        assert result.exit_code == InvalidInput.exit_code, args
        assert words in result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert result.stdout == ""


# --- --as-of ----------------------------------------------------------------------------


class Clock:
    """Simulated time for the library's clock (:func:`fleet.clock.now`)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    state = Clock(datetime(2027, 3, 1, 9, 0, 0, 250000, tzinfo=UTC))
    with fleet_clock.frozen(lambda: state.now):
        yield state


def test_as_of_equals_what_a_plain_export_printed_then(
    ready_ws: Workspace, out_dir: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    printed: list[tuple[datetime, dict[str, str]]] = []

    def record() -> None:
        moment = clock.now
        printed.append(
            (moment, {fmt: text_export(ready_ws, fmt, now=moment) for fmt in export.FORMATS})
        )

    record()  # nothing yet
    clock.advance(seconds=1)
    add(ready_ws, "m-1", out_dir, model="p1", labels={"site": "hh"})
    add(ready_ws, "m-2", out_dir, model="p1", serial="S-2")
    record()
    clock.advance(days=3)
    devices.update_device(ready_ws, "m-1", set_labels={"line": "4"}, model="p1b")
    add(ready_ws, "m-3", out_dir, model="=p3")
    clock.advance(seconds=1)
    record()
    clock.advance(days=40)
    certs.renew_certificate(ready_ws, "m-2", out_dir=out_dir, passphrase=PASSPHRASE)
    clock.advance(minutes=5)
    record()
    clock.advance(days=2)
    certs.renew_certificate(
        ready_ws, "m-1", out_dir=out_dir, revoke_old=True, passphrase=PASSPHRASE
    )
    serial = devices.show_device(ready_ws, "m-2").certificates[0].serial
    certs.revoke_certificate(ready_ws, serial, reason="key-compromise")
    devices.update_device(ready_ws, "m-3", remove_labels=[], serial="X")
    record()
    clock.advance(days=100)
    devices.decommission_device(ready_ws, "m-3", reason="flooded")
    record()
    clock.advance(days=400)  # the certificates expire; nothing else happens
    record()

    for moment, expected in printed:
        for fmt in export.FORMATS:
            rebuilt = text_export(ready_ws, fmt, as_of=moment, now=moment)
            assert rebuilt == expected[fmt], (moment, fmt)
    # the same, replayed in parts of one device by two worker processes (a big registry)
    monkeypatch.setattr(replay, "REPLAY_PART_DEVICES", 1)
    for moment, expected in printed[1:]:
        for fmt in export.FORMATS:
            parts = text_export(ready_ws, fmt, as_of=moment, now=moment, replay_workers=2)
            assert parts == expected[fmt], (moment, fmt)
    revoked = export.parse_filters(where=["cert_status=revoked"])
    serial_text, parallel_text = (
        text_export(ready_ws, "csv", as_of=clock.now, filters=revoked, replay_workers=n)
        for n in (1, 2)
    )
    assert parallel_text == serial_text and serial_text.count("\r\n") == 3  # header + 2
    # between two events: the earlier state; the exact event time is included
    first_add, second = printed[0][0], printed[1][0]
    assert text_export(ready_ws, "jsonl", as_of=first_add - timedelta(seconds=1)) == ""
    assert text_export(ready_ws, "jsonl", as_of=second, now=second) == printed[1][1]["jsonl"]
    statuses = [json.loads(x)["certificate"]["status"] for x in printed[-1][1]["jsonl"].split()]
    assert statuses == ["expired", "revoked", "revoked"]


def test_as_of_through_the_cli(ready_ws: Workspace, cli: Cli, out_dir: Path) -> None:
    add(ready_ws, "c-1", out_dir)
    result = cli("export", "-f", "jsonl", "--as-of", "2000-01-01")
    assert result.exit_code == 0 and result.stdout == ""
    assert cli("export", "-f", "jsonl", "--as-of", "0s").stdout.count("\n") == 1


# --- signing and verification -----------------------------------------------------------


def test_signed_export_verifies_with_openssl_and_fleet(
    ready_ws: Workspace, cli: Cli, out_dir: Path, tmp_path: Path
) -> None:
    add(ready_ws, "s-1", out_dir, model="p1")
    add(ready_ws, "s-2", out_dir, model="p2")
    target = tmp_path / "export" / "devices.csv"
    target.parent.mkdir()
    result = cli("export", "--out", str(target), "--label", "none=x", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 0
    result = cli("export", "--out", str(target), "--model", "p1", "--json", "--force")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "devices.csv", "devices.csv.manifest.json", "devices.csv.manifest.json.p7s",
        "devices.csv.p7s",
    ]  # fmt: skip
    manifest = json.loads((target.parent / "devices.csv.manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert manifest["rows"] == summary["rows"] == 1
    assert manifest["format"] == "csv" and manifest["kind"] == "devices"
    assert manifest["filters"] == {"model": "p1"}
    assert manifest["columns"] == list(export.CSV_COLUMNS)
    events = list(iter_audit_events(ready_ws))
    assert manifest["audit_head"] == {"seq": events[-1]["seq"], "hash": events[-1]["hash"]}
    assert manifest["fleet_version"] and manifest["created_at"].endswith("Z")

    root = auditor_root(ready_ws, tmp_path)
    proc = openssl_cms_verify(target, root)
    assert proc.returncode == 0, proc.stderr
    assert "Verification successful" in proc.stderr
    proc = openssl_cms_verify(target.parent / "devices.csv.manifest.json", root)
    assert proc.returncode == 0, proc.stderr
    ok = cli("export", "verify", str(target), "--ca", str(root))
    assert ok.exit_code == 0, ok.stderr
    assert "verified" in ok.stderr
    report = json.loads(cli("export", "verify", str(target), "--json").stdout)
    assert report["ok"] and {c["name"] for c in report["checks"]} == {
        "signature", "manifest signature", "chain", "hash", "row count",
    }  # fmt: skip

    # one byte changed: openssl and fleet both refuse, fleet names what failed
    data = bytearray(target.read_bytes())
    data[-5] ^= 0x01
    target.write_bytes(bytes(data))
    assert openssl_cms_verify(target, root).returncode != 0
    bad = cli("export", "verify", str(target), "--ca", str(root))
    assert bad.exit_code == IntegrityError.exit_code
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "signature (" in last and "hash (" in last
    assert "row count (" not in last


def test_verify_names_chain_and_row_count_failures(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, out_dir: Path, tmp_path: Path
) -> None:
    add(ready_sqlite_ws, "v-1", out_dir)
    target = tmp_path / "d.jsonl"
    export.export_devices(ready_sqlite_ws, fmt="jsonl", out=target, passphrase=PASSPHRASE)

    # another organisation's root: the signatures are intact but do not chain to it
    other = Workspace(home=tmp_path / "other")
    init_workspace(other, name="Other", passphrase=PASSPHRASE)
    other.close()
    report = export.verify_export(target, root=other.home / "ca" / "root.cert.pem")
    assert [c.name for c in report.failed()] == ["chain", "chain"]
    assert "does not chain to the root" in report.failed()[0].detail
    result = sqlite_cli(
        "export", "verify", str(target), "--ca", str(other.home / "ca/root.cert.pem")
    )
    assert result.exit_code == IntegrityError.exit_code and "chain (" in result.stderr

    # a manifest that lies about the row count, signed with the real key (a buggy exporter)
    manifest_file = target.with_name("d.jsonl.manifest.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["rows"] = 2
    doctored = json.dumps(manifest).encode()
    manifest_file.write_bytes(doctored)
    signer = signers.load_signer(ready_sqlite_ws, PASSPHRASE)
    target.with_name("d.jsonl.manifest.json.p7s").write_bytes(cms.sign_detached(signer, doctored))
    report = export.verify_export(target, ws=ready_sqlite_ws)
    assert [c.name for c in report.failed()] == ["row count"]
    assert "holds 1 rows; the manifest says 2" in report.failed()[0].detail

    # a missing signature is named too
    target.with_name("d.jsonl.p7s").unlink()
    report = export.verify_export(target, ws=ready_sqlite_ws)
    assert "signature" in [c.name for c in report.failed()]
    assert "d.jsonl.p7s is missing" in report.failed()[0].detail


def test_export_signing_certificate(
    ready_sqlite_ws: Workspace, out_dir: Path, tmp_path: Path
) -> None:
    add(ready_sqlite_ws, "k-1", out_dir)
    for n in range(2):
        export.export_devices(ready_sqlite_ws, out=tmp_path / f"e{n}.csv", passphrase=PASSPHRASE)
    folder = ready_sqlite_ws.home / "ca"
    cert_file, key_file = folder / "export-signing.cert.pem", folder / "export-signing.key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in key_file.read_bytes()
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert not usage.key_encipherment and not usage.content_commitment
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    issuing = folder / "issuing.cert.pem"
    assert pkilint_cert(cert_file) == []
    assert pkilint_chain(issuing, cert_file) == []
    # issued once, audited once; device certificates still come from the issuing CA
    issued = [e for e in iter_audit_events(ready_sqlite_ws) if e["action"] == "ca.export_signer"]
    assert len(issued) == 1
    assert issued[0]["details"]["fingerprint_sha256"] == keys.fingerprint_sha256(cert)
    device = add(ready_sqlite_ws, "k-2", out_dir)
    leaf = x509.load_pem_x509_certificate((out_dir / "k-2" / "cert.pem").read_bytes())
    assert leaf.issuer == x509.load_pem_x509_certificate(issuing.read_bytes()).subject
    assert device.certificates[0].serial == format(leaf.serial_number, "x")
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku  # the device profile, not the signer's
    # a wrong passphrase cannot use the signer
    with pytest.raises(AuthError):
        signers.load_signer(ready_sqlite_ws, "wrong")


def test_stdout_export_is_unsigned_and_sign_needs_out(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, out_dir: Path
) -> None:
    add(ready_sqlite_ws, "o-1", out_dir)
    result = sqlite_cli("export", "--sign")
    assert result.exit_code == InvalidInput.exit_code
    assert "--sign needs --out" in result.stderr
    child = run_fleet("--home", str(ready_sqlite_ws.home), "export", "-f", "jsonl")
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout)["id"] == "o-1" and child.stderr == ""


def test_unsigned_file_export(ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "plain.json"
    result = sqlite_cli("export", "-f", "json", "--out", str(target), "--no-sign")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["plain.json"]
    assert json.loads(target.read_text()) == []


# --- failures leave nothing behind ------------------------------------------------------


def test_errors_are_one_line_and_leave_nothing(
    ready_ws: Workspace, cli: Cli, out_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(ready_ws, "e-1", out_dir)
    dest = tmp_path / "dest"
    dest.mkdir()
    export.export_devices(ready_ws, out=dest / "first.csv", passphrase=PASSPHRASE)
    before = snapshot(ready_ws, dest)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cases = [
        (("--as-of", "last tuesday", "--out", str(dest / "x.csv")), "cannot parse time"),
        (("--where", "owner=me", "--out", str(dest / "x.csv")), "unknown filter field"),
        (("--out", str(tmp_path / "missing" / "x.csv")), "cannot write"),
        (("--out", str(dest)), "is a directory"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((("--out", str(locked / "x.csv")), "cannot write"))
    for args, words in cases:
        result = cli("export", *args)
        assert result.exit_code == InvalidInput.exit_code, (args, result.stderr)
        assert words in result.stderr, args
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    bad_since = cli("audit", "export", "--since", "soon", "--out", str(dest / "a.jsonl"))
    assert bad_since.exit_code == InvalidInput.exit_code and "cannot parse time" in bad_since.stderr
    monkeypatch.setenv("FLEET_CA_PASSPHRASE", "wrong")
    wrong = cli("export", "--out", str(dest / "x.csv"))
    assert wrong.exit_code == AuthError.exit_code
    assert snapshot(ready_ws, dest) == before

    # a failure halfway through the rows: no partial file, no temporary file
    real = device_export.write_lines  # every path (cache, live, as-of) writes through it

    def explode(stream: Any, fmt: str, batches: Any) -> int:
        real(stream, fmt, batches)
        raise RuntimeError("disk on fire")

    monkeypatch.setenv("FLEET_CA_PASSPHRASE", PASSPHRASE)
    monkeypatch.setattr(device_export, "write_lines", explode)
    with pytest.raises(RuntimeError):  # replacing a signed export: --force
        export.export_devices(ready_ws, out=dest / "first.csv", passphrase=PASSPHRASE, force=True)
    with pytest.raises(RuntimeError):
        export.export_devices(ready_ws, out=dest / "new.csv", passphrase=PASSPHRASE)
    assert snapshot(ready_ws, dest) == before


# --- the audit trail --------------------------------------------------------------------


def recompute_chain(lines: list[str]) -> list[str]:
    """What docs/export.md tells auditors to do, without fleet: drop ``hash``, serialise the
    rest with sorted keys and no whitespace (UTF-8), SHA-256 it, compare and link."""
    problems: list[str] = []
    previous = None
    for line in lines:
        event = json.loads(line)
        claimed = event.pop("hash")
        body = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if hashlib.sha256(body.encode("utf-8")).hexdigest() != claimed:
            problems.append(f"{event['seq']}: hash")
        if previous is not None and event["prev_hash"] != previous:
            problems.append(f"{event['seq']}: link")
        previous = claimed
    return problems


def test_audit_export_is_signed_and_recomputable(
    ready_ws: Workspace, cli: Cli, out_dir: Path, tmp_path: Path
) -> None:
    add(ready_ws, "au-1", out_dir, labels={"ort": "Düsseldorf"})
    add(ready_ws, "au-2", out_dir)
    devices.update_device(ready_ws, "au-2", model="m")
    target = tmp_path / "audit.jsonl"
    result = cli("audit", "export", "--out", str(target), "--json")
    assert result.exit_code == 0, result.stderr
    lines = target.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["action"] == "ca.init" and events[0]["prev_hash"] == "0" * 64
    assert recompute_chain(lines) == []
    manifest = json.loads(target.with_name("audit.jsonl.manifest.json").read_text())
    assert manifest["kind"] == "audit" and manifest["rows"] == len(lines)
    assert manifest["audit_head"]["hash"] == events[-1]["hash"]
    root = auditor_root(ready_ws, tmp_path)
    assert openssl_cms_verify(target, root).returncode == 0
    report = export.verify_export(target, root=root)
    assert report.ok and "audit chain" in [c.name for c in report.checks]

    # --since/--until select a window ([since, until)); the window still links up
    middle = events[2]["ts"]
    window = cli("audit", "export", "--since", middle, "--until", events[-1]["ts"])
    assert window.exit_code == 0, window.stderr
    selected = [json.loads(x) for x in window.stdout.splitlines()]
    assert selected and all(middle <= e["ts"] < events[-1]["ts"] for e in selected)
    assert recompute_chain(window.stdout.splitlines()) == []

    # editing one event breaks the signature, the hash and the recomputed chain
    tampered = lines[1].replace("au-1", "au-9")
    target.write_text("\n".join([lines[0], tampered, *lines[2:]]) + "\n", encoding="utf-8")
    assert openssl_cms_verify(target, root).returncode != 0
    assert recompute_chain(target.read_text(encoding="utf-8").splitlines()) != []
    failed = {c.name for c in export.verify_export(target, root=root).failed()}
    assert failed == {"signature", "hash", "audit chain"}


# --- the benchmark at tiny N ------------------------------------------------------------


def test_bench_runs_at_tiny_n(tmp_path: Path) -> None:
    """The benchmark builds a registry the way fleet writes it; at N=500 it must pass its own
    consistency checks (the audit chain verifies, --as-of now equals the live export)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "export.py"), "--devices", "500",
         "--workdir", str(tmp_path), "--check", "--shuffled"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rows/s" in proc.stdout and "as-of" in proc.stdout
    assert "check: ok" in proc.stdout


def test_fleet_and_independent_signatures_all_verify(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    """fleet's streamed encoder (files and bytes) and an independent producer, cryptography's
    PKCS7SignatureBuilder: openssl and fleet's verifier accept all of them, for any content."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    def builder_signature(content: bytes) -> bytes:
        return (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(content)
            .add_signer(signer.cert, signer.key, keys.signature_hash(signer.key))
            .add_certificate(signer.issuing)
            .sign(
                serialization.Encoding.PEM,
                [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
            )
        )

    signer = signers.load_signer(ready_sqlite_ws, PASSPHRASE)
    root = auditor_root(ready_sqlite_ws, tmp_path)
    trusted = x509.load_pem_x509_certificate(root.read_bytes())
    for name, content in [("empty", b""), ("small", b"a,b\r\n"), ("big", os.urandom(3 << 20))]:
        target = tmp_path / name
        target.write_bytes(content)
        for signature in (
            cms.sign_detached(signer, target),
            cms.sign_detached(signer, content),
            builder_signature(content),
        ):
            target.with_name(f"{name}.p7s").write_bytes(signature)
            proc = openssl_cms_verify(target, root)
            assert proc.returncode == 0, (name, proc.stderr)
            assert cms.verify_detached(signature, target, trusted).signer == signer.cert
            with pytest.raises(cms.SignatureError) as failure:
                cms.verify_detached(signature, content + b"x", trusted)
            assert failure.value.check == "signature"
