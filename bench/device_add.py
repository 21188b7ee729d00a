"""How long one `fleet device add` takes, end to end, as a field technician runs it.

Runs the real command N times in a fresh workspace (a new process each time, like a shell
would) and prints the median and 90th percentile in milliseconds, next to two baselines measured
in the same run:

- the interpreter floor: `python -c` importing what `device add` imports (FLOOR_IMPORTS),
  start-up and imports with no work;
- the manual way: the `openssl` CLI doing keygen, CSR and signing for one device.

Usage: python bench/device_add.py [-n 25]
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
# What `fleet device add` imports before it does any work (commands load their modules on use).
FLOOR_IMPORTS = "import fleet.cli, fleet.cli.device_cmds, fleet.devices"


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
    return (time.perf_counter() - start) * 1000


def openssl_one_device(folder: Path, ca_key: Path, ca_cert: Path, n: int) -> list[str]:
    key, csr, crt = folder / f"d{n}.key", folder / f"d{n}.csr", folder / f"d{n}.crt"
    return [
        "bash",
        "-c",
        f"openssl ecparam -name prime256v1 -genkey -noout -out {key} && "
        f"openssl req -new -key {key} -subj /CN=d{n} -out {csr} && "
        f"openssl x509 -req -in {csr} -CA {ca_cert} -CAkey {ca_key} -CAcreateserial "
        f"-days 365 -sha256 -out {crt} 2>/dev/null",
    ]


def summary(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[max(0, round(0.9 * len(ordered)) - 1)]
    return f"{label:<34} median {statistics.median(samples):7.1f} ms   p90 {p90:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=25, help="runs per measurement")
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

        floor = [timed([sys.executable, "-c", FLOOR_IMPORTS], env, work) for _ in range(args.n)]
        adds = [
            timed(
                [*fleet, "device", "add", f"bench-{i:04d}", "--out", str(work / "out")], env, work
            )
            for i in range(args.n)
        ]
        ca_key, ca_cert = work / "ca.key", work / "ca.crt"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(ca_key), "-out", str(ca_cert), "-subj", "/CN=Bench CA",
             "-days", "30"],
            check=True, capture_output=True,
        )  # fmt: skip
        manual = [
            timed(openssl_one_device(work, ca_key, ca_cert, i), env, work) for i in range(args.n)
        ]

    print(f"fleet device add, {args.n} runs each, {os.cpu_count()} cores")
    print(summary(f"python -c {FLOOR_IMPORTS!r}", floor))
    print(summary("fleet device add (end to end)", adds))
    print(summary("openssl keygen+req+sign (3 procs)", manual))
    add_ms = statistics.median(adds)
    print(
        f"ratio device add / import floor: {add_ms / statistics.median(floor):.2f}; "
        f"device add / openssl loop: {add_ms / statistics.median(manual):.2f}"
    )


if __name__ == "__main__":
    main()
