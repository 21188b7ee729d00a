#!/usr/bin/env python3
"""Benchmark a firmware rollout over a whole registry.

    python bench/rollout.py --devices 100000 --workdir /tmp/fleet-rollout
    python bench/rollout.py --devices 1000000 --source /dev/shm/perf/registry-1000000

On a registry of N devices (``--devices``, default 1,000,000; built by
``bench/registry_builder.py`` in ``--workdir`` and reused there, or copied from ``--source``,
a home that builder made, so its own registry is never touched) it catalogues an image for
every model, creates a rollout of it over every active device (one phase: 100 %) and times:

- start: the selection and phase assignment (``start_rollout``: one ``INSERT ... SELECT``);
- notify: the first step (every device ``notified``: targets set, ``firmware.target`` audited
  in batches of 1,000; no cloud, so no outbox jobs);
- reports: N device reports recorded (``record_reports``, batches of 50,000, one transaction
  each) plus the step that turns them into ``succeeded`` and completes the rollout;
- ``fleet rollout status NAME --json`` in a fresh process beside ``fleet --version`` (the
  start-up floor) and ``fleet device show ID`` (start-up with the registry's libraries
  loaded and the registry opened: the floor of every registry command) of the same run,
  median of ``--runs``.

Targets (the issue's, at 1M): start >= 50,000 devices/s, reports >= 20,000/s, status under
1 s beyond the floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from registry_builder import PASSPHRASE, child_env, ensure_registry  # noqa: E402

REPORT_BATCH = 50_000


def timed_process(argv: list[str], env: dict[str, str], runs: int) -> float:
    """Median wall seconds of ``argv`` in fresh processes (fails loudly on an error)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return statistics.median(times)


def prepare_home(args: argparse.Namespace, workdir: Path) -> Path:
    """A registry home of ``args.devices`` devices this run may change."""
    home = workdir / f"registry-{args.devices}"
    if args.source:
        if home.exists():
            shutil.rmtree(home)
        print(f"copying {args.source} -> {home}")
        shutil.copytree(args.source, home)
        return home
    ensure_registry(home, args.devices, rebuild=args.rebuild)
    return home


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1_000_000, help="Registry size.")
    parser.add_argument("--workdir", type=Path, help="Where registries are built and kept.")
    parser.add_argument("--source", type=Path, help="Copy this registry home (never changed).")
    parser.add_argument("--rebuild", action="store_true", help="Build even if one exists.")
    parser.add_argument("--runs", type=int, default=3, help="Fresh processes per timing.")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fleet-rollout-"))
    workdir.mkdir(parents=True, exist_ok=True)
    home = prepare_home(args, workdir)
    os.environ["FLEET_CA_PASSPHRASE"] = PASSPHRASE

    from sqlalchemy import select

    from fleet import clock
    from fleet.firmware.images import add_image
    from fleet.firmware.reports import Report, record_reports
    from fleet.firmware.rollouts import RolloutSpec, create_rollout, start_rollout, step
    from fleet.registry.db import read_session, write_session
    from fleet.registry.models import Device
    from fleet.statuses import FirmwareSource
    from fleet.workspace import Workspace

    ws = Workspace(home=home)
    version = f"9.{int(time.time()) % 100000}.0"  # a version no device runs yet
    name = f"bench-{version}"
    with read_session(ws.open_registry()) as session:
        models = sorted(m for m in session.execute(select(Device.model).distinct()).scalars() if m)  # type: ignore[call-overload]
    image = workdir / "image.bin"
    image.write_bytes(os.urandom(1 << 16))
    add_image(ws, image, version=version, models=models, passphrase=PASSPHRASE)
    create_rollout(ws, RolloutSpec(name, f"{models[0]}@{version}", phases="100%"))

    t0, c0 = time.perf_counter(), time.process_time()
    counts = start_rollout(ws, name)
    start_s, start_cpu = time.perf_counter() - t0, time.process_time() - c0
    selected = sum(counts.values())
    t0, c0 = time.perf_counter(), time.process_time()
    [notified] = step(ws, name)
    notify_s, notify_cpu = time.perf_counter() - t0, time.process_time() - c0

    with read_session(ws.open_registry()) as session:
        ids = list(
            session.execute(
                select(Device.id).where(Device.status == "active").order_by(Device.id)  # type: ignore[arg-type]
            ).scalars()
        )
    at = clock.now()
    t0, c0 = time.perf_counter(), time.process_time()
    for first in range(0, len(ids), REPORT_BATCH):
        batch = ids[first : first + REPORT_BATCH]
        with write_session(ws.open_registry()) as session:
            record_reports(session, (Report(d, version, FirmwareSource.INGEST, at) for d in batch))
    record_s, record_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    [done] = step(ws, name)
    apply_s, apply_cpu = time.perf_counter() - t0, time.process_time() - c0
    ws.close()

    env = child_env(None)
    env["PYTHONPATH"] = str(REPO)
    fleet = [sys.executable, "-m", "fleet", "--home", str(home)]
    floor = timed_process([*fleet, "--version"], env, args.runs)
    show = timed_process([*fleet, "device", "show", ids[0], "--json"], env, args.runs)
    status = timed_process([*fleet, "rollout", "status", name, "--json"], env, args.runs)

    reports_s = record_s + apply_s
    load = os.getloadavg()[0]
    print(f"registry {home}: {args.devices:,} devices, {selected:,} selected ({counts})")
    print(
        f"load average {load:.1f} on {os.cpu_count()} CPUs; CPU seconds of this process: "
        f"start {start_cpu:.2f}, notify {notify_cpu:.2f}, record {record_cpu:.2f}, "
        f"step {apply_cpu:.2f}"
    )
    print(
        f"start (selection + phases): {start_s:.2f} s = "
        f"{selected / start_s:,.0f} devices/s (target >= 50,000)"
    )
    print(
        f"notify (first step, targets + audit): {notify_s:.2f} s = "
        f"{notified.notified / notify_s:,.0f} devices/s"
    )
    print(
        f"reports: record {record_s:.2f} s + step {apply_s:.2f} s = "
        f"{len(ids) / reports_s:,.0f} reports/s (target >= 20,000); "
        f"{done.changed.get('succeeded', 0):,} succeeded, rollout {done.state}"
    )
    print(
        f"`fleet rollout status` {status:.3f} s, floor `fleet --version` {floor:.3f} s: "
        f"{status - floor:.3f} s beyond start-up (target < 1 s); registry-command floor "
        f"`fleet device show ID` {show:.3f} s: {status - show:.3f} s beyond it"
    )
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
