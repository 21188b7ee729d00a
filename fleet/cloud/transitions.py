"""Where a job and a registration go next after one push attempt: pure decisions.

The push engine (:mod:`fleet.cloud.push`) calls :func:`transition` for every finished
attempt and writes what it returns: the job's new columns, the registration's, the audit
event and how the run's report counts it. Nothing here touches the database or the network,
so every rule (retry or give up, success after a superseding deregistration...) is unit
tested on its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from fleet.cloud.pacing import PushPolicy
from fleet.statuses import OPEN_JOB_STATES, JobAction, JobState, RegistrationStatus

ERROR_MAX = 500


def short_error(message: str) -> str:
    """An error message on one line, at most ``ERROR_MAX`` characters (as stored and shown)."""
    text = " ".join(message.split())
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 3] + "..."


class OutcomeKind(StrEnum):
    """What one backend call came to."""

    DONE = "done"
    TRANSIENT = "transient"  # worth retrying later
    PERMANENT = "permanent"  # the job fails


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt: its kind, the remote ids of a registration, the error."""

    kind: OutcomeKind
    remote: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    retry_after: float | None = None  # the server's hint, seconds
    unreachable: bool = False  # not attempted: the platform could not be reached at all


@dataclass(frozen=True)
class Attempt:
    """Which job was attempted, as far as deciding its next state needs."""

    cloud: str
    device_id: str
    action: JobAction
    certificate_serial: str | None  # of the certificate the backend was given


@dataclass(frozen=True)
class JobRow:
    """The job as the database holds it when the outcome is committed."""

    state: str
    attempts: int


@dataclass(frozen=True)
class Transition:
    """What to write for one outcome (``None``: leave that row alone).

    ``job`` and ``registration`` are the columns to set (the engine adds ``updated_at``);
    ``event`` is an audit action and its details, on the device; ``counts_as`` is ``done`` or
    ``failed`` when the job finished in this run, with ``failure`` for the report.
    """

    job: dict[str, Any] | None = None
    registration: dict[str, Any] | None = None
    event: tuple[str, dict[str, Any]] | None = None
    counts_as: JobState | None = None
    failure: dict[str, Any] | None = None


def transition(
    job: JobRow,
    attempt: Attempt,
    outcome: Outcome,
    *,
    policy: PushPolicy,
    rng: random.Random,
    now: datetime,
) -> Transition:
    """The next state of ``job`` and of its registration after ``outcome``.

    A job no longer open was superseded while in flight (a deregistration was queued): only
    a successful registration is recorded, so the deregistration knows the remote ids.
    Otherwise the attempt counts: done, retry later (``Retry-After`` or backoff; given up
    after ``policy.max_attempts``) or failed.
    """
    if job.state not in OPEN_JOB_STATES:
        return superseded(job, attempt, outcome)
    attempts = job.attempts + 1
    kind, error = settle(outcome, attempts, policy.max_attempts)
    if kind == OutcomeKind.DONE:
        return done(attempt, outcome, attempts)
    if kind == OutcomeKind.TRANSIENT:
        delay = policy.retry_delay(attempts, outcome.retry_after, rng)
        return retry(attempts, error, now + timedelta(seconds=delay))
    return failed(attempt, attempts, error)


def settle(outcome: Outcome, attempts: int, max_attempts: int | None) -> tuple[OutcomeKind, str]:
    """The outcome's kind and error, a transient failure turned permanent at the last
    allowed attempt."""
    if (
        outcome.kind == OutcomeKind.TRANSIENT
        and max_attempts is not None
        and attempts >= max_attempts
    ):
        return OutcomeKind.PERMANENT, short_error(
            f"gave up after {attempts} attempts: {outcome.error}"
        )
    return outcome.kind, outcome.error


def _job(
    state: JobState, attempts: int, error: str | None, next_attempt_at: datetime | None = None
) -> dict[str, Any]:
    return {
        "state": state,
        "attempts": attempts,
        "last_error": error,
        "next_attempt_at": next_attempt_at,
    }


def _registered(attempt: Attempt, outcome: Outcome) -> dict[str, Any]:
    return {
        "status": RegistrationStatus.REGISTERED,
        "remote": outcome.remote,
        "certificate_serial": attempt.certificate_serial,
    }


def _done_event(attempt: Attempt, attempts: int) -> tuple[str, dict[str, Any]]:
    details = {
        "cloud": attempt.cloud,
        "certificate_serial": attempt.certificate_serial,
        "attempts": attempts,
    }
    return f"cloud.{attempt.action}", details


def superseded(job: JobRow, attempt: Attempt, outcome: Outcome) -> Transition:
    """A job closed while its attempt was in flight: record a registration that succeeded."""
    if outcome.kind == OutcomeKind.DONE and attempt.action == JobAction.REGISTER:
        return Transition(
            registration=_registered(attempt, outcome),
            event=_done_event(attempt, job.attempts),
        )
    return Transition()


def done(attempt: Attempt, outcome: Outcome, attempts: int) -> Transition:
    """The platform did what the job asked."""
    if attempt.action == JobAction.FIRMWARE:  # the registration is not what changed
        return Transition(
            job=_job(JobState.DONE, attempts, None),
            event=("cloud.firmware", {"cloud": attempt.cloud, "attempts": attempts}),
            counts_as=JobState.DONE,
        )
    if attempt.action == JobAction.REGISTER:
        registration = _registered(attempt, outcome)
    else:
        registration = {"status": RegistrationStatus.DEREGISTERED}
    return Transition(
        job=_job(JobState.DONE, attempts, None),
        registration={**registration, "attempts": attempts, "last_error": None},
        event=_done_event(attempt, attempts),
        counts_as=JobState.DONE,
    )


def retry(attempts: int, error: str, next_attempt_at: datetime) -> Transition:
    """A transient failure: try again at ``next_attempt_at``; the registration keeps its
    status and shows the error."""
    return Transition(
        job=_job(JobState.RETRY, attempts, error, next_attempt_at),
        registration={"attempts": attempts, "last_error": error},
    )


def failed(attempt: Attempt, attempts: int, error: str) -> Transition:
    """A permanent failure: the job and the registration are failed, the others go on."""
    reported = {"action": attempt.action, "attempts": attempts, "error": error}
    if attempt.action == JobAction.FIRMWARE:  # the device stays registered
        return Transition(
            job=_job(JobState.FAILED, attempts, error),
            event=("cloud.failed", {"cloud": attempt.cloud, **reported}),
            counts_as=JobState.FAILED,
            failure={"device_id": attempt.device_id, **reported},
        )
    return Transition(
        job=_job(JobState.FAILED, attempts, error),
        registration={
            "status": RegistrationStatus.FAILED,
            "attempts": attempts,
            "last_error": short_error(f"{attempt.action}: {error}"),
        },
        event=("cloud.failed", {"cloud": attempt.cloud, **reported}),
        counts_as=JobState.FAILED,
        failure={"device_id": attempt.device_id, **reported},
    )
