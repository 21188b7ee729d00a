"""README's walkthrough runs top to bottom: every ```bash and ```sh block, in order, in one
scratch folder and workspace, each command required to exit 0.

A block right below ``<!-- readme-test: skip ... -->`` (among the HTML comments above
its fence) is left out (installing fleet, sudo,
a broker that runs until stopped). The clouds are stand-ins: ``https://reg.example`` becomes
a local device-registration server (tests/cloudserver.py), and AWS is the moto emulator,
reached through ``AWS_ENDPOINT_URL`` as the AWS SDKs (and fleet) read it. Other sections'
```text and ```console transcripts are not run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudserver import RegistryServer
from cryptography import x509
from helpers import PASSPHRASE, REPO, child_env, require_service
from helpers.moto import moto_server, reset_moto

pytestmark = pytest.mark.slow  # about a minute: some sixty fleet commands

REG_EXAMPLE = "https://reg.example"
TOKEN = "Bearer readme-test-token"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """A shell block of README: where it starts (1-based line of its fence) and its text."""

    line: int
    text: str


def shell_blocks(readme: str) -> tuple[list[Block], list[Block]]:
    """README's ```bash and ```sh blocks in order: those to run, and those marked to skip."""
    run: list[Block] = []
    skipped: list[Block] = []
    lines = readme.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        language, start = match.group(1), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if language in ("bash", "sh"):
            block = Block(start + 1, "\n".join(lines[start + 1 : end]) + "\n")
            # the HTML comments right above the fence (a marker such as <!-- tests --> too)
            above = start - 1
            comments = []
            while above >= 0 and lines[above].lstrip().startswith("<!--"):
                comments.append(lines[above])
                above -= 1
            marked = any(SKIP.search(c) for c in comments)
            (skipped if marked else run).append(block)
        i = end + 1
    return run, skipped


def test_blocks_are_found() -> None:
    """The parser sees the walkthrough, and skips only what cannot run here."""
    run, skipped = shell_blocks((REPO / "README.md").read_text())
    assert len(run) >= 10
    commands = "".join(b.text for b in run)
    for expected in ("fleet init", "fleet device add", "fleet cloud add aws", "fleet export"):
        assert expected in commands
    assert len(skipped) <= 4, [b.line for b in skipped]
    assert all(
        "pip install" in b.text or "sudo" in b.text or "fleet watch" in b.text for b in skipped
    )


@pytest.fixture
def moto_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for url in moto_server():
        yield reset_moto(url, monkeypatch)


@pytest.fixture
def registry_server() -> Iterator[RegistryServer]:
    server = RegistryServer().start()
    server.state.required_headers = {"Authorization": TOKEN}
    yield server
    server.stop()


def readme_env(tmp_path: Path, moto_url: str) -> dict[str, str]:
    """A scratch workspace and the clouds' stand-ins; nothing of the developer's own."""
    env = child_env(
        {
            "FLEET_HOME": str(tmp_path / "home"),
            "FLEET_CA_PASSPHRASE": PASSPHRASE,
            "FLEET_ACTOR": "readme",
            "REG_TOKEN": TOKEN,
            "AWS_ACCESS_KEY_ID": "AKIAFLEETREADME00001",
            "AWS_SECRET_ACCESS_KEY": "readme-test-secret",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
            "COLUMNS": "100",
        }
    )
    for name in ("FLEET_DATABASE_URL", "FLEET_CA_PASSPHRASE_FILE", "AWS_PROFILE",
                 "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_IOT"):  # fmt: skip
        env.pop(name, None)
    return env


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one block in bash: every command must exit 0 (a failing one stops the block and
    names itself on stderr)."""
    script = (
        "set -eE -o pipefail\n"
        "trap 'echo \"README command failed (exit $?): $BASH_COMMAND\" >&2' ERR\n" + block.text
    )
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_readme_walkthrough_runs(
    tmp_path: Path, moto_url: str, registry_server: RegistryServer
) -> None:
    for tool in ("bash", "openssl", "jq"):
        if shutil.which(tool) is None:
            require_service(f"{tool} is not installed")
    blocks, _ = shell_blocks((REPO / "README.md").read_text())
    work = tmp_path / "work"
    work.mkdir()
    env = readme_env(tmp_path, moto_url)
    outputs: list[tuple[Block, Any]] = []
    for block in blocks:
        runnable = Block(block.line, block.text.replace(REG_EXAMPLE, registry_server.base))
        started = time.monotonic()
        done = run_block(runnable, work, env)
        print(f"block at line {block.line}: {time.monotonic() - started:.1f} s")
        assert done.returncode == 0, (
            f"README.md block at line {block.line} failed:\n{block.text}\n"
            f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        )
        outputs.append((block, done))
    everything = "".join(d.stdout + d.stderr for _, d in outputs)
    # a few outcomes the walkthrough promises
    root = x509.load_pem_x509_certificate((work / "root.pem").read_bytes())
    assert root.subject == root.issuer
    assert (work / "ids" / "pump-0042" / "cert.pem").is_file()
    assert not (work / "ids" / "pump-0043" / "key.pem").exists()  # a CSR: no key written
    assert "devices.csv: verified" in everything
    assert "Next steps:" in everything and "fleet ca root --out root.pem" in everything
    assert registry_server.state.creations, "the plant cloud was never pushed to"
    things = httpx.get(f"{moto_url}/moto-api/data.json").json()
    assert "iot" in things
    manifest = (work / "ids" / "manifest.csv").read_text().splitlines()
    assert {row.split(",")[0] for row in manifest[1:]} >= {"valve-0001", "valve-0002", "valve-0010"}
