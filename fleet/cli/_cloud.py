"""What the ``fleet cloud ...`` command modules share: the ``--json`` flag, the cloud-name
argument, the progress bar of the commands that push or read a cloud."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from fleet.cli import _complete

if TYPE_CHECKING:
    from fleet.cloud.push import ProgressFn

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
NameArg = Annotated[
    str,
    typer.Argument(
        help="The cloud's name (see `fleet cloud list`).", autocompletion=_complete.cloud_names
    ),
]


@contextmanager
def progress_bar(label: str) -> Iterator[ProgressFn | None]:
    """A progress bar on stderr when it is a terminal; otherwise no callback at all."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
