"""How fast and how hard the push engine goes: the rate limiter, backoff and the run policy.

Waiting is injectable (:class:`Timer`: a monotonic clock and sleep), so tests run the
schedules instantly; the wall-clock moments recorded in the registry come from
:func:`fleet.clock.now`, the one clock.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from fleet.errors import InvalidInput


class Timer(Protocol):
    """How the engine measures intervals and waits (tests inject a fake one)."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemTimer:
    """The real monotonic clock and sleep."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (nothing when not positive)."""
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_TIMER = SystemTimer()


class RateLimiter:
    """Spaces request starts ``interval`` apart on a schedule, across threads.

    Permits are granted only at the moment they are used, on a schedule spaced 2% wider
    than ``1/rate`` (``interval``): network jitter (the bench measured up to ~20 ms between
    a grant and its arrival at a loaded loopback server) cannot push the rate the platform
    sees over its quota. (Handing out future slots in advance would let threads that wake
    late from a stall, a GC pause or a long commit, fire their slots together: the bench
    measured 216 requests in one second at 200/s.)

    The schedule advances from the slot that was due, not from the moment the waiting
    thread got going again: a grant that comes up to ``TOLERANCE`` late (a sleep overshoots,
    the woken thread waits for the GIL while another thread commits) does not move the
    slots after it, so such delays do not add up into a lower rate; a later one restarts
    the schedule from the grant, ``TOLERANCE`` included. Any window of length T therefore
    holds at most ``floor((T + tolerance) / interval) + 1`` starts, which for T of 50 ms or
    more is at most ``floor(T * rate) + 1`` (never above the limit); a shorter window may
    hold one more. One thread at a time waits for the next slot; the others queue on a
    lock rather than all waking at every slot to find it taken. ``rate=None`` means
    unlimited.
    """

    SAFETY = 1.02
    TOLERANCE = 0.001  # seconds; at most one interval

    def __init__(self, rate: float | None, timer: Timer = SYSTEM_TIMER) -> None:
        if rate is not None and rate <= 0:
            raise InvalidInput("rate must be positive")
        self.interval = 0.0 if rate is None else self.SAFETY / rate
        self.tolerance = min(self.TOLERANCE, self.interval)
        self.timer = timer
        # Held by the one thread waiting for the next slot; it alone reads and moves _due.
        self._turn = threading.Lock()
        self._due: float | None = None  # when the next permit may be granted

    def acquire(self) -> float:
        """Wait for a permit; returns the (monotonic) time it was granted."""
        if self.interval == 0.0:
            return self.timer.monotonic()
        with self._turn:
            while True:
                now = self.timer.monotonic()
                due = now if self._due is None else self._due
                # 1 ns of slack: a sleep of exactly (due - now) may land one float ulp short
                if now >= due - 1e-9:
                    self._due = max(due, now - self.tolerance) + self.interval
                    return now
                self.timer.sleep(due - now)


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempts-1))] (AWS architecture blog)."""
    ceiling = min(cap, base * (2 ** max(0, attempts - 1)))
    return rng.uniform(0.0, ceiling)


@dataclass(frozen=True)
class PushPolicy:
    """How hard one push run tries.

    ``max_wait``: how long a run keeps waiting for jobs scheduled to retry later (jobs due
    after that stay queued for the next ``sync``). ``max_attempts``: None retries transient
    failures forever (across runs); a number marks the job failed after that many attempts.
    ``retry_after_cap`` bounds a server's ``Retry-After``.
    """

    base_delay: float = 0.5
    max_delay: float = 60.0
    max_wait: float = 30.0
    max_attempts: int | None = None
    retry_after_cap: float = 300.0
    commit_every: int = 100

    def retry_delay(self, attempts: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds before the next attempt: the server's ``Retry-After`` (capped), else
        backoff with full jitter."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap)
        return backoff_delay(attempts, self.base_delay, self.max_delay, rng)
