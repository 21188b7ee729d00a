"""How help and usage errors read: what typer's defaults get wrong for fleet.

- A docstring's paragraphs are wrapped by the terminal, not also at the source's line breaks
  (typer's rich help keeps both): :func:`reflow`.
- A flag shows no placeholder (typer prints ``<bool>``) and a repeatable option its element's
  (``<str>``, not ``<list[str]>``): :func:`tidy_parameters`.
- A usage error is one line on stderr, as README promises, not a box: :func:`usage_error_line`.

Light on purpose: loaded with the root, it imports nothing but typer's click.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable

from typer._click.core import Command, Context, Parameter
from typer._click.exceptions import ClickException, UsageError
from typer.core import TyperGroup, TyperOption

_LIST_TYPE = re.compile(r"list\[(.+)\]")


def reflow(text: str) -> str:
    """``text`` with each paragraph on one line, except indented ones (examples), which keep
    their lines."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        p if any(line.startswith((" ", "\b")) for line in p.splitlines()) else " ".join(p.split())
        for p in paragraphs
    )


def tidy_parameters(params: Iterable[Parameter]) -> None:
    """Placeholders: none for a flag, the element's for a repeatable option."""
    for param in params:
        if not isinstance(param, TyperOption) or param.metavar is not None:
            continue
        if param.is_flag:
            param.metavar = ""
        elif param.multiple:
            bare = param.bare_type()
            match = _LIST_TYPE.fullmatch(bare)
            param.metavar = f"<{match.group(1) if match else bare}>"


def _tidy_help_option(command: Command) -> None:
    """``--help`` is made on demand, outside ``params``: tidy it when it is made."""
    make = command.get_help_option

    def get_help_option(ctx: Context) -> TyperOption | None:
        option = make(ctx)
        if option is not None:
            tidy_parameters([option])
        return option

    command.get_help_option = get_help_option  # type: ignore[method-assign]


def tidy(command: Command) -> Command:
    """``command`` (and its subcommands) with reflowed help and tidy placeholders."""
    if command.help:
        command.help = reflow(command.help)
    tidy_parameters(command.params)
    _tidy_help_option(command)
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            tidy(sub)
    return command


def usage_error_line(exc: ClickException, words: list[str]) -> str:
    """``error: MESSAGE (see 'fleet CMD --help')``: one line, whatever click's message.
    ``words`` are the command line's (after ``fleet``), for when click did not say which
    command failed."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    ctx = exc.ctx if isinstance(exc, UsageError) else None
    if ctx is not None:
        path = ctx.command_path
    else:  # the group and command named: fleet's commands are at most two deep
        named: list[str] = []
        for word in words:
            if word.startswith("-") or len(named) == 2:
                break
            named.append(word)
        path = " ".join(["fleet", *named])
    return f"error: {text} (see '{path} --help')"
