"""Benchmark ``fleet audit verify``: events/s and peak RSS for N-event trails, beside
baselines measured in the same run.

The registry is a real workspace (``init_workspace``) whose trail is then extended to N
events by :func:`build_audit_chain`, through fleet's own ``append_many`` (the path bulk
provisioning takes): ``device.add`` events with the details fleet records, alternating with
``cert.revoke`` ones, in batches of 20,000 (one write transaction each).

Each verification runs in a fresh child process that reports its own peak RSS, so the
figures at 200k and 2M show whether memory stays flat, and its CPU time beside the wall
time (the rate per CPU second is the one-core figure on a busy machine). Baselines, in the
same child:

- ``sha256 floor``: ``hashlib.sha256`` over each event's canonical bytes, prepared in memory
  beforehand (for the first 200,000 events): the hashing verify cannot avoid;
- ``ORM verify``: the verification fleet did before (ORM objects in batches of 5,000, each
  re-hashed with ``event_hash(event.model_dump())``), over the first 100,000 events.

    python bench/audit_verify.py                       # SQLite, N = 200k and 2M
    python bench/audit_verify.py --events 200000 --postgres postgresql+psycopg://u:p@host/postgres
    python bench/audit_verify.py --events 2000 --check  # small, used as a smoke test

``build_audit_chain`` can be imported by other benchmarks (``bench/everyday.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from fleet.registry import audit  # noqa: E402
from fleet.registry.db import write_session  # noqa: E402

PASSPHRASE = "bench passphrase"
BATCH = 20_000
BASELINE_ORM = 100_000
BASELINE_SHA = 200_000


def _events(first: int, count: int) -> Iterator[audit.PendingEvent]:
    """``count`` events shaped like the ones fleet writes for device ``first`` on."""
    for number in range(first, first + count):
        device = f"dev-{number // 2:08d}"
        if number % 2:
            yield audit.PendingEvent(
                "cert.revoke", device, {"reason": "superseded", "serial": f"{number:040x}"}
            )
            continue
        yield audit.PendingEvent(
            "device.add",
            device,
            {
                "certificate": {
                    "fingerprint_sha256": hashlib.sha256(device.encode()).hexdigest(),
                    "key_origin": "generated",
                    "key_type": "ec-p256",
                    "not_after": "2027-12-03T00:00:00+00:00",
                    "not_before": "2026-12-03T00:00:00+00:00",
                    "profile": "device",
                    "serial": f"{number:040x}",
                },
                "labels": {"site": f"site-{number % 17}"},
                "model": "sensor-x",
                "serial": f"SN{number:010d}",
                "status": "active",
            },
        )


def build_audit_chain(
    engine: Engine, n_events: int, *, batch_size: int = BATCH, start: datetime | None = None
) -> None:
    """Append ``n_events`` valid events to the trail in ``engine``'s registry (which must
    exist), through ``audit.append_many`` in write transactions of ``batch_size`` events;
    batch ``i`` is stamped ``start + i`` seconds (default: 2026-12-01 UTC)."""
    from fleet.provision.commit import bulk_insert

    moment = start or datetime(2026, 12, 1, tzinfo=UTC)
    done = 0
    while done < n_events:
        size = min(batch_size, n_events - done)
        with write_session(engine) as session:
            audit.append_many(
                session,
                list(_events(done, size)),
                actor="bench",
                at=moment + timedelta(seconds=done // batch_size),
                insert_rows=lambda table, rows, s=session: bulk_insert(s, table, rows),
            )
        done += size


@contextmanager
def _scratch_url(admin_url: str | None) -> Iterator[str | None]:
    """A fresh PostgreSQL database (dropped afterwards), or ``None`` for SQLite."""
    if admin_url is None:
        yield None
        return
    name = f"fleet_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _measure(home: Path, db_url: str | None) -> dict[str, Any]:
    """Run in the child: verify the whole trail, then the baselines."""
    from fleet.registry.db import read_session
    from fleet.workspace import Workspace

    ws = Workspace(home=home, db_url=db_url)
    began = time.perf_counter()
    ws.open_registry()  # the schema check every command pays, apart from verify's own time
    opened = time.perf_counter() - began
    began, cpu = time.perf_counter(), time.process_time()
    result = audit.verify_audit(ws)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures: dict[str, Any] = {
        "ok": result.ok,
        "events": result.events,
        "seconds": seconds,
        "rate": result.events / seconds,
        "cpu_rate": result.events / cpu,
        "rss_mib": rss_mib,
        "open_seconds": opened,
    }
    # --from over the last 10%: the range check reads from an index, not the whole table.
    began = time.perf_counter()
    tail = audit.verify_audit(ws, start=max(1, result.events - result.events // 10))
    figures["from_seconds"] = time.perf_counter() - began
    figures["from_ok"] = tail.ok
    with read_session(ws.open_registry()) as session:
        bodies, orm_count = [], 0
        began, cpu = time.perf_counter(), time.process_time()
        for event in audit.iter_events(session):
            orm_count += 1
            if audit.event_hash(event.model_dump()) != event.hash:
                raise SystemExit(f"ORM baseline: event {event.seq} does not verify")
            if orm_count < BASELINE_SHA:
                fields = event.model_dump()
                fields["details"] = json.loads(fields["details"])
                bodies.append(audit.canonical_json(fields).encode())
            if orm_count >= BASELINE_ORM and len(bodies) >= min(BASELINE_SHA, result.events) - 1:
                break
        figures["orm_rate"] = orm_count / (time.perf_counter() - began)
        figures["orm_cpu_rate"] = orm_count / (time.process_time() - cpu)
    began = time.perf_counter()
    for body in bodies:
        hashlib.sha256(body).hexdigest()
    figures["sha_rate"] = len(bodies) / (time.perf_counter() - began)
    ws.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--postgres", metavar="ADMIN_URL", help="bench on PostgreSQL")
    parser.add_argument("--workdir", type=Path, help="where the scratch workspaces go")
    parser.add_argument("--check", action="store_true", help="fail unless every trail verifies")
    parser.add_argument("--child", nargs=2, metavar=("HOME", "DB_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        home, url = args.child
        print(json.dumps(_measure(Path(home), None if url == "-" else url)))
        return
    from fleet.pki.authority import init_workspace
    from fleet.workspace import Workspace

    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(f"fleet audit verify, {backend}, one process per measurement")
    for n_events in args.events:
        workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-audit-", dir=args.workdir))
        try:
            with _scratch_url(args.postgres) as url:
                ws = Workspace(home=workdir / "home", db_url=url)
                init_workspace(ws, name="Bench Fleet", passphrase=PASSPHRASE)
                began = time.perf_counter()
                build_audit_chain(ws.engine, n_events - 1)  # ca.init is event 1
                built = time.perf_counter() - began
                ws.close()
                child = subprocess.run(
                    [sys.executable, __file__, "--child", str(ws.home), url or "-"],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
                figures = json.loads(child.stdout)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(
            f"N={n_events:>9,}  built in {built:6.1f} s\n"
            f"  verify:        {figures['rate']:>10,.0f} events/s  ({figures['seconds']:.2f} s, "
            f"{figures['cpu_rate']:,.0f} events per CPU second, "
            f"ok={figures['ok']}, peak RSS {figures['rss_mib']:.0f} MiB; "
            f"opening the registry took {figures['open_seconds']:.2f} s more)\n"
            f"  --from last 10%: {figures['from_seconds']:.2f} s (ok={figures['from_ok']})\n"
            f"  ORM verify:    {figures['orm_rate']:>10,.0f} events/s (first "
            f"{min(BASELINE_ORM, n_events):,}) -> {figures['rate'] / figures['orm_rate']:.1f}x "
            f"(per CPU second: {figures['orm_cpu_rate']:,.0f} -> "
            f"{figures['cpu_rate'] / figures['orm_cpu_rate']:.1f}x)\n"
            f"  sha256 floor:  {figures['sha_rate']:>10,.0f} events/s (hashing alone) -> "
            f"verify is {figures['rate'] / figures['sha_rate']:.2f}x of it"
        )
        if args.check and not (figures["ok"] and figures["from_ok"]):
            raise SystemExit(f"N={n_events}: the trail does not verify")


if __name__ == "__main__":
    main()
