"""Issue 16's rough edges a new user hits: the CA passphrase, auditors' commands, and the
small places README's walkthrough stumbled on. Each test failed on the code before the fix."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from helpers import PASSPHRASE, Cli, child_env, run_fleet

from fleet import devices
from fleet.errors import CLOUD_UNREACHABLE_EXIT, Conflict
from fleet.identifiers import parse_as_of
from fleet.workspace import Workspace


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


# --- the CA passphrase ------------------------------------------------------------------------


@pytest.fixture
def no_env_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_CA_PASSPHRASE", raising=False)


def test_passphrase_file_option_and_env(
    tmp_path: Path, no_env_passphrase: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text(PASSPHRASE + "\n")  # as `echo` writes it: one newline, dropped
    secret.chmod(0o600)
    home = tmp_path / "ws"
    cli = Cli(Workspace(home=home))
    done = cli("init", "--name", "P", "--passphrase-file", str(secret))
    assert done.exit_code == 0, done.output
    # the same passphrase decrypts the CA: through the environment variable naming the file
    monkeypatch.setenv("FLEET_CA_PASSPHRASE_FILE", str(secret))
    assert cli("device", "add", "pf-1", "--out", str(tmp_path / "ids")).exit_code == 0
    monkeypatch.delenv("FLEET_CA_PASSPHRASE_FILE")
    # ... and the option, given before the command
    done = cli(
        "--passphrase-file", str(secret), "device", "add", "pf-2", "--out", str(tmp_path / "ids")
    )
    assert done.exit_code == 0, done.output
    # a wrong one is the passphrase exit code, 6
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(PASSPHRASE + "x\n")
    done = cli(
        "device", "add", "pf-3", "--out", str(tmp_path / "ids"), "--passphrase-file", str(wrong)
    )
    assert done.exit_code == 6, done.output
    missing = cli(
        "device",
        "add",
        "pf-3",
        "--out",
        str(tmp_path / "ids"),
        "--passphrase-file",
        str(tmp_path / "no"),
    )
    assert missing.exit_code == 6 and "cannot read the passphrase file" in missing.output


def test_init_refuses_a_weak_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_CA_PASSPHRASE", "short")
    home = tmp_path / "ws"
    done = run_fleet("--home", str(home), "init")
    assert done.returncode == 2
    assert "at least 12" in one_error_line(done.stderr)
    assert not (home / "ca").exists()
    done = run_fleet("--home", str(home), "init", "--allow-weak-passphrase")
    assert done.returncode == 0, done.stderr
    # init ends with the next steps: back up ca/ and the passphrase, give auditors the root
    assert "Back up" in done.stderr and str(home / "ca") in done.stderr
    assert "fleet ca root --out root.pem" in done.stderr


# --- auditors -------------------------------------------------------------------------------


def test_ca_root_writes_the_root_certificate(ready_sqlite_ws: Workspace, sqlite_cli: Cli) -> None:
    out = ready_sqlite_ws.home / "root.pem"
    done = sqlite_cli("ca", "root", "--out", str(out))
    assert done.exit_code == 0, done.output
    root = x509.load_pem_x509_certificate(out.read_bytes())
    assert root.subject == root.issuer  # self-signed: the root, alone
    assert out.read_bytes().count(b"BEGIN CERTIFICATE") == 1
    printed = sqlite_cli("ca", "root")
    assert printed.stdout.encode() == out.read_bytes()


def test_as_of_a_bare_date_is_the_end_of_that_day() -> None:
    moment = parse_as_of("2026-06-30")
    assert moment == datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_as_of("2026-06-30T12:00:00Z") == datetime(2026, 6, 30, 12, tzinfo=UTC)


def test_as_of_a_device_added_that_day(ready_sqlite_ws: Workspace, sqlite_cli: Cli) -> None:
    devices.add_device(
        ready_sqlite_ws, "day-1", passphrase=PASSPHRASE, out_dir=ready_sqlite_ws.home / "ids"
    )
    today = datetime.now(UTC).date().isoformat()
    done = sqlite_cli("export", "--format", "jsonl", "--as-of", today)
    assert done.exit_code == 0, done.output
    assert '"day-1"' in done.stdout  # midnight would have left out today's device


def test_as_of_out_of_the_trail_warns(ready_sqlite_ws: Workspace, tmp_path: Path) -> None:
    home = ["--home", str(ready_sqlite_ws.home)]
    before = run_fleet(*home, "export", "--format", "jsonl", "--as-of", "2001-01-01")
    assert before.returncode == 0
    assert "warning:" in before.stderr and "before the audit trail's first event" in before.stderr
    future = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    later = run_fleet(*home, "export", "--format", "jsonl", "--as-of", future)
    assert later.returncode == 0
    assert "warning:" in later.stderr and "in the future" in later.stderr
    quiet = run_fleet(*home, "export", "--format", "jsonl", "--as-of", "0s")
    assert "warning" not in quiet.stderr


def test_export_keeps_a_signed_export_unless_force(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli
) -> None:
    out = ready_sqlite_ws.home / "devices.csv"
    assert sqlite_cli("export", "--out", str(out)).exit_code == 0
    signed = out.read_bytes(), Path(f"{out}.p7s").read_bytes()
    devices.add_device(
        ready_sqlite_ws, "late-1", passphrase=PASSPHRASE, out_dir=ready_sqlite_ws.home / "ids"
    )
    again = sqlite_cli("export", "--out", str(out))
    assert again.exit_code == Conflict.exit_code == 4
    assert "--force" in again.output
    assert (out.read_bytes(), Path(f"{out}.p7s").read_bytes()) == signed
    forced = sqlite_cli("export", "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert b"late-1" in out.read_bytes()


# --- help and usage ---------------------------------------------------------------------------


def test_help_placeholders_and_wrapping() -> None:
    done = run_fleet("cloud", "add", "--help", env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert done.returncode == 0, done.stderr
    shown = done.stdout
    assert "<bool>" not in shown and "<list[" not in shown, shown
    assert "--header" in shown and "<str>" in shown
    # each backend's options in a panel of its own
    assert re.search(r"aws-iot options", shown) and re.search(r"http options", shown)
    # a paragraph is wrapped once, at the terminal's width, not also at the source's breaks
    assert any("sources, and HTTP headers" in line for line in shown.splitlines()), shown


@pytest.mark.parametrize(
    "args",
    [("cert", "list", "--bogus"), ("device", "list", "--status"), ("nosuch",)],
    ids=["unknown option", "missing value", "unknown command"],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    done = run_fleet("--home", str(tmp_path), *args)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "--help" in line and done.stdout == ""


def test_global_options_after_the_command(ready_sqlite_ws: Workspace, tmp_path: Path) -> None:
    devices.add_device(ready_sqlite_ws, "g-1", passphrase=PASSPHRASE, out_dir=tmp_path / "ids")
    home = str(ready_sqlite_ws.home)
    after = run_fleet(
        "device", "list", "--count", "--home", home, env={"FLEET_HOME": "/nonexistent"}
    )
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "1"
    url = f"sqlite:///{ready_sqlite_ws.home / 'registry.db'}"
    also = run_fleet("device", "show", "g-1", "--json", f"--db={url}", "--home", home)
    assert also.returncode == 0 and json.loads(also.stdout)["id"] == "g-1", also.stderr


# --- clouds ---------------------------------------------------------------------------------


@pytest.fixture
def plain_http_server() -> Iterator[str]:
    """A plain HTTP server (Python's own): GET of a missing path is 404, OPTIONS is 501."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=os.devnull))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:  # bound, then closed: its port refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/devices/{{id}}"


def test_cloud_check_uses_get_by_default_and_names_the_method(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, plain_http_server: str
) -> None:
    url = f"{plain_http_server}/devices/{{id}}"
    assert sqlite_cli("cloud", "add", "plain", "--type", "http", "--url", url).exit_code == 0
    done = sqlite_cli("cloud", "check", "plain")
    assert done.exit_code == 0, done.stderr
    assert done.stderr.startswith("ok: GET ")
    added = sqlite_cli(
        "cloud", "add", "opt", "--type", "http", "--url", url, "--check-method", "OPTIONS"
    )
    assert added.exit_code == 0, added.stderr
    done = sqlite_cli("cloud", "check", "opt")
    assert done.exit_code == 1
    assert "OPTIONS" in done.stderr and "501" in done.stderr and "--check-method" in done.stderr
    health = f"{plain_http_server}/"  # the directory listing of os.devnull: an error page
    added = sqlite_cli(
        "cloud", "add", "hc", "--type", "http", "--url", url, "--check-url", health,
        "--check-method", "HEAD",
    )  # fmt: skip
    assert added.exit_code == 0, added.stderr
    done = sqlite_cli("cloud", "check", "hc")
    assert done.stderr.startswith(f"ok: HEAD {health}") or "HEAD" in done.stderr


def test_register_all_skips_devices_without_a_certificate(
    ready_ws: Workspace, cli: Cli, tmp_path: Path
) -> None:
    ready_sqlite_ws, sqlite_cli = ready_ws, cli  # SQLite and PostgreSQL
    assert (
        sqlite_cli("cloud", "add", "reg", "--type", "http", "--url", closed_port_url()).exit_code
        == 0
    )
    for device_id in ("a-1", "a-2", "a-3"):
        devices.add_device(ready_sqlite_ws, device_id, passphrase=PASSPHRASE, out_dir=tmp_path)
    for device_id in ("a-1", "a-2"):  # active devices whose certificate is revoked
        serial = json.loads(sqlite_cli("device", "show", device_id, "--json").stdout)
        revoked = sqlite_cli("cert", "revoke", serial["certificates"][0]["serial"])
        assert revoked.exit_code == 0, revoked.stderr
    done = sqlite_cli("cloud", "register", "reg", "--all", "--queue-only")
    assert done.exit_code == 0, done.stderr
    assert "queued 1 registration" in done.stderr
    assert "skipped 2 device(s) without an active certificate: a-1, a-2" in done.stderr
    as_json = sqlite_cli("cloud", "register", "reg", "--all", "--queue-only", "--json")
    assert json.loads(as_json.stdout) == {"queued": 0, "push": None, "skipped": ["a-1", "a-2"]}


def test_unreachable_cloud_ends_the_push_at_once(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    assert (
        sqlite_cli("cloud", "add", "gone", "--type", "http", "--url", closed_port_url()).exit_code
        == 0
    )
    for device_id in ("u-1", "u-2"):
        devices.add_device(
            ready_sqlite_ws, device_id, passphrase=PASSPHRASE, out_dir=tmp_path, clouds=["gone"]
        )
    for args in (("cloud", "sync"), ("cloud", "register", "gone", "u-1")):
        done = sqlite_cli(*args)
        assert done.exit_code == CLOUD_UNREACHABLE_EXIT == 9, done.stderr
        assert "gone: cloud unreachable: 2 jobs stay queued" in done.stderr
    # not attempted: no backoff scheduled, nothing counted against the jobs
    rows = json.loads(sqlite_cli("cloud", "status", "gone", "--json").stdout)
    assert [(r["device_id"], r["status"], r["attempts"]) for r in rows] == [
        ("u-1", "pending", 0),
        ("u-2", "pending", 0),
    ]
    report = json.loads(sqlite_cli("cloud", "sync", "--json").stdout)
    assert report[0]["left"] == 2 and "cannot connect" in report[0]["unreachable"]


@pytest.fixture
def imds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """No AWS credentials anywhere, and a local stand-in for the instance metadata service
    that records each request it gets (and answers none usefully)."""
    requests: list[str] = []

    class Metadata(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            requests.append(f"{self.command} {self.path}")
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_EC2_METADATA_DISABLED", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}/"
    )
    yield requests
    server.shutdown()
    server.server_close()


def test_missing_aws_credentials_do_not_wait_for_instance_metadata(
    imds: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off EC2 the metadata service is not asked (on a network that drops its packets, each
    request waits for botocore's timeout); on EC2 it still is: it may hold the credentials."""
    from fleet.cloud.aws import sigv4

    vendor = tmp_path / "sys_vendor"
    monkeypatch.setattr(sigv4, "DMI_FILES", (vendor,))
    monkeypatch.setattr(sigv4, "HYPERVISOR_UUID", tmp_path / "no-hypervisor-uuid")
    vendor.write_text("QEMU\n")
    with pytest.raises(sigv4.CredentialsError, match="no AWS credentials found"):
        sigv4.load_credentials(None)
    assert imds == []
    vendor.write_text("Amazon EC2\n")
    with pytest.raises(sigv4.CredentialsError):
        sigv4.load_credentials(None)
    assert imds  # asked on EC2
    imds.clear()
    vendor.write_text("QEMU\n")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")  # asked for explicitly
    with pytest.raises(sigv4.CredentialsError):
        sigv4.load_credentials(None)
    assert imds


# --- provisioning files -------------------------------------------------------------------


def test_provision_reads_semicolons_and_tabs(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    semi = tmp_path / "batch-eu.csv"
    semi.write_text("id;model;labels\nsc-1;p200;site=hh;rack=r1\n".replace(";rack", "|rack"))
    semi.write_text('id;model;labels\nsc-1;p200;"site=hh;rack=r1"\nsc-2;p300;\n')
    tabs = tmp_path / "batch-tab.csv"
    tabs.write_text("id\tserial\ntb-1\tSN1\n")
    out = tmp_path / "ids"
    for path in (semi, tabs):
        done = sqlite_cli("provision", str(path), "--out", str(out), "--json")
        assert done.exit_code == 0, done.stderr
    shown = json.loads(sqlite_cli("device", "show", "sc-1", "--json").stdout)
    assert (shown["model"], shown["labels"]) == ("p200", {"site": "hh", "rack": "r1"})
    assert json.loads(sqlite_cli("device", "show", "tb-1", "--json").stdout)["serial"] == "SN1"


def test_provision_ignores_unknown_columns_unless_strict(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "batch.csv"
    path.write_text("id,model,notes\nuc-1,p200,left shelf\n")
    out = tmp_path / "ids"
    strict = sqlite_cli("provision", str(path), "--out", str(out), "--strict")
    assert strict.exit_code == 2 and "unknown column(s) 'notes'" in strict.stderr
    assert not out.exists()
    done = sqlite_cli("provision", str(path), "--out", str(out))
    assert done.exit_code == 0, done.stderr
    assert "warning:" in done.stderr and "'notes'" in done.stderr
    assert (out / "uc-1" / "cert.pem").is_file()


def test_provision_takes_fleet_s_own_export(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    source = Workspace(home=tmp_path / "old")
    init = run_fleet("--home", str(source.home), "init", "--name", "Old")
    assert init.returncode == 0, init.stderr
    old = Cli(source)
    added = old(
        "device",
        "add",
        "ex-1",
        "--model",
        "p200",
        "--label",
        "site=hh",
        "--out",
        str(tmp_path / "o"),
    )
    assert added.exit_code == 0, added.stderr
    exported = tmp_path / "devices.csv"
    assert old("export", "--format", "csv", "--out", str(exported), "--no-sign").exit_code == 0
    done = sqlite_cli("provision", str(exported), "--out", str(tmp_path / "ids"))
    assert done.exit_code == 0, done.stderr
    assert "warning" not in done.stderr
    shown = json.loads(sqlite_cli("device", "show", "ex-1", "--json").stdout)
    assert (shown["model"], shown["labels"]) == ("p200", {"site": "hh"})


def test_manifest_keeps_every_batch(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "ids"
    first, second = tmp_path / "b1.csv", tmp_path / "b2.csv"
    first.write_text("id\nm-1\nm-2\n")
    second.write_text("id\nm-3\nm-1\n")  # m-1 again: listed once, in this file's order
    for path in (first, second, second):
        assert sqlite_cli("provision", str(path), "--out", str(out)).exit_code == 0
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows[0] == "id,serial,fingerprint_sha256,not_after"
    assert [r.split(",")[0] for r in rows[1:]] == ["m-2", "m-3", "m-1"]


# --- device show, durations -----------------------------------------------------------------


def test_device_show_fits_80_columns_and_lists_clouds(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    home = ["--home", str(ready_sqlite_ws.home)]
    assert (
        run_fleet(
            *home, "cloud", "add", "plant", "--type", "http", "--url", closed_port_url()
        ).returncode
        == 0
    )
    added = run_fleet(*home, "device", "add", "w-1", "--cloud", "plant", "--out", str(tmp_path))
    assert added.returncode == 0, added.stderr
    view = json.loads(run_fleet(*home, "device", "show", "w-1", "--json").stdout)
    cert = view["certificates"][0]
    assert view["clouds"] == {"plant": "pending"}
    env = {"COLUMNS": "80"}
    short = run_fleet(*home, "device", "show", "w-1", env=env)
    assert short.returncode == 0, short.stderr
    assert max(len(line) for line in short.stdout.splitlines()) <= 80, short.stdout
    assert cert["serial"][:12] in short.stdout and cert["serial"] not in short.stdout
    assert "plant (pending)" in short.stdout
    wide = run_fleet(*home, "device", "show", "w-1", "--wide", env={"COLUMNS": "200"})
    assert cert["serial"] in wide.stdout and cert["fingerprint_sha256"] in wide.stdout


@pytest.mark.parametrize("span", ["30d", "30", "720h", "43200m", "4w"])
def test_one_duration_syntax(ready_sqlite_ws: Workspace, sqlite_cli: Cli, span: str) -> None:
    devices.add_device(
        ready_sqlite_ws, "d-1", passphrase=PASSPHRASE, out_dir=ready_sqlite_ws.home / "o"
    )
    for args in (
        ("cert", "list", "--expiring-within", span, "--count"),
        ("device", "list", "--offline-for", span, "--count"),
        ("status", "prune", "--older-than", span),
        ("status", "--crl-warn", span, "--json"),
    ):
        done = sqlite_cli(*args)
        assert done.exit_code == 0, (args, done.stderr)
    bad = sqlite_cli("cert", "list", "--expiring-within", "30 days")
    assert bad.exit_code == 2 and "such as 30d" in bad.stderr


# --- shell completion -----------------------------------------------------------------------

COMPLETE_CHILD = """
import atexit, json, sys
def report():
    print("LOADED " + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in
          ("sqlalchemy", "sqlmodel", "cryptography", "httpx", "botocore", "alembic", "rich"))))
atexit.register(report)
sys.argv = ["fleet"]
from fleet.cli import main
main()
"""


def complete(words: str, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """The candidates bash completion offers for ``words``, and the heavy modules loaded."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    completion = {"_FLEET_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    done = subprocess.run(
        [sys.executable, "-c", COMPLETE_CHILD],
        env=child_env({**env, **completion}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    loaded = json.loads(lines[-1].removeprefix("LOADED "))
    return lines[:-1], loaded


def test_completion_of_device_cloud_and_profile_names(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    for device_id in ("pump-1", "pump-2", "valve-1"):
        devices.add_device(ready_sqlite_ws, device_id, passphrase=PASSPHRASE, out_dir=tmp_path)
    home = str(ready_sqlite_ws.home)
    assert (
        run_fleet(
            "--home", home, "cloud", "add", "plant", "--type", "http", "--url", closed_port_url()
        ).returncode
        == 0
    )
    (ready_sqlite_ws.home / "profiles").mkdir()
    (ready_sqlite_ws.home / "profiles" / "short-lived.toml").write_text("validity_days = 7\n")
    env = {"FLEET_HOME": home}
    shown, loaded = complete("fleet device show pu", env)
    assert shown == ["pump-1", "pump-2"]
    assert not loaded, loaded  # SQLite is read with sqlite3: no SQLAlchemy, no rich
    assert complete(f"fleet --home {home} cert renew v", {})[0] == ["valve-1"]
    assert complete("fleet cloud check ", env)[0] == ["plant"]
    assert complete("fleet device add x --cloud p", env)[0] == ["plant"]
    assert complete("fleet profile show ", env)[0] == [
        "default",
        "host",
        "rsa",
        "server",
        "short-lived",
    ]
    assert complete("fleet device add x --profile r", env)[0] == ["rsa"]
    # no registry: nothing offered, no error in the shell
    assert complete("fleet device show ", {"FLEET_HOME": str(tmp_path / "none")})[0] in ([], [""])


def test_completion_reads_any_registry(ready_ws: Workspace, tmp_path: Path) -> None:
    """PostgreSQL (or any URL but SQLite's) through SQLAlchemy Core."""
    for device_id in ("k-1", "k-2"):
        devices.add_device(ready_ws, device_id, passphrase=PASSPHRASE, out_dir=tmp_path)
    ready_ws.close()
    env = {"FLEET_HOME": str(ready_ws.home)}
    if ready_ws.db_url:
        env["FLEET_DATABASE_URL"] = ready_ws.db_url
    assert complete("fleet device show k", env)[0] == ["k-1", "k-2"]


def _unused() -> None:  # keeps imports used while the file grows
    _ = (json, os, re)
