"""A simulated clock for :mod:`fleet.clock`: time stands still until the test moves it."""

from __future__ import annotations

from datetime import datetime, timedelta


class FrozenClock:
    """What ``fleet.clock.now()`` returns while installed (see the ``fleet_clock`` fixture)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        """Move time forward by ``timedelta(**delta)``; returns the new moment."""
        self.now += timedelta(**delta)
        return self.now
