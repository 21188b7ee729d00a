"""Bad input that used to get through: each case a one-line error, a documented exit code and
nothing half written (issue 11). Every test here failed on the code before the fix."""

from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Cli, run_fleet, snapshot
from sqlalchemy import func
from sqlmodel import select

from fleet import devices
from fleet.errors import InvalidInput, RegistryError
from fleet.identifiers import parse_label, validate_label
from fleet.pki.csr import read_csr_file
from fleet.registry.db import read_session
from fleet.registry.models import Device
from fleet.workspace import Workspace


def one_error_line(result: object, code: int) -> str:
    """``result``'s stderr, after checking it is one ``error:`` line and the exit code."""
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.exit_code == code, stderr  # type: ignore[attr-defined]
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    return stderr


def device_ids(ws: Workspace) -> set[str]:
    with read_session(ws.open_registry()) as session:
        return set(session.exec(select(Device.id)).all())


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


# --- fleet provision: one bad row costs that row only -------------------------------------


def test_csv_field_over_the_csv_limit_costs_only_its_row(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    source = tmp_path / "b.csv"
    huge = "x" * (200 * 1024)
    source.write_text(f"id,model\nok-1,p1\nbig-1,{huge}\nok-2,p1\n", encoding="utf-8")
    report = tmp_path / "r.csv"
    out = tmp_path / "out"
    result = sqlite_cli("provision", str(source), "--out", str(out), "--report", str(report))
    assert result.exit_code == 1, result.stderr
    assert device_ids(ready_sqlite_ws) == {"ok-1", "ok-2"}
    assert (out / "manifest.csv").is_file()
    with report.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["line"] for r in rows] == ["3"] and "CSV" in rows[0]["error"]


def test_csv_header_over_the_limit_is_refused(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    source = tmp_path / "b.csv"
    source.write_text("id," + "c" * (200 * 1024) + "\nx,y\n", encoding="utf-8")
    one_error_line(sqlite_cli("provision", str(source), "--out", str(tmp_path / "o")), 2)


@pytest.mark.parametrize(
    "line",
    [
        '{"id": "bad-1", "model": "\\ud800"}',
        '{"id": "bad-1", "labels": {"site": "\\udcff"}}',
        '{"id": "bad-1", "serial": "\\udfff", "model": "p"}',
        '{"id": "\\ud800x"}',
        '{"id": "bad-1", "labels": []}',
        '{"id": "bad-1", "labels": false}',
        '{"id": "bad-1", "labels": 0}',
        "[" * 100_000 + "]" * 100_000,
        '{"id": "bad-1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
    ids=[
        "surrogate-model",
        "surrogate-label",
        "surrogate-serial",
        "surrogate-id",
        "labels-list",
        "labels-false",
        "labels-zero",
        "deep-array",
        "deep-in-object",
    ],
)
def test_jsonl_bad_row_costs_only_its_row(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path, line: str
) -> None:
    source = tmp_path / "b.jsonl"
    source.write_text(
        '{"id": "ok-1"}\n' + line + '\n{"id": "ok-2", "labels": {"a": "1"}}\n', encoding="utf-8"
    )
    out, report = tmp_path / "out", tmp_path / "r.csv"
    dry = sqlite_cli("provision", str(source), "--out", str(out), "--dry-run", "--json")
    assert dry.exit_code == 1, dry.stderr
    assert json.loads(dry.stdout)["failed"] == 1
    result = sqlite_cli("provision", str(source), "--out", str(out), "--report", str(report))
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert device_ids(ready_sqlite_ws) == {"ok-1", "ok-2"}
    with report.open(encoding="utf-8", newline="") as handle:
        assert [r["line"] for r in csv.DictReader(handle)] == ["2"]
    assert devices.show_device(ready_sqlite_ws, "ok-2").labels == {"a": "1"}


def test_manifest_csr_column_stays_in_the_files_folder(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (tmp_path / "outside.csr").write_text("not a csr")
    source = folder / "b.csv"
    source.write_text(
        f"id,csr\nabs-1,{tmp_path / 'outside.csr'}\nup-1,../outside.csr\nok-1,\n",
        encoding="utf-8",
    )
    result = sqlite_cli("provision", str(source), "--out", str(tmp_path / "out"), "--json")
    assert result.exit_code == 1
    errors = {e["id"]: e["error"] for e in json.loads(result.stdout)["errors"]}
    assert "inside the file's folder" in errors["abs-1"]
    assert "inside the file's folder" in errors["up-1"]
    assert device_ids(ready_sqlite_ws) == {"ok-1"}


def test_dangling_symlink_at_the_bundle_name(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "dev-1").symlink_to(tmp_path / "nowhere")
    source = tmp_path / "b.csv"
    source.write_text("id\ndev-1\ndev-2\n", encoding="utf-8")
    for extra in (["--dry-run"], []):
        result = sqlite_cli("provision", str(source), "--out", str(out), "--json", *extra)
        assert result.exit_code == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert device_ids(ready_sqlite_ws) == {"dev-2"}
    (out / "dev-3").symlink_to(tmp_path / "nowhere")
    result = sqlite_cli("device", "add", "dev-3", "--out", str(out))
    assert "already exists" in one_error_line(result, 4)
    assert device_ids(ready_sqlite_ws) == {"dev-2"}
    assert not (tmp_path / "nowhere").exists()


# --- files fleet writes: no planted symlink followed; modes from the umask -----------------


def test_report_never_follows_a_planted_symlink(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    report = tmp_path / "r.csv"
    (tmp_path / f".r.csv.tmp-{os.getpid()}").symlink_to(victim)
    source = tmp_path / "b.csv"
    source.write_text("id\nok-1\nbad id\n", encoding="utf-8")
    result = sqlite_cli(
        "provision", str(source), "--out", str(tmp_path / "out"), "--report", str(report)
    )
    assert result.exit_code == 1
    assert victim.read_text() == "precious"
    assert "bad id" in report.read_text()


def test_export_replaces_a_symlink_at_its_name_without_following_it(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "devices.csv"
    out.symlink_to(victim)
    assert sqlite_cli("export", "-f", "csv", "--out", str(out)).exit_code == 0
    assert victim.read_text() == "precious"
    assert not out.is_symlink()


@pytest.mark.usefixtures("umask_077")
def test_public_files_respect_the_umask(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "devices.csv"
    assert sqlite_cli("device", "add", "pump-1", "--out", str(tmp_path / "ids")).exit_code == 0
    assert sqlite_cli("export", "-f", "csv", "--out", str(out), "--sign").exit_code == 0
    assert sqlite_cli("ca", "crl", "--out", str(tmp_path / "crl.pem")).exit_code == 0
    source = tmp_path / "b.csv"
    source.write_text("id\nbulk-1\n", encoding="utf-8")
    assert sqlite_cli("provision", str(source), "--out", str(tmp_path / "bulk")).exit_code == 0
    for path in (
        out,
        tmp_path / "devices.csv.p7s",
        tmp_path / "devices.csv.manifest.json",
        tmp_path / "crl.pem",
        tmp_path / "ids" / "pump-1" / "cert.pem",
        tmp_path / "bulk" / "manifest.csv",
        tmp_path / "bulk" / "bulk-1" / "cert.pem",
    ):
        assert mode_of(path) == 0o600, path
    for folder in (tmp_path / "ids" / "pump-1", tmp_path / "bulk" / "bulk-1"):
        assert mode_of(folder) == 0o700, folder
    assert mode_of(tmp_path / "ids" / "pump-1" / "key.pem") == 0o600


def test_public_files_are_0644_under_the_usual_umask(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        assert sqlite_cli("ca", "crl", "--out", str(tmp_path / "crl.pem")).exit_code == 0
        assert sqlite_cli("device", "add", "pump-1", "--out", str(tmp_path / "ids")).exit_code == 0
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "crl.pem") == 0o644
    assert mode_of(tmp_path / "ids" / "pump-1") == 0o755
    assert mode_of(tmp_path / "ids" / "pump-1" / "key.pem") == 0o600


def test_registry_db_is_private(ready_sqlite_ws: Workspace) -> None:
    db = ready_sqlite_ws.home / "registry.db"
    assert mode_of(db) == 0o600
    for suffix in ("-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        if side.exists():
            assert mode_of(side) == 0o600


# --- failed commands change nothing -------------------------------------------------------


def test_crl_to_an_unwritable_path_records_nothing(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    before = snapshot(ready_sqlite_ws)
    result = sqlite_cli("ca", "crl", "--out", str(tmp_path / "nodir" / "x.pem"))
    one_error_line(result, InvalidInput.exit_code)
    assert snapshot(ready_sqlite_ws) == before


@pytest.mark.parametrize(
    "args", [["--key-type", "rsa-1024"], ["--name", ""], ["--name", "a\nb"]], ids=str
)
def test_init_validates_before_creating_anything(
    sqlite_ws: Workspace, sqlite_cli: Cli, args: list[str]
) -> None:
    one_error_line(sqlite_cli("init", *args), InvalidInput.exit_code)
    assert not (sqlite_ws.home / "registry.db").exists()
    assert not (sqlite_ws.home / "ca").exists()


def test_read_command_never_creates_a_database(ready_sqlite_ws: Workspace, tmp_path: Path) -> None:
    new = tmp_path / "new.db"
    result = Cli(Workspace(home=ready_sqlite_ws.home, db_url=f"sqlite:///{new}"))("device", "list")
    one_error_line(result, RegistryError.exit_code)
    assert not new.exists()


# --- labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["site\n", "\nsite", "si\nte", "site\r"])
def test_label_key_with_a_line_break_is_refused(key: str) -> None:
    with pytest.raises(InvalidInput):
        validate_label(key, "x")
    with pytest.raises(InvalidInput):
        parse_label(f"{key}=x")


def test_label_key_with_a_newline_on_the_command_line(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    result = sqlite_cli("device", "add", "p-1", "--label", "site\n=x", "--out", str(tmp_path))
    one_error_line(result, InvalidInput.exit_code)
    assert device_ids(ready_sqlite_ws) == set()


# --- one-line errors instead of tracebacks ------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "log", "--since", "800000d"],
        ["audit", "log", "--since", "99999999999999w"],
        ["audit", "log", "--since", ""],
        ["export", "-f", "csv", "--as-of", "9999-12-31T23:59:59-01:00"],
        ["export", "-f", "csv", "--as-of", "0001-01-01T00:00:00+01:00"],
        ["export", "-f", "csv", "--as-of", ""],
        ["export", "-f", "csv", "--as-of", " "],
        ["cert", "list", "--expiring-within", "999999999999"],
    ],
    ids=str,
)
def test_times_out_of_range_or_empty(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, args: list[str]
) -> None:
    one_error_line(sqlite_cli(*args), InvalidInput.exit_code)


def test_unknown_database_dialect(tmp_path: Path) -> None:
    result = Cli(Workspace(home=tmp_path, db_url="nosuchdb://x/y"))("device", "list")
    assert "unknown database kind" in one_error_line(result, RegistryError.exit_code)


def test_corrupt_registry_file(ready_sqlite_ws: Workspace, sqlite_cli: Cli) -> None:
    ready_sqlite_ws.close()
    (ready_sqlite_ws.home / "registry.db").write_bytes(os.urandom(8192))
    for name in ("registry.db-wal", "registry.db-shm"):
        (ready_sqlite_ws.home / name).unlink(missing_ok=True)
    one_error_line(sqlite_cli("device", "list"), RegistryError.exit_code)


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_damaged_ca_certificate(ready_sqlite_ws: Workspace, sqlite_cli: Cli, damage: str) -> None:
    cert = ready_sqlite_ws.home / "ca" / "issuing.cert.pem"
    if damage == "garbage":
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    else:
        cert.unlink()
    one_error_line(sqlite_cli("ca", "show"), RegistryError.exit_code)
    one_error_line(sqlite_cli("device", "add", "p-1"), RegistryError.exit_code)


def test_non_utf8_arguments(ready_sqlite_ws: Workspace) -> None:
    home = str(ready_sqlite_ws.home)
    for args in (
        ["device", "show", b"p\xff".decode("utf-8", "surrogateescape")],
        ["device", "add", "p-1", "--label", b"k=\xff".decode("utf-8", "surrogateescape")],
        ["device", "add", "p-1", "--model", b"\xfe".decode("utf-8", "surrogateescape")],
        ["audit", "log", "--since", b"\xff".decode("utf-8", "surrogateescape")],
    ):
        done = run_fleet("--home", home, *args, env={"LC_ALL": "C.UTF-8"})
        assert done.returncode in (2, 3), done.stderr
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr


def test_csr_file_size_is_capped(tmp_path: Path) -> None:
    big = tmp_path / "big.csr"
    big.write_bytes(b"-----BEGIN" + b"A" * (64 * 1024 + 10))
    with pytest.raises(InvalidInput, match="larger than 64 KiB"):
        read_csr_file(big, "p-1")


def test_csr_from_an_endless_device(ready_sqlite_ws: Workspace, sqlite_cli: Cli) -> None:
    result = sqlite_cli("device", "add", "p-1", "--csr", "/dev/zero")
    assert "larger than 64 KiB" in one_error_line(result, InvalidInput.exit_code)


# --- the last-resort guard ----------------------------------------------------------------


def test_unexpected_exception_is_one_line(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise ZeroDivisionError("oops\nsecond line")

    monkeypatch.setattr("fleet.pki.authority.ca_info", boom)
    stderr = one_error_line(sqlite_cli("ca", "show"), 1)
    assert stderr == (
        "error: internal error: ZeroDivisionError: oops second line "
        "(set FLEET_DEBUG=1 for the traceback)\n"
    )
    monkeypatch.setenv("FLEET_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        sqlite_cli("ca", "show")


def test_no_audit_event_for_refused_crl(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    from fleet.registry.models import AuditEvent

    sqlite_cli("ca", "crl", "--out", str(tmp_path / "nodir" / "x.pem"))
    with read_session(ready_sqlite_ws.open_registry()) as session:
        count = session.exec(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "ca.crl")
        ).one()
    assert count == 0
