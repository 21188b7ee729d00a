"""Benchmark: ``fleet watch`` end to end through a local Mosquitto, against ``mosquitto_sub``.

A reconnect storm: ``--nodes`` simulated Sparkplug edge nodes (default 1,000) each publish an
NBIRTH then an NDEATH (matching bdSeq), ``--rounds`` times, QoS 1, as fast as a few paho
clients can. The same messages go through the same broker twice, in the same run:

1. baseline: ``mosquitto_sub`` alone (QoS 1) receives them; its rate is messages / (time from
   the first publish to the last message received);
2. ``python -m fleet watch`` alone receives them and records them into SQLite; its rate is
   events / (time from the first publish until every event is committed).

3. the same two, for messages queued in each one's persistent session while it was away
   (the consumer's own speed, no publisher competing for the CPU), plus a bare paho-mqtt
   client draining the same backlog (acknowledging, recording nothing) as a reference: the
   ceiling for a Python consumer.

It checks that nothing was lost (one connection event per message, every node offline at the
end) and prints both rates and their ratio. Target: >= 0.5x.

With ``--ingest N`` it measures ``fleet status ingest`` instead: N events (fleet's JSON Lines
shape, random devices of ``--devices``, times increasing) into a fresh SQLite registry, in a
fresh process, against the baseline of a fresh ``python`` that only parses the same lines with
``json.loads``; it prints events/s, the ratio and the peak RSS. Target: >= 50,000 events/s with
flat memory (compare the peak RSS at two sizes).

    python bench/status.py                     # 1,000 nodes x 5 rounds = 10,000 messages
    python bench/status.py --nodes 200 --rounds 2
    python bench/status.py --ingest 1000000 --devices 100000
"""

from __future__ import annotations

import argparse
import os
import random
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


def storm(nodes: list[str], rounds: int, run: int) -> list[tuple[str, bytes]]:
    """Every node births then dies, ``rounds`` times (bdSeq = round); ``run`` shifts the
    times so that each run's events are new."""
    start = int(time.time() * 1000) + run * 3_600_000
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


def connections(log: Path, client_id: str) -> int:
    return sum(
        1
        for line in log.read_text(errors="replace").splitlines()
        if "New client connected" in line and f" as {client_id} " in line
    )


SUB_TOPICS = ["-t", "spBv1.0/+/NBIRTH/+", "-t", "spBv1.0/+/NDEATH/+"]


def mosquitto_sub(port: int, client_id: str, total: int, *extra: str) -> subprocess.Popen[str]:
    binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    args = [binary, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", client_id, *extra]
    return subprocess.Popen(
        [*args, *SUB_TOPICS, "-F", "%t", "-C", str(total)], stdout=subprocess.PIPE, text=True
    )


def drained(sub: subprocess.Popen[str], started: float, total: int) -> float:
    assert sub.stdout is not None
    received = sum(1 for _line in sub.stdout)
    sub.wait(60)
    if received != total:
        raise SystemExit(f"mosquitto_sub received {received} of {total}")
    return time.monotonic() - started


def sub_live(port: int, log: Path, messages: list[tuple[str, bytes]]) -> float:
    """Seconds from the first publish until ``mosquitto_sub`` has received every message."""
    sub = mosquitto_sub(port, "bench-sub", len(messages))
    wait(lambda: subscribed(log, "bench-sub"), "mosquitto_sub to subscribe")
    return drained(sub, publish(port, messages), len(messages))


def sub_backlog(port: int, log: Path, messages: list[tuple[str, bytes]]) -> float:
    """Seconds for ``mosquitto_sub`` to receive the messages its session queued while away."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, "bench-sub-q", clean_session=False)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe([(SUB_TOPICS[1], 1), (SUB_TOPICS[3], 1)])
    wait(lambda: subscribed(log, "bench-sub-q"), "the session to subscribe")
    client.disconnect()
    client.loop_stop()
    publish(port, messages)
    started = time.monotonic()
    sub = mosquitto_sub(port, "bench-sub-q", len(messages), "-c")
    return drained(sub, started, len(messages))


def paho_backlog(port: int, log: Path, messages: list[tuple[str, bytes]]) -> float:
    """A reference, not the baseline: seconds for a bare paho-mqtt client (acknowledging
    each message as it arrives, recording nothing) to drain the same backlog: the ceiling
    for any Python consumer built on paho."""

    def client() -> mqtt.Client:
        return mqtt.Client(
            CallbackAPIVersion.VERSION2, "bench-paho-q", clean_session=False, manual_ack=True
        )

    first = client()
    first.connect("127.0.0.1", port)
    first.loop_start()
    first.subscribe([(SUB_TOPICS[1], 1), (SUB_TOPICS[3], 1)])
    wait(lambda: subscribed(log, "bench-paho-q"), "the paho session to subscribe")
    first.disconnect()
    first.loop_stop()
    publish(port, messages)
    received = [0]
    finished = [0.0]

    def on_message(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        c.ack(msg.mid, msg.qos)
        received[0] += 1
        if received[0] == len(messages):
            finished[0] = time.monotonic()

    second = client()
    second.on_message = on_message
    started = time.monotonic()
    second.connect("127.0.0.1", port)
    second.loop_start()
    wait(lambda: finished[0] > 0, "paho to drain", timeout=600)
    second.disconnect()
    second.loop_stop()
    return finished[0] - started


def count(ws: Workspace, table: object, *where: object) -> int:
    query = select(func.count()).select_from(table)  # type: ignore[arg-type]
    for clause in where:
        query = query.where(clause)  # type: ignore[arg-type]
    with ws.open_registry().connect() as conn:
        return int(conn.execute(query).scalar_one())


def start_watcher(ws: Workspace, port: int, client_id: str) -> subprocess.Popen[str]:
    args = ["--home", str(ws.home), "watch", f"mqtt://127.0.0.1:{port}", "--summary", "3600"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *PROFILE, "-m", "fleet", *args, *WATCH_ARGS, "--client-id", client_id],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_watcher(child: subprocess.Popen[str]) -> None:
    child.terminate()
    _out, err = child.communicate(timeout=60)
    print("  fleet watch said: " + " | ".join(err.strip().splitlines()[-1:]))


EVENTS = ConnectionEvent.__table__  # type: ignore[attr-defined]


def watch_live(ws: Workspace, port: int, log: Path, messages: list[tuple[str, bytes]]) -> float:
    """Seconds from the first publish until ``fleet watch`` has committed every event."""
    child = start_watcher(ws, port, "bench-watch")
    try:
        wait(lambda: subscribed(log, "bench-watch"), "fleet watch to subscribe")
        before = count(ws, EVENTS)
        started = publish(port, messages)
        wait(lambda: count(ws, EVENTS) >= before + len(messages), "every event", timeout=600)
        return time.monotonic() - started
    finally:
        stop_watcher(child)


def watch_backlog(ws: Workspace, port: int, log: Path, messages: list[tuple[str, bytes]]) -> float:
    """Seconds from ``fleet watch`` reconnecting until it has committed every event its
    session queued while it was away (its start-up before connecting is not counted)."""
    child = start_watcher(ws, port, "bench-watch-q")
    wait(lambda: subscribed(log, "bench-watch-q"), "fleet watch to subscribe")
    stop_watcher(child)
    before = count(ws, EVENTS)
    publish(port, messages)
    child = start_watcher(ws, port, "bench-watch-q")
    try:
        wait(lambda: connections(log, "bench-watch-q") == 2, "fleet watch to reconnect")
        started = time.monotonic()
        wait(lambda: count(ws, EVENTS) >= before + len(messages), "every event", timeout=600)
        return time.monotonic() - started
    finally:
        stop_watcher(child)


def report(mode: str, total: int, base: float, took: float, recorded: int) -> bool:
    lost = total - recorded
    base_rate, rate = total / base, recorded / took
    ratio = rate / base_rate
    met = ratio >= TARGET and lost == 0
    print(f"{mode}:")
    print(f"  baseline mosquitto_sub alone: {base:.2f} s, {base_rate:,.0f} messages/s")
    print(
        f"  fleet watch: {took:.2f} s, {rate:,.0f} events/s recorded "
        f"({rate / 2:,.0f} births/s + {rate / 2:,.0f} deaths/s), lost {lost}"
    )
    verdict = "met" if met else "MISSED"
    print(f"  ratio fleet watch / mosquitto_sub: {ratio:.2f}x (target >= {TARGET}x: {verdict})")
    return lost == 0


INGEST_TARGET = 50_000
PARSE_ONLY = "import json, sys\nfor line in open(sys.argv[1], 'rb'):\n    json.loads(line)\n"


def timed_child(args: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of a fresh child process."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execvpe(args[0], args, {**os.environ, **(env or {})})
    _, status, usage = os.wait4(pid, 0)
    took = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed")
    return took, usage.ru_maxrss


def ingest_bench(folder: Path, events: int, devices: int) -> bool:
    """``fleet status ingest`` of ``events`` lines; True when the target is met."""
    ids = [f"dev-{i:07d}" for i in range(devices)]
    ws = make_workspace(folder / "home", ids)
    ws.close()
    source = folder / "events.jsonl"
    chance = random.Random(7)
    start = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    with source.open("w", encoding="utf-8") as out:
        for i in range(events):
            when = datetime.fromtimestamp(start + i * 0.25, UTC).isoformat()
            state = "online" if chance.random() < 0.5 else "offline"
            out.write(
                f'{{"device_id": "{chance.choice(ids)}", "state": "{state}", "time": "{when}"}}\n'
            )
    env = {"PYTHONPATH": str(REPO)}
    took, rss = timed_child(
        [sys.executable, "-m", "fleet", "--home", str(ws.home), "status", "ingest", str(source)],
        env,
    )
    base, _ = timed_child([sys.executable, "-c", PARSE_ONLY, str(source)])
    rate, base_rate = events / took, events / base
    met = rate >= INGEST_TARGET
    print(f"fleet status ingest: {events:,} events for {devices:,} devices")
    print(
        f"  baseline (a fresh python parsing the lines with json.loads): {base_rate:,.0f} lines/s"
    )
    print(f"  fleet: {took:.1f} s, {rate:,.0f} events/s, peak RSS {rss / 1024:.0f} MB")
    print(
        f"  ratio {rate / base_rate:.2f}x the parse-only baseline; "
        f"target >= {INGEST_TARGET:,} events/s: {'met' if met else 'MISSED'}"
    )
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", help="fleet watch --batch-size (default: its own)")
    parser.add_argument("--batch-ms", help="fleet watch --batch-ms (default: its own)")
    parser.add_argument("--ingest", type=int, metavar="N", help="benchmark ingest of N events")
    parser.add_argument("--devices", type=int, default=100_000, help="registry size for --ingest")
    opts = parser.parse_args()
    if opts.ingest:
        with tempfile.TemporaryDirectory(prefix="fleet-bench-ingest-") as tmp:
            if not ingest_bench(Path(tmp), opts.ingest, opts.devices):
                raise SystemExit(1)
        return
    for name in ("batch_size", "batch_ms"):
        if getattr(opts, name):
            WATCH_ARGS.extend(["--" + name.replace("_", "-"), getattr(opts, name)])
    nodes = [f"node-{i:05d}" for i in range(opts.nodes)]
    ok = True
    with tempfile.TemporaryDirectory(prefix="fleet-bench-status-") as tmp:
        folder = Path(tmp)
        ws = make_workspace(folder / "home", nodes)
        broker, port, log = start_broker(folder)
        try:
            live, backlog = storm(nodes, opts.rounds, 0), storm(nodes, opts.rounds, 1)
            total = len(live)
            print(f"{opts.nodes} nodes x {opts.rounds} rounds (NBIRTH + NDEATH): {total} messages")
            base = sub_live(port, log, live)
            took = watch_live(ws, port, log, live)
            ok &= report("live storm (publisher running)", total, base, took, count(ws, EVENTS))
            base = sub_backlog(port, log, backlog)
            took = watch_backlog(ws, port, log, backlog)
            recorded = count(ws, EVENTS) - total
            ok &= report("queued while away (backlog)", total, base, took, recorded)
            paho = paho_backlog(port, log, storm(nodes, opts.rounds, 2))
            print(f"  reference: bare paho-mqtt client: {total / paho:,.0f} messages/s")
            state = ConnectionStatus.__table__  # type: ignore[attr-defined]
            offline = count(ws, state, state.c.state == "offline")
        finally:
            broker.terminate()
            broker.wait(10)
            ws.close()
    print(f"{offline} of {opts.nodes} nodes offline at the end")
    if not ok or offline != opts.nodes:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
