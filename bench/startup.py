"""Benchmark fleet's start-up: medians of fresh processes against baselines of the same run.

Each pair is run interleaved (command, baseline, command, baseline, ...) so that a machine
busy with something else slows both alike:

- ``fleet --version`` and ``fleet --help`` against ``python -c "import typer"``: the CLI
  framework is the floor of any typer command;
- ``fleet device show ID`` against ``python -c "import sqlmodel, typer"``: a registry read
  needs the ORM, so that is its floor. The registry is a small one this script makes in a
  temporary folder through the CLI (``fleet init``, ``fleet device add``).

Target: each at most 1.3x its baseline.

    python bench/startup.py
    python bench/startup.py --runs 31
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "bench passphrase"
TARGET_RATIO = 1.3
DEVICE = "pump-0001"


def fleet(*args: str) -> list[str]:
    """The argv running this checkout's ``fleet`` (as the console script does)."""
    return [sys.executable, "-c", "from fleet.cli import main; main()", *args]


def python_c(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run_once(argv: list[str], env: dict[str, str]) -> float:
    """Seconds one fresh process takes, start to exit; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode().strip()}")
    return elapsed


def compare(
    argv: list[str], baseline: list[str], env: dict[str, str], runs: int
) -> tuple[float, float]:
    """Medians of ``argv`` and ``baseline``, run alternately ``runs`` times each (after one
    unmeasured run of each, which warms the file cache and writes the byte-code)."""
    run_once(argv, env)
    run_once(baseline, env)
    timed: list[float] = []
    floor: list[float] = []
    for _ in range(runs):
        timed.append(run_once(argv, env))
        floor.append(run_once(baseline, env))
    return statistics.median(timed), statistics.median(floor)


def make_registry(home: Path, env: dict[str, str]) -> None:
    """A workspace with one device, made through the CLI."""
    for args in (
        ("init", "--name", "Startup Bench"),
        ("device", "add", DEVICE, "--model", "p200", "--out", str(home / "bundles")),
    ):
        subprocess.run(fleet(*args), env=env, check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each (default 15)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fleet-startup-") as tmp:
        home = Path(tmp) / "home"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "FLEET_HOME": str(home),
            "FLEET_CA_PASSPHRASE": PASSPHRASE,
        }
        env.pop("FLEET_DATABASE_URL", None)
        make_registry(home, env)
        cases = [
            ("fleet --version", fleet("--version"), "import typer", python_c("import typer")),
            ("fleet --help", fleet("--help"), "import typer", python_c("import typer")),
            (
                f"fleet device show {DEVICE}",
                fleet("device", "show", DEVICE),
                "import sqlmodel, typer",
                python_c("import sqlmodel, typer"),
            ),
        ]
        print(f"start-up, medians of {args.runs} fresh processes each, interleaved with the "
              f"baseline; target <= {TARGET_RATIO}x")  # fmt: skip
        print(f"{'command':<28} {'median':>8}   {'baseline':<24} {'median':>8} {'ratio':>6}")
        missed = 0
        for name, command, base_name, base in cases:
            took, floor = compare(command, base, env, args.runs)
            ratio = took / floor
            verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
            missed += verdict == "MISS"
            print(
                f"{name:<28} {took * 1000:>6.0f}ms   {base_name:<24} {floor * 1000:>6.0f}ms "
                f"{ratio:>5.2f}x  {verdict}"
            )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
