"""The onboarding station (``fleet onboard``) through a real terminal, its labels, and
PKCS#12 bundles (``--format p12``) read back by openssl and cryptography.

The terminal tests drive ``python -m fleet onboard`` in a pseudo-terminal with pexpect; a
barcode scanner is a keyboard that types a line and Enter, so it is simulated by typed lines.
Labels are read back by zxing-cpp (a QR decoder) from the PNG, itself read by a small PNG
reader here.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from xml.etree import ElementTree

import pexpect
import pytest
import segno
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from helpers import PASSPHRASE, Cli, child_env, run_fleet
from sqlmodel import col, select

from fleet.cloud.clouds import add_cloud
from fleet.cloud.models import CloudJob
from fleet.devices import add_device
from fleet.errors import Conflict, InvalidInput
from fleet.files import public_mode
from fleet.onboard.labels import Label, parse_payload
from fleet.onboard.session import OnboardingSession, known_models
from fleet.registry.db import read_session
from fleet.registry.models import Device
from fleet.statuses import JobState
from fleet.workspace import Workspace

P12_PASSWORD = "p12-Secret-4f1c9a"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def unreachable_url() -> str:
    """An HTTP URL on a local port nothing listens on (the station is offline)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/devices/{{id}}"


def spawn_onboard(ws: Workspace, cwd: Path, *args: str, env: dict[str, str]) -> pexpect.spawn:
    """``fleet onboard`` in a pseudo-terminal (stdin, stdout and stderr all the terminal)."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "fleet", "--home", str(ws.home), "onboard", *args],
        cwd=str(cwd),
        env=child_env(env),
        encoding="utf-8",
        timeout=30,
        dimensions=(60, 160),
    )
    child.logfile_read = io.StringIO()  # everything the terminal showed
    return child


def answer(child: pexpect.spawn, prompt: str, line: str) -> None:
    child.expect_exact(prompt)
    child.sendline(line)


def scan_device(child: pexpect.spawn, device_id: str, serial: str, model: str, labels: str) -> None:
    """One device at the bench: ID and serial scanned, model and labels typed (or Enter)."""
    answer(child, "Device ID:", device_id)
    answer(child, "Serial:", serial)
    answer(child, "Model", model)
    answer(child, "Labels", labels)
    child.expect_exact(f"Onboarded {device_id}: certificate ")


def transcript(child: pexpect.spawn) -> str:
    """Everything the terminal showed, once the session ended."""
    child.expect(pexpect.EOF)
    child.close()
    assert isinstance(child.logfile_read, io.StringIO)
    return ANSI.sub("", child.logfile_read.getvalue())


@pytest.fixture
def station(ready_sqlite_ws: Workspace, tmp_path: Path) -> Workspace:
    """A workspace with one device already registered and an offline HTTP cloud."""
    ws = ready_sqlite_ws
    add_device(ws, "taken-1", model="p100", out_dir=tmp_path / "earlier")
    add_cloud(ws, "plant", "http", {"url": unreachable_url()})
    return ws


def test_onboard_session_through_a_terminal(station: Workspace, tmp_path: Path) -> None:
    """Three devices, a wrong ID corrected, a duplicate refused, an empty ID ends: the
    registry holds them, their registrations wait offline, the summary says so."""
    env = {"FLEET_CA_PASSPHRASE": PASSPHRASE}
    child = spawn_onboard(
        station, tmp_path, "--out", "ids", "--cloud", "plant", "--label-dir", "labels", env=env
    )
    child.expect_exact("Known models: p100")
    scan_device(child, "pump-1", "SN-0001", "p200", "site=hamburg,rack=r1")
    # a misread scan: the same message as `device add`, then the right one
    answer(child, "Device ID:", "pump 2!")
    child.expect_exact("error: device ID 'pump 2!' contains ' ', '!'; allowed are letters, digits")
    answer(child, "Device ID:", "taken-1")
    child.expect_exact("error: device 'taken-1' already exists")
    # the last model and labels are offered: Enter takes them
    answer(child, "Device ID:", "pump-2")
    answer(child, "Serial:", "SN-0002")
    child.expect_exact("Model (p100, p200) [p200]:")
    child.sendline("")
    child.expect_exact("Labels (k=v,k=v) [rack=r1,site=hamburg]:")
    child.sendline("")
    child.expect_exact("Onboarded pump-2: certificate ")
    # a bad serial is refused and asked again
    answer(child, "Device ID:", "pump-3")
    answer(child, "Serial:", "x" * 200)
    child.expect_exact("error: serial must be 1 to 128 printable characters")
    answer(child, "Serial:", "SN-0003")
    answer(child, "Model", "-")
    answer(child, "Labels", "-")
    child.expect_exact("Onboarded pump-3: certificate ")
    answer(child, "Device ID:", "")
    out = transcript(child)
    assert child.exitstatus == 0, out
    assert "Session ended: 3 devices onboarded, 3 entries refused" in out
    assert f"refused '{'x' * 37}...': serial must be 1 to 128" in out
    assert "onboarded: pump-1, pump-2, pump-3" in out
    assert "refused 'taken-1': device 'taken-1' already exists" in out
    assert "3 registrations wait for the network on plant" in out
    assert PASSPHRASE not in out

    with read_session(station.open_registry()) as session:
        rows = {d.id: d for d in session.exec(select(Device)).all()}
        jobs = session.exec(select(CloudJob).where(col(CloudJob.cloud) == "plant")).all()
    assert (rows["pump-1"].serial, rows["pump-1"].model) == ("SN-0001", "p200")
    assert rows["pump-2"].labels == {"site": "hamburg", "rack": "r1"}
    assert (rows["pump-3"].model, rows["pump-3"].labels) == (None, {})
    # queued, never sent: no attempt was made against the unreachable cloud
    assert sorted((j.device_id, j.state, j.attempts) for j in jobs) == [
        (f"pump-{n}", JobState.PENDING, 0) for n in (1, 2, 3)
    ]
    for n in (1, 2, 3):
        bundle = tmp_path / "ids" / f"pump-{n}"
        assert sorted(p.name for p in bundle.iterdir()) == ["cert.pem", "chain.pem", "key.pem"]
        fingerprint = _fingerprint(bundle / "cert.pem")
        png = (tmp_path / "labels" / f"pump-{n}-label.png").read_bytes()
        assert decode_qr(png) == f"fleet1;id=pump-{n};sn=SN-000{n};sha256={fingerprint}"


def test_ctrl_c_ends_with_a_summary_and_the_passphrase_is_asked_once(
    station: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No FLEET_CA_PASSPHRASE: the CA passphrase is typed once (not echoed); two devices;
    Ctrl-C at the next prompt ends the session with its summary."""
    monkeypatch.delenv("FLEET_CA_PASSPHRASE")
    child = spawn_onboard(station, tmp_path, "--out", "ids", env={})
    answer(child, "CA passphrase:", PASSPHRASE)
    scan_device(child, "valve-1", "V1", "", "")
    scan_device(child, "valve-2", "V2", "", "")
    child.expect_exact("Device ID:")
    child.sendintr()
    out = transcript(child)
    assert child.exitstatus == 0, out
    assert "Session ended: 2 devices onboarded, 0 entries refused" in out
    assert out.count("CA passphrase") == 1
    assert PASSPHRASE not in out
    # the label (ID, serial, fingerprint) is shown beside the code in the terminal
    fingerprint = _fingerprint(tmp_path / "ids" / "valve-2" / "cert.pem")
    assert f"SHA-256 {fingerprint[:32]}" in out
    assert "SN V2" in out


def _fingerprint(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


# --- the library --------------------------------------------------------------------------


def test_session_queues_offline_and_offers_known_models(
    ready_ws: Workspace, tmp_path: Path
) -> None:
    """The library twin on each registry: models from the registry, the same refusals as
    `device add`, registrations queued in the device's transaction, counted in the summary."""
    ws = ready_ws
    add_device(ws, "old-1", model="p300", out_dir=tmp_path / "earlier")
    add_device(ws, "old-2", model="p100", out_dir=tmp_path / "earlier")
    add_device(ws, "old-3", model="p300", out_dir=tmp_path / "earlier")
    add_cloud(ws, "plant", "http", {"url": unreachable_url()})
    session = OnboardingSession.open(ws, out_dir=tmp_path / "ids", clouds=["plant"])
    assert session.models == ["p100", "p300"]
    with pytest.raises(Conflict, match="device 'old-1' already exists"):
        session.check_id("old-1")
    with pytest.raises(InvalidInput, match="model must be 1 to 128 printable characters"):
        session.check_model("bad\x01model")
    first = session.onboard("new-1", serial="S1", model="p400", labels={"line": "a"})
    session.onboard("new-2", serial="S2", model="p400")
    assert session.models == ["p100", "p300", "p400"]
    assert (session.last_model, session.last_labels) == ("p400", {})
    assert first.label_files is not None
    assert first.label_files.png == tmp_path / "ids" / "new-1" / "new-1-label.png"
    summary = session.summary()
    assert summary.to_dict()["queued_registrations"] == 2
    assert summary.onboarded == ["new-1", "new-2"]
    assert [r.entry for r in summary.refused] == ["old-1", "bad\x01model"]


def test_known_models_seek_the_model_index(ready_sqlite_ws: Workspace) -> None:
    from sqlalchemy import text

    engine = ready_sqlite_ws.open_registry()
    assert known_models(engine) == []
    with engine.connect() as conn:
        plan = conn.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT model FROM device WHERE model IS NOT NULL "
                "AND model > 'a' ORDER BY model LIMIT 1"
            )
        ).all()
    assert "ix_device_model_id" in " ".join(str(row) for row in plan)


# --- labels -------------------------------------------------------------------------------


def png_pixels(data: bytes) -> tuple[int, list[bytes]]:
    """A 1-bit greyscale PNG (what segno writes) read independently: its width and its rows
    of packed bits (1 = white), CRCs checked, filters undone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert (depth, colour, interlace) == (1, 0, 0) and width == height
    raw = zlib.decompress(idat)
    stride = (width + 7) // 8
    rows: list[bytes] = []
    previous = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(1, stride):
                line[i] = (line[i] + line[i - 1]) & 0xFF
        elif kind == 2:
            for i in range(stride):
                line[i] = (line[i] + previous[i]) & 0xFF
        else:
            assert kind == 0, f"PNG filter {kind}"
        rows.append(bytes(line))
        previous = bytes(line)
    return width, rows


def decode_qr(data: bytes) -> str:
    """The text of the QR code in a PNG, decoded by zxing-cpp (an independent reader)."""
    import zxingcpp

    width, rows = png_pixels(data)
    grey = bytes(
        255 if (row[x // 8] >> (7 - x % 8)) & 1 else 0 for row in rows for x in range(width)
    )
    found = zxingcpp.read_barcodes(memoryview(grey).cast("B", (width, width)))
    assert [code.format for code in found] == [zxingcpp.BarcodeFormat.QRCode]
    text: str = found[0].text
    return text


def png_modules(data: bytes, scale: int, border: int) -> list[list[bool]]:
    """The dark modules of a PNG QR code, sampled at each module's centre."""
    width, rows = png_pixels(data)
    size = width // scale - 2 * border

    def dark(x: int, y: int) -> bool:
        return not (rows[y][x // 8] >> (7 - x % 8)) & 1

    return [
        [
            dark((border + c) * scale + scale // 2, (border + r) * scale + scale // 2)
            for c in range(size)
        ]
        for r in range(size)
    ]


def test_device_label_holds_id_serial_and_fingerprint(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    """`fleet device label`: the PNG is the QR code of the documented text (read back
    pixel by pixel), the SVG has the text beside the code, files are public and complete."""
    add_device(ready_sqlite_ws, "pump-7", serial="SN;7=x%", out_dir=tmp_path / "ids")
    fingerprint = _fingerprint(tmp_path / "ids" / "pump-7" / "cert.pem")
    result = sqlite_cli("device", "label", "pump-7", "--out", str(tmp_path / "labels"), "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    payload = f"fleet1;id=pump-7;sn=SN%3B7%3Dx%25;sha256={fingerprint}"
    assert shown["payload"] == payload
    assert parse_payload(payload) == {"id": "pump-7", "sn": "SN;7=x%", "sha256": fingerprint}

    png = tmp_path / "labels" / "pump-7-label.png"
    svg = tmp_path / "labels" / "pump-7-label.svg"
    txt = tmp_path / "labels" / "pump-7-label.txt"
    for path in (png, svg, txt):
        assert stat.S_IMODE(path.stat().st_mode) == public_mode()
    assert decode_qr(png.read_bytes()) == payload
    expected = segno.make_qr(payload, error="m", boost_error=True)
    matrix = [[bool(cell) for cell in row] for row in expected.matrix]
    assert png_modules(png.read_bytes(), scale=8, border=4) == matrix
    side = (len(matrix) + 8) * 8
    assert struct.unpack(">II", png.read_bytes()[16:24]) == (side, side)

    tree = ElementTree.fromstring(svg.read_bytes())
    texts = [el.text for el in tree.iter("{http://www.w3.org/2000/svg}text")]
    assert texts == [
        "pump-7",
        "SN SN;7=x%",
        f"SHA-256 {fingerprint[:32]}",
        f"        {fingerprint[32:]}",
    ]
    assert list(tree.iter("{http://www.w3.org/2000/svg}path"))  # the code's modules
    assert txt.read_text().splitlines()[0] == payload

    plain = sqlite_cli("device", "label", "pump-7", "--out", str(tmp_path / "labels"))
    assert "SN SN;7=x%" in plain.stderr and str(png) in plain.stderr
    missing = sqlite_cli("device", "label", "nope", "--out", str(tmp_path / "labels"))
    assert (missing.exit_code, missing.stderr) == (3, "error: no device 'nope' in the registry\n")


def test_label_refuses_a_device_without_an_active_certificate(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    add_device(ready_sqlite_ws, "gone-1", out_dir=tmp_path / "ids")
    sqlite_cli("device", "decommission", "gone-1")
    result = sqlite_cli("device", "label", "gone-1", "--out", str(tmp_path / "labels"))
    assert result.exit_code == 4
    assert result.stderr == "error: device 'gone-1' has no active certificate to put on a label\n"
    assert not (tmp_path / "labels").exists()


def test_label_payload_round_trip() -> None:
    label = Label("a.b:c_d-1", None, "ab" * 32)
    assert label.payload == f"fleet1;id=a.b:c_d-1;sha256={'ab' * 32}"
    assert parse_payload(label.payload) == {"id": "a.b:c_d-1", "sha256": "ab" * 32}
    with pytest.raises(InvalidInput, match="not a fleet label"):
        parse_payload("WIFI:S:x;;")


# --- PKCS#12 bundles ----------------------------------------------------------------------


def _check_p12(bundle: Path, device_id: str, out: str) -> None:
    """bundle.p12 (0600, no key.pem) opens with the password, in openssl and cryptography,
    holds the key of the certificate and the chain; a wrong password is refused."""
    p12 = bundle / "bundle.p12"
    names = sorted(p.name for p in bundle.iterdir() if "-label." not in p.name)
    assert names == ["bundle.p12", "cert.pem", "chain.pem"]  # no key.pem
    assert stat.S_IMODE(p12.stat().st_mode) == 0o600
    assert P12_PASSWORD not in out
    env = {**os.environ, "P12PASS": P12_PASSWORD}
    info = subprocess.run(
        ["openssl", "pkcs12", "-info", "-nodes", "-in", str(p12), "-passin", "env:P12PASS"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert info.returncode == 0, info.stderr
    assert "PBES2, PBKDF2, AES-256-CBC" in info.stderr and "hmacWithSHA256" in info.stderr
    assert "MAC: sha256" in info.stderr
    assert info.stdout.count("BEGIN CERTIFICATE") == 3 and "BEGIN PRIVATE KEY" in info.stdout
    wrong = subprocess.run(
        ["openssl", "pkcs12", "-info", "-nodes", "-in", str(p12), "-passin", "pass:wrong"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode != 0 and "BEGIN PRIVATE KEY" not in wrong.stdout

    key, cert, chain = pkcs12.load_key_and_certificates(p12.read_bytes(), P12_PASSWORD.encode())
    assert key is not None and cert is not None
    assert cert.public_bytes(serialization.Encoding.PEM) == (bundle / "cert.pem").read_bytes()
    assert key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert [c.public_bytes(serialization.Encoding.PEM) for c in chain] == [
        c.public_bytes(serialization.Encoding.PEM)
        for c in x509.load_pem_x509_certificates((bundle / "chain.pem").read_bytes())
    ]
    assert cert.subject.rfc4514_string() == f"CN={device_id}"
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(p12.read_bytes(), b"wrong")


def test_p12_bundles_from_add_renew_and_provision(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = tmp_path / "ids"
    monkeypatch.setenv("FLEET_P12_PASSWORD", P12_PASSWORD)
    added = sqlite_cli("device", "add", "p12-1", "--out", str(ids), "--format", "p12")
    assert added.exit_code == 0, added.stderr
    _check_p12(ids / "p12-1", "p12-1", added.stdout + added.stderr)

    monkeypatch.delenv("FLEET_P12_PASSWORD")
    monkeypatch.setenv("STATION_PW", P12_PASSWORD)
    renewed = sqlite_cli(
        "cert",
        "renew",
        "p12-1",
        "--out",
        str(ids),
        "--format",
        "p12",
        "--p12-password-env",
        "STATION_PW",
    )
    assert renewed.exit_code == 0, renewed.stderr
    _check_p12(ids / "p12-1", "p12-1", renewed.stdout + renewed.stderr)

    source = tmp_path / "batch.csv"
    source.write_text("id,model\nbulk-1,p200\nbulk-2,p200\n")
    provisioned = sqlite_cli(
        "provision",
        str(source),
        "--out",
        str(ids),
        "--workers",
        "1",
        "--bundle-format",
        "p12",
        "--p12-password-env",
        "STATION_PW",
    )
    assert provisioned.exit_code == 0, provisioned.stderr
    for device_id in ("bulk-1", "bulk-2"):
        _check_p12(ids / device_id, device_id, provisioned.stdout + provisioned.stderr)


def test_p12_password_is_required_and_never_shown(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    """No password variable and no terminal: one clear line, nothing written; the
    format is checked before anything happens."""
    result = sqlite_cli("device", "add", "p12-2", "--out", str(tmp_path / "ids"), "--format", "p12")
    assert result.exit_code == 2
    assert (
        result.stderr == "error: the p12 password is needed: set FLEET_P12_PASSWORD (no terminal)\n"
    )
    assert not (tmp_path / "ids").exists()
    bad = sqlite_cli("device", "add", "p12-2", "--out", str(tmp_path / "ids"), "--format", "der")
    assert (bad.exit_code, bad.stderr) == (2, "error: --format 'der': use pem or p12\n")


def test_onboard_writes_p12_bundles_with_the_password_typed_once(
    station: Workspace, tmp_path: Path
) -> None:
    """Through the terminal: the PKCS#12 password is typed (twice, hidden) once for the
    session; each bundle is a readable p12; the password appears in no output."""
    child = spawn_onboard(
        station,
        tmp_path,
        "--out",
        "ids",
        "--format",
        "p12",
        env={"FLEET_CA_PASSPHRASE": PASSPHRASE},
    )
    answer(child, "PKCS#12 password:", P12_PASSWORD)
    answer(child, "Repeat for confirmation:", P12_PASSWORD)
    scan_device(child, "cell-1", "C1", "", "")
    scan_device(child, "cell-2", "C2", "", "")
    answer(child, "Device ID:", "")
    out = transcript(child)
    assert child.exitstatus == 0, out
    for device_id in ("cell-1", "cell-2"):
        bundle = tmp_path / "ids" / device_id
        _check_p12(bundle, device_id, out)
        assert (bundle / f"{device_id}-label.svg").is_file()  # no --label-dir: beside it


def test_scripted_session_prints_a_json_summary(station: Workspace, tmp_path: Path) -> None:
    """Without a terminal (lines piped in, the passphrase from the environment) the loop
    runs the same; --json puts the summary alone on stdout."""
    lines = "line-1\nL1\n\n\ntaken-1\nline-2\nL2\nq9\nsite=kiel\n\n"
    result = subprocess.run(
        [sys.executable, "-m", "fleet", "--home", str(station.home), "onboard", "--out",
         str(tmp_path / "ids"), "--cloud", "plant", "--json"],
        input=lines, capture_output=True, text=True, env=child_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "onboarded": ["line-1", "line-2"],
        "refused": [{"entry": "taken-1", "error": "device 'taken-1' already exists"}],
        "clouds": ["plant"],
        "queued_registrations": 2,
        "out_dir": str(tmp_path / "ids"),
    }
    assert "2 registrations wait for the network on plant" in result.stderr


def test_a_label_that_cannot_be_written_leaves_the_device_onboarded(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    blocker = tmp_path / "labels"
    blocker.write_text("a file where the label folder should be")
    session = OnboardingSession.open(ready_sqlite_ws, out_dir=tmp_path / "ids", label_dir=blocker)
    with pytest.raises(InvalidInput, match=r"^lab-1 is onboarded, but not its label: cannot"):
        session.onboard("lab-1", serial="S1")
    summary = session.summary()
    assert summary.onboarded == ["lab-1"] and summary.refused == []
    assert (tmp_path / "ids" / "lab-1" / "cert.pem").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["after-commit", "after-p12", "after-complete"])
def test_p12_add_killed_is_finished_as_p12_by_the_same_command(
    ready_sqlite_ws: Workspace, tmp_path: Path, kill: str
) -> None:
    """Killed after its commit, `device add --format p12` run again publishes the recorded
    certificate as a PKCS#12 bundle (the key it staged, never a second key)."""
    ids = tmp_path / "ids"
    args = ("--home", str(ready_sqlite_ws.home), "device", "add", "kp-1", "--out", str(ids))
    env = {"FLEET_P12_PASSWORD": P12_PASSWORD}
    first = run_fleet(*args, "--format", "p12", env={**env, "FLEET_FAULT_INJECT": kill})
    assert first.returncode == -9, first.stderr
    again = run_fleet(*args, "--format", "p12", env=env)
    assert again.returncode == 0, again.stderr
    _check_p12(ids / "kp-1", "kp-1", again.stdout + again.stderr)
    assert [p.name for p in ids.iterdir()] == ["kp-1"]  # nothing staged left
