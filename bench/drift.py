"""``fleet cloud drift`` at fleet scale: N registered devices (default 100,000) against an
in-memory backend's inventory, streamed page by page. Prints devices/s and peak RSS, and the
ratio to a named baseline measured in the same run: *stream only*, the same inventory read
with no comparison at all (what the drift check costs on top of reading the cloud).

The registry is built (and reused) by ``registry_builder`` (1 % of devices decommissioned,
their certificates revoked); a cloud ``bench`` gets a registration per active device. The
inventory is generated from the registry on the fly in its own SQLite connection, so it never
sits in memory: every device with its certificate, except 0.1 % left out (missing-in-cloud),
0.1 % disabled (disabled-in-cloud), and 100 unknown ones. Each phase runs in a child process
of its own, so its peak RSS is its own.

    python bench/drift.py              # N=100000
    python bench/drift.py --n 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry_builder import REPO, child_env, ensure_registry

sys.path.insert(0, str(REPO))

PAGE = 250  # devices per inventory page (AWS ListThings' maximum)
UNKNOWN = 100
AWS_RATE = 10  # things/s AWS IoT lists at the default list_rate (a ListThingPrincipals each)
RATE_TARGET = 5_000  # devices/s compared: the check is never the bottleneck (AWS lists ~10/s)
RSS_TARGET_MB = 200


def inventory(home: Path) -> Iterator[Any]:
    """The fake cloud's devices, generated from the registry (0.1 % missing, 0.1 % disabled,
    ``UNKNOWN`` unknown), in pages of ``PAGE`` read from their own connection."""
    from fleet.cloud.base import RemoteCertificate, RemoteDevice

    db = sqlite3.connect(f"file:{home / 'registry.db'}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT d.id, c.fingerprint_sha256 FROM device d JOIN certificate c "
        "ON c.device_id = d.id AND c.status = 'active' WHERE d.status = 'active' ORDER BY d.id"
    )
    i = 0
    while page := rows.fetchmany(PAGE):
        for device_id, fingerprint in page:
            i += 1
            if i % 1000 == 0:
                continue  # missing in the cloud
            active = i % 1000 != 1
            certificate = RemoteCertificate(fingerprint, active, fingerprint)
            yield RemoteDevice(device_id, active, (certificate,), remote={"n": i})
    db.close()
    for u in range(UNKNOWN):
        yield RemoteDevice(f"rogue-{u:03d}", True, (RemoteCertificate("ee" * 32, True),))


def make_backend(home: Path) -> Any:
    from fleet.cloud.base import CloudBackend

    class Fake(CloudBackend):
        type_name = "bench"

        @classmethod
        def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
            return dict(options)

        def check(self) -> Any:
            raise NotImplementedError

        def prepare(self, ca: Any) -> dict[str, Any]:
            return {}

        def register(self, device: Any, state: Mapping[str, Any]) -> dict[str, Any]:
            return {}

        def deregister(self, device: Any, remote: Mapping[str, Any], state: Any) -> None:
            return None

        def fetch_status(self, device_ids: Sequence[str], state: Any) -> dict[str, Any]:
            return {}

        def iter_inventory(self, state: Mapping[str, Any]) -> Iterator[Any]:
            return inventory(home)

    return Fake("bench", {})


def ensure_cloud(home: Path) -> int:
    """The cloud ``bench`` with a registration (registered) per active device."""
    from sqlalchemy import insert, text

    from fleet import clock
    from fleet.cloud.clouds import add_cloud
    from fleet.cloud.models import CloudRegistration
    from fleet.registry.db import write_session
    from fleet.workspace import Workspace

    ws = Workspace(home=home)
    engine = ws.open_registry()
    with engine.connect() as conn:
        if conn.execute(text("SELECT count(*) FROM cloud WHERE name='bench'")).scalar_one():
            return int(conn.execute(text("SELECT count(*) FROM cloud_registration")).scalar_one())
    add_cloud(ws, "bench", "http", {"url": "https://reg.example/devices/{id}"})
    now = clock.now()
    with write_session(engine) as session:
        rows = session.execute(
            text(
                "SELECT d.id, c.serial FROM device d JOIN certificate c ON c.device_id = d.id "
                "AND c.status = 'active' WHERE d.status = 'active'"
            )
        ).all()
        values = [
            {
                "device_id": device_id,
                "cloud": "bench",
                "status": "registered",
                "remote": {},
                "certificate_serial": serial,
                "attempts": 1,
                "updated_at": now,
            }
            for device_id, serial in rows
        ]
        session.execute(insert(CloudRegistration.__table__), values)  # type: ignore[attr-defined]
    ws.close()
    return len(values)


def phase(name: str, home: Path) -> dict[str, Any]:
    """One measurement, in this (child) process."""
    from fleet.workspace import Workspace

    start = time.perf_counter()
    if name == "stream":
        read = sum(1 for _ in inventory(home))
        result: dict[str, Any] = {"read": read}
    else:
        from fleet.cloud import drift

        ws = Workspace(home=home)
        report = drift.drift(ws, "bench", backend=make_backend(home))
        result = {"read": report.remote_devices, "counts": report.counts()}
    result["seconds"] = time.perf_counter() - start
    result["rss_mb"] = peak_rss_mb()
    return result


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would include the parent's, kept across
    fork and exec on Linux)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(name: str, home: Path) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--home", str(home)],
        env=child_env(),
        capture_output=True,
        text=True,
    )
    if child.returncode:
        raise SystemExit(f"{name} failed: {child.stderr.strip()[-2000:]}")
    return dict(json.loads(child.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="devices in the registry")
    parser.add_argument("--home", type=Path, help="workspace (default: a cached temp one)")
    parser.add_argument("--phase", choices=("stream", "drift"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.home)))
        return
    home = args.home or Path(tempfile.gettempdir()) / f"fleet-bench-drift-{args.n}"
    built = ensure_registry(home, args.n)
    registrations = ensure_cloud(home)
    print(f"registry: {built.devices} devices, {registrations} registered on cloud 'bench'")
    stream = run_phase("stream", home)
    checked = run_phase("drift", home)
    rate = checked["read"] / checked["seconds"]
    base = stream["read"] / stream["seconds"]
    print(
        f"stream only (baseline):  {base:10.0f} devices/s ({stream['seconds']:.2f} s), "
        f"peak RSS {stream['rss_mb']:.0f} MB"
    )
    met = "met" if rate >= RATE_TARGET and checked["rss_mb"] <= RSS_TARGET_MB else "NOT met"
    print(
        f"drift (compare + missing): {rate:8.0f} devices/s ({checked['seconds']:.2f} s), "
        f"peak RSS {checked['rss_mb']:.0f} MB; {rate / base:.2f}x the baseline's rate, "
        f"+{checked['rss_mb'] - stream['rss_mb']:.0f} MB "
        f"(target >= {RATE_TARGET}/s and <= {RSS_TARGET_MB} MB: {met})"
    )
    print(f"drift vs AWS IoT's listing at the default list_rate: {rate / AWS_RATE:.0f}x faster")
    print(f"findings: {json.dumps({k: v for k, v in checked['counts'].items() if v})}")


if __name__ == "__main__":
    main()
