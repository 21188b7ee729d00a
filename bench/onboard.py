"""Benchmark the onboarding station: N devices in one `fleet onboard` session (lines piped in,
as a scanner types them; each device with its bundle and QR label) against the baseline of
the same N devices added by N `fleet device add` commands, measured in the same run.

Target: a session at least 5x faster per device than one command per device (the CA is
unlocked once and the interpreter starts once).

    python bench/onboard.py
    python bench/onboard.py -n 50
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="devices per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "FLEET_HOME": str(work / "home"),
            "FLEET_CA_PASSPHRASE": "bench-passphrase",
            "PYTHONPATH": str(REPO),
        }
        env.pop("FLEET_DATABASE_URL", None)
        fleet = [sys.executable, "-m", "fleet"]
        subprocess.run(
            [*fleet, "init", "--name", "Bench"], env=env, check=True, capture_output=True
        )

        lines = "".join(f"station-{i:04d}\nSN{i}\np200\nsite=a\n" for i in range(args.n)) + "\n"
        start = time.perf_counter()
        subprocess.run(
            [*fleet, "onboard", "--out", str(work / "ids")],
            input=lines,
            text=True,
            env=env,
            check=True,
            capture_output=True,
        )
        session = time.perf_counter() - start

        start = time.perf_counter()
        for i in range(args.n):
            subprocess.run(
                [*fleet, "device", "add", f"add-{i:04d}", "--serial", f"SN{i}", "--model", "p200",
                 "--label", "site=a", "--out", str(work / "ids2")],
                env=env,
                check=True,
                capture_output=True,
            )  # fmt: skip
        commands = time.perf_counter() - start

    per_session = session / args.n * 1000
    per_command = commands / args.n * 1000
    print(f"fleet onboard, {args.n} devices (one session, labels):  {per_session:7.1f} ms/device")
    print(f"fleet device add x{args.n} (baseline, no labels):       {per_command:7.1f} ms/device")
    print(f"ratio (baseline / session): {per_command / per_session:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
