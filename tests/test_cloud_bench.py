"""bench/cloud.py at a tiny N, as a correctness check (no timing is asserted): every
registration reaches the server exactly once and the rate limit is not exceeded."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def test_bench_runs_at_tiny_n() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "cloud.py"), "--n", "30", "--rate-n", "15",
         "--rate", "40", "--latency-ms", "1", "--concurrency", "4", "--tb-n", "20"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sequential httpx loop:" in result.stdout
    assert "x the sequential loop" in result.stdout
    assert "outbox push, limit 40/s:" in result.stdout
    assert "thingsboard outbox push:" in result.stdout
    assert "error:" not in result.stdout
