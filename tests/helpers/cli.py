"""Running ``fleet``: in-process through typer's runner, or as a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fleet.cli import app
from fleet.workspace import Workspace
from helpers.env import REPO


class Cli:
    """Runs ``fleet`` in-process with a workspace's ``--home``/``--db``."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Any:
        base = ["--home", str(self.ws.home)]
        if self.ws.db_url:
            base += ["--db", self.ws.db_url]
        return self.runner.invoke(app, [*base, *args], input=input, catch_exceptions=False)


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child ``python``: ours plus ``env``, this checkout first on the
    path (the installed fleet may be another one)."""
    merged = {**os.environ, **(env or {})}
    merged["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), merged.get("PYTHONPATH", "")) if p
    )
    return merged


def run_fleet(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fleet`` in a child process (real exit codes, real stdio)."""
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args],
        env=child_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
