"""Benchmark ``fleet export``: rows/s and peak RSS for CSV and JSONL, the ratio to
``sqlite3 -csv`` dumping the same rows, and ``--as-of`` over the whole audit trail.

The registry (SQLite) is built the way fleet writes it, without N real signatures: one real
certificate's PEM is reused for every row, and each device gets the ``device.add`` event fleet
writes plus one more (update, renewal, revocation or decommissioning, in turn), all in one
valid hash chain: N devices, 2N + 1 audit events. Each export runs in a fresh child process
(``python -c``), timed inside it (interpreter start-up is reported apart) and reports
its own peak RSS (``VmHWM``).

Needs the ``sqlite3`` command-line shell for the baseline (Debian: ``apt-get install -y
sqlite3``); without it the baseline is reported as missing and the rest still runs.

    python bench/export.py --devices 100000
    python bench/export.py --devices 1000000 --workdir /var/tmp/fleet-bench
    python bench/export.py --devices 1000000 --shuffled   # devices added in random ID order
    python bench/export.py --devices 500 --check     # consistency checks, used by the tests

Beside the ``sqlite3 -csv`` baseline it prints the ``sqlite3`` shell reading the export
cache's own SELECT: how long SQLite alone takes to produce the rows fleet writes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import bindparam, create_engine, insert, inspect, text, update  # noqa: E402
from sqlalchemy.dialects import sqlite as sqlite_dialect  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402

from fleet.export import ExportFilters, iso_moment, live_query  # noqa: E402
from fleet.export.cache import cached_query, refresh_dirty  # noqa: E402
from fleet.pki import ca  # noqa: E402
from fleet.pki.authority import init_workspace  # noqa: E402
from fleet.pki.issue import issue_certificate  # noqa: E402
from fleet.pki.profiles import load_profile  # noqa: E402
from fleet.registry import audit  # noqa: E402
from fleet.registry.audit import verify_audit  # noqa: E402
from fleet.registry.models import AuditEvent, AuditHead, Certificate, Device  # noqa: E402
from fleet.workspace import Workspace  # noqa: E402

PASSPHRASE = "bench passphrase"
BATCH = 20_000
SITES = ("hamburg", "berlin", "munich", "=cmd|calc", "lyon", "oslo", "porto")
MODELS = ("p100", "p200", "s7", "gateway-x", "+meter")
TARGET_ROWS_PER_S = 200_000
TARGET_RSS_MB = 200
TARGET_RATIO = 3.0
TARGET_AS_OF_S = 60.0


def build_registry(ws: Workspace, devices: int, shuffled: bool = False) -> int:
    """Fill the workspace's registry; return the number of audit events. ``shuffled`` adds
    the devices in a random ID order (as a fleet whose IDs are serial or MAC numbers sees
    them arrive), else in ID order."""
    issuer = ca.load_issuer(ws.home, PASSPHRASE)
    profile = load_profile("default", ws.home)
    sample_pem = issue_certificate(issuer, "sample", profile).cert_pem
    engine = ws.open_registry()
    with engine.connect() as conn:
        head = conn.execute(AuditHead.__table__.select()).one()  # type: ignore[attr-defined]
    seq, prev = int(head.seq), str(head.hash)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    second_phase = base + timedelta(days=10)

    def cert_row(i: int, gen: int, issued: datetime) -> dict[str, Any]:
        serial = hashlib.sha1(f"{i}/{gen}".encode()).hexdigest().lstrip("0")
        return {
            "serial": serial,
            "device_id": f"dev-{i:07d}",
            "fingerprint_sha256": hashlib.sha256(f"fp{i}/{gen}".encode()).hexdigest(),
            "subject": f"CN=dev-{i:07d}",
            "not_before": issued.replace(microsecond=0) - timedelta(seconds=60),
            "not_after": issued.replace(microsecond=0) + timedelta(days=365),
            "status": "active",
            "revoked_at": None,
            "revocation_reason": None,
            "profile": "default",
            "key_type": "ec-p256",
            "key_origin": "generated",
            "issued_at": issued,
            "pem": sample_pem,
        }

    def cert_details(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "serial": row["serial"],
            "fingerprint_sha256": row["fingerprint_sha256"],
            "not_before": row["not_before"].isoformat(),
            "not_after": row["not_after"].isoformat(),
            "profile": row["profile"],
            "key_type": row["key_type"],
            "key_origin": row["key_origin"],
        }

    def event(action: str, target: str, details: dict[str, Any], at: datetime) -> dict[str, Any]:
        nonlocal seq, prev
        seq += 1
        fields = {
            "seq": seq,
            "ts": audit.format_ts(at),
            "actor": "bench",
            "action": action,
            "target": target,
            "details": audit.canonical_json(details),
            "prev_hash": prev,
        }
        prev = audit.event_hash(fields)
        return {**fields, "hash": prev}

    device_t = Device.__table__  # type: ignore[attr-defined]
    cert_t = Certificate.__table__  # type: ignore[attr-defined]
    event_t = AuditEvent.__table__  # type: ignore[attr-defined]

    order = list(range(devices))  # position in time -> device number
    if shuffled:
        random.Random(7).shuffle(order)

    def batches() -> Iterator[list[tuple[int, int]]]:
        """(position, device number) pairs, a batch at a time."""
        for start in range(0, devices, BATCH):
            yield [(k, order[k]) for k in range(start, min(start + BATCH, devices))]

    # phase 1: every device added with its first certificate
    for chunk in batches():
        device_rows, cert_rows, events = [], [], []
        for k, i in chunk:
            at = base + timedelta(milliseconds=k)
            device = {
                "id": f"dev-{i:07d}",
                "model": MODELS[i % len(MODELS)],
                "serial": f"SN{i:09d}",
                "labels": {"site": SITES[i % len(SITES)], "line": str(i % 4)},
                "status": "active",
                "created_at": at,
                "updated_at": at,
                "decommissioned_at": None,
                "decommission_reason": None,
            }
            cert = cert_row(i, 0, at)
            device_rows.append(device)
            cert_rows.append(cert)
            details = {
                "model": device["model"],
                "serial": device["serial"],
                "labels": device["labels"],
                "status": "active",
                "certificate": cert_details(cert),
            }
            events.append(event("device.add", device["id"], details, at))
        with engine.begin() as conn:
            conn.execute(insert(device_t), device_rows)
            conn.execute(insert(cert_t), cert_rows)
            conn.execute(insert(event_t), events)
            refresh_dirty(conn)  # what fleet's write_session does before each commit

    # phase 2: one more event per device, rows changed to match
    for chunk in batches():
        new_certs, events = [], []
        device_changes: list[dict[str, Any]] = []
        revocations: list[dict[str, Any]] = []
        for k, i in chunk:
            at = second_phase + timedelta(milliseconds=k)
            device_id = f"dev-{i:07d}"
            old_serial = cert_row(i, 0, at)["serial"]
            kind = i % 4
            if kind == 0:
                labels = {"site": SITES[(i + 1) % len(SITES)], "line": str(i % 4)}
                model = MODELS[(i + 2) % len(MODELS)]
                old_labels = {"site": SITES[i % len(SITES)], "line": str(i % 4)}
                changes = {
                    "model": {"from": MODELS[i % len(MODELS)], "to": model},
                    "labels": {"from": old_labels, "to": labels},
                }
                after = {"model": model, "serial": f"SN{i:09d}", "labels": labels}
                details = {**after, "status": "active", "changes": changes}
                events.append(event("device.update", device_id, details, at))
                device_changes.append(
                    {"b_id": device_id, "model": model, "labels": labels, "updated_at": at}
                )
            elif kind == 1:
                cert = cert_row(i, 1, at)
                new_certs.append(cert)
                details = {"certificate": cert_details(cert), "revoked": [old_serial]}
                events.append(event("cert.renew", device_id, details, at))
                revocations.append(
                    {"b_serial": old_serial, "revoked_at": at, "reason": "superseded"}
                )
                device_changes.append({"b_id": device_id, "updated_at": at})
            elif kind == 2:
                details = {"serial": old_serial, "reason": "keyCompromise"}
                events.append(event("cert.revoke", device_id, details, at))
                revocations.append(
                    {"b_serial": old_serial, "revoked_at": at, "reason": "keyCompromise"}
                )
            else:
                details = {"reason": "retired", "revoked": [old_serial], "status": "decommissioned"}
                events.append(event("device.decommission", device_id, details, at))
                revocations.append(
                    {"b_serial": old_serial, "revoked_at": at, "reason": "cessationOfOperation"}
                )
                device_changes.append(
                    {
                        "b_id": device_id,
                        "status": "decommissioned",
                        "decommissioned_at": at,
                        "decommission_reason": "retired",
                        "updated_at": at,
                    }
                )
        with engine.begin() as conn:
            if new_certs:
                conn.execute(insert(cert_t), new_certs)
            by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for change in device_changes:
                by_shape.setdefault(tuple(sorted(change)), []).append(change)
            for shape, changes in by_shape.items():
                values = {k: bindparam(k) for k in shape if k != "b_id"}
                statement = update(device_t).where(device_t.c.id == bindparam("b_id"))
                conn.execute(statement.values(**values), changes)
            if revocations:
                conn.execute(
                    update(cert_t)
                    .where(cert_t.c.serial == bindparam("b_serial"))
                    .values(
                        status="revoked",
                        revoked_at=bindparam("revoked_at"),
                        revocation_reason=bindparam("reason"),
                    ),
                    revocations,
                )
            conn.execute(insert(event_t), events)
            refresh_dirty(conn)
    with engine.begin() as conn:
        conn.execute(
            update(AuditHead.__table__).values(seq=seq, hash=prev)  # type: ignore[attr-defined]
        )
    return seq


CHILD = """
import json, sys, time
from datetime import datetime
from pathlib import Path
t0 = time.perf_counter()
from fleet.export import export_devices
from fleet.workspace import Workspace
started = time.perf_counter()
home, fmt, out, as_of, sign, db_url = sys.argv[1:7]
moment = datetime.fromisoformat(as_of) if as_of else None
ws = Workspace(home=Path(home), db_url=db_url or None)
result = export_devices(ws, fmt=fmt, out=Path(out), as_of=moment, sign=sign == "sign")
done = time.perf_counter()
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's pages from fork)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
import resource  # the largest worker process's peak (--as-of replays in workers)
workers_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rows": result["rows"], "seconds": done - started, "startup": started - t0,
                  "rss_mb": int(hwm) / 1024, "workers_rss_mb": workers_kb / 1024}))
"""


def run_child(cmd: list[str]) -> tuple[float, str]:
    """Run ``cmd``; return (wall seconds, stdout)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(
            cmd,
            stdout=out_file,
            stderr=err_file,
            env={**os.environ, "PYTHONPATH": str(REPO), "FLEET_CA_PASSPHRASE": PASSPHRASE},
        )
        proc.wait()
        wall = time.perf_counter() - start
        out_file.seek(0)
        err_file.seek(0)
        if proc.returncode:
            raise SystemExit(f"{cmd[0]} failed: {err_file.read().decode(errors='replace')}")
        return wall, out_file.read().decode()


def fleet_export(ws: Workspace, fmt: str, out: Path, as_of: str = "", sign: bool = False) -> dict:
    # Each run writes a new file, as an export to a new name does. Replacing the previous
    # run's file would time freeing its blocks too: ~50 ms for 60 MB on this ext4 (mounted
    # with discard), which is the file system's work, not the export's.
    for old in (out, out.with_name(out.name + ".manifest.json")):
        old.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", CHILD, str(ws.home), fmt, str(out), as_of, "sign" if sign else ""]
    cmd.append(ws.db_url or "")
    wall, stdout = run_child(cmd)
    return {**json.loads(stdout), "wall": wall}


def sqlite_dump(db: Path, out: Path) -> dict | None:
    """``sqlite3 -csv`` running the export's own SELECT (same rows, same formatting)."""
    shell = shutil.which("sqlite3")
    if shell is None:
        return None
    sql = str(
        live_query("sqlite", ExportFilters()).compile(
            dialect=sqlite_dialect.dialect(), compile_kwargs={"literal_binds": True}
        )
    )
    out.unlink(missing_ok=True)  # as for fleet_export
    script = out.with_suffix(".sql")
    script.write_text(f".headers on\n.output {out}\n{sql};\n")
    start = time.perf_counter()
    with script.open() as stdin:
        proc = subprocess.run([shell, "-csv", str(db)], stdin=stdin, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit("sqlite3 failed")
    return {"wall": wall}


def sqlite_cache_dump(db: Path, out: Path) -> float | None:
    """Seconds for the ``sqlite3`` shell to print what fleet's CSV export reads (the export
    cache's own SELECT, ``-list`` mode): the floor for reading those rows from SQLite."""
    shell = shutil.which("sqlite3")
    if shell is None:
        return None
    moment = iso_moment(datetime.now(UTC))
    sql = str(
        cached_query("csv", ExportFilters(), moment).compile(
            dialect=sqlite_dialect.dialect(), compile_kwargs={"literal_binds": True}
        )
    )
    start = time.perf_counter()
    with out.open("wb") as sink:
        proc = subprocess.run([shell, "-list", str(db), sql], stdout=sink, check=False)
    if proc.returncode:
        raise SystemExit("sqlite3 failed")
    return time.perf_counter() - start


def _count(ws: Workspace, query: str) -> int:
    """A count from the registry, or -1 if there is none yet."""
    engine = create_engine(ws.registry_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(query)).scalar_one())
    except DBAPIError:
        return -1
    finally:
        engine.dispose()


def _empty(url: str) -> None:
    """Drop fleet's tables from the database at ``url`` (the bench builds from scratch)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for name in inspect(conn).get_table_names():
                conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
            if conn.dialect.name == "postgresql":
                conn.execute(text("DROP FUNCTION IF EXISTS fleet_export_dirty() CASCADE"))
    finally:
        engine.dispose()


def _size_mib(ws: Workspace, db: Path) -> float:
    if ws.db_url and ws.db_url.startswith("postgresql"):
        return _count(ws, "SELECT pg_database_size(current_database())") / 2**20
    return db.stat().st_size / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", "-n", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, help="Where to build (default: a temp dir).")
    parser.add_argument("--keep", action="store_true", help="Keep the workdir afterwards.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="Also verify the audit chain and that --as-of now equals the live export.",
    )
    parser.add_argument("--skip-as-of", action="store_true")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Run the CSV and JSONL exports this many times (fresh processes); report the "
        "median time and the highest peak RSS.",
    )
    parser.add_argument(
        "--shuffled",
        action="store_true",
        help="Add the devices in a random ID order instead of in ID order.",
    )
    parser.add_argument(
        "--db",
        help="Registry URL (e.g. an empty PostgreSQL database) instead of SQLite in the "
        "workdir; there is no sqlite3 baseline then.",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="Reuse the registry already in --workdir if it has N devices (skips the build).",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    db = home / "registry.db"
    ws = Workspace(home=home, db_url=args.db)
    reused = args.reuse and _count(ws, "SELECT count(*) FROM device") == args.devices
    if not reused:
        if home.exists():
            shutil.rmtree(home)
        if args.db:
            _empty(args.db)
    failures: list[str] = []
    try:
        start = time.perf_counter()
        if reused:
            events = _count(ws, "SELECT seq FROM audit_head")
        else:
            init_workspace(ws, name="Bench", passphrase=PASSPHRASE)
            events = build_registry(ws, args.devices, shuffled=args.shuffled)
        built = time.perf_counter() - start
        ws.close()
        if not args.db:
            with contextlib.closing(sqlite3.connect(db)) as raw:  # fold the WAL into the file
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        load = os.getloadavg()
        print(
            f"registry: {args.devices:,} devices"
            f"{' (added in random ID order)' if args.shuffled else ''}, {events:,} audit events, "
            f"{_size_mib(ws, db):,.0f} MiB, "
            f"{'reused' if reused else f'built in {built:,.1f} s'}; "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"
        )
        results: dict[str, dict] = {}
        for fmt in ("csv", "jsonl"):
            out = workdir / f"devices.{fmt}"
            runs = sorted(
                (fleet_export(ws, fmt, out) for _ in range(args.repeat)),
                key=lambda r: r["seconds"],
            )
            result = {**runs[len(runs) // 2], "rss_mb": max(r["rss_mb"] for r in runs)}
            results[fmt] = result
            rate = result["rows"] / result["seconds"]
            if args.repeat > 1:
                spread = ", ".join(f"{r['seconds']:.2f}" for r in runs)
                print(f"{fmt:5} {args.repeat} runs: {spread} s; the median follows")
            print(
                f"{fmt:5} fleet export:  {result['seconds']:7.2f} s  {rate:>11,.0f} rows/s  "
                f"peak RSS {result['rss_mb']:6.1f} MiB  ({out.stat().st_size / 2**20:,.0f} MiB "
                f"written; + {result['startup']:.2f} s interpreter/import start-up)"
            )
            if result["rows"] != args.devices:
                failures.append(f"{fmt}: {result['rows']} rows, expected {args.devices}")
            if rate < TARGET_ROWS_PER_S:
                failures.append(f"{fmt}: {rate:,.0f} rows/s < {TARGET_ROWS_PER_S:,}")
            if result["rss_mb"] > TARGET_RSS_MB:
                failures.append(f"{fmt}: peak RSS {result['rss_mb']:.0f} MiB > {TARGET_RSS_MB}")
        baseline = None if args.db else sqlite_dump(db, workdir / "sqlite3.csv")
        if args.db:
            print("sqlite3 -csv: not applicable (--db)")
        elif baseline is None:
            print("sqlite3 -csv: MISSING - install the sqlite3 shell (apt-get install -y sqlite3)")
            failures.append("no sqlite3 shell for the baseline")
        else:
            print(
                f"csv   sqlite3 -csv:  {baseline['wall']:7.2f} s  "
                f"{args.devices / baseline['wall']:>11,.0f} rows/s  (the same SELECT)"
            )
            floor = sqlite_cache_dump(db, workdir / "sqlite3-cache.txt")
            if floor is not None:
                print(
                    f"csv   sqlite3 -list on the export cache's SELECT: {floor:7.2f} s  "
                    f"{args.devices / floor:>11,.0f} rows/s  (reading alone; fleet's csv "
                    f"export takes {results['csv']['seconds'] / floor:.2f}x that)"
                )
            for fmt in ("csv", "jsonl"):
                ratio = results[fmt]["seconds"] / baseline["wall"]
                print(f"{fmt:5} ratio to sqlite3 -csv: {ratio:.2f}x (target <= {TARGET_RATIO}x)")
                if ratio > TARGET_RATIO:
                    failures.append(f"{fmt}: {ratio:.2f}x sqlite3 -csv > {TARGET_RATIO}x")
        signed = fleet_export(ws, "csv", workdir / "signed.csv", sign=True)
        print(
            f"csv   signed export: {signed['seconds']:7.2f} s  "
            f"peak RSS {signed['rss_mb']:6.1f} MiB (with manifest and 2 CMS signatures)"
        )
        if signed["rss_mb"] > TARGET_RSS_MB:
            failures.append(f"signed csv: peak RSS {signed['rss_mb']:.0f} MiB > {TARGET_RSS_MB}")
        if not args.skip_as_of:
            as_of = datetime.now(UTC).isoformat()
            replay = fleet_export(ws, "csv", workdir / "as-of.csv", as_of=as_of)
            print(
                f"as-of csv (replaying {events:,} events): {replay['seconds']:7.2f} s  "
                f"peak RSS {replay['rss_mb']:6.1f} MiB, largest worker "
                f"{replay['workers_rss_mb']:.1f} MiB (target < {TARGET_AS_OF_S:.0f} s)"
            )
            if replay["seconds"] > TARGET_AS_OF_S:
                failures.append(f"as-of: {replay['seconds']:.1f} s > {TARGET_AS_OF_S:.0f} s")
            if args.check:
                live = (workdir / "devices.csv").read_bytes()
                if (workdir / "as-of.csv").read_bytes() != live:
                    failures.append("check: --as-of now differs from the live export")
        if args.check:
            verdict = verify_audit(Workspace(home=home, db_url=args.db))
            if not verdict.ok:
                failures.append(f"check: audit chain broken at {verdict.bad_seq}")
            if baseline is not None:
                ours = (workdir / "devices.csv").read_text(encoding="utf-8").splitlines()
                theirs = (workdir / "sqlite3.csv").read_text(encoding="utf-8").splitlines()
                if len(ours) != len(theirs):
                    failures.append("check: sqlite3 dumped a different number of rows")
            bad = [f for f in failures if f.startswith("check:") or "expected" in f]
            print("check: ok" if not bad else "check: FAILED")
        for failure in failures:
            print(f"MISS {failure}")
        checks_failed = any(f.startswith("check:") or "expected" in f for f in failures)
        return 1 if checks_failed else 0
    finally:
        ws.close()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
