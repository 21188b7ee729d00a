"""Start-up: each command imports only what it uses, checked in a fresh interpreter.

``--version``, help (root and every group), ``--show-completion`` and completion itself load
no database, crypto, HTTP or migration library; registry reads load no HTTP library and no
Alembic. What is loaded is read from ``sys.modules`` as the child exits: deterministic, not
timed (bench/startup.py measures the time).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PASSPHRASE, child_env

from fleet import devices
from fleet.cli import COMMANDS, load_command
from fleet.workspace import Workspace

HEAVY = ("sqlalchemy", "sqlmodel", "cryptography", "httpx", "botocore", "alembic")
NETWORK = ("httpx", "botocore")

# Runs fleet's entry point in this child; on exit, writes which of the watched modules (and
# which command modules) were imported to the file named by argv[1].
CHILD = """
import atexit, json, sys
report, args = sys.argv[1], json.loads(sys.argv[2])
watched = {watched!r}

def write_report():
    loaded = [m for m in sys.modules if m.split(".")[0] in watched or m.startswith("fleet.cli.")]
    with open(report, "w") as f:
        json.dump(sorted(loaded), f)

atexit.register(write_report)
sys.argv = ["fleet", *args]
from fleet.cli import main
main()
"""


def imported(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, watch: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``fleet ARGS`` in a fresh interpreter: its result, and the watched modules (and
    ``fleet.cli.*`` modules, and those of the ``watch`` packages) it imported."""
    report = tmp_path / "imported.json"
    code = CHILD.format(watched=(*HEAVY, "rich", *watch))
    done = subprocess.run(
        [sys.executable, "-c", code, str(report), json.dumps(args)],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, set(json.loads(report.read_text()))


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def complete(words: str) -> dict[str, str]:
    """The environment for bash completion of ``words`` (the last one being completed)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    return {"_FLEET_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}


# --- nothing heavy before a command runs ------------------------------------------------------


@pytest.mark.parametrize("args", [("--version",), ("--help",), ()], ids=["version", "help", "bare"])
def test_root_loads_no_command_and_no_heavy_library(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Not even rich: the root help is plain text, its command list comes from COMMANDS."""
    done, loaded = imported(tmp_path, *args)
    assert done.returncode == (2 if not args else 0), done.stderr
    assert not top_level(loaded) & {*HEAVY, "rich"}, loaded
    assert loaded <= {"fleet.cli._common"}, loaded
    if args != ("--version",):
        shown = done.stdout
        for name, (_, summary) in COMMANDS.items():
            assert name in shown and summary.split()[0] in shown, name


@pytest.mark.parametrize(
    "args",
    [
        *[(name, "--help") for name in COMMANDS],
        ("cloud", "add", "--help"),
        ("cloud", "status", "--help"),
        ("device", "show", "--help"),
        ("audit", "verify", "--help"),
        ("db", "upgrade", "--help"),
    ],
    ids=" ".join,
)
def test_help_loads_no_heavy_library(tmp_path: Path, args: tuple[str, ...]) -> None:
    done, loaded = imported(tmp_path, *args)
    assert done.returncode == 0 and "Usage: fleet" in done.stdout, done.stderr
    assert not top_level(loaded) & set(HEAVY), loaded
    # only the command's own module (and the one whose options `audit export` shares)
    used = {COMMANDS[args[0]][0].partition(":")[0], "fleet.cli.export_cmds"}
    others = {target.partition(":")[0] for target, _ in COMMANDS.values()} - used
    assert not loaded & others, loaded


def test_show_completion_loads_no_heavy_library(tmp_path: Path) -> None:
    done, loaded = imported(tmp_path, "--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert done.returncode == 0 and "_FLEET_COMPLETE" in done.stdout, done.stderr
    assert not top_level(loaded) & {*HEAVY, "rich"}, loaded


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("fleet ", set(COMMANDS)),
        ("fleet dev", {"device"}),
        ("fleet device ", {"add", "list", "show", "update", "decommission"}),
        ("fleet device li", {"list"}),
        ("fleet cloud add --ty", {"--type"}),
    ],
)
def test_completion_is_lazy(tmp_path: Path, words: str, expected: set[str]) -> None:
    """Completing the root's commands loads none of them; completing in a group loads only
    that group's module, and no heavy library."""
    done, loaded = imported(tmp_path, env=complete(words))
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) >= expected
    assert not top_level(loaded) & {*HEAVY, "rich"}, loaded
    if len(words.split()) == 1 or words == "fleet dev":
        assert loaded <= {"fleet.cli._common"}, loaded


# --- registry reads --------------------------------------------------------------------------


@pytest.fixture
def small_registry(ready_sqlite_ws: Workspace, tmp_path: Path) -> dict[str, str]:
    """The environment of a child fleet on a SQLite workspace with two devices."""
    for device_id in ("pump-0001", "pump-0002"):
        devices.add_device(
            ready_sqlite_ws,
            device_id,
            model="p200",
            out_dir=tmp_path / "out",
            passphrase=PASSPHRASE,
        )
    ready_sqlite_ws.close()
    return {"FLEET_HOME": str(ready_sqlite_ws.home)}


READS = [  # (command, libraries it must not load)
    (("device", "show", "pump-0001"), (*NETWORK, "alembic", "cryptography")),
    (("device", "show", "pump-0001", "--json"), (*NETWORK, "alembic", "cryptography", "rich")),
    (("device", "list"), (*NETWORK, "alembic", "cryptography")),
    (("device", "list", "--json"), (*NETWORK, "alembic", "cryptography", "rich")),
    (("cert", "list", "--json"), (*NETWORK, "alembic")),
    (("audit", "log", "--json"), (*NETWORK, "alembic")),
]


@pytest.mark.parametrize(("args", "absent"), READS, ids=[" ".join(args) for args, _ in READS])
def test_registry_reads_load_no_network_library(
    tmp_path: Path, small_registry: dict[str, str], args: tuple[str, ...], absent: tuple[str, ...]
) -> None:
    """Reads at the current schema need no Alembic (the schema check reads the revision
    itself); no command that does not talk to a cloud loads an HTTP client."""
    done, loaded = imported(tmp_path, *args, env=small_registry)
    assert done.returncode == 0 and "pump-0001" in done.stdout, done.stderr
    assert not top_level(loaded) & set(absent), loaded


def test_device_show_loads_no_table_class_and_no_rich(
    tmp_path: Path, small_registry: dict[str, str]
) -> None:
    """``device show`` reads with plain queries (fleet/device_show.py) and prints plain text:
    creating the SQLModel table classes and importing rich were most of its start-up beyond
    ``import sqlmodel, typer`` (bench/startup.py)."""
    for args in (("device", "show", "pump-0001"), ("device", "show", "pump-0001", "--json")):
        done, loaded = imported(tmp_path, *args, env=small_registry, watch=("fleet",))
        assert done.returncode == 0 and "pump-0001" in done.stdout, done.stderr
        assert "fleet.device_show" in loaded
        models = {m for m in loaded if m.endswith(".models")}
        assert not models and "rich" not in top_level(loaded), loaded


# --- the root's command table ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_table_summary_is_the_command_help(name: str) -> None:
    """The one-line help the root shows without importing a command is the first paragraph of
    that command's own help: change one, and this says to change the other."""
    target, summary = COMMANDS[name]
    command = load_command(name, target)
    first_paragraph = (command.help or "").split("\n\n")[0]
    assert summary == " ".join(first_paragraph.split())
