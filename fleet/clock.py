"""The one clock the library reads: every moment fleet records comes from :func:`now`.

Tests move time with :func:`frozen` (or :func:`set_source`) instead of patching ``datetime``
in modules; nothing else in fleet calls ``datetime.now``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

ClockSource = Callable[[], datetime]


def system_now() -> datetime:
    """The system's time, UTC, to the microsecond."""
    return datetime.now(UTC)


_source: ClockSource = system_now


def now() -> datetime:
    """The current moment (timezone-aware UTC) as fleet sees it."""
    return _source()


def set_source(source: ClockSource) -> ClockSource:
    """Make :func:`now` call ``source``; returns the previous source (to restore it)."""
    global _source
    previous, _source = _source, source
    return previous


@contextmanager
def frozen(moment: datetime | ClockSource) -> Iterator[None]:
    """Within the block, :func:`now` returns ``moment`` (or calls it, if it is a function)."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError("the clock takes timezone-aware moments")
        fixed = moment.astimezone(UTC)
        source: ClockSource = lambda: fixed  # noqa: E731
    else:
        source = moment
    previous = set_source(source)
    try:
        yield
    finally:
        set_source(previous)
