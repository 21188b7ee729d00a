#!/usr/bin/env python3
"""Benchmark ``fleet provision`` end to end and compare it with two baselines.

    python bench/provision.py --n 100000          # the full run (by hand)
    python bench/provision.py --n 200 --openssl-sample 5   # CI: runs, checks, prints

What it does, all in one run on the same machine:

1. creates a workspace (``fleet init``) and a CSV of N devices (not timed);
2. runs the real ``python -m fleet provision`` in a child process (timed, wall clock) and
   samples the memory of its whole process tree (the command plus its worker processes)
   every 50 ms from /proc: the sum of RSS, the sum of PSS (shared pages counted once) and,
   after it exits, the largest single process (``ru_maxrss`` of the reaped children);
3. baseline 1, the in-process floor: one core running only the cryptography calls
   (P-256 key, the same leaf certificate via ``fleet.pki.issue.sign_leaf``, PEM);
4. baseline 2, a bash loop of the ``openssl`` CLI (ecparam keygen, req, x509 -req signing
   with the workspace's issuing CA) for a sample of devices, extrapolated per device;
5. CSR mode: N CSRs are generated first (not timed), then provisioned (timed).

It checks the results (every device provisioned, ``fleet audit verify`` passes) and exits
non-zero if they are wrong; with ``--check-targets`` also if a performance target is missed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "bench passphrase, not a secret"
TARGET_RATE, TARGET_CSR_RATE, TARGET_RSS_MB = 2500, 1500, 300


def child_env() -> dict[str, str]:
    env = {**os.environ, "FLEET_CA_PASSPHRASE": PASSPHRASE, "FLEET_ACTOR": "bench"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("FLEET_DATABASE_URL", None)
    return env


def fleet(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "fleet", "--home", str(home), *args],
        env=child_env(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"fleet {' '.join(args)} failed: {result.stderr.strip()}")
    return result


class TreeMemory:
    """Peak RSS and PSS summed over a process and its descendants, sampled from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = self.peak_pss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                    todo.extend(int(c) for c in children)
            except OSError:
                pass
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Rss:"):
                            rss += int(line.split()[1])
                        elif line.startswith("Pss:"):
                            pss += int(line.split()[1])
                except OSError:
                    continue
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.samples += 1
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_provision(home: Path, source: Path, out: Path, workers: int | None) -> dict[str, float]:
    args = [sys.executable, "-m", "fleet", "--home", str(home), "provision", str(source)]
    args += ["--out", str(out), "--json"]
    if workers:
        args += ["--workers", str(workers)]
    started = time.perf_counter()
    child = subprocess.Popen(
        args, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    memory = TreeMemory(child.pid)
    output: dict[str, str] = {}
    readers = [
        threading.Thread(target=lambda: output.__setitem__("out", child.stdout.read())),  # type: ignore[union-attr]
        threading.Thread(target=lambda: output.__setitem__("err", child.stderr.read())),  # type: ignore[union-attr]
    ]
    for reader in readers:
        reader.start()
    # wait4: this child's own rusage; ru_maxrss is the largest of it and the worker
    # processes it reaped.
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    memory.stop()
    stdout, stderr = output["out"], output["err"]
    if child.returncode != 0:
        sys.exit(f"fleet provision failed ({child.returncode}): {stderr.strip()}")
    summary = json.loads(stdout)
    return {
        "provisioned": summary["provisioned"],
        "failed": summary["failed"],
        "wall": wall,
        "rate": summary["provisioned"] / wall,
        "tree_rss_mb": memory.peak_rss / 1024,
        "tree_pss_mb": memory.peak_pss / 1024,
        "largest_mb": usage.ru_maxrss / 1024,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "sys_seconds": usage.ru_stime,
        "samples": memory.samples,
    }


def write_rows(path: Path, ids: list[str], csr_dir: Path | None = None) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "model", "serial", "labels"] + (["csr"] if csr_dir else []))
        for n, device_id in enumerate(ids):
            row = [device_id, "p200", f"SN{n:08d}", f"site=bench;line={n % 8}"]
            if csr_dir:
                row.append(f"{csr_dir.name}/{device_id}.csr")
            writer.writerow(row)


def crypto_floor(home: Path, count: int) -> float:
    """Devices per second of the bare cryptography calls on one core."""
    sys.path.insert(0, str(REPO))
    from fleet.pki import ca
    from fleet.pki.issue import sign_leaf
    from fleet.pki.keys import cert_pem, generate_key, private_key_pem
    from fleet.pki.profiles import load_profile

    issuer = ca.load_issuer(home, PASSPHRASE)
    profile = load_profile("default", home)
    now = datetime.now(UTC)
    started = time.perf_counter()
    for n in range(count):
        key = generate_key("ec-p256")
        cert = sign_leaf(issuer, f"floor-{n}", key.public_key(), profile, now=now)
        private_key_pem(key)
        cert_pem(cert)
    return count / (time.perf_counter() - started)


def filesystem_floor(folder: Path, count: int) -> tuple[float, float]:
    """Bundles per second (and kernel us per bundle) for the file system alone: a folder,
    three small files and a rename per device, one process, no crypto, no registry."""
    folder.mkdir()
    data = b"x" * 700
    before, started = os.times(), time.perf_counter()
    for n in range(count):
        staging = folder / f".b{n}.tmp"
        staging.mkdir()
        for name in ("key.pem", "cert.pem", "chain.pem"):
            (staging / name).write_bytes(data)
        staging.rename(folder / f"b{n}")
    wall, after = time.perf_counter() - started, os.times()
    shutil.rmtree(folder, ignore_errors=True)
    return count / wall, (after.system - before.system) / count * 1e6


OPENSSL_LOOP = r"""
set -e
cd "$1"
for i in $(seq 1 "$2"); do
  openssl ecparam -genkey -name prime256v1 -noout -out "k$i.pem"
  openssl req -new -key "k$i.pem" -subj "/CN=ossl-$i" -out "r$i.csr"
  openssl x509 -req -in "r$i.csr" -CA "$3/issuing.cert.pem" -CAkey "$3/issuing.key.pem" \
    -passin env:FLEET_CA_PASSPHRASE -set_serial "0x$(openssl rand -hex 16)" -days 365 \
    -sha256 -out "c$i.pem" 2>/dev/null
done
"""


def openssl_loop(home: Path, work: Path, count: int) -> float:
    """Devices per second of a shell loop of the openssl CLI (keygen, CSR, sign)."""
    folder = work / "openssl"
    folder.mkdir()
    started = time.perf_counter()
    subprocess.run(
        ["bash", "-c", OPENSSL_LOOP, "loop", str(folder), str(count), str(home / "ca")],
        env=child_env(),
        check=True,
    )
    return count / (time.perf_counter() - started)


def make_csrs(folder: Path, ids: list[str]) -> None:
    """CSRs as devices would bring them (not timed): a P-256 key each, CN = device ID."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    for device_id in ids:
        key = ec.generate_private_key(ec.SECP256R1())
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .sign(key, hashes.SHA256())
        )
        (folder / f"{device_id}.csr").write_bytes(request.public_bytes(serialization.Encoding.PEM))


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="devices to provision")
    parser.add_argument("--csr-n", type=int, default=None, help="devices in CSR mode (default N)")
    parser.add_argument("--workers", type=int, default=None, help="fleet --workers (default)")
    parser.add_argument("--floor-n", type=int, default=None, help="floor loop size")
    parser.add_argument(
        "--openssl-sample", type=int, default=50, help="devices in the openssl loop"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="work in a folder under DIR")
    parser.add_argument(
        "--bundles-dir",
        type=Path,
        default=None,
        help="write the bundles under DIR (e.g. /dev/shm to take the disk out); default: workdir",
    )
    parser.add_argument("--check-targets", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-", dir=args.workdir))
    bundles = Path(tempfile.mkdtemp(prefix="fleet-bench-out-", dir=args.bundles_dir or work))
    try:
        return bench(args, work, bundles)
    finally:
        shutil.rmtree(bundles, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path, bundles: Path) -> int:
    home, n = work / "home", args.n
    csr_n = n if args.csr_n is None else args.csr_n
    fleet(home, "init", "--name", "Bench")
    ids = [f"bench-{i:08d}" for i in range(n)]
    write_rows(work / "rows.csv", ids)
    csr_ids = [f"csr-{i:08d}" for i in range(csr_n)]
    make_csrs(work / "csrs", csr_ids)
    write_rows(work / "csr-rows.csv", csr_ids, work / "csrs")
    print(f"machine: {load()}")

    print(f"registry: {home / 'registry.db'}; bundles under {bundles}")
    result = run_provision(home, work / "rows.csv", bundles / "out", args.workers)
    ok = result["provisioned"] == n and result["failed"] == 0
    print(
        f"fleet provision: {n} devices (P-256 keys generated) in {result['wall']:.2f} s = "
        f"{result['rate']:,.0f} devices/s end to end (workers: {args.workers or os.cpu_count()})"
    )
    print(
        f"CPU: {result['cpu_seconds'] / n * 1e6:.0f} us per device over all processes, of "
        f"which {result['sys_seconds'] / n * 1e6:.0f} us in the kernel (file system, I/O); "
        f"{os.cpu_count()} idle cores would allow at most "
        f"{(os.cpu_count() or 1) * n / result['cpu_seconds']:,.0f} devices/s at that cost"
    )
    print(
        f"peak RSS: {result['largest_mb']:.0f} MB largest single process; process tree "
        f"(command + workers) {result['tree_rss_mb']:.0f} MB RSS sum, "
        f"{result['tree_pss_mb']:.0f} MB PSS sum ({result['samples']} samples)"
    )
    csr = run_provision(home, work / "csr-rows.csv", bundles / "csr-out", args.workers)
    ok = ok and csr["provisioned"] == csr_n and csr["failed"] == 0
    print(
        f"CSR mode: {csr_n} devices in {csr['wall']:.2f} s = {csr['rate']:,.0f} devices/s "
        f"(peak tree RSS {csr['tree_rss_mb']:.0f} MB)"
    )
    verify = subprocess.run(
        [sys.executable, "-m", "fleet", "--home", str(home), "audit", "verify"],
        env=child_env(),
        capture_output=True,
        text=True,
    )
    print(f"audit verify: {'ok' if verify.returncode == 0 else 'FAILED'}")
    ok = ok and verify.returncode == 0

    floor = crypto_floor(home, args.floor_n or max(200, min(n, 5000)))
    print(
        f"baseline 1, in-process floor (1 core, cryptography calls only): {floor:,.0f} "
        f"devices/s -> fleet is {result['rate'] / floor:.2f}x the in-process floor"
    )
    fs_rate, fs_kernel = filesystem_floor(bundles / "fs-floor", max(200, min(n, 5000)))
    print(
        f"context, the file system alone (folder + 3 files + rename, 1 process): "
        f"{fs_rate:,.0f} bundles/s, {fs_kernel:.0f} us kernel time per bundle"
    )
    ossl = openssl_loop(home, work, args.openssl_sample)
    print(
        f"baseline 2, openssl CLI loop ({args.openssl_sample} devices, extrapolated): "
        f"{ossl:,.1f} devices/s -> fleet is {result['rate'] / ossl:,.0f}x the openssl loop"
    )
    print(f"machine: {load()}")
    targets = {
        f">= {TARGET_RATE} devices/s": result["rate"] >= TARGET_RATE,
        ">= 1/3 of the floor": result["rate"] >= floor / 3,
        "> 50x openssl": result["rate"] > 50 * ossl,
        f"CSR mode >= {TARGET_CSR_RATE}/s": csr["rate"] >= TARGET_CSR_RATE,
        f"peak tree RSS < {TARGET_RSS_MB} MB": result["tree_rss_mb"] < TARGET_RSS_MB,
    }
    print("targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    if not ok:
        print("RESULT CHECK FAILED", file=sys.stderr)
        return 2
    if args.check_targets and not all(targets.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
