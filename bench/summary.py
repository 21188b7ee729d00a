"""Benchmark: ``fleet status`` on a registry of N devices (default 1,000,000).

Builds a ``fleet init``-ed registry and writes rows the way fleet stores them, in bulk
(executemany): N devices (50 models and some without, 2% decommissioned), one certificate
each (``not_after`` spread over -30..400 days, 1% revoked, PEM-sized text), one cloud with a
registration per device and a job per device (mostly done, some pending/retry/failed).
No audit events: status reads only the audit head row.

Prints, in the same run:

- ``fleet_status()`` in-process, median of several calls, without the composite indexes the
  summary's queries are written for (:data:`PROPOSED_INDEXES`), then with them, with each
  query's plan (SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN``) and time;
- the same on an empty registry (the fixed cost: schema check, session), as the baseline;
- ``fleet status --json`` as a fresh process against ``fleet --version``: the start-up floor.

Target: ``fleet_status()`` under 1 s at 1M devices (beyond start-up).

    python bench/summary.py                      # N=1,000,000, SQLite in a temporary folder
    python bench/summary.py --n 100000 --db postgresql+psycopg://fleet:fleet@127.0.0.1/bench
    python bench/summary.py --keep /tmp/status-1m  # keep (and reuse) the registry
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import event, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from fleet.cloud.models import Cloud, CloudJob, CloudRegistration  # noqa: E402
from fleet.pki.authority import init_workspace  # noqa: E402
from fleet.registry.models import Certificate, Device  # noqa: E402
from fleet.status.summary import fleet_status  # noqa: E402
from fleet.workspace import Workspace  # noqa: E402

PASSPHRASE = "bench-passphrase-1234"
BATCH = 20_000
# The composite indexes the summary's queries are written for (name, table, columns); see
# fleet/status/summary.py. Migration 0005 creates the first two; the third is still missing.
PROPOSED_INDEXES = (
    ("ix_certificate_status_not_after", "certificate", ("status", "not_after")),
    ("ix_cloud_registration_cloud_status", "cloud_registration", ("cloud", "status")),
    ("ix_cloud_job_state_cloud_created_at", "cloud_job", ("state", "cloud", "created_at")),
)
PEM = "-----BEGIN CERTIFICATE-----\n" + "A" * 640 + "\n-----END CERTIFICATE-----\n"


def batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def fill(engine: Engine, n: int, now: datetime) -> None:
    """N devices, certificates, registrations and jobs, written in bulk."""
    rnd = random.Random(12)
    models = [f"model-{i:02d}" for i in range(50)]
    weights = [1.0 / (i + 1) for i in range(50)]
    device_t, cert_t = Device.__table__, Certificate.__table__  # type: ignore[attr-defined]
    job_t, reg_t = CloudJob.__table__, CloudRegistration.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(
            Cloud.__table__.insert(),  # type: ignore[attr-defined]
            [{"name": "iot", "type": "http", "options": {}, "concurrency": 8,
              "created_at": now}],
        )  # fmt: skip

    def devices() -> Iterator[dict[str, Any]]:
        for i in range(n):
            decommissioned = rnd.random() < 0.02
            model = None if rnd.random() < 0.03 else rnd.choices(models, weights)[0]
            yield {
                "id": f"dev-{i:08d}", "model": model, "serial": f"SN{i}", "labels": {},
                "status": "decommissioned" if decommissioned else "active",
                "created_at": now, "updated_at": now,
                "decommissioned_at": now if decommissioned else None,
            }  # fmt: skip

    def certificates() -> Iterator[dict[str, Any]]:
        for i in range(n):
            revoked = rnd.random() < 0.01
            not_after = now + timedelta(days=rnd.uniform(-30, 400))
            yield {
                "serial": f"{i + 1:x}", "device_id": f"dev-{i:08d}",
                "fingerprint_sha256": f"{i:064x}", "subject": f"CN=dev-{i:08d}",
                "not_before": not_after - timedelta(days=365), "not_after": not_after,
                "status": "revoked" if revoked else "active",
                "revoked_at": now if revoked else None,
                "revocation_reason": "unspecified" if revoked else None,
                "profile": "default", "key_type": "ec-p256", "key_origin": "generated",
                "issued_at": not_after - timedelta(days=365), "pem": PEM,
            }  # fmt: skip

    def registrations() -> Iterator[dict[str, Any]]:
        for i in range(n):
            r = rnd.random()
            status = "registered" if r < 0.97 else "pending" if r < 0.995 else "failed"
            yield {"device_id": f"dev-{i:08d}", "cloud": "iot", "status": status,
                   "remote": {}, "attempts": 1, "updated_at": now}  # fmt: skip

    def jobs() -> Iterator[dict[str, Any]]:
        for i in range(n):
            r = rnd.random()
            state = (
                "done" if r < 0.97 else "pending" if r < 0.99 else "retry" if r < 0.995
                else "failed"
            )  # fmt: skip
            created = now - timedelta(seconds=rnd.uniform(0, 86400 * 3))
            yield {"device_id": f"dev-{i:08d}", "cloud": "iot", "action": "register",
                   "state": state, "attempts": 1, "next_attempt_at": created,
                   "idempotency_key": f"{i:032x}", "created_at": created,
                   "updated_at": created}  # fmt: skip

    for table, rows in (
        (device_t, devices()),
        (cert_t, certificates()),
        (reg_t, registrations()),
        (job_t, jobs()),
    ):
        start = time.perf_counter()
        for batch in batches(rows):
            with engine.begin() as conn:
                conn.execute(table.insert(), batch)
        print(f"  wrote {n:,} {table.name} rows in {time.perf_counter() - start:.1f} s")
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))


def median_seconds(call: Callable[[], object], runs: int) -> float:
    call()  # warm the page cache and the engine
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def show_plans(ws: Workspace) -> None:
    """Each statement fleet_status() runs, with the database's plan for it."""
    engine = ws.open_registry()
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "alembic" not in statement:
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        fleet_status(ws)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        for statement, params in seen:
            print("   ", " ".join(statement.split())[:150])
            explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cursor = raw.cursor()
            cursor.execute(explain + statement, params)
            for row in cursor.fetchall():
                print("        ", row[-1])
            start = time.perf_counter()
            cursor.execute(statement, params)
            cursor.fetchall()
            print(f"         ({(time.perf_counter() - start) * 1000:.1f} ms)")


# What `fleet status` imports before it does any work.
FLOOR_IMPORTS = (
    "import fleet.cli, fleet.cli.status_cmds, fleet.status.summary, fleet.registry.migrations"
)


def run_cli(home: Path, db: str | None, *args: str, runs: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "fleet", "--home", str(home)] + (["--db", db] if db else [])
    if args[0] == "-c":
        base = [sys.executable]

    def once() -> None:
        subprocess.run([*base, *args], env=env, check=True, capture_output=True)

    return median_seconds(once, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--db", help="a registry URL (an empty database); default: SQLite")
    parser.add_argument("--keep", type=Path, help="workspace folder to keep and reuse")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    home = args.keep or Path(tempfile.mkdtemp(prefix="fleet-status-bench-"))
    now = datetime.now(UTC)
    empty = Workspace(home=Path(tempfile.mkdtemp(prefix="fleet-status-empty-")))
    init_workspace(empty, name="empty", passphrase=PASSPHRASE)
    ws = Workspace(home=home, db_url=args.db)
    if not (home / "ca").exists():
        print(f"building a registry of {args.n:,} devices in {home} ...")
        init_workspace(ws, name="bench", passphrase=PASSPHRASE)
        fill(ws.open_registry(), args.n, now)
    engine = ws.open_registry()
    with engine.begin() as conn:  # start without them (a kept registry has them)
        for name, _, _ in PROPOSED_INDEXES:
            conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
    if engine.dialect.name == "postgresql":
        # What autovacuum does to a live table: index-only scans need the visibility map.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))

    baseline = median_seconds(lambda: fleet_status(empty), args.runs)
    print(f"\nN = {args.n:,} devices ({engine.dialect.name})")
    print(f"  baseline: fleet_status(), empty SQLite registry {baseline * 1000:8.1f} ms")
    result = fleet_status(ws)
    assert result.devices.total >= args.n, result.devices.total
    before = median_seconds(lambda: fleet_status(ws), args.runs)
    print(f"  fleet_status(), without PROPOSED_INDEXES         {before * 1000:8.1f} ms")
    show_plans(ws)
    with engine.begin() as conn:
        for name, table, columns in PROPOSED_INDEXES:
            conn.execute(text(f"CREATE INDEX {name} ON {table} ({', '.join(columns)})"))
        conn.execute(text("ANALYZE"))
    after = median_seconds(lambda: fleet_status(ws), args.runs)
    print(f"  fleet_status(), with PROPOSED_INDEXES            {after * 1000:8.1f} ms")
    show_plans(ws)
    version = run_cli(home, args.db, "--version", runs=args.runs)
    floor = run_cli(home, args.db, "-c", FLOOR_IMPORTS, runs=args.runs)
    cli = run_cli(home, args.db, "status", "--json", runs=args.runs)
    print(f"\n  `fleet --version`                               {version * 1000:8.1f} ms")
    print(f"  start-up floor: python -c '{FLOOR_IMPORTS}'")
    print(f"                                                 {floor * 1000:8.1f} ms")
    print(f"  `fleet status --json`                          {cli * 1000:8.1f} ms")
    print(f"  beyond start-up: {(cli - floor) * 1000:.1f} ms (target < 1000 ms)")
    print(f"  ratios: status/baseline {after / baseline:.1f}x, cli/floor {cli / floor:.2f}x")


if __name__ == "__main__":
    main()
