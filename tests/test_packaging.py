"""Packaging: the README's quick start, run verbatim, from a non-editable install in a venv."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

from helpers import REPO
from pkitools import openssl_verify


def readme_command(marker: str) -> str:
    """The shell command in the code block right after ``<!-- marker -->`` in README.md."""
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```sh\n(.+?)\n```", text, re.S)
    assert match, f"README.md has no {marker} block"
    return match.group(1).strip()


def test_readme_test_command_is_what_ci_runs() -> None:
    command = readme_command("tests")
    assert command in (REPO / ".ci" / "run").read_text().splitlines()


def test_readme_quickstart_from_a_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    """`pip install .` (not editable) then init + device add, all from the README, verbatim."""
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", "*.egg-info", "__pycache__", ".*_cache", "build"),
    )
    env_dir = tmp_path / "venv"
    # System site-packages provide the dependencies, so the test needs no network beyond the
    # build backend; fleet itself comes from the wheel that `pip install .` builds.
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    home = tmp_path / "home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FLEET_HOME", "PYTHONPATH"))},
        "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "VIRTUAL_ENV": str(env_dir),
    }
    env.pop("FLEET_DATABASE_URL", None)
    workdir = tmp_path / "work"
    workdir.mkdir()
    quickstart = readme_command("quickstart").replace("pip install .", f"pip install {source}", 1)
    result = subprocess.run(
        ["bash", "-c", quickstart],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    where = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", "import fleet, fleet.resources as r; "
         "print(fleet.__file__); print(r.data_dir('migrations'))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert where[0].startswith(str(env_dir)), where
    assert where[1].startswith(str(env_dir)) and where[1].endswith("_data/migrations"), where

    listed = subprocess.run(
        [str(env_dir / "bin" / "fleet"), "device", "list", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    [device] = json.loads(listed.stdout)
    assert device["id"] == "sensor-0001" and device["labels"] == {"site": "lab"}
    data_home = home / ".local" / "share" / "fleet"
    bundle = workdir / "sensor-0001"
    ok, output = openssl_verify(
        data_home / "ca" / "root.cert.pem", bundle / "chain.pem", bundle / "cert.pem"
    )
    assert ok, output


def test_readme_quickstart_uses_the_real_commands() -> None:
    """Guard against the README drifting from the CLI: the commands it names exist."""
    quickstart = readme_command("quickstart")
    assert quickstart.startswith("pip install . && fleet init")
    assert "fleet device add" in quickstart
