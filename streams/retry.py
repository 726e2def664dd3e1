"""The decision after a failed attempt: a pure function of (error, attempt, policy, deadline).

Four answers: wait for a dependency that is down (without spending an
attempt), retry in place after a short wait, hand the job to the retry
topic for a longer one, or dead-letter it. ``docs/RELIABILITY.md``
("Retries and the decision") has the rules; ``tests/unit/test_retry.py``
the table.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from handlers.backoff import backoff_s
from handlers.errors import (
    DeadlineExceeded,
    Deferred,
    JobTimeout,
    PermanentError,
    RetryableError,
)
from schemas.dlq import Stage
from streams.dberrors import DbFault, classify, is_unavailable
from streams.settings import JobPolicy


@dataclass(frozen=True, slots=True)
class WaitForDependency:
    """A shared dependency is down: wait, then run the same attempt again."""

    delay_s: float
    streak: int  # consecutive waits of this job, this one included
    stage: Stage = Stage.HANDLE


@dataclass(frozen=True, slots=True)
class RetryInPlace:
    """Run the next attempt here after ``delay_s``."""

    delay_s: float
    stage: Stage = Stage.HANDLE


@dataclass(frozen=True, slots=True)
class RetryTopic:
    """Hand the job to the retry topic, due after ``delay_s``."""

    delay_s: float
    stage: Stage = Stage.HANDLE


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: dead-letter the job.

    ``reason`` is for logs and operators (it names the kind of ending);
    ``summary`` is the sentence for the people who own the job's data
    (e.g. an asset's ``error``), without the taxonomy.
    """

    reason: str
    summary: str
    stage: Stage = Stage.HANDLE


Decision = WaitForDependency | RetryInPlace | RetryTopic | DeadLetter

# Waiting out an outage: 0.5 s doubling to 10 s, half jitter.
DEPENDENCY_WAIT_BASE_S = 0.5
DEPENDENCY_WAIT_MAX_S = 10.0


def decide(
    error: BaseException,
    attempt: int,
    policy: JobPolicy,
    deadline: datetime | None = None,
    *,
    outages: int = 0,
    now: datetime | None = None,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """What to do after ``attempt`` (1-based) failed with ``error``.

    ``outages`` counts the waits for a dependency just before this one. A
    wait or retry that could only start after the job's ``deadline`` is not
    made: the job is dead-lettered at once (stage ``timeout``).
    """
    stage = stage_of(error)
    decision: Decision
    if is_outage(error):
        streak = outages + 1
        wait_s = dependency_wait_s(streak, rand)
        decision = WaitForDependency(wait_s, streak, stage)
    elif isinstance(error, Deferred):  # other work in progress: wait for it, spend nothing
        decision = WaitForDependency(error.delay_s, outages + 1, stage)
    elif isinstance(error, PermanentError):
        return DeadLetter(f"permanent error: {error}", str(error), stage)
    elif classify(error) is DbFault.DATA:
        # Postgres (or the driver) refused the job's data: the same data fails the same way.
        summary = f"the database refused the job's data: {describe(error)}"
        return DeadLetter(summary, summary, stage)
    elif attempt >= policy.max_attempts:
        summary = f"gave up after {attempt} attempts: {describe(error)}"
        return DeadLetter(summary, summary, stage)
    else:
        hinted = error.delay_s if isinstance(error, RetryableError) else None
        delay = hinted if hinted is not None else retry_backoff_s(attempt, policy, rand)
        delay = max(0.0, min(delay, policy.backoff_max_s))
        retry = RetryInPlace if delay <= policy.in_place_max_s else RetryTopic
        decision = retry(delay, stage)
    if (
        deadline is not None
        and (now or datetime.now(UTC)) + timedelta(seconds=decision.delay_s) >= deadline
    ):
        summary = f"the job's deadline passed before it could be tried again: {describe(error)}"
        return DeadLetter(f"deadline: {summary}", summary, Stage.TIMEOUT)
    return decision


def retry_backoff_s(
    attempt: int, policy: JobPolicy, rand: Callable[[], float] = random.random
) -> float:
    """The job type's backoff: full jitter under ``backoff_base_s * 2**(attempt-1)``."""
    return backoff_s(attempt, policy.backoff_base_s, policy.backoff_max_s, rand=rand)


def dependency_wait_s(streak: int, rand: Callable[[], float] = random.random) -> float:
    """The wait for a dependency that is down, the ``streak``-th in a row."""
    return backoff_s(streak, DEPENDENCY_WAIT_BASE_S, DEPENDENCY_WAIT_MAX_S, jitter=0.5, rand=rand)


def is_outage(error: BaseException) -> bool:
    """A shared dependency is down: wait for it without spending the job's attempts.

    Retrying such a job is certain to fail the same way until the dependency
    returns, so counting it would dead-letter healthy jobs during an outage.
    Postgres is the one shared dependency judged here (``streams.dberrors``:
    unreachable, shutting down, out of connections, read-only in a failover).
    """
    return is_unavailable(error)


def stage_of(error: BaseException) -> Stage:
    return Stage.TIMEOUT if isinstance(error, JobTimeout | DeadlineExceeded) else Stage.HANDLE


def describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
