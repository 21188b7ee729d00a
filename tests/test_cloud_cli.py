"""``fleet cloud ...`` and ``fleet device add --cloud`` end to end, against a real local HTTP
registry; the secrets test: a bearer token in an env var appears in no output, log record
or database row; and ``cloud add`` taking the options each backend declares, a plugin's
too."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from cloudserver import RegistryServer
from helpers import REPO, Cli, run_fleet, snapshot

from fleet.cloud import plugins
from fleet.cloud.base import (
    BackendOption,
    CaMaterial,
    CheckResult,
    CloudBackend,
    DeviceRecord,
    RemoteStatus,
)
from fleet.workspace import Workspace

TOKEN = "Bearer tok-9f8e7d6c5b4a-very-secret"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RegistryServer]:
    srv = RegistryServer().start()
    monkeypatch.setenv("REG_TOKEN", TOKEN)
    srv.state.required_headers = {"Authorization": TOKEN}
    yield srv
    srv.stop()


def add_cloud(cli: Cli, server: RegistryServer, name: str = "reg") -> None:
    result = cli(
        "cloud", "add", name, "--type", "http", "--url", server.url,
        "--header", "Authorization=REG_TOKEN", "--timeout", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert f"Added cloud {name} (http)" in result.stderr


def add_device(cli: Cli, device_id: str, out: Path, *clouds: str) -> None:
    args = [arg for cloud in clouds for arg in ("--cloud", cloud)]
    result = cli("device", "add", device_id, "--out", str(out), *args)
    assert result.exit_code == 0, result.stderr


def test_cloud_lifecycle(
    ready_ws: Workspace, cli: Cli, server: RegistryServer, tmp_path: Path
) -> None:
    add_cloud(cli, server)
    listed = json.loads(cli("cloud", "list", "--json").stdout)
    assert [(c["name"], c["type"], c["prepared"]) for c in listed] == [("reg", "http", False)]
    assert listed[0]["options"]["header"] == {"Authorization": "REG_TOKEN"}
    assert listed[0]["rate_per_second"] == 50.0 and listed[0]["concurrency"] == 8

    out = tmp_path / "out"
    add_device(cli, "pump-1", out, "reg")
    add_device(cli, "pump-2", out)
    result = cli("cloud", "register", "reg", "pump-2", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["queued"] == 1
    assert data["push"]["done"] == 2 and data["push"]["failed"] == 0
    assert set(server.state.devices) == {"pump-1", "pump-2"}

    shown = json.loads(cli("cloud", "show", "reg", "--json").stdout)
    assert shown["registrations"] == {"registered": 2} and shown["jobs"] == {"done": 2}
    status = json.loads(cli("cloud", "status", "--json").stdout)
    assert [(s["device_id"], s["status"]) for s in status] == [
        ("pump-1", "registered"),
        ("pump-2", "registered"),
    ]
    table = cli("cloud", "status", "reg")
    assert table.exit_code == 0 and "pump-1" in table.stdout

    result = cli("cloud", "remove", "reg")
    assert result.exit_code == 4
    assert result.stderr.startswith("error: cloud 'reg' has 0 queued job(s) and 2 registered")
    result = cli("cloud", "remove", "reg", "--force")
    assert result.exit_code == 0 and "dropped 2 job(s)" in result.stderr
    assert json.loads(cli("cloud", "list", "--json").stdout) == []


def test_queue_only_then_sync(
    ready_ws: Workspace, cli: Cli, server: RegistryServer, tmp_path: Path
) -> None:
    add_cloud(cli, server)
    for i in range(3):
        add_device(cli, f"d{i}", tmp_path / "out")
    result = cli("cloud", "register", "reg", "--all", "--queue-only")
    assert result.exit_code == 0 and "queued 3 registration(s)" in result.stderr
    assert server.state.devices == {}
    pending = json.loads(cli("cloud", "status", "reg", "--json").stdout)
    assert {s["status"] for s in pending} == {"pending"}
    assert {s["queued"]["action"] for s in pending} == {"register"}
    result = cli("cloud", "sync", "--json")
    assert result.exit_code == 0, result.stderr
    (report,) = json.loads(result.stdout)
    assert (report["cloud"], report["done"], report["status_updated"]) == ("reg", 3, 3)
    assert set(server.state.devices) == {"d0", "d1", "d2"}


def test_failed_job_gives_exit_code_1(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, server: RegistryServer, tmp_path: Path
) -> None:
    cli = sqlite_cli
    add_cloud(cli, server)
    add_device(cli, "ok-1", tmp_path / "out")
    add_device(cli, "bad-1", tmp_path / "out")
    server.state.faults["bad-1"] = ["400"]
    result = cli("cloud", "register", "reg", "ok-1", "bad-1")
    assert result.exit_code == 1
    assert "reg: 1 done, 1 failed, 0 still queued" in result.stderr
    assert "failed register bad-1: register bad-1: HTTP 400 Bad Request" in result.stderr
    status = json.loads(cli("cloud", "status", "--json").stdout)
    bad = next(s for s in status if s["device_id"] == "bad-1")
    assert bad["status"] == "failed" and bad["attempts"] == 1 and "HTTP 400" in bad["last_error"]


def test_bad_input_is_one_line_and_changes_nothing(
    ready_ws: Workspace, cli: Cli, server: RegistryServer, tmp_path: Path
) -> None:
    add_cloud(cli, server)
    before = snapshot(ready_ws, tmp_path / "out")
    cases = [
        (("cloud", "add", "x", "--type", "http", "--url", server.url, "--region", "eu"), 2,
         "error: cloud type 'http' does not take --region"),
        (("cloud", "add", "x", "--type", "gcp"), 2, "error: unknown cloud type 'gcp'"),
        (("cloud", "add", "reg", "--type", "http", "--url", server.url), 4,
         "error: cloud 'reg' already exists"),
        (("cloud", "register", "nope", "d1"), 3, "error: no cloud named 'nope'"),
        (("cloud", "register", "reg"), 2, "error: give device IDs or --all"),
        (("cloud", "register", "reg", "ghost"), 3, "error: no device 'ghost'"),
        (("device", "add", "d1", "--out", str(tmp_path / "out"), "--cloud", "nope"), 3,
         "error: no cloud named 'nope'"),
        (("cloud", "show", "nope"), 3, "error: no cloud named 'nope'"),
    ]  # fmt: skip
    for args, code, text in cases:
        result = cli(*args)
        assert result.exit_code == code, (args, result.stderr)
        assert result.stderr.startswith(text), (args, result.stderr)
        assert result.stderr.count("\n") == 1
    assert snapshot(ready_ws, tmp_path / "out") == before


def test_check(ready_sqlite_ws: Workspace, sqlite_cli: Cli, server: RegistryServer) -> None:
    add_cloud(sqlite_cli, server)
    result = sqlite_cli("cloud", "check", "reg")
    assert result.exit_code == 0 and result.stderr.startswith("ok: ")
    server.state.required_headers = {"Authorization": "another"}
    result = sqlite_cli("cloud", "check", "reg")
    assert result.exit_code == 1
    assert "refused the credentials (HTTP 401)" in result.stderr


def test_every_cloud_command_has_an_example(sqlite_cli: Cli) -> None:
    for command in ("add", "list", "show", "remove", "check", "register", "sync", "status"):
        result = sqlite_cli("cloud", command, "--help")
        assert result.exit_code == 0 and "Example:" in result.stdout, command


def test_secret_never_in_output_logs_or_database(
    ready_ws: Workspace,
    cli: Cli,
    server: RegistryServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []

    def run(*args: str) -> None:
        result = cli(*args)
        outputs.extend([result.stdout, result.stderr])

    add_cloud(cli, server)
    run("cloud", "list", "--json")
    run("cloud", "show", "reg", "--json")
    run("cloud", "check", "reg")
    run("device", "add", "s1", "--out", str(tmp_path / "out"), "--cloud", "reg")
    run("device", "add", "s2", "--out", str(tmp_path / "out"))
    server.state.faults["s2"] = ["400"]
    run("cloud", "register", "reg", "s2", "--json")
    run("cloud", "sync", "--json")
    run("cloud", "status", "--json")
    run("cloud", "status")
    server.state.required_headers = {"Authorization": "rotated"}  # now the token is refused
    run("cloud", "check", "reg")
    run("device", "add", "s3", "--out", str(tmp_path / "out"), "--cloud", "reg")
    run("cloud", "sync", "reg", "--json")
    # A real child process too (real stdio, real logging setup).
    env = {"REG_TOKEN": TOKEN, "FLEET_HOME": str(ready_ws.home)}
    if ready_ws.db_url:
        env["FLEET_DATABASE_URL"] = ready_ws.db_url
    child = run_fleet("cloud", "status", "--json", env=env)
    outputs.extend([child.stdout, child.stderr])

    assert server.state.devices.keys() == {"s1"}  # the requests really carried the token
    dump = json.dumps(snapshot(ready_ws, tmp_path / "out"))
    logs = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    for haystack in ("\n".join(outputs), logs, dump):
        assert TOKEN not in haystack
        assert "tok-9f8e7d6c5b4a" not in haystack
    assert "REG_TOKEN" in dump  # only the variable's name is stored
    for path in [*ready_ws.home.rglob("*"), *tmp_path.joinpath("out").rglob("*")]:
        if path.is_file():
            assert b"tok-9f8e7d6c5b4a" not in path.read_bytes(), path


def test_aws_options_pass_through_the_cli(ready_sqlite_ws: Workspace, sqlite_cli: Cli) -> None:
    result = sqlite_cli(
        "cloud", "add", "prod", "--type", "aws-iot", "--region", "eu-central-1",
        "--thing-group", "plant-7", "--thing-type", "pump", "--policy", "p1", "--profile", "ops",
        "--deregister-mode", "revoke", "--delete-thing", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    options = json.loads(result.stdout)["options"]
    assert options["region"] == "eu-central-1" and options["thing_group"] == "plant-7"
    assert options["thing_type"] == "pump" and options["policy"] == "p1"
    assert options["profile"] == "ops" and options["deregister_mode"] == "revoke"
    assert options["delete_thing"] is True
    result = sqlite_cli("cloud", "add", "web", "--type", "http", "--url", "http://h/{id}",
                        "--delete-thing")  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr == "error: cloud type 'http' does not take --delete-thing\n"


# --- options declared by the backends ------------------------------------------------------


class PaintBackend(CloudBackend):
    """A plugin backend declaring options of each kind; accepts whatever it is given, so
    refusing undeclared options is fleet's doing."""

    type_name = "paint"
    declared_options = (
        BackendOption("color", "Paint colour.", choices=("red", "blue")),
        BackendOption("coats", "Coats of paint.", value_type=int),
        BackendOption("tag", "A tag; repeatable.", multiple=True),
        BackendOption("glossy", "A glossy finish.", value_type=bool),
        BackendOption("timeout", "Seconds per request (like http's)", value_type=float),
    )

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        return dict(options)

    def check(self) -> CheckResult:
        return CheckResult(True, "paint is ready")

    def prepare(self, ca: CaMaterial) -> dict[str, Any]:
        return {}

    def register(self, device: DeviceRecord, state: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def deregister(
        self, device: DeviceRecord, remote: Mapping[str, Any], state: Mapping[str, Any]
    ) -> None:
        return None

    def fetch_status(
        self, device_ids: Sequence[str], state: Mapping[str, Any]
    ) -> dict[str, RemoteStatus]:
        return {}


@pytest.fixture
def paint_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """PaintBackend installed as cloud type ``paint`` (next to the real ones)."""
    installed = plugins._entry_points()
    paint = EntryPoint("paint", f"{__name__}:PaintBackend", plugins.GROUP)
    monkeypatch.setattr(plugins, "_entry_points", lambda: {**installed, "paint": paint})


def test_plugin_options_on_cloud_add(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, paint_plugin: None
) -> None:
    shown = sqlite_cli("cloud", "add", "--help")
    assert shown.exit_code == 0
    for text in ("paint options", "--color", "Paint colour.", "--coats", "--glossy", "--tag"):
        assert text in shown.stdout, text
    # --timeout: declared by both (and by other installed backends, e.g. thingsboard)
    assert re.search(r"([a-z-]+, )*http, paint(, [a-z-]+)* options", shown.stdout)
    result = sqlite_cli(
        "cloud", "add", "studio", "--type", "paint", "--color", "blue", "--coats", "2",
        "--tag", "a", "--tag", "b", "--glossy", "--timeout", "1.5", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    options = json.loads(result.stdout)["options"]
    assert options == {"color": "blue", "coats": 2, "tag": ["a", "b"], "glossy": True,
                       "timeout": 1.5}  # fmt: skip
    # An option of another backend is refused, naming the type, whichever the backend.
    result = sqlite_cli("cloud", "add", "x", "--type", "paint", "--url", "http://h/{id}")
    assert result.exit_code == 2
    assert result.stderr == "error: cloud type 'paint' does not take --url\n"
    result = sqlite_cli("cloud", "add", "y", "--type", "http", "--url", "http://h/{id}",
                        "--coats", "3")  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr == "error: cloud type 'http' does not take --coats\n"
    result = sqlite_cli("cloud", "add", "z", "--type", "paint", "--coats", "many")
    assert result.exit_code == 2 and "Invalid value for '--coats'" in result.stderr


def test_broken_plugin_leaves_the_others_usable(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = plugins._entry_points()
    gone = EntryPoint("gone", "fleet_no_such_module:Backend", plugins.GROUP)
    monkeypatch.setattr(plugins, "_entry_points", lambda: {**installed, "gone": gone})
    assert "--region" in sqlite_cli("cloud", "add", "--help").stdout
    result = sqlite_cli("cloud", "add", "g", "--type", "gone")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cloud type 'gone' cannot be loaded")
    result = sqlite_cli("cloud", "add", "web", "--type", "http", "--url", "http://h/{id}")
    assert result.exit_code == 0, result.stderr


def test_cloud_add_help_loads_no_network_library() -> None:
    """The options come from the backends' light declarations: neither httpx nor botocore
    is imported to show them."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fleet", "cloud", "add", "--help"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == 0 and "--thing-group" in child.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in child.stderr.splitlines()}
    assert "fleet.cloud.aws.options" in imported
    assert not {"httpx", "botocore", "fleet.cloud.aws.backend"} & imported
