"""The retry policy: a pure function of (error, attempt, policy)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from handlers.errors import DeadlineExceeded, JobTimeout, PermanentError, RetryableError
from schemas.dlq import Stage
from streams.settings import JobPolicy


@dataclass(frozen=True, slots=True)
class RetryInPlace:
    delay_s: float


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Hand the job to the retry topic, due after ``delay_s``."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: dead-letter the job.

    ``reason`` is for logs and operators (it names the kind of ending);
    ``summary`` is the sentence for the people who own the job's data
    (e.g. an asset's ``error``), without the taxonomy.
    """

    reason: str
    summary: str


Decision = RetryInPlace | RetryLater | DeadLetter


def backoff_s(attempt: int, policy: JobPolicy, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** min(attempt - 1, 62))
    return float(rand() * ceiling)


def decide(
    error: BaseException,
    attempt: int,
    policy: JobPolicy,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """What to do after ``attempt`` (1-based) failed with ``error``."""
    if isinstance(error, PermanentError):
        return DeadLetter(f"permanent error: {error}", str(error))
    if isinstance(error, asyncpg.exceptions.DataError):
        # Postgres refused the job's data (class 22): the same data fails the same way.
        summary = f"the database refused the job's data: {describe(error)}"
        return DeadLetter(summary, summary)
    if attempt >= policy.max_attempts:
        summary = f"gave up after {attempt} attempts: {describe(error)}"
        return DeadLetter(summary, summary)
    hinted = error.delay_s if isinstance(error, RetryableError) else None
    delay = hinted if hinted is not None else backoff_s(attempt, policy, rand)
    delay = max(0.0, min(delay, policy.backoff_max_s))
    if delay <= policy.in_place_max_s:
        return RetryInPlace(delay)
    return RetryLater(delay)


# Errors that mean "Postgres is unreachable right now", not "this job is bad".
_OUTAGES: tuple[type[BaseException], ...] = (
    ConnectionError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)
OUTAGE_BACKOFF_MAX_S = 10.0


def is_outage(error: BaseException) -> bool:
    """A shared dependency is down: wait for it without spending the job's attempts.

    Retrying such a job is certain to fail the same way until the dependency
    returns, so counting it would dead-letter healthy jobs during an outage.
    """
    return isinstance(error, _OUTAGES)


def outage_wait_s(streak: int, rand: Callable[[], float] = random.random) -> float:
    """Backoff while waiting out an outage: capped exponential, half jitter."""
    ceiling = min(OUTAGE_BACKOFF_MAX_S, 0.25 * 2 ** min(streak, 16))
    return float(ceiling / 2 + rand() * ceiling / 2)


def stage_of(error: BaseException) -> Stage:
    return Stage.TIMEOUT if isinstance(error, JobTimeout | DeadlineExceeded) else Stage.HANDLE


def describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
