"""Shared CLI plumbing: the workspace from the root options, output, errors, prompts.

Human output (rich tables) goes to stdout; ``--json`` puts stable JSON on stdout; messages
and errors go to stderr, so ``fleet ... --json | jq`` never sees anything but JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import typer

from fleet.errors import AuthError
from fleet.workspace import Workspace, passphrase_from_env, read_passphrase_file

if TYPE_CHECKING:
    from rich.table import Table

# Piped output is for grep and scripts: never fold a fingerprint across lines there.
PIPED_WIDTH = 400


def render(renderable: Any) -> None:
    """Print a rich table (or other renderable) on stdout."""
    # rich loads only when something is rendered: help and JSON output never need it.
    from rich.console import Console

    width = None if sys.stdout.isatty() else PIPED_WIDTH
    Console(highlight=False, width=width).print(renderable)


def fail(message: str, code: int = 1) -> None:
    """Print ``error: message`` on stderr (one line) and exit with ``code``."""
    # Print plainly: rich would wrap long messages over several lines.
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise typer.Exit(code)


def workspace(ctx: typer.Context) -> Workspace:
    """The workspace the root options selected."""
    root = ctx.find_root()
    obj = root.obj
    assert isinstance(obj, Workspace)
    return obj


# The root's --passphrase-file for this run (set by its callback; None when not given).
passphrase_file: Path | None = None


def ask_passphrase(*, confirm: bool = False) -> str:
    """The file ``--passphrase-file`` names, else ``$FLEET_CA_PASSPHRASE``, else the file
    ``$FLEET_CA_PASSPHRASE_FILE`` names, else a hidden prompt on a terminal, else a clear
    error."""
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    env = passphrase_from_env()
    if env:
        return env
    if not sys.stdin.isatty():
        raise AuthError(
            "the CA passphrase is needed: set FLEET_CA_PASSPHRASE or FLEET_CA_PASSPHRASE_FILE, "
            "or give --passphrase-file (no terminal to prompt on)"
        )
    value: str = typer.prompt(
        "CA passphrase", hide_input=True, confirmation_prompt=confirm, err=True
    )
    return value


def print_json(value: Any) -> None:
    """Pretty JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def json_line(value: Any) -> str:
    """One value as compact JSON text, UTF-8 kept (a list's row, a JSON Lines line): orjson,
    in C, several times the standard encoder's speed, for lists print a million of these."""
    return orjson.dumps(value).decode("utf-8")


def print_json_array(items: Iterable[Any]) -> None:
    """A JSON array on stdout, streamed item by item (lists can hold millions of devices)."""
    out = sys.stdout
    first = True
    out.write("[")
    for item in items:
        out.write("\n  " if first else ",\n  ")
        out.write(json_line(item))
        first = False
    out.write("\n]\n" if not first else "]\n")


def message(text: str) -> None:
    """A status line on stderr, printed as is (no markup, no wrapping)."""
    print(text, file=sys.stderr)


def table(*columns: str, title: str | None = None) -> Table:
    """A rich table with fleet's look."""
    from rich.table import Table

    result = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        result.add_column(column, overflow="fold")
    return result


def short_labels(labels: dict[str, str]) -> str:
    """``k=v, k=v`` for table cells."""
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
