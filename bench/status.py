"""Benchmark: ``fleet watch`` end to end through a local Mosquitto, against ``mosquitto_sub``.

A reconnect storm: ``--nodes`` simulated Sparkplug edge nodes (default 1,000) each publish an
NBIRTH then an NDEATH (matching bdSeq), ``--rounds`` times, QoS 1, as fast as a few paho
clients can. The same messages go through the same broker twice, in the same run:

1. baseline: ``mosquitto_sub`` alone (QoS 1) receives them; its rate is messages / (time from
   the first publish to the last message received);
2. ``python -m fleet watch`` alone receives them and records them into SQLite; its rate is
   events / (time from the first publish until every event is committed).

It checks that nothing was lost (one connection event per message, every node offline at the
end) and prints both rates and their ratio. Target: >= 0.5x.

    python bench/status.py                     # 1,000 nodes x 5 rounds = 10,000 messages
    python bench/status.py --nodes 200 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from fleet.pki.authority import init_workspace  # noqa: E402
from fleet.registry.db import write_session  # noqa: E402
from fleet.registry.models import Device  # noqa: E402
from fleet.status.models import (  # noqa: E402
    ConnectionEvent,
    ConnectionStatus,
    StrayConnectionEvent,
)
from fleet.status.sparkplug import encode_payload  # noqa: E402
from fleet.workspace import Workspace  # noqa: E402

PASSPHRASE = "bench passphrase"
PUBLISHERS = 4
TARGET = 0.5
WATCH_ARGS: list[str] = []
# BENCH_PROFILE=FILE runs the watcher under cProfile, writing FILE
PROFILE = (
    ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if "BENCH_PROFILE" in os.environ else []
)
BROKER_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 0
{user}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    conf, log = folder / "mosquitto.conf", folder / "mosquitto.log"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(BROKER_CONF.format(port=port, user=user))
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-c", str(conf), "-v"], stdout=out, stderr=out)
    wait(lambda: _listening(port), "mosquitto to listen")
    return process, port, log


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait(check: object, what: str, timeout: float = 120) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def make_workspace(home: Path, nodes: list[str]) -> Workspace:
    ws = Workspace(home=home)
    init_workspace(ws, name="Bench", passphrase=PASSPHRASE)
    now = datetime.now(UTC)
    with write_session(ws.open_registry()) as session:
        session.add_all(
            Device(id=node, labels={}, status="active", created_at=now, updated_at=now)
            for node in nodes
        )
    return ws


def storm(nodes: list[str], rounds: int) -> list[tuple[str, bytes]]:
    """Every node births then dies, ``rounds`` times (bdSeq = round)."""
    start = int(time.time() * 1000)
    messages = []
    for number in range(rounds):
        base = start + number * 10_000
        for kind, offset in (("NBIRTH", 0), ("NDEATH", 5_000)):
            for i, node in enumerate(nodes):
                payload = encode_payload(base + offset + i, metrics={"bdSeq": number})
                messages.append((f"spBv1.0/bench/{kind}/{node}", payload))
    return messages


def publish(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Publish with QoS 1 over a few connections; returns the start time (monotonic)."""
    clients = []
    for i in range(PUBLISHERS):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{i}")
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", port)
        client.loop_start()
        clients.append(client)
    started = time.monotonic()
    infos = [clients[i % PUBLISHERS].publish(t, p, qos=1) for i, (t, p) in enumerate(messages)]
    for info in infos:
        info.wait_for_publish(120)
    for client in clients:
        client.disconnect()
        client.loop_stop()
    return started


def subscribed(log: Path, client_id: str) -> bool:
    return any(
        "Received SUBSCRIBE from " + client_id in line
        for line in log.read_text(errors="replace").splitlines()
    )


def baseline(port: int, log: Path, messages: list[tuple[str, bytes]]) -> float:
    """Seconds until ``mosquitto_sub`` alone has received every message."""
    binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    topics = ["-t", "spBv1.0/+/NBIRTH/+", "-t", "spBv1.0/+/NDEATH/+"]
    args = [binary, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", "bench-sub"]
    sub = subprocess.Popen(
        [*args, *topics, "-F", "%t", "-C", str(len(messages))],
        stdout=subprocess.PIPE,
        text=True,
    )
    wait(lambda: subscribed(log, "bench-sub"), "mosquitto_sub to subscribe")
    started = publish(port, messages)
    assert sub.stdout is not None
    received = sum(1 for _line in sub.stdout)
    sub.wait(60)
    elapsed = time.monotonic() - started
    if received != len(messages):
        raise SystemExit(f"mosquitto_sub received {received} of {len(messages)}")
    return elapsed


def count(ws: Workspace, table: object, *where: object) -> int:
    query = select(func.count()).select_from(table)  # type: ignore[arg-type]
    for clause in where:
        query = query.where(clause)  # type: ignore[arg-type]
    with ws.open_registry().connect() as conn:
        return int(conn.execute(query).scalar_one())


def watcher(ws: Workspace, port: int, log: Path, messages: list[tuple[str, bytes]]) -> float:
    """Seconds until ``fleet watch`` has committed an event for every message."""
    args = ["--home", str(ws.home), "watch", f"mqtt://127.0.0.1:{port}", "--summary", "3600"]
    args += WATCH_ARGS
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, *PROFILE, "-m", "fleet", *args, "--client-id", "bench-watch"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    events = ConnectionEvent.__table__  # type: ignore[attr-defined]
    try:
        wait(lambda: subscribed(log, "bench-watch"), "fleet watch to subscribe")
        # steady state first: the first commit loads the registry's commit hooks (~1 s)
        publish(port, [("fleet/warm-up/status", b"online")])
        strays = StrayConnectionEvent.__table__  # type: ignore[attr-defined]
        wait(lambda: count(ws, strays) == 1, "the warm-up message")
        started = publish(port, messages)
        wait(lambda: count(ws, events) >= len(messages), "every event", timeout=600)
        elapsed = time.monotonic() - started
    finally:
        child.terminate()
        _out, err = child.communicate(timeout=60)
    print("  fleet watch said: " + " | ".join(err.strip().splitlines()[-2:]))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", help="fleet watch --batch-size (default: its own)")
    parser.add_argument("--batch-ms", help="fleet watch --batch-ms (default: its own)")
    opts = parser.parse_args()
    for name in ("batch_size", "batch_ms"):
        if getattr(opts, name):
            WATCH_ARGS.extend(["--" + name.replace("_", "-"), getattr(opts, name)])
    nodes = [f"node-{i:05d}" for i in range(opts.nodes)]
    with tempfile.TemporaryDirectory(prefix="fleet-bench-status-") as tmp:
        folder = Path(tmp)
        ws = make_workspace(folder / "home", nodes)
        broker, port, log = start_broker(folder)
        try:
            messages = storm(nodes, opts.rounds)
            total = len(messages)
            print(f"{opts.nodes} nodes x {opts.rounds} rounds (NBIRTH + NDEATH): {total} messages")
            base = baseline(port, log, messages)
            print(f"baseline mosquitto_sub alone: {base:.2f} s, {total / base:,.0f} messages/s")
            took = watcher(ws, port, log, messages)
            recorded = count(ws, ConnectionEvent.__table__)  # type: ignore[attr-defined]
            state = ConnectionStatus.__table__  # type: ignore[attr-defined]
            offline = count(ws, state, state.c.state == "offline")
        finally:
            broker.terminate()
            broker.wait(10)
            ws.close()
    lost = total - recorded
    rate = recorded / took
    print(
        f"fleet watch: {took:.2f} s, {rate:,.0f} events/s recorded "
        f"({rate / 2:,.0f} births/s + {rate / 2:,.0f} deaths/s); lost {lost}; "
        f"{offline} of {opts.nodes} nodes offline at the end"
    )
    ratio = rate / (total / base)
    verdict = "met" if ratio >= TARGET and lost == 0 else "MISSED"
    print(f"ratio fleet watch / mosquitto_sub: {ratio:.2f}x (target >= {TARGET}x: {verdict})")
    if lost or offline != opts.nodes:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
