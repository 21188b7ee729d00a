"""Benchmark: push registrations through the outbox and the generic HTTP backend.

1. N registrations to a local HTTP registry, no rate limit, through ``fleet.cloud.push``
   (the whole path: job selection, concurrent requests, batched result commits to SQLite),
   against a sequential ``httpx`` loop doing the same PUT requests in the same run.
   Target: >= 5x.
2. The same with a rate limit (default 200/s). Target: achieved rate within 5% of the limit
   and never above it: no one-second window at the server holds more requests than the limit.
3. ThingsBoard (bench/cloud_thingsboard.py): ``--tb-n`` registrations through the outbox to
   the strict local ThingsBoard, against a sequential loop of the same REST calls; then the
   inventory read rate.
4. Azure IoT Hub (``--azure-n``, default 1000; 0 skips): registrations through the outbox and
   the azure-iot-hub backend against the strict local hub (tests/helpers/azure_hub.py, SAS
   verified on every request, same latency), in bulk imports of 100, against the same
   backend's one-device path (``register``: twin read, identity PUT, tags PATCH) called in a
   sequential loop in the same run.

The registry server (tests/cloudserver.py) runs in its own process and sleeps ``--latency-ms``
per request (default 20 ms: a cloud control-plane call from a client is tens of ms), like a
real registry behind a network. Against a zero-latency loopback server the client and the
server only compete for the same CPUs, and no client shows concurrency gains honestly: the
ratio is bounded by (latency + CPU per request) / CPU per request, where CPU per request
(httpx client + Python server + registry commit) is about 2 ms on a loaded 2-core box, so at
5 ms it tops out near 3.5x.

    python bench/cloud.py                # N=5000
    python bench/cloud.py --n 200 --rate-n 100
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))
sys.path.insert(2, str(REPO / "bench"))

from fleet.cloud import jobs  # noqa: E402
from fleet.cloud.clouds import add_cloud  # noqa: E402
from fleet.cloud.push import PushReport, push  # noqa: E402
from fleet.pki import ca  # noqa: E402
from fleet.pki.authority import init_workspace  # noqa: E402
from fleet.pki.issue import certificate_row, issue_certificate  # noqa: E402
from fleet.pki.profiles import load_profile  # noqa: E402
from fleet.registry.db import write_session  # noqa: E402
from fleet.registry.models import Device  # noqa: E402
from fleet.workspace import Workspace  # noqa: E402

PASSPHRASE = "bench passphrase"


def _serve(latency: float, ports: Any) -> None:
    from cloudserver import RegistryServer

    server = RegistryServer()
    server.state.latency = latency
    ports.put(server.server_address[1])
    server.serve_forever()


class ServerProcess:
    """A registry server in a child process (so it does not share our GIL)."""

    def __init__(self, latency: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        ports = ctx.Queue()
        self.process = ctx.Process(target=_serve, args=(latency, ports), daemon=True)
        self.process.start()
        self.port = int(ports.get(timeout=30))
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/devices/{{id}}"

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.base}/_stats", timeout=30).json()
        return data

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(timeout=10)


def _serve_hub(latency: float, ports: Any) -> None:
    from helpers.azure_hub import HubServer

    server = HubServer()
    server.state.latency = latency
    ports.put(server.server_address[1])
    server.serve_forever()


class HubProcess(ServerProcess):
    """The strict local IoT Hub in a child process."""

    def __init__(self, latency: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        ports = ctx.Queue()
        self.process = ctx.Process(target=_serve_hub, args=(latency, ports), daemon=True)
        self.process.start()
        self.port = int(ports.get(timeout=30))
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base


def azure_phase(ws: Workspace, n: int, latency: float, concurrency: int) -> bool:
    """Phase 3: the azure-iot-hub backend, batched through the outbox vs one at a time."""
    from helpers.azure_hub import connection_string
    from sqlmodel import col, select

    from fleet.cloud.azure import AzureIotHubBackend
    from fleet.cloud.base import DeviceRecord
    from fleet.registry.db import read_session
    from fleet.registry.models import Certificate

    os.environ["FLEET_BENCH_HUB"] = connection_string()
    options = {"connection_string_env": "FLEET_BENCH_HUB", "timeout": 30}
    seq_ids = make_devices(ws, max(1, n // 10), "azseq")
    ids = make_devices(ws, n, "azure")
    with read_session(ws.open_registry()) as session:
        query = select(Certificate).where(col(Certificate.device_id).in_(seq_ids))
        records = [
            DeviceRecord(
                c.device_id, None, None, {}, "active", c.pem, c.serial, c.fingerprint_sha256
            )
            for c in session.exec(query)
        ]
    hub = HubProcess(latency)
    try:
        backend = AzureIotHubBackend("seq", {**options, "endpoint_url": hub.base})
        start = time.perf_counter()
        for record in records:
            backend.register(record, {})
        seq_seconds = time.perf_counter() - start
        backend.close()
        add_cloud(ws, "azure", "azure-iot-hub", {**options, "endpoint_url": hub.base},
                  concurrency=concurrency, unlimited_rate=True)  # fmt: skip
        with write_session(ws.open_registry()) as session:
            jobs.enqueue_register(session, ids, ["azure"])
        start = time.perf_counter()
        (report,) = push(ws, "azure", passphrase=PASSPHRASE)
        seconds = time.perf_counter() - start
        stats = hub.stats()
    finally:
        hub.stop()
    seq_rate = len(seq_ids) / seq_seconds
    rate = n / seconds
    print(f"azure, one device a call: {seq_rate:8.1f} registrations/s ({len(seq_ids)} in "
          f"{seq_seconds:.2f} s, sequential register())")  # fmt: skip
    print(f"azure, outbox + imports:  {rate:8.1f} registrations/s ({seconds:.2f} s), "
          f"{rate / seq_rate:.1f}x the one-device loop; {stats['requests']} requests at the "
          f"hub for {n + len(seq_ids)} devices")  # fmt: skip
    expected = n + len(seq_ids)
    if (report.done, report.failed, report.left) != (n, 0, 0) or stats["creations"] != expected:
        print(f"error: azure push incomplete: {report.to_dict()}, hub created {stats['creations']}")
        return False
    return True


def make_devices(ws: Workspace, count: int, prefix: str) -> list[str]:
    """``count`` devices with real certificates, inserted in bulk (setup, not measured)."""
    issuer = ca.load_issuer(ws.home, PASSPHRASE)
    profile = load_profile("default", ws.home)
    now = datetime.now(UTC)
    ids = [f"{prefix}-{i:06d}" for i in range(count)]
    with write_session(ws.open_registry()) as session:
        for start in range(0, count, 500):
            chunk = ids[start : start + 500]
            rows = []
            certs = []
            for device_id in chunk:
                issued = issue_certificate(issuer, device_id, profile, now=now)
                rows.append(
                    Device(id=device_id, labels={}, status="active", created_at=now, updated_at=now)
                )
                certs.append(certificate_row(device_id, issued, profile.name, now))
            session.add_all(rows)
            session.flush()
            session.add_all(certs)
            session.flush()
    return ids


def sequential_baseline(ws: Workspace, ids: list[str], url: str) -> float:
    """The same PUTs, one after another, with one httpx.Client; returns seconds."""
    from sqlmodel import col, select

    from fleet.registry.db import read_session
    from fleet.registry.models import Certificate

    with read_session(ws.open_registry()) as session:
        rows = list(session.exec(select(Certificate).where(col(Certificate.device_id).in_(ids))))
    certs = {c.device_id: c for c in rows}
    with httpx.Client(timeout=10) as client:
        start = time.perf_counter()
        for device_id in ids:
            cert = certs[device_id]
            body = {
                "device_id": device_id,
                "model": None,
                "serial": None,
                "labels": {},
                "status": "active",
                "certificate": {
                    "pem": cert.pem,
                    "serial": cert.serial,
                    "fingerprint_sha256": cert.fingerprint_sha256,
                },
            }
            headers = {"Idempotency-Key": f"seq-{device_id}", "Accept": "application/json"}
            response = client.put(url.replace("{id}", device_id), json=body, headers=headers)
            response.raise_for_status()
        return time.perf_counter() - start


def push_phase(
    ws: Workspace, name: str, ids: list[str], server: ServerProcess, **limits: Any
) -> tuple[float, PushReport]:
    add_cloud(ws, name, "http", {"url": server.url}, **limits)
    with write_session(ws.open_registry()) as session:
        jobs.enqueue_register(session, ids, [name])
    start = time.perf_counter()
    (report,) = push(ws, name, passphrase=PASSPHRASE)
    return time.perf_counter() - start, report


def busiest_second(times: list[float]) -> int:
    """The most requests that arrived within any one-second window (times sorted)."""
    peak, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= 1.0:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="registrations (default 5000)")
    parser.add_argument(
        "--latency-ms", type=float, default=20.0, help="server latency per request (default 20)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="outbox concurrency")
    parser.add_argument("--rate", type=float, default=200.0, help="rate limit for phase 2")
    parser.add_argument("--rate-n", type=int, default=1000, help="registrations in phase 2")
    parser.add_argument("--tb-n", type=int, default=1000, help="ThingsBoard registrations")
    parser.add_argument(
        "--azure-n", type=int, default=1000, help="azure registrations in phase 3 (0: skip)"
    )
    args = parser.parse_args(argv)
    latency = args.latency_ms / 1000.0
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(home=Path(tmp) / "home")
        init_workspace(ws, name="Bench", passphrase=PASSPHRASE)
        ids = make_devices(ws, args.n, "bench")
        rated_ids = make_devices(ws, args.rate_n, "rated")
        tb_ids = make_devices(ws, args.tb_n, "tb")
        tb_seq_ids = make_devices(ws, max(1, args.tb_n // 5), "tbseq")
        print(
            f"cpus: {os.cpu_count()}, load: {os.getloadavg()[0]:.2f}, n={args.n}, server "
            f"latency {args.latency_ms:g} ms/request, concurrency {args.concurrency}"
        )

        server = ServerProcess(latency)
        try:
            seq_seconds = sequential_baseline(ws, ids, server.url)
        finally:
            server.stop()
        seq_rate = args.n / seq_seconds
        print(f"sequential httpx loop:    {seq_rate:8.1f} registrations/s ({seq_seconds:.2f} s)")

        server = ServerProcess(latency)
        try:
            seconds, report = push_phase(
                ws, "fast", ids, server, concurrency=args.concurrency, unlimited_rate=True
            )
            created = server.stats()["creations"]
        finally:
            server.stop()
        rate = args.n / seconds
        ratio = seq_seconds / seconds
        print(f"outbox push, no limit:    {rate:8.1f} registrations/s ({seconds:.2f} s), "
              f"{ratio:.1f}x the sequential loop (target >= 5x: "
              f"{'met' if ratio >= 5 else 'NOT met'})")  # fmt: skip
        if (report.done, report.failed, report.left, created) != (args.n, 0, 0, args.n):
            print(f"error: push incomplete: {report.to_dict()}, server created {created}")
            ok = False

        server = ServerProcess(latency)
        try:
            seconds, report = push_phase(
                ws, "rated", rated_ids, server, concurrency=args.concurrency,
                rate_per_second=args.rate,
            )  # fmt: skip
            stats = server.stats()
        finally:
            server.stop()
        times = sorted(stats["put_times"])
        achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        deviation = (achieved - args.rate) / args.rate * 100
        # "Never above" as a platform enforces it: no one-second window holds more requests
        # than the limit. (An average over a short run also moves with arrival jitter.)
        peak = busiest_second(times)
        within = abs(deviation) <= 5 and peak <= args.rate
        print(f"outbox push, limit {args.rate:g}/s: {achieved:8.1f} requests/s at the server "
              f"({deviation:+.2f}% of the limit; {args.rate_n / seconds:.1f}/s end to end; "
              f"busiest second {peak} requests) "
              f"(target within 5%, never above: {'met' if within else 'NOT met'})")  # fmt: skip
        if peak > args.rate:
            print("error: the rate limit was exceeded")
            ok = False
        if (report.done, report.failed) != (args.rate_n, 0):
            print(f"error: rated push incomplete: {report.to_dict()}")
            ok = False
        from cloud_thingsboard import run as thingsboard_phase

        ok = (
            thingsboard_phase(ws, tb_ids, tb_seq_ids, latency=latency, concurrency=args.concurrency)
            and ok
        )
        if args.azure_n > 0:
            ok = azure_phase(ws, args.azure_n, latency, args.concurrency) and ok
        ws.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
