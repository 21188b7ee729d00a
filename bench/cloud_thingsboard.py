"""The ThingsBoard phase of bench/cloud.py: N registrations through the outbox to the strict
local ThingsBoard (tests/helpers/thingsboard_server.py, in its own process, every body
checked against tb-ce-client's models), against a sequential httpx loop making the same
REST calls per device in the same run; then the inventory read (``iter_inventory``) rate.

    python bench/cloud.py --n 200 --tb-n 200      # or: python bench/cloud_thingsboard.py
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))

USER = "bench@fleet.test"
PASSWORD = "bench-password"  # the local test server's; read from TB_BENCH_PASSWORD


def _serve(latency: float, ports: Any) -> None:
    from helpers.thingsboard_server import ThingsBoardServer

    server = ThingsBoardServer()
    server.state.latency = latency
    server.state.add_user(USER, PASSWORD)
    ports.put(server.server_address[1])
    server.serve_forever()


class TbProcess:
    """The local ThingsBoard in a child process (so it does not share our GIL)."""

    def __init__(self, latency: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        ports = ctx.Queue()
        self.process = ctx.Process(target=_serve, args=(latency, ports), daemon=True)
        self.process.start()
        self.url = f"http://127.0.0.1:{int(ports.get(timeout=60))}"

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/_stats", timeout=30).json()
        return data

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(timeout=10)


def sequential_baseline(ws: Any, ids: list[str], url: str) -> float:
    """Per device the calls fleet makes (find by name, create with credentials, server
    attributes), one after another with one client; seconds."""
    from sqlmodel import col, select

    from fleet.cloud.thingsboard.api import credentials_id
    from fleet.registry.db import read_session
    from fleet.registry.models import Certificate

    with read_session(ws.open_registry()) as session:
        rows = list(session.exec(select(Certificate).where(col(Certificate.device_id).in_(ids))))
    pems = {c.device_id: c.pem for c in rows}
    with httpx.Client(base_url=url, timeout=10) as client:
        token = client.post("/api/auth/login", json={"username": USER, "password": PASSWORD})
        headers = {"X-Authorization": "Bearer " + token.json()["token"]}
        profiles = client.get(
            "/api/deviceProfiles", params={"pageSize": 100, "page": 0}, headers=headers
        ).json()["data"]
        profile = next(p for p in profiles if p["name"] == "default")["id"]
        start = time.perf_counter()
        for device_id in ids:
            found = client.get(
                "/api/tenant/devices", params={"deviceName": device_id}, headers=headers
            )
            assert found.status_code == 404, found.status_code
            created = client.post(
                "/api/device-with-credentials",
                params={"nameConflictPolicy": "FAIL"},
                json={
                    "device": {"name": device_id, "type": "default", "deviceProfileId": profile},
                    "credentials": {
                        "credentialsType": "X509_CERTIFICATE",
                        "credentialsId": credentials_id(pems[device_id]),
                        "credentialsValue": pems[device_id],
                    },
                },
                headers=headers,
            )
            created.raise_for_status()
            client.post(
                f"/api/plugins/telemetry/DEVICE/{created.json()['id']['id']}/attributes/SERVER_SCOPE",
                json={"fleet_state": "registered"},
                headers=headers,
            ).raise_for_status()
        return time.perf_counter() - start


def run(ws: Any, ids: list[str], seq_ids: list[str], *, latency: float, concurrency: int) -> bool:
    """Print the figures; False when something went wrong (not when a target is missed)."""
    from fleet.cloud import jobs
    from fleet.cloud.clouds import add_cloud
    from fleet.cloud.push import push
    from fleet.cloud.thingsboard import ThingsBoardBackend
    from fleet.registry.db import write_session

    os.environ["TB_BENCH_PASSWORD"] = PASSWORD
    ok = True
    server = TbProcess(latency)
    try:
        seq_seconds = sequential_baseline(ws, seq_ids, server.url)
        options = {"base_url": server.url, "username": USER, "password_env": "TB_BENCH_PASSWORD"}
        add_cloud(ws, "tb", "thingsboard", options, concurrency=concurrency, unlimited_rate=True)
        with write_session(ws.open_registry()) as session:
            jobs.enqueue_register(session, ids, ["tb"])
        start = time.perf_counter()
        (report,) = push(ws, "tb")
        seconds = time.perf_counter() - start
        stats = server.stats()
        backend = ThingsBoardBackend("tb", ThingsBoardBackend.validate_options(options))
        backend.inventory_requests_per_second = 1e9  # the server's speed, not the pacing
        start = time.perf_counter()
        listed = sum(1 for _ in backend.iter_inventory({}))
        inventory_seconds = time.perf_counter() - start
        backend.close()
    finally:
        server.stop()
    seq_rate = len(seq_ids) / seq_seconds
    rate = len(ids) / seconds
    print(f"thingsboard sequential loop: {seq_rate:8.1f} registrations/s ({seq_seconds:.2f} s, "
          f"{len(seq_ids)} devices, 3 calls each)")  # fmt: skip
    print(f"thingsboard outbox push:     {rate:8.1f} registrations/s ({seconds:.2f} s), "
          f"{rate / seq_rate:.1f}x the sequential loop; {stats['requests']} requests, "
          f"{stats['logins']} login(s)")  # fmt: skip
    print(f"thingsboard inventory read:  {listed / inventory_seconds:8.1f} devices/s "
          f"({listed} devices, unpaced; drift paces at "
          f"{ThingsBoardBackend.inventory_requests_per_second:g} requests/s)")  # fmt: skip
    expected = len(ids) + len(seq_ids)
    if (report.done, report.failed, report.left) != (len(ids), 0, 0):
        print(f"error: thingsboard push incomplete: {report.to_dict()}")
        ok = False
    if stats["creations"] != expected or listed != expected:
        print(f"error: thingsboard created {stats['creations']}, listed {listed}, want {expected}")
        ok = False
    if stats["violations"]:
        print(f"error: bodies refused by tb-ce-client's models: {stats['violations'][:3]}")
        ok = False
    return ok
