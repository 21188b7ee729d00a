"""Lists that scale, printed one way by every list command (``device list``, ``cert list``,
``audit log``, ``cloud status``).

The library lists in key order from a keyset cursor (``after``); the command asks for one row
more than it shows, so it knows whether a next page exists without counting.

- table: the first 100 rows (``--limit N``, ``--all``), then a line on stderr saying how many
  more there are and the ``--after`` that shows them;
- ``--json``: a JSON array of every row, written as rows are read (memory stays flat); with
  ``--limit`` an object ``{"items": [...], "next_after": CURSOR | null}``;
- ``--jsonl``: one object per line, streamed (the form to pipe into other tools); with
  ``--limit`` the next cursor goes to stderr as ``next: --after CURSOR``;
- ``--count``: the number of matching rows, without listing them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import typer

from fleet.cli._common import (
    json_line,
    message,
    print_json,
    print_json_array,
    write_json_texts,
)
from fleet.errors import InvalidInput

TABLE_LIMIT = 100
# A table's "N more" line counts at most this far (a count may stop at MORE_CAP + 1): counting
# the rest of a million-row range would cost more than the page itself.
MORE_CAP = 100_000

Row = TypeVar("Row")

LimitOption = Annotated[
    int | None,
    typer.Option(
        "--limit",
        min=1,
        metavar="N",
        help=f"At most N rows (a table shows {TABLE_LIMIT} unless told).",
        show_default=False,
    ),
]
AfterOption = Annotated[
    str | None,
    typer.Option(
        "--after",
        metavar="CURSOR",
        help="Start after this key (the next_after of the previous page).",
        show_default=False,
    ),
]
AllOption = Annotated[bool, typer.Option("--all", help="Show every row in the table.")]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print a JSON array (streamed) on stdout.")
]
JsonlOption = Annotated[
    bool, typer.Option("--jsonl", help="Print one JSON object per line (streamed) on stdout.")
]
CountOption = Annotated[
    bool, typer.Option("--count", help="Print how many rows match, without listing them.")
]


@dataclass(frozen=True)
class ListOptions:
    """What the user asked of a list: page size, cursor and output form."""

    limit: int | None = None
    after: str | None = None
    all: bool = False
    json: bool = False
    jsonl: bool = False
    count: bool = False

    def __post_init__(self) -> None:
        if self.json and self.jsonl:
            raise InvalidInput("--json and --jsonl exclude each other")
        if self.all and self.limit is not None:
            raise InvalidInput("--all and --limit exclude each other")

    @property
    def machine(self) -> bool:
        """Machine output (JSON or JSONL) rather than a table."""
        return self.json or self.jsonl

    @property
    def page_size(self) -> int | None:
        """How many rows to show: ``None`` for all of them."""
        if self.limit is not None:
            return self.limit
        return None if self.machine or self.all else TABLE_LIMIT


@dataclass(frozen=True)
class Listing(Generic[Row]):
    """How a command lists its rows.

    ``fetch(limit)`` yields rows in key order after the user's cursor (``None``: all);
    ``cursor(row)`` is the key ``--after`` takes; ``to_dict`` is the row's JSON shape;
    ``count()`` counts every match, ``count_after(cursor)`` those after a key; ``noun`` is
    the plural shown in messages ("devices"). ``fetch_json(limit)``, where given, yields the
    rows' JSON texts (each exactly ``json_line(to_dict(row))``, written faster): a whole
    ``--json`` or ``--jsonl`` list prints them.
    """

    fetch: Callable[[int | None], Iterable[Row]]
    cursor: Callable[[Row], str]
    to_dict: Callable[[Row], dict[str, Any]]
    count: Callable[[], int]
    count_after: Callable[[str], int]
    noun: str
    fetch_json: Callable[[int | None], Iterable[str]] | None = None


def emit(
    listing: Listing[Row], options: ListOptions, table_of: Callable[[list[Row]], None]
) -> None:
    """Print ``listing`` as ``options`` ask; ``table_of(rows)`` renders a page as a table."""
    if options.count:
        count = listing.count()
        if options.machine:
            print_json({"count": count})
        else:
            sys.stdout.write(f"{count}\n")
        return
    size = options.page_size
    if size is None and options.machine and listing.fetch_json is not None:
        write_json_texts(listing.fetch_json(None), lines=options.jsonl)
        return
    rows = iter(listing.fetch(None if size is None else size + 1))
    page = _take(rows, size)
    if options.json and options.limit is None:
        print_json_array(listing.to_dict(row) for row in page)
        return
    count_shown = 0
    if options.machine:
        shown = _write_machine(page, listing, options)
    else:
        shown_rows = list(page)
        table_of(shown_rows)
        count_shown = len(shown_rows)
        shown = listing.cursor(shown_rows[-1]) if shown_rows else None
    more = shown is not None and next(rows, None) is not None
    if options.json:
        sys.stdout.write(f'], "next_after": {json.dumps(shown if more else None)}}}\n')
    if more and options.machine:
        message(f"next: --after {shown}")
    elif more:
        rest = listing.count_after(str(shown))
        rest_text = f"more than {MORE_CAP:,}" if rest > MORE_CAP else f"{rest}"
        message(
            f"{count_shown} {listing.noun} shown, {rest_text} more: `--after {shown}` shows "
            "the next page, `--all` shows every one"
        )
    elif not options.machine:
        message(f"{count_shown} {listing.noun}")


def _take(rows: Iterator[Row], size: int | None) -> Iterator[Row]:
    """The first ``size`` rows (all of them for ``None``), leaving the rest in ``rows``."""
    if size is None:
        yield from rows
        return
    for _ in range(size):
        row = next(rows, None)
        if row is None:
            return
        yield row


def _write_machine(page: Iterator[Row], listing: Listing[Row], options: ListOptions) -> str | None:
    """Stream a page as JSONL, or as the items of ``{"items": [...]``; the last row's cursor."""
    out = sys.stdout
    last: str | None = None
    if options.json:
        out.write('{"items": [')
    separator = "\n" if options.jsonl else "\n  "
    for index, row in enumerate(page):
        text = json_line(listing.to_dict(row))
        if options.jsonl:
            out.write(text + "\n")
        else:
            out.write(("" if index == 0 else ",") + separator + text)
        last = listing.cursor(row)
    if options.json and last is not None:
        out.write("\n")
    return last
