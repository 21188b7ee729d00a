"""``fleet watch``: Sparkplug B births and deaths (from pysparkplug, an independent edge node,
and from fleet's own encoder) and the last-will convention, through a real Mosquitto, into
connection states; nothing lost or recorded twice when the watcher is killed."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import PASSPHRASE
from helpers.mqtt import (
    Broker,
    Publisher,
    free_port,
    pysparkplug_python,
    running_broker,
    stop_process,
    wait_for,
    watch_process,
)
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from fleet import devices
from fleet.errors import InvalidInput
from fleet.pki.ca import load_issuer
from fleet.status.events import Seen, record
from fleet.status.history import connection_of, iter_history, stray_summary
from fleet.status.mapping import IdMap, Registry, Tracker
from fleet.status.models import ConnectionEvent
from fleet.status.sparkplug import decode_payload, encode_payload
from fleet.status.watch import BrokerError, Watcher, WatchOptions, parse_broker_url
from fleet.workspace import Workspace

EDGE_SCRIPT = Path(__file__).parent / "helpers" / "sparkplug_edge.py"
T0 = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# --- decoding and rules, no broker --------------------------------------------------------


def test_payloads_decode_what_the_watcher_needs() -> None:
    data = encode_payload(
        ms(T0), seq=3, metrics={"bdSeq": 7, "Properties/Firmware Version": "1.2.3"}
    )
    payload = decode_payload(data)
    assert (payload.timestamp, payload.seq, payload.bd_seq) == (ms(T0), 3, 7)
    assert payload.firmware == "1.2.3"
    # fields it does not use (a double metric, an unknown field) are skipped, not fatal
    double_metric = bytes([0x0A, 0x04]) + b"temp" + bytes([0x20, 10, 0x69]) + bytes(8)
    extra = bytes([0x12, len(double_metric)]) + double_metric + bytes([0x2A, 2]) + b"id"
    assert decode_payload(data + extra).bd_seq == 7
    with pytest.raises(InvalidInput):
        decode_payload(b"\x0a\xff")  # a length running past the end
    with pytest.raises(InvalidInput):
        decode_payload(b"online")


def test_urls_and_id_templates() -> None:
    assert parse_broker_url("mqtt://broker") == ("broker", 1883, False)
    assert parse_broker_url("mqtts://10.0.0.5") == ("10.0.0.5", 8883, True)
    assert parse_broker_url("mqtts://b.example:9000") == ("b.example", 9000, True)
    for bad in ("http://x", "mqtt://", "mqtt://x/topic", "mqtt://x:port"):
        with pytest.raises(InvalidInput):
            parse_broker_url(bad)
    ids = IdMap("{group}-{node}", "{device}")
    assert (ids.node_id("plant", "gw"), ids.device_id("plant", "gw", "pump")) == (
        "plant-gw",
        "pump",
    )
    for node, device in (("{device}", "{device}"), ("{node}", "{sensor}"), ("{node", "{device}")):
        with pytest.raises(InvalidInput):
            IdMap(node, device)


def test_sparkplug_rules_in_order() -> None:
    tracker = Tracker(IdMap(), None)
    later = T0 + timedelta(minutes=5)

    def handle(topic: str, payload: bytes | str) -> list[Seen]:
        data = payload.encode() if isinstance(payload, str) else payload
        return tracker.handle(topic, data, later)

    birth = handle("spBv1.0/g/NBIRTH/gw", encode_payload(ms(T0), metrics={"bdSeq": 4}))
    assert [(e.device_id, e.state, e.session) for e in birth] == [("gw", "online", "4")]
    (device,) = handle("spBv1.0/g/DBIRTH/gw/pump", encode_payload(ms(T0) + 10))
    assert (device.device_id, device.state, device.session) == ("gw:pump", "online", "4")
    # a stale NDEATH (another bdSeq) is ignored
    assert handle("spBv1.0/g/NDEATH/gw", encode_payload(ms(T0) + 20, metrics={"bdSeq": 5})) == []
    assert tracker.counts.stale == 1
    # the matching one takes the node and its devices down; its timestamp (composed at
    # CONNECT, before the birth) gives way to the time it arrived
    death = handle("spBv1.0/g/NDEATH/gw", encode_payload(ms(T0) - 1000, metrics={"bdSeq": 4}))
    assert [(e.device_id, e.state, e.source_time) for e in death] == [
        ("gw", "offline", later),
        ("gw:pump", "offline", later),
    ]
    # the same NDEATH again (redelivered) changes nothing
    assert handle("spBv1.0/g/NDEATH/gw", encode_payload(ms(T0) - 1000, metrics={"bdSeq": 4})) == []
    # plain last will: recorded when it says something new
    assert [e.state for e in handle("fleet/lamp-1/status", "online")] == ["online"]
    assert handle("fleet/lamp-1/status", "online") == []
    (stamped,) = handle("fleet/lamp-1/status", json.dumps({"online": False, "timestamp": ms(T0)}))
    assert (stamped.state, stamped.source_time, stamped.source) == ("offline", T0, "mqtt-lwt")
    # anything else is ignored and counted
    assert handle("fleet/lamp-1/status", "maybe") == []
    assert handle("spBv1.0/g/NBIRTH/gw", b"\xff\xff") == []
    assert tracker.counts.ignored == 2


# --- through a real Mosquitto -------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def fleet_ws(ready_ws: Workspace, tmp_path: Path) -> Workspace:
    for device_id in ("gw-1", "gw-1:pump", "lamp-1", "gw-2", "gw-2:fan"):
        devices.add_device(ready_ws, device_id, out_dir=tmp_path / "ids", passphrase=PASSPHRASE)
    return ready_ws


class InProcess:
    """A :class:`Watcher` on a thread (signals stay with pytest)."""

    def __init__(self, ws: Workspace, url: str, **options: object) -> None:
        self.lines: list[str] = []
        opts = WatchOptions(url=url, batch_ms=50, **options)  # type: ignore[arg-type]
        self.watcher = Watcher(ws, opts, self.lines.append)
        self.thread = threading.Thread(target=self.watcher.run, daemon=True)

    def __enter__(self) -> InProcess:
        self.thread.start()
        wait_for(lambda: self.watcher.connected_once, what="the watcher to connect")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.watcher.stop.set()
        self.thread.join(20)


class Edge:
    """pysparkplug's edge node in its own virtualenv (see helpers/sparkplug_edge.py)."""

    def __init__(self, python: Path, broker: Broker, group: str, node: str) -> None:
        self.process = subprocess.Popen(
            [str(python), str(EDGE_SCRIPT), group, node, "127.0.0.1", str(broker.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def do(self, command: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "ok"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def state(ws: Workspace, device_id: str) -> str | None:
    return connection_of(ws, device_id).state


def test_independent_edge_node_births_deaths_and_stale_ndeath(
    fleet_ws: Workspace, broker: Broker
) -> None:
    python = pysparkplug_python()
    with InProcess(fleet_ws, broker.url) as watching:
        edge = Edge(python, broker, "plant", "gw-1")
        try:
            edge.do("device pump")  # registered before connecting: DBIRTH follows the NBIRTH
            edge.do("connect")
            wait_for(lambda: state(fleet_ws, "gw-1:pump") == "online", what="DBIRTH")
            node = connection_of(fleet_ws, "gw-1")
            assert (node.state, node.source, node.reported_firmware) == (
                "online",
                "sparkplug",
                "2.4.1",
            )
            edge.do("drop pump")
            wait_for(lambda: state(fleet_ws, "gw-1:pump") == "offline", what="DDEATH")
            edge.do("device pump")
            wait_for(lambda: state(fleet_ws, "gw-1:pump") == "online", what="DBIRTH again")
            # pysparkplug's explicit NDEATH carries bdSeq + 1: stale, ignored
            edge.do("disconnect")
            wait_for(lambda: watching.watcher.tracker.counts.stale == 1, what="stale NDEATH")
            assert state(fleet_ws, "gw-1") == "online"
            assert any("stale NDEATH of plant/gw-1" in line for line in watching.lines)
            # reconnect (next bdSeq) and get killed: the broker delivers the will, whose
            # bdSeq is the NBIRTH's: the node and its device go offline
            edge.do("connect")
            wait_for(lambda: len(history(fleet_ws, "gw-1")) == 2, what="second NBIRTH")
        finally:
            edge.kill()
        wait_for(lambda: state(fleet_ws, "gw-1") == "offline", what="will NDEATH")
        assert state(fleet_ws, "gw-1:pump") == "offline"
    events = history(fleet_ws, "gw-1")
    assert [(e.state, e.session) for e in events] == [
        ("online", events[0].session),
        ("online", events[1].session),
        ("offline", events[1].session),
    ]
    assert events[0].session != events[1].session
    assert [e.state for e in history(fleet_ws, "gw-1:pump")] == [
        "online", "offline", "online", "online", "offline",
    ]  # fmt: skip


def history(ws: Workspace, device_id: str) -> list[ConnectionEvent]:
    return list(iter_history(ws, device_id))


def test_last_will_convention_unknown_devices_and_host_state(
    fleet_ws: Workspace, broker: Broker
) -> None:
    publisher = Publisher(broker)
    publisher.publish("fleet/lamp-1/status", "online", retain=True)  # before the watcher
    states: list[dict[str, object]] = []
    seen = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="state-reader")
    seen.on_message = lambda _c, _u, msg: states.append(json.loads(msg.payload))
    seen.connect("127.0.0.1", broker.port)
    seen.subscribe("spBv1.0/STATE/#", qos=1)
    seen.loop_start()
    try:
        with InProcess(fleet_ws, broker.url, host_id="ops") as watching:
            wait_for(lambda: state(fleet_ws, "lamp-1") == "online", what="retained online")
            publisher.publish("fleet/lamp-1/status", "offline", retain=True)
            publisher.publish("fleet/lamp-1/status", "offline", retain=True)
            publisher.publish("fleet/ghost/status", "online")
            publisher.publish(
                "spBv1.0/g/NBIRTH/nobody", encode_payload(ms(T0), metrics={"bdSeq": 0})
            )
            wait_for(lambda: stray_summary(fleet_ws).get("unknown") == 2, what="strays")
            assert state(fleet_ws, "lamp-1") == "offline"
            assert [e.state for e in history(fleet_ws, "lamp-1")] == ["online", "offline"]
            assert any("kept aside" in line for line in watching.lines)
            wait_for(lambda: len(states) >= 1, what="STATE online")
            assert states[0]["online"] is True
        wait_for(lambda: len(states) >= 2, what="STATE offline")
        assert states[-1] == {"online": False, "timestamp": states[0]["timestamp"]}
    finally:
        seen.disconnect()
        seen.loop_stop()
        publisher.close()


def count_events(ws: Workspace) -> int:
    with ws.open_registry().connect() as conn:
        table = ConnectionEvent.__table__  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.mark.slow
def test_killed_watcher_loses_nothing_and_records_nothing_twice(
    ready_ws: Workspace, broker: Broker, tmp_path: Path
) -> None:
    nodes = [f"n{i:03d}" for i in range(60)]
    for node in nodes:
        devices.add_device(ready_ws, node, passphrase=PASSPHRASE, out_dir=tmp_path / "ids")
    publisher = Publisher(broker)
    rounds = 6  # each: every node births then dies (bdSeq = round)
    published = 0

    def publish_round(number: int) -> None:
        nonlocal published
        base = ms(T0) + number * 60_000
        for i, node in enumerate(nodes):
            birth = encode_payload(base + i, metrics={"bdSeq": number})
            publisher.publish(f"spBv1.0/g/NBIRTH/{node}", birth)
        for i, node in enumerate(nodes):
            death = encode_payload(base + 30_000 + i, metrics={"bdSeq": number})
            publisher.publish(f"spBv1.0/g/NDEATH/{node}", death)
        published += 2 * len(nodes)

    args = ("--client-id", "kill-test", "--batch-ms", "300", "--batch-size", "50")
    home, db_url = ready_ws.home, ready_ws.db_url
    watcher = watch_process(home, db_url, broker.url, *args)
    wait_for(lambda: (tmp_path / "broker" / "mosquitto.log").read_text().count("kill-test") > 0)
    publish_round(0)
    publish_round(1)
    wait_for(lambda: count_events(ready_ws) > 0, what="a first batch")
    stop_process(watcher, signal.SIGKILL)  # mid-stream: some committed, some not acked
    publish_round(2)  # while it is down
    publish_round(3)
    watcher = watch_process(home, db_url, broker.url, *args)
    publish_round(4)
    publish_round(5)
    wait_for(lambda: count_events(ready_ws) >= published, timeout=60, what="every event")
    err = stop_process(watcher)  # SIGTERM: clean
    assert count_events(ready_ws) == published == rounds * 2 * len(nodes)
    assert "SIGTERM" in err and "Traceback" not in err
    for node in nodes:
        events = history(ready_ws, node)
        assert [(e.state, e.session) for e in events] == [
            (s, str(r)) for r in range(rounds) for s in ("online", "offline")
        ]
        assert state(ready_ws, node) == "offline"
    publisher.close()


# --- mutual TLS ---------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def server_certificate(ws: Workspace, folder: Path) -> tuple[Path, Path, Path]:
    """A 127.0.0.1 server certificate signed by the workspace's issuing CA; returns the
    certificate (with chain), its key and the CA chain file."""
    issuer = load_issuer(ws.home, PASSPHRASE)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    cert = issuer.sign_certificate(builder)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path, chain = folder / "server.pem", folder / "server.key", folder / "ca.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + issuer.chain_pem)
    key_path.write_bytes(_pem_key(key))
    chain.write_bytes(issuer.chain_pem)
    return cert_path, key_path, chain


def stranger_identity(folder: Path) -> tuple[Path, Path]:
    """A self-signed client certificate: not from fleet's CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (folder / "stranger.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "stranger.key").write_bytes(_pem_key(key))
    return folder / "stranger.pem", folder / "stranger.key"


def test_mutual_tls_with_fleet_identities(fleet_ws: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    cert, key, chain = server_certificate(fleet_ws, folder)
    tls_port = free_port()
    listener = (
        f"listener {tls_port} 127.0.0.1\ncafile {chain}\ncertfile {cert}\nkeyfile {key}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )
    with running_broker(folder / "broker", extra=listener) as broker:
        url = f"mqtts://127.0.0.1:{tls_port}"
        identity = tmp_path / "ids" / "gw-2"
        tls = {"cert": identity / "cert.pem", "key": identity / "key.pem", "ca": chain}
        publisher = Publisher(broker)  # the plain listener
        try:
            with InProcess(fleet_ws, url, **tls):
                birth = encode_payload(ms(T0), metrics={"bdSeq": 1})
                publisher.publish("spBv1.0/g/NBIRTH/gw-2", birth)
                publisher.publish("spBv1.0/g/DBIRTH/gw-2/fan", encode_payload(ms(T0) + 1))
                wait_for(lambda: state(fleet_ws, "gw-2:fan") == "online", what="TLS watcher")
        finally:
            publisher.close()
        strange_cert, strange_key = stranger_identity(folder)
        stranger = WatchOptions(url=url, cert=strange_cert, key=strange_key, ca=chain)
        with pytest.raises(BrokerError):
            Watcher(fleet_ws, stranger, lambda _line: None).run()
    with pytest.raises(InvalidInput, match="--cert, --key and --ca"):
        Watcher(fleet_ws, WatchOptions(url=url), lambda _line: None)


def test_a_restarted_watcher_judges_deaths_by_what_was_recorded(fleet_ws: Workspace) -> None:
    """The NBIRTH's bdSeq and the node's online devices come back from the registry."""
    engine = fleet_ws.open_registry()
    first = Tracker(IdMap(), Registry(engine))
    arrived = T0 + timedelta(minutes=1)
    record(
        engine,
        first.handle("spBv1.0/g/NBIRTH/gw-2", encode_payload(ms(T0), metrics={"bdSeq": 3}), arrived)
        + first.handle("spBv1.0/g/DBIRTH/gw-2/fan", encode_payload(ms(T0) + 5), arrived),
    )
    again = Tracker(IdMap(), Registry(engine))
    later = T0 + timedelta(minutes=9)
    stale = encode_payload(ms(T0) + 100, metrics={"bdSeq": 2})
    assert again.handle("spBv1.0/g/NDEATH/gw-2", stale, later) == []
    will = encode_payload(ms(T0) - 500, metrics={"bdSeq": 3})  # composed before the birth
    events = again.handle("spBv1.0/g/NDEATH/gw-2", will, later)
    assert [(e.device_id, e.state, e.source_time) for e in events] == [
        ("gw-2", "offline", later),
        ("gw-2:fan", "offline", later),
    ]
    record(engine, events)
    assert (state(fleet_ws, "gw-2"), state(fleet_ws, "gw-2:fan")) == ("offline", "offline")
    # redelivered after another restart: already applied
    assert Tracker(IdMap(), Registry(engine)).handle("spBv1.0/g/NDEATH/gw-2", will, later) == []


def test_losing_the_broker_is_said_and_marks_nothing(fleet_ws: Workspace, broker: Broker) -> None:
    publisher = Publisher(broker)
    with InProcess(fleet_ws, broker.url) as watching:
        publisher.publish("spBv1.0/g/NBIRTH/gw-1", encode_payload(ms(T0), metrics={"bdSeq": 1}))
        wait_for(lambda: state(fleet_ws, "gw-1") == "online", what="NBIRTH")
        publisher.close()
        broker.stop()  # an in-memory broker: the session is gone with it
        wait_for(lambda: any("lost the broker" in line for line in watching.lines))
        broker.start()
        wait_for(lambda: any("without a session" in line for line in watching.lines), 40)
        assert state(fleet_ws, "gw-1") == "online"  # nothing assumed either way
    assert "new session" in watching.lines[0]
    assert "new broker session" in watching.lines[1]
    assert any("1 nodes were online" in line for line in watching.lines)


def test_end_to_end_through_the_broker_fleet_configured(
    fleet_ws: Workspace, tmp_path: Path
) -> None:
    """`fleet broker mosquitto`'s files, a real Mosquitto, `fleet watch` with the host
    identity they hold, and devices publishing with their fleet certificates: births and
    deaths are recorded; a device cannot speak for another (the ACL drops it)."""
    from helpers.mosquitto import broker_files, broker_root, start_mosquitto

    with broker_root() as root:
        setup = broker_files(fleet_ws, root)
        port = int(setup.config.read_text().split("\nlistener ")[1].split()[0])
        mosquitto = start_mosquitto(setup, port, tmp_path / "mosquitto.log")
        conf, host = setup.out_dir, setup.out_dir / "host"
        device = mqtt.Client(CallbackAPIVersion.VERSION2, "gw-1", protocol=mqtt.MQTTv5)
        try:
            url = f"mqtts://127.0.0.1:{port}"
            tls = {"cert": host / "cert.pem", "key": host / "key.pem", "ca": conf / "ca.pem"}
            with InProcess(fleet_ws, url, **tls):
                ids = tmp_path / "ids" / "gw-1"
                device.tls_set(
                    ca_certs=str(conf / "ca.pem"),
                    certfile=str(ids / "cert.pem"),
                    keyfile=str(ids / "key.pem"),
                )
                device.connect("127.0.0.1", port)
                device.loop_start()
                birth = encode_payload(ms(T0), metrics={"bdSeq": 4})
                device.publish("spBv1.0/g/NBIRTH/gw-1", birth, qos=1).wait_for_publish(10)
                # gw-1 claiming gw-2's birth: denied by the broker's ACL, never recorded
                device.publish("spBv1.0/g/NBIRTH/gw-2", birth, qos=1).wait_for_publish(10)
                wait_for(lambda: state(fleet_ws, "gw-1") == "online", what="the birth")
                death = encode_payload(ms(T0) + 1000, metrics={"bdSeq": 4})
                device.publish("spBv1.0/g/NDEATH/gw-1", death, qos=1).wait_for_publish(10)
                wait_for(lambda: state(fleet_ws, "gw-1") == "offline", what="the death")
            assert state(fleet_ws, "gw-2") is None
            assert "Denied PUBLISH from gw-1" in mosquitto.log_text()
        finally:
            device.loop_stop()
            device.disconnect()
            mosquitto.stop()
