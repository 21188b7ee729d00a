"""The rollout state machine's pure decisions: phases, thresholds, and what a step does next.

Nothing here touches the database, so each rule is unit tested on its own
(tests/test_rollout.py); :mod:`fleet.firmware.rollout.step` applies them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise

from fleet.errors import InvalidInput
from fleet.statuses import TERMINAL_ROLLOUT_DEVICE_STATES, RolloutDeviceState, RolloutState

FAILURE_STATES = (RolloutDeviceState.FAILED, RolloutDeviceState.TIMED_OUT)
EXECUTED_STATES = (RolloutDeviceState.SUCCEEDED, *FAILURE_STATES)
OPEN_STATES = (
    RolloutDeviceState.PENDING,
    RolloutDeviceState.NOTIFIED,
    RolloutDeviceState.IN_PROGRESS,
)

# (state, event, next state): the table docs/firmware.md draws, and the tests walk.
DEVICE_TRANSITIONS: tuple[tuple[str, str, str], ...] = (
    ("(selected)", "model not among the image's models", "skipped"),
    ("(selected)", "pinned to another version", "skipped"),
    ("(selected)", "reported version below the image's requires-min", "skipped"),
    ("(selected)", "reported version equals the target", "already-installed"),
    ("(selected)", "otherwise", "pending"),
    (
        "pending",
        "its phase is current, within --max-per-minute: target set, job queued",
        "notified",
    ),
    ("notified", "device reports update state in-progress", "in-progress"),
    ("notified, in-progress", "reported version equals the target", "succeeded"),
    ("notified, in-progress", "device reports update state failed", "failed"),
    ("notified, in-progress", "--timeout passed since notified", "timed-out"),
    ("pending, notified, in-progress", "rollout aborted (target cleared)", "cancelled"),
    ("failed, timed-out", "rollout retry-failed", "pending"),
)


def parse_percent(text: str, *, what: str) -> float:
    """``"5%"`` or ``"5"`` as 5.0 (0..100), else :class:`InvalidInput`."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{what} must be a percentage such as 5%, got {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise InvalidInput(f"{what} must be between 0% and 100%, got {text!r}")
    return value


def parse_phases(text: str) -> list[float]:
    """``"1%,10%,50%,100%"``: cumulative percentages, strictly increasing, ending at 100."""
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    if not items:
        raise InvalidInput("--phases needs at least one percentage, e.g. 10%,100%")
    phases = [parse_percent(item, what="--phases") for item in items]
    if any(p <= 0 for p in phases):
        raise InvalidInput("--phases percentages must be above 0%")
    if any(b <= a for a, b in pairwise(phases)):
        raise InvalidInput("--phases must increase, e.g. 1%,10%,50%,100%")
    if phases[-1] != 100:
        raise InvalidInput("--phases must end at 100%")
    if len(phases) > 20:
        raise InvalidInput("--phases takes at most 20 phases")
    return phases


def phase_cutoffs(total: int, phases: Sequence[float]) -> list[int]:
    """How many devices (by rank, cumulative) phases 0..n-1 hold out of ``total``: at least
    one device per phase while devices last, the last phase all of them."""
    cutoffs: list[int] = []
    previous = 0
    for index, percent in enumerate(phases):
        wanted = total if index == len(phases) - 1 else math.ceil(total * percent / 100)
        count = min(total, max(wanted, previous + 1 if previous < total else previous))
        cutoffs.append(count)
        previous = count
    return cutoffs


@dataclass(frozen=True)
class Thresholds:
    """A rollout's stop rule: pause when, after ``min_executed`` executed devices, failed +
    timed-out over executed exceeds ``max_failure_rate`` (0..1)."""

    max_failure_rate: float
    min_executed: int


def failure_rate(counts: Mapping[str, int]) -> tuple[int, int, float]:
    """(executed, failures, failures / executed) of per-state device counts."""
    executed = sum(counts.get(s, 0) for s in EXECUTED_STATES)
    failures = sum(counts.get(s, 0) for s in FAILURE_STATES)
    return executed, failures, (failures / executed if executed else 0.0)


def too_many_failures(counts: Mapping[str, int], rule: Thresholds) -> str | None:
    """The pause reason when the failure rate exceeds the threshold, else None."""
    executed, failures, rate = failure_rate(counts)
    if executed < max(1, rule.min_executed) or rate <= rule.max_failure_rate:
        return None
    return (
        f"failure rate {rate:.1%} ({failures} of {executed} executed) exceeds "
        f"--max-failure-rate {rule.max_failure_rate:.1%}"
    )


class Next(StrEnum):
    """What a step does with a rollout once the devices' states are read."""

    PAUSE = "pause"
    ADVANCE = "advance"
    COMPLETE = "complete"
    NOTIFY = "notify"  # stay in the phase, notify its pending devices


def decide(
    counts: Mapping[str, int],
    open_in_phase: int,
    current_phase: int,
    phase_count: int,
    rule: Thresholds,
) -> tuple[Next, str | None]:
    """The next move of a running rollout: ``counts`` are its devices per state (all
    phases), ``open_in_phase`` how many of the devices in phases up to the current one are
    not terminal yet. Pausing comes first; a phase whose devices are all terminal advances
    (the last one completes)."""
    reason = too_many_failures(counts, rule)
    if reason is not None:
        return Next.PAUSE, reason
    if open_in_phase:
        return Next.NOTIFY, None
    if current_phase + 1 >= phase_count:
        return Next.COMPLETE, None
    return Next.ADVANCE, None


def is_terminal(state: str) -> bool:
    """Whether a device's state in a rollout is final (until retry-failed)."""
    return state in TERMINAL_ROLLOUT_DEVICE_STATES


# rollout-level transitions: (from states, command, to state)
ROLLOUT_TRANSITIONS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    ((RolloutState.CREATED,), "start", RolloutState.RUNNING),
    ((RolloutState.RUNNING,), "pause", RolloutState.PAUSED),
    ((RolloutState.PAUSED,), "resume", RolloutState.RUNNING),
    (
        (RolloutState.CREATED, RolloutState.RUNNING, RolloutState.PAUSED),
        "abort",
        RolloutState.ABORTED,
    ),
    ((RolloutState.RUNNING,), "step: last phase done", RolloutState.COMPLETED),
    ((RolloutState.RUNNING,), "step: failure rate above threshold", RolloutState.PAUSED),
    ((RolloutState.COMPLETED,), "retry-failed (with devices to retry)", RolloutState.RUNNING),
)


def allowed(state: str, command: str) -> bool:
    """Whether ``command`` applies to a rollout in ``state``."""
    return any(state in froms and cmd == command for froms, cmd, _ in ROLLOUT_TRANSITIONS)
