#!/usr/bin/env python3
"""Benchmark the everyday commands on registries of 100k and 1M devices.

    python bench/everyday.py --workdir /dev/shm/fleet-everyday          # 100k and 1M
    python bench/everyday.py --sizes 20000 --runs 1                     # a quick look
    python bench/everyday.py --sizes 1000000 --workdir /dev/shm/fe --json-out figures.json

For each size N it builds (or reuses, from ``--workdir``) a SQLite registry of N devices with
a certificate and two audit events each (``bench/registry_builder.py``: rows written the way
``fleet provision`` writes them, a valid audit chain), then times fresh ``fleet`` processes,
median of ``--runs``, round-robin so that load changes hit every command alike:

- the start-up floors of the same run: ``python -c "import sqlmodel, typer"`` and
  ``fleet device show ID`` (start-up, registry open, one row: a registry command's floor);
- ``device list --limit 50`` (table), ``--label rack=r07`` (2.5 %) and ``--label site=hh``
  (30 %) ``--limit 50``; ``device list --json`` (stdout to /dev/null): devices/s, peak RSS;
- ``cert list --expiring-within 30 --json`` (rows), ``status --json``, ``audit verify``.

"beyond floor" is the median minus the ``device show`` median; rates are counted on it.
Peak RSS is the command's own ``ru_maxrss`` (``os.wait4`` in a small launcher). A command
that fails (e.g. an option this version does not have) is reported as ``n/a`` with its exit
code and first stderr line, and the run goes on.

Targets (the issue's, at 1M): first pages within 0.2 s of the floor; ``device list --json``
>= 50,000 devices/s, peak RSS < 150 MB and flat from the smallest size to the largest;
``status`` < 1 s beyond the floor; ``audit verify`` >= 200,000 events/s. A SQLite registry
of 1M devices takes ~4 GB: build it in /dev/shm (or on a fast disk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry_builder import REPO, Built, child_env, device_id, ensure_registry

FIRST_PAGE_S = 0.2  # beyond the floor
JSON_RATE = 50_000  # devices/s
JSON_RSS_MB = 150
RSS_FLAT = 1.2  # largest size's peak RSS at most this times the smallest size's
STATUS_S = 1.0  # beyond the floor
VERIFY_RATE = 200_000  # events/s


@dataclass
class Command:
    """One thing to time: ``argv`` after ``fleet --home HOME`` (or a whole argv if ``raw``)."""

    key: str
    label: str
    argv: list[str]
    raw: bool = False
    capture: bool = False  # keep stdout (to count rows), else /dev/null
    walls: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    failure: str | None = None
    rows: int | None = None


def commands(n: int) -> list[Command]:
    """What is timed on a registry of ``n`` devices."""
    some = device_id(n // 2)
    return [
        Command("floor_import", 'python -c "import sqlmodel, typer"',
                [sys.executable, "-c", "import sqlmodel, typer"], raw=True),
        Command("floor_show", f"fleet device show {some}", ["device", "show", some]),
        Command("list_page", "fleet device list --limit 50", ["device", "list", "--limit", "50"]),
        Command("list_label_rack", "fleet device list --label rack=r07 --limit 50",
                ["device", "list", "--label", "rack=r07", "--limit", "50"]),
        Command("list_label_site", "fleet device list --label site=hh --limit 50",
                ["device", "list", "--label", "site=hh", "--limit", "50"]),
        Command("list_json", "fleet device list --json > /dev/null", ["device", "list", "--json"]),
        Command("cert_expiring", "fleet cert list --expiring-within 30 --json",
                ["cert", "list", "--expiring-within", "30", "--json"], capture=True),
        Command("status", "fleet status --json", ["status", "--json"], capture=True),
        Command("audit_verify", "fleet audit verify", ["audit", "verify"]),
    ]  # fmt: skip


# Spawns the command and reports its wall time and its own peak RSS. A child forked from
# this (large) bench process would inherit its RSS high-water mark in ru_maxrss; one spawned
# by this small launcher starts from the launcher's few MB.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
result = {"code": os.waitstatus_to_exitcode(status), "wall": wall, "rss_kb": usage.ru_maxrss}
with open(sys.argv[1], "w") as out:
    json.dump(result, out)
"""


def run(argv: list[str], env: dict[str, str], capture: bool, timeout: float) -> dict[str, Any]:
    """Run ``argv`` in a fresh process: wall seconds, exit code, the child's own peak RSS,
    stderr's first line and, if ``capture``, stdout."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as result,
    ):
        sink: Any = out if capture else subprocess.DEVNULL
        launcher = [sys.executable, "-S", "-c", LAUNCHER, result.name, *argv]
        proc = subprocess.Popen(
            launcher, stdout=sink, stderr=err, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the command it started
            proc.wait()
            return {"code": None, "first_err": f"timed out after {timeout:.0f} s"}
        err.seek(0)
        text = result.read()
        measured = json.loads(text) if text else {"code": proc.returncode}
        out.seek(0)
        stdout = out.read() if capture else b""
        return {**measured, "first_err": first_error(err.read()), "stdout": stdout}


def first_error(stderr: bytes) -> str:
    """The line of ``stderr`` that says what went wrong: the text in click's error box
    (after its usage lines), else the first line."""
    lines = [line.strip(" │╭╮╰╯─") for line in stderr.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line and line != "Error"]
    boxed = [line for line in lines if not line.startswith(("Usage:", "Try "))]
    return (boxed or lines or [""])[0]


def count_rows(stdout: bytes) -> int | None:
    """Rows in a command's JSON output: a list, an object holding one list (a page with its
    cursor), or JSON Lines; ``None`` if it is none of these."""
    try:
        data = json.loads(stdout)
    except ValueError:
        lines = [line for line in stdout.splitlines() if line.strip()]
        return (
            len(lines) if lines and all(line.lstrip().startswith(b"{") for line in lines) else None
        )
    if isinstance(data, list):
        return len(data)
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            return len(lists[0])
    return None


def measure(home: Path, n: int, db_url: str | None, runs: int, timeout: float) -> list[Command]:
    """Time every command of :func:`commands` ``runs`` times, round-robin."""
    env = child_env(db_url)
    todo = commands(n)
    for _ in range(runs):
        for cmd in todo:
            if cmd.failure is not None:
                continue  # failed once: the version under test lacks it
            argv = cmd.argv if cmd.raw else [sys.executable, "-m", "fleet", "--home", str(home)]
            argv = argv if cmd.raw else [*argv, *cmd.argv]
            result = run(argv, env, cmd.capture, timeout)
            if result["code"] != 0:
                cmd.failure = f"n/a (exit {result['code']}: {result['first_err'][:100]})"
                continue
            cmd.walls.append(result["wall"])
            cmd.rss_kb.append(result["rss_kb"])
            if cmd.capture:
                cmd.rows = count_rows(result["stdout"])
    return todo


def median(cmd: Command) -> float | None:
    return statistics.median(cmd.walls) if cmd.walls and cmd.failure is None else None


@dataclass
class Figures:
    """One size's results, as saved by ``--json-out``."""

    devices: int
    build: dict[str, Any]
    commands: dict[str, dict[str, Any]]
    verdicts: list[str]


def evaluate(n: int, built: Built, todo: list[Command]) -> Figures:
    """Per command: median, beyond the floor, rows, rate, peak RSS; and the targets."""
    by_key = {c.key: c for c in todo}
    floor = median(by_key["floor_show"])
    rows_of = {"list_json": n, "audit_verify": built.events}  # not captured: printed alone
    table: dict[str, dict[str, Any]] = {}
    for cmd in todo:
        wall = median(cmd)
        beyond = (
            None if wall is None or floor is None or cmd.key.startswith("floor") else wall - floor
        )
        rows = rows_of.get(cmd.key, cmd.rows)
        rate = rows / beyond if rows and beyond and beyond > 0 else None
        table[cmd.key] = {
            "command": cmd.label,
            "median_s": wall,
            "runs_s": cmd.walls,
            "beyond_floor_s": beyond,
            "rows": rows,
            "rate_per_s": rate,
            "peak_rss_mb": max(cmd.rss_kb) / 1024 if cmd.rss_kb and cmd.failure is None else None,
            "failure": cmd.failure,
        }
    verdicts = []

    def judge(ok: bool | None, text: str) -> None:
        verdicts.append(f"{'n/a ' if ok is None else 'PASS' if ok else 'MISS'} {text}")

    for key in ("list_page", "list_label_rack", "list_label_site"):
        b = table[key]["beyond_floor_s"]
        judge(
            None if b is None else b <= FIRST_PAGE_S,
            f"{table[key]['command']}: {_s(b)} beyond the floor (target <= {FIRST_PAGE_S} s)",
        )
    j = table["list_json"]
    judge(
        None if j["rate_per_s"] is None else j["rate_per_s"] >= JSON_RATE,
        f"device list --json: {_rate(j['rate_per_s'])} devices/s (target >= {JSON_RATE:,})",
    )
    judge(
        None if j["peak_rss_mb"] is None else j["peak_rss_mb"] < JSON_RSS_MB,
        f"device list --json: peak RSS {_mb(j['peak_rss_mb'])} (target < {JSON_RSS_MB} MB)",
    )
    shown = table["cert_expiring"]["rows"]
    judge(
        None if shown is None else shown == built.expiring_30,
        f"cert list --expiring-within 30: {shown} rows, the registry holds {built.expiring_30}",
    )
    s = table["status"]["beyond_floor_s"]
    judge(
        None if s is None else s < STATUS_S,
        f"status --json: {_s(s)} beyond the floor (target < {STATUS_S} s)",
    )
    v = table["audit_verify"]["rate_per_s"]
    judge(
        None if v is None else v >= VERIFY_RATE,
        f"audit verify: {_rate(v)} events/s (target >= {VERIFY_RATE:,})",
    )
    return Figures(n, asdict(built), table, verdicts)


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def report(fig: Figures) -> None:
    """Print one size's table and verdicts."""
    print(f"\n{'command':52} {'median':>8} {'beyond':>8} {'rows':>9} {'rate/s':>11} {'RSS':>7}")
    for row in fig.commands.values():
        if row["failure"]:
            print(f"{row['command']:52} {row['failure']}")
            continue
        rows = "" if row["rows"] is None else f"{row['rows']:,}"
        beyond = "floor" if row["beyond_floor_s"] is None else f"{row['beyond_floor_s']:.3f}"
        print(
            f"{row['command']:52} {row['median_s']:8.3f} {beyond:>8} {rows:>9} "
            f"{'' if row['rate_per_s'] is None else _rate(row['rate_per_s']):>11} "
            f"{_mb(row['peak_rss_mb']):>7}"
        )
    for verdict in fig.verdicts:
        print(verdict)


def flat_rss(figures: list[Figures]) -> str | None:
    """The verdict on ``device list --json``'s peak RSS from the smallest size to the largest."""
    measured = [(f.devices, f.commands["list_json"]["peak_rss_mb"]) for f in figures]
    measured = [(n, mb) for n, mb in measured if mb is not None]
    if len(measured) < 2:
        return None
    (n0, small), (n1, large) = min(measured), max(measured)
    ok = large <= small * RSS_FLAT
    return (
        f"{'PASS' if ok else 'MISS'} device list --json peak RSS flat: {small:.0f} MB at "
        f"{n0:,} -> {large:.0f} MB at {n1:,} (target <= {RSS_FLAT}x)"
    )


def git_commit() -> str:
    found = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return found.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="Comma-separated device counts.")
    parser.add_argument("--runs", type=int, default=3, help="Fresh processes per command.")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="Where the registries are built and kept (one per size, reused by later runs); "
        "default: a temporary folder, removed afterwards. /dev/shm is a good place.",
    )
    parser.add_argument(
        "--db",
        help="PostgreSQL URL to build in instead of SQLite: the database is EMPTIED, and "
        "rebuilt for each size (give one size per run).",
    )
    parser.add_argument("--rebuild", action="store_true", help="Build even if a registry exists.")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds per command run.")
    parser.add_argument("--json-out", type=Path, help="Also save the figures as JSON here.")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fleet-everyday-"))
    load = os.getloadavg()
    print(
        f"fleet {git_commit()}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load {load[0]:.2f}; workdir {workdir}; {args.runs} runs per command (median)"
    )
    figures: list[Figures] = []
    try:
        for n in sizes:
            # one database for every size with --db: a second size rebuilds it
            home = workdir / f"registry-{n}"
            print(f"\n== {n:,} devices")
            built = ensure_registry(home, n, db_url=args.db, rebuild=args.rebuild)
            how = "reused" if built.seconds is None else f"built in {built.seconds:.1f} s"
            print(
                f"registry: {built.devices:,} devices, {built.events:,} audit events, "
                f"{built.labels:,} device_label rows, {built.expiring_30:,} active certificates "
                f"expiring within 30 days, {built.size_mib:,.0f} MiB, {how}"
            )
            figures.append(evaluate(n, built, measure(home, n, args.db, args.runs, args.timeout)))
            report(figures[-1])
        flat = flat_rss(figures)
        if flat:
            print(f"\n{flat}")
        print(
            "\nfloor: `fleet device show ID` (start-up, registry open, one row); rates count "
            "time beyond it. Targets apply at 1M devices."
        )
        if args.json_out:
            document = {"commit": git_commit(), "cpus": os.cpu_count(), "runs": args.runs}
            document |= {"sizes": [asdict(f) for f in figures], "rss_flat": flat}
            args.json_out.write_text(json.dumps(document, indent=2) + "\n")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    broken = [f for f in figures if f.commands["audit_verify"]["failure"]]
    return 1 if broken else 0  # a chain that does not verify is a broken build


if __name__ == "__main__":
    raise SystemExit(main())
