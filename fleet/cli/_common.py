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


def write_json_texts(texts: Iterable[str], *, lines: bool = False) -> None:
    """Rows already rendered as compact JSON texts on stdout, streamed: as the items of a
    JSON array laid out as :func:`print_json_array` lays them out, or (``lines``) as JSON
    Lines. Written a few thousand at a time: one write per row costs more than the row."""
    out = sys.stdout
    chunk: list[str] = []
    separator = "\n" if lines else ",\n  "
    first = True
    if not lines:
        out.write("[")
    for text in texts:
        chunk.append(text)
        if len(chunk) == 2000:
            out.write(("" if lines else "\n  " if first else separator) + separator.join(chunk))
            if lines:
                out.write("\n")
            chunk, first = [], False
    if chunk:
        out.write(("" if lines else "\n  " if first else separator) + separator.join(chunk))
        if lines:
            out.write("\n")
        first = False
    if not lines:
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


def print_fields(title: str, fields: Iterable[tuple[str, str]]) -> None:
    """A title, then ``name  value`` lines with the values aligned: a record's key/value
    view in plain text (no rich: ``device show`` starts faster without it)."""
    rows = [(name, _one_line(value)) for name, value in fields]
    width = max((len(name) for name, _ in rows), default=0)
    lines = [title, *(f"  {name.ljust(width)}  {value}".rstrip() for name, value in rows)]
    sys.stdout.write("\n".join(lines) + "\n")


def print_columns(title: str, headers: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
    """A title, then a plain-text table: a header line and one line per row, each column
    as wide as its widest cell; ``(none)`` under the header when there are no rows."""
    cells = [headers, *(tuple(_one_line(cell) for cell in row) for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [title]
    for row in cells:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    if len(cells) == 1:
        lines.append("  (none)")
    sys.stdout.write("\n".join(lines) + "\n")


def _one_line(text: str) -> str:
    """A cell's text on one line: control characters (a newline in a stored value) shown
    escaped, so a value cannot fake further lines of the view."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def short_labels(labels: dict[str, str]) -> str:
    """``k=v, k=v`` for table cells."""
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
