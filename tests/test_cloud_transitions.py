"""The push engine's decisions (fleet.cloud.transitions), without a database or a network:
what a job and its registration become after each kind of outcome."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from fleet.cloud.pacing import PushPolicy, backoff_delay
from fleet.cloud.transitions import (
    ERROR_MAX,
    Attempt,
    JobRow,
    Outcome,
    OutcomeKind,
    Transition,
    short_error,
    transition,
)
from fleet.statuses import JobAction, JobState, RegistrationStatus

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REGISTER = Attempt("plant", "pump-1", JobAction.REGISTER, "0a1b")
DEREGISTER = Attempt("plant", "pump-1", JobAction.DEREGISTER, "0a1b")
OPEN = JobRow(JobState.PENDING, 2)
POLICY = PushPolicy(base_delay=1.0, max_delay=60.0, retry_after_cap=300.0)


def decide(
    job: JobRow, attempt: Attempt, outcome: Outcome, policy: PushPolicy = POLICY, seed: int = 7
) -> Transition:
    return transition(job, attempt, outcome, policy=policy, rng=random.Random(seed), now=NOW)


def test_registered() -> None:
    step = decide(OPEN, REGISTER, Outcome(OutcomeKind.DONE, remote={"thing": "pump-1"}))
    assert step.job == {
        "state": JobState.DONE,
        "attempts": 3,
        "last_error": None,
        "next_attempt_at": None,
    }
    assert step.registration == {
        "status": RegistrationStatus.REGISTERED,
        "remote": {"thing": "pump-1"},
        "certificate_serial": "0a1b",
        "attempts": 3,
        "last_error": None,
    }
    assert step.event == (
        "cloud.register",
        {"cloud": "plant", "certificate_serial": "0a1b", "attempts": 3},
    )
    assert (step.counts_as, step.failure) == (JobState.DONE, None)


def test_deregistered_keeps_the_remote_ids() -> None:
    step = decide(JobRow(JobState.RETRY, 0), DEREGISTER, Outcome(OutcomeKind.DONE))
    assert step.registration == {
        "status": RegistrationStatus.DEREGISTERED,
        "attempts": 1,
        "last_error": None,
    }
    assert step.event is not None and step.event[0] == "cloud.deregister"
    assert step.counts_as == JobState.DONE


def test_transient_failure_retries_after_backoff() -> None:
    step = decide(OPEN, REGISTER, Outcome(OutcomeKind.TRANSIENT, error="HTTP 503"))
    delay = backoff_delay(3, 1.0, 60.0, random.Random(7))  # attempt 3: ceiling 4 s
    assert step.job == {
        "state": JobState.RETRY,
        "attempts": 3,
        "last_error": "HTTP 503",
        "next_attempt_at": NOW + timedelta(seconds=delay),
    }
    # The registration keeps its status (pending, or registered with an older certificate).
    assert step.registration == {"attempts": 3, "last_error": "HTTP 503"}
    assert (step.event, step.counts_as) == (None, None)


@pytest.mark.parametrize(("retry_after", "expected"), [(7.0, 7.0), (900.0, 300.0)])
def test_transient_failure_honours_retry_after_within_the_cap(
    retry_after: float, expected: float
) -> None:
    outcome = Outcome(OutcomeKind.TRANSIENT, error="429", retry_after=retry_after)
    step = decide(OPEN, REGISTER, outcome)
    assert step.job is not None
    assert step.job["next_attempt_at"] == NOW + timedelta(seconds=expected)


def test_transient_failure_gives_up_at_max_attempts() -> None:
    policy = PushPolicy(max_attempts=3)
    outcome = Outcome(OutcomeKind.TRANSIENT, error="timed out")
    step = decide(OPEN, REGISTER, outcome, policy)
    assert step.job is not None and step.job["state"] == JobState.FAILED
    assert step.job["last_error"] == "gave up after 3 attempts: timed out"
    assert step.counts_as == JobState.FAILED
    # One attempt earlier it still retries.
    assert decide(JobRow(JobState.RETRY, 1), REGISTER, outcome, policy).counts_as is None


def test_permanent_failure_fails_job_and_registration() -> None:
    step = decide(OPEN, DEREGISTER, Outcome(OutcomeKind.PERMANENT, error="HTTP 400 Bad Request"))
    assert step.job == {
        "state": JobState.FAILED,
        "attempts": 3,
        "last_error": "HTTP 400 Bad Request",
        "next_attempt_at": None,
    }
    assert step.registration == {
        "status": RegistrationStatus.FAILED,
        "attempts": 3,
        "last_error": "deregister: HTTP 400 Bad Request",
    }
    failure = {
        "device_id": "pump-1",
        "action": "deregister",
        "attempts": 3,
        "error": "HTTP 400 Bad Request",
    }
    assert step.failure == failure
    assert step.event == (
        "cloud.failed",
        {"cloud": "plant", "action": "deregister", "attempts": 3, "error": "HTTP 400 Bad Request"},
    )
    assert step.counts_as == JobState.FAILED


def test_superseded_registration_that_succeeded_is_recorded() -> None:
    """A deregistration superseded the job while it was in flight: the success still counts
    for the registration (the deregistration needs the remote ids), not for the job."""
    closed = JobRow(JobState.FAILED, 2)
    step = decide(closed, REGISTER, Outcome(OutcomeKind.DONE, remote={"id": "r-1"}))
    assert step.job is None and step.counts_as is None
    assert step.registration == {
        "status": RegistrationStatus.REGISTERED,
        "remote": {"id": "r-1"},
        "certificate_serial": "0a1b",
    }
    assert step.event == (
        "cloud.register",
        {"cloud": "plant", "certificate_serial": "0a1b", "attempts": 2},
    )


@pytest.mark.parametrize(
    ("attempt", "outcome"),
    [
        (REGISTER, Outcome(OutcomeKind.PERMANENT, error="conflict")),
        (REGISTER, Outcome(OutcomeKind.TRANSIENT, error="503")),
        (DEREGISTER, Outcome(OutcomeKind.DONE)),
    ],
)
def test_superseded_job_otherwise_changes_nothing(attempt: Attempt, outcome: Outcome) -> None:
    assert decide(JobRow(JobState.DONE, 1), attempt, outcome) == Transition()


def test_short_error_is_one_bounded_line() -> None:
    assert short_error("a\n  b\tc") == "a b c"
    long = short_error("x" * 1000)
    assert len(long) == ERROR_MAX and long.endswith("...")
