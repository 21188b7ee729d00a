"""bench/everyday.py at a tiny N, as a correctness check (no timing is asserted): the
registry it builds holds what it says, its audit chain verifies, and every figure is either
measured or reported as n/a."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


@pytest.mark.slow
def test_bench_runs_at_tiny_n(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "everyday.py"), "--sizes", "300", "--runs", "1",
         "--workdir", str(tmp_path / "work"), "--json-out", str(figures)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (size,) = json.loads(figures.read_text())["sizes"]
    assert size["build"]["devices"] == 300
    assert size["build"]["events"] == 601  # 2 per device, after `fleet init`'s own
    assert size["build"]["labels"] == 600  # device_label, filled by the registry's triggers
    commands = size["commands"]
    assert commands["audit_verify"]["failure"] is None
    assert commands["list_json"]["failure"] is None
    assert commands["list_json"]["peak_rss_mb"] > 10
    for row in commands.values():
        assert (row["median_s"] is None) == (row["failure"] is not None), row
    assert "floor: `fleet device show ID`" in result.stdout
