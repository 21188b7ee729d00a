"""``fleet broker mosquitto`` and ``fleet ca crl --if-due``: the files, what the audit trail
records, and a real Mosquitto (Debian's 2.0.x) started on them, with paho-mqtt 2.x clients:
fleet's devices get in and stay under their own topics, strangers and revoked devices do not.
"""

from __future__ import annotations

import json
import queue
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import PASSPHRASE, Cli, FrozenClock, child_env, run_fleet, snapshot
from helpers.mosquitto import (
    Mosquitto,
    broker_files,
    broker_root,
    find_mosquitto,
    start_mosquitto,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pkitools import openssl_verify, pkilint_cert, pkilint_chain
from sqlmodel import select

from fleet import devices
from fleet.broker.mosquitto import BrokerSetup
from fleet.faults import FAULT_ENV
from fleet.pki import ca
from fleet.pki.keys import serial_hex, verify_issued_by
from fleet.registry.db import read_session
from fleet.registry.models import AuditEvent
from fleet.workspace import Workspace

TIMEOUT = 10.0


def fleet_args(ws: Workspace) -> list[str]:
    args = ["--home", str(ws.home)]
    if ws.db_url:
        args += ["--db", ws.db_url]
    return args


def trail(ws: Workspace, action: str) -> list[dict[str, object]]:
    with read_session(ws.open_registry()) as session:
        rows = session.exec(select(AuditEvent).where(AuditEvent.action == action)).all()
        return [json.loads(row.details) for row in rows]


def certs_in(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


# --- the files --------------------------------------------------------------------------------


def test_broker_files_are_complete_clean_and_recorded(
    ready_ws: Workspace, cli: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "broker"
    result = cli(
        "broker", "mosquitto", "--out", str(out), "--hostname", "mqtt.fleet.test",
        "--hostname", "broker.fleet.test", "--ip", "127.0.0.1", "--ip", "::1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(p.name for p in out.iterdir()) == [
        "acl", "ca.pem", "crl.pem", "host", "mosquitto.conf", "server.cert.pem", "server.key.pem",
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "host").iterdir()) == ["cert.pem", "chain.pem", "key.pem"]
    for key in (out / "server.key.pem", out / "host" / "key.pem"):
        assert key.stat().st_mode & 0o777 == 0o600
    assert f"chown mosquitto {out}/server.key.pem" in result.stderr

    issuing, root = ca.load_ca_certificates(ready_ws.home)
    server, *rest = certs_in(out / "server.cert.pem")
    assert rest == [issuing]  # the chain the broker sends: leaf, then the issuing CA
    assert certs_in(out / "ca.pem") == [issuing, root]
    assert certs_in(out / "host" / "chain.pem") == [issuing, root]
    host = certs_in(out / "host" / "cert.pem")[0]
    assert server.subject.rfc4514_string() == "CN=mqtt.fleet.test"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.fleet.test", "broker.fleet.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ip_address("127.0.0.1"), ip_address("::1")]
    eku = x509.ExtendedKeyUsage
    assert list(server.extensions.get_extension_for_class(eku).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert host.subject.rfc4514_string() == "CN=fleet-watch"
    assert list(host.extensions.get_extension_for_class(eku).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    for cert, key in ((server, out / "server.key.pem"), (host, out / "host" / "key.pem")):
        private = serialization.load_pem_private_key(key.read_bytes(), None)
        assert private.public_key() == cert.public_key()

    # RFC 5280 (pkilint) and OpenSSL, each for its purpose
    ca_dir = ready_ws.home / "ca"
    for name, cert, purpose in (("server", server, "sslserver"), ("host", host, "sslclient")):
        leaf = tmp_path / f"{name}.pem"
        leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        assert pkilint_cert(leaf) == [], name
        assert pkilint_chain(ca_dir / "issuing.cert.pem", leaf) == [], name
        ok, output = openssl_verify(
            ca_dir / "root.cert.pem", ca_dir / "issuing.cert.pem", leaf, "-purpose", purpose,
            "-crl_check", "-CRLfile", str(out / "crl.pem"),
        )  # fmt: skip
        assert ok, output

    # recorded in the audit trail, with what the JSON said
    (server_event,) = trail(ready_ws, "ca.server_cert")
    (host_event,) = trail(ready_ws, "ca.host_cert")
    assert server_event["serial"] == report["server"]["serial"] == serial_hex(server.serial_number)
    assert server_event["dns"] == ["mqtt.fleet.test", "broker.fleet.test"]
    assert server_event["ip"] == ["127.0.0.1", "::1"]
    assert host_event["serial"] == report["host"]["serial"] == serial_hex(host.serial_number)
    assert host_event["profile"] == "host"
    assert report["crl_number"] == 1
    assert cli("audit", "verify").exit_code == 0
    # and fleet doctor knows them (the host identity is a bundle-shaped folder)
    doctor = cli("doctor", "--out", str(out), "--json")
    assert doctor.exit_code == 0, doctor.stdout
    assert json.loads(doctor.stdout)["unrecorded"] == []

    conf = (out / "mosquitto.conf").read_text()
    for line in (
        f"cafile {out}/ca.pem", f"crlfile {out}/crl.pem", f"acl_file {out}/acl",
        "require_certificate true", "use_identity_as_username true", "allow_anonymous false",
        "listener 8883", "persistence true", "user mosquitto",
    ):  # fmt: skip
        assert line in conf.splitlines(), line
    acl = (out / "acl").read_text().splitlines()
    assert "pattern readwrite fleet/%u/#" in acl
    assert acl[acl.index("user fleet-watch") :] == [
        "user fleet-watch",
        "topic read spBv1.0/#",
        "topic read fleet/+/status",
        "topic readwrite spBv1.0/STATE/fleet-watch",
    ]


def test_rerun_refuses_unless_forced(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "broker"
    args = ("broker", "mosquitto", "--out", str(out), "--ip", "127.0.0.1", "--json")
    first = sqlite_cli(*args)
    assert first.exit_code == 0, first.stderr
    before = snapshot(ready_sqlite_ws, out)
    again = sqlite_cli(*args)
    assert again.exit_code == 4 and "--force" in again.stderr
    assert snapshot(ready_sqlite_ws, out) == before
    forced = sqlite_cli(*args, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert json.loads(forced.stdout)["replaced"] is True
    new_serial = json.loads(forced.stdout)["server"]["serial"]
    assert new_serial != json.loads(first.stdout)["server"]["serial"]
    assert serial_hex(certs_in(out / "server.cert.pem")[0].serial_number) == new_serial
    assert len(trail(ready_sqlite_ws, "ca.server_cert")) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # --force replaces only what fleet wrote
    (out / "notes.txt").write_text("mine")
    before = snapshot(ready_sqlite_ws, out)
    refused = sqlite_cli(*args, "--force")
    assert refused.exit_code == 4 and "notes.txt" in refused.stderr
    assert snapshot(ready_sqlite_ws, out) == before


@pytest.mark.parametrize(
    ("extra", "code", "says"),
    [
        ([], 2, "--hostname or --ip"),
        (["--hostname", "localhost"], 2, "two labels"),
        (["--ip", "300.1.1.1"], 2, "not an IPv4 or IPv6 address"),
        (["--ip", "127.0.0.1", "--port", "0"], 2, "TCP port"),
        (["--ip", "127.0.0.1", "--host-id", "a/b"], 2, "host ID"),
        (["--ip", "127.0.0.1", "--host-id", "pump-1"], 4, "is a device ID"),
        (["--ip", "127.0.0.1", "--data-dir", "relative"], 2, "absolute path"),
        (["--ip", "127.0.0.1", "--owner", "no-such-user-here"], 2, "no such user"),
    ],
)
def test_bad_requests_change_nothing(
    ready_sqlite_ws: Workspace,
    sqlite_cli: Cli,
    tmp_path: Path,
    extra: list[str],
    code: int,
    says: str,
) -> None:
    devices.add_device(ready_sqlite_ws, "pump-1", out_dir=tmp_path / "ids", passphrase=PASSPHRASE)
    out = tmp_path / "broker"
    before = snapshot(ready_sqlite_ws, out)
    result = sqlite_cli("broker", "mosquitto", "--out", str(out), *extra)
    assert result.exit_code == code, result.stderr
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(ready_sqlite_ws, out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "ids"]


def test_out_may_not_be_a_symlink(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "broker").symlink_to(elsewhere)
    result = sqlite_cli("broker", "mosquitto", "--out", str(tmp_path / "broker"), "--ip", "::1")
    assert result.exit_code == 2 and "symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("kill", ["after-stage", "before-commit", "after-commit"])
def test_a_killed_run_leaves_no_output_and_no_unrecorded_certificate(
    ready_sqlite_ws: Workspace, tmp_path: Path, kill: str
) -> None:
    ws, out = ready_sqlite_ws, tmp_path / "broker"
    args = [*fleet_args(ws), "broker", "mosquitto", "--out", str(out), "--ip", "127.0.0.1"]
    child = subprocess.run(
        [sys.executable, "-m", "fleet", *args],
        env=child_env({FAULT_ENV: kill}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not out.exists()
    # what the killed run staged holds keys only: no certificate left the process
    issuing, _root = ca.load_ca_certificates(ws.home)
    for path in [p for p in tmp_path.rglob("*.pem") if ws.home not in p.parents]:
        for cert in certs_in(path) if b"CERTIFICATE" in path.read_bytes() else []:
            assert not verify_issued_by(cert, issuing), path
    again = run_fleet(*args)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker", "home"]


def test_a_replacement_killed_midway_puts_the_previous_output_back(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    ws, out = ready_sqlite_ws, tmp_path / "broker"
    args = [*fleet_args(ws), "broker", "mosquitto", "--out", str(out), "--ip", "127.0.0.1"]
    assert run_fleet(*args).returncode == 0
    before = snapshot(ws, out)["dir:" + str(out)]
    child = subprocess.run(
        [sys.executable, "-m", "fleet", *args, "--force"],
        env=child_env({FAULT_ENV: "after-set-aside"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not out.exists()  # killed between the two renames
    again = run_fleet(*args)  # puts the previous output back, then refuses without --force
    assert again.returncode == 4, again.stderr
    assert snapshot(ws, out)["dir:" + str(out)] == before
    forced = run_fleet(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker", "home"]


# --- fleet ca crl --if-due --------------------------------------------------------------------


def crl_if_due(cli: Cli, path: Path, *extra: str) -> dict[str, object]:
    result = cli("ca", "crl", "--out", str(path), "--if-due", "--json", *extra)
    assert result.exit_code == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    assert ("Wrote CRL" if report["issued"] else "Not re-issued") in result.stderr
    return report


def test_crl_if_due(
    ready_ws: Workspace, cli: Cli, tmp_path: Path, fleet_clock: FrozenClock
) -> None:
    path = tmp_path / "crl.pem"
    first = crl_if_due(cli, path)
    assert first["issued"] is True and "no CRL" in str(first["reason"])
    assert crl_if_due(cli, path)["issued"] is False  # a fresh CRL is current
    fleet_clock.advance(days=5)
    assert crl_if_due(cli, path)["issued"] is False  # 2 days left
    assert crl_if_due(cli, path, "--within", "3d")["issued"] is True
    fleet_clock.advance(days=6, hours=1)  # the new one: 23 hours left
    due = crl_if_due(cli, path)
    assert due["issued"] is True and "within 24h" in str(due["reason"]), due
    assert due["crl_number"] == 3
    fleet_clock.advance(days=30)  # expired
    assert "expired" in str(crl_if_due(cli, path)["reason"])

    # a revocation since the CRL was issued makes it due
    devices.add_device(ready_ws, "c1", out_dir=tmp_path / "ids", passphrase=PASSPHRASE)
    assert crl_if_due(cli, path)["issued"] is False
    serial = devices.show_device(ready_ws, "c1").certificates[0].serial
    assert cli("cert", "revoke", serial).exit_code == 0
    fleet_clock.advance(seconds=1)
    missed = crl_if_due(cli, path)
    assert missed["issued"] is True and "misses 1 revocation" in str(missed["reason"])
    crl = x509.load_pem_x509_crl(path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    assert crl_if_due(cli, path)["issued"] is False

    # another CA's CRL, or no CRL at all, is replaced
    path.write_text("not a CRL\n")
    assert crl_if_due(cli, path)["issued"] is True


def test_crl_if_due_asks_no_passphrase_when_current(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "crl.pem"
    crl_if_due(sqlite_cli, path)
    monkeypatch.delenv("FLEET_CA_PASSPHRASE")
    assert crl_if_due(sqlite_cli, path)["issued"] is False


def test_crl_reload_pid(ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path) -> None:
    """--reload-pid sends SIGHUP after writing a new CRL; a bad PID file changes nothing."""
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time\n"
         "signal.signal(signal.SIGHUP, lambda *a: sys.exit(42))\ntime.sleep(60)"],
    )  # fmt: skip
    try:
        time.sleep(0.3)  # the handler is installed
        pid_file = tmp_path / "x.pid"
        pid_file.write_text(f"{sleeper.pid}\n")
        path = tmp_path / "crl.pem"
        report = crl_if_due(sqlite_cli, path, "--reload-pid", str(pid_file))
        assert report["issued"] is True and report["reloaded_pid"] == sleeper.pid
        assert sleeper.wait(10) == 42
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / "bad.pid").write_text("nope\n")
    for bad in ("bad.pid", "missing.pid"):
        result = sqlite_cli(
            "ca", "crl", "--out", str(tmp_path / "other.pem"), "--reload-pid", str(tmp_path / bad)
        )
        assert result.exit_code == 2, result.stderr
        assert not (tmp_path / "other.pem").exists()
    result = sqlite_cli("ca", "crl", "--if-due")
    assert result.exit_code == 2 and "need --out" in result.stderr


# --- a real Mosquitto -------------------------------------------------------------------------


class Peer:
    """A paho-mqtt 2.x client (MQTT 5) with a certificate, recording what it receives."""

    def __init__(self, ca_file: Path, cert: Path | None, key: Path | None, client_id: str) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.tls_set(
            ca_certs=str(ca_file),
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
        )
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subacks: queue.Queue[list[object]] = queue.Queue()
        self.done = threading.Event()
        self.connected = False
        self.reason = ""
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(list(codes))

    def _on_connect(self, client: object, userdata: object, flags: object, code: object,
                    properties: object) -> None:  # fmt: skip
        self.connected = not getattr(code, "is_failure", True)
        self.reason = str(code)
        self.done.set()

    def _on_disconnect(self, client: object, userdata: object, flags: object, code: object,
                       properties: object) -> None:  # fmt: skip
        self.connected = False
        self.reason = self.reason or str(code)
        self.done.set()

    def connect(self, port: int) -> str | None:
        """``None`` once connected, else why the broker refused."""
        try:
            self.client.connect("127.0.0.1", port, keepalive=30)
        except (ssl.SSLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        self.client.loop_start()
        if not self.done.wait(TIMEOUT):
            self.close()
            return "no CONNACK"
        if self.connected:
            return None
        self.close()
        return self.reason or "disconnected"

    def subscribe(self, topic: str) -> list[object]:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT)

    def received_until(self, topic: str) -> list[str]:
        """Topics received up to and including ``topic``, then whatever follows at once."""
        topics: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while topic not in topics:
            topics.append(self.messages.get(timeout=max(0.01, deadline - time.monotonic()))[0])
        time.sleep(0.3)
        while not self.messages.empty():
            topics.append(self.messages.get()[0])
        return topics

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Site:
    """A workspace with devices, and a Mosquitto running on what `fleet broker` wrote."""

    def __init__(self, ws: Workspace, ids: Path, setup: BrokerSetup, broker: Mosquitto) -> None:
        self.ws, self.ids, self.setup, self.broker = ws, ids, setup, broker
        self.peers: list[Peer] = []

    def peer(self, device_id: str, cert: Path | None = None, key: Path | None = None) -> Peer:
        folder = self.ids / device_id
        peer = Peer(
            self.setup.out_dir / "ca.pem",
            cert or folder / "cert.pem",
            key or folder / "key.pem",
            f"{device_id}-{len(self.peers)}",
        )
        self.peers.append(peer)
        return peer

    def host(self) -> Peer:
        host_dir = self.setup.out_dir / "host"
        return self.peer("fleet-watch", host_dir / "cert.pem", host_dir / "key.pem")

    def connected(self, peer: Peer) -> Peer:
        refused = peer.connect(self.broker.port)
        assert refused is None, f"{refused}\n{self.broker.log_text()[-3000:]}"
        return peer


@pytest.fixture
def site(ready_sqlite_ws: Workspace, tmp_path: Path) -> Iterator[Site]:
    find_mosquitto()
    ids = tmp_path / "ids"
    for device_id in ("dev-1", "dev-2", "dev-3"):
        devices.add_device(ready_sqlite_ws, device_id, out_dir=ids, passphrase=PASSPHRASE)
    with broker_root() as root:
        setup = broker_files(ready_sqlite_ws, root)
        port = int(setup.config.read_text().split("\nlistener ")[1].split()[0])
        broker = start_mosquitto(setup, port, tmp_path / "mosquitto.log")
        running = Site(ready_sqlite_ws, ids, setup, broker)
        try:
            yield running
        finally:
            for peer in running.peers:
                peer.close()
            broker.stop()


def test_fleet_devices_get_in_strangers_do_not(site: Site, tmp_path: Path) -> None:
    site.connected(site.peer("dev-1"))
    # a certificate from another CA, even with a fleet device's ID as its CN, is refused
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    stranger_ca = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stranger CA")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stranger CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
        .issuer_name(stranger_ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "stranger.pem", tmp_path / "stranger.key"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert site.peer("stranger", cert_path, key_path).connect(site.broker.port) is not None
    # so is a client without a certificate
    bare = Peer(site.setup.out_dir / "ca.pem", None, None, "bare")
    site.peers.append(bare)
    assert bare.connect(site.broker.port) is not None
    assert "certificate verify failed" in site.broker.log_text()


def test_devices_stay_under_their_own_topics(site: Site) -> None:
    host = site.connected(site.host())
    assert not host.subscribe("spBv1.0/#")[0].is_failure  # type: ignore[attr-defined]
    assert not host.subscribe("fleet/+/status")[0].is_failure  # type: ignore[attr-defined]
    dev1 = site.connected(site.peer("dev-1"))
    dev1.subscribe("fleet/+/status")  # refused or filtered: it must receive nothing of dev-2's
    dev2 = site.connected(site.peer("dev-2"))
    dev2.publish("fleet/dev-1/status", b"offline")  # another device's topics: dropped
    dev2.publish("spBv1.0/plant/NDEATH/dev-1", b"forged")
    dev2.publish("spBv1.0/plant/NBIRTH/dev-2", b"birth")  # its own
    dev2.publish("spBv1.0/plant/DBIRTH/dev-2/sensor", b"device birth")
    dev2.publish("fleet/dev-2/status", b"online")
    assert host.received_until("fleet/dev-2/status") == [
        "spBv1.0/plant/NBIRTH/dev-2",
        "spBv1.0/plant/DBIRTH/dev-2/sensor",
        "fleet/dev-2/status",
    ]
    assert dev1.messages.empty()
    # a device cannot speak for the host either
    dev2.publish("spBv1.0/STATE/fleet-watch", b'{"online": false}')
    host.publish("spBv1.0/STATE/fleet-watch", b'{"online": true}')
    assert host.received_until("spBv1.0/STATE/fleet-watch") == ["spBv1.0/STATE/fleet-watch"]
    assert "Denied PUBLISH from dev-2-" in site.broker.log_text()


def test_a_revoked_device_is_refused_after_crl_and_sighup(site: Site, sqlite_cli: Cli) -> None:
    host = site.connected(site.host())
    host.subscribe("fleet/+/status")
    open_session = site.connected(site.peer("dev-3"))
    serial = devices.show_device(site.ws, "dev-3").certificates[0].serial
    assert sqlite_cli("cert", "revoke", serial, "--reason", "key-compromise").exit_code == 0
    crl = site.setup.out_dir / "crl.pem"
    report = crl_if_due(sqlite_cli, crl, "--reload-pid", str(site.broker.pid_file))
    assert report["issued"] is True and report["reloaded_pid"] == site.broker.process.pid
    deadline = time.monotonic() + TIMEOUT
    while (refused := site.peer("dev-3").connect(site.broker.port)) is None:
        assert time.monotonic() < deadline, "the revoked device still gets in"
        time.sleep(0.2)
    assert refused  # (Mosquitto logs only "certificate verify failed")
    site.connected(site.peer("dev-1"))  # the others still get in
    # the session opened before the reload is not dropped (documented)
    open_session.publish("fleet/dev-3/status", b"still here")
    assert host.received_until("fleet/dev-3/status") == ["fleet/dev-3/status"]


def test_an_expired_crl_locks_everyone_out_until_if_due_reissues_it(
    site: Site, sqlite_cli: Cli
) -> None:
    """Why `fleet ca crl --if-due` runs from cron: Mosquitto refuses every client once its
    CRL's next update has passed."""
    from fleet import clock
    from fleet.pki.crl import publish_crl

    crl = site.setup.out_dir / "crl.pem"
    with clock.frozen(FrozenClock(datetime.now(UTC) - timedelta(days=8))):
        crl.write_bytes(publish_crl(site.ws, passphrase=PASSPHRASE))
    site.broker.reload()
    deadline = time.monotonic() + TIMEOUT
    while site.peer("dev-1").connect(site.broker.port) is None:
        assert time.monotonic() < deadline, "an expired CRL still lets devices in"
        time.sleep(0.2)
    report = crl_if_due(sqlite_cli, crl, "--reload-pid", str(site.broker.pid_file))
    assert report["issued"] is True and "expired" in str(report["reason"])
    deadline = time.monotonic() + TIMEOUT
    while (refused := site.peer("dev-1").connect(site.broker.port)) is not None:
        assert time.monotonic() < deadline, refused
        time.sleep(0.2)
