"""The decision "retry in place / retry topic / dead-letter", as a table."""

from __future__ import annotations

import pytest

from handlers.errors import DeadlineExceeded, JobTimeout, PermanentError, RetryableError
from schemas.dlq import Stage
from streams.retry import (
    DeadLetter,
    RetryInPlace,
    RetryLater,
    backoff_s,
    decide,
    stage_of,
)
from streams.settings import JobPolicy

POLICY = JobPolicy(
    topic="t", max_attempts=4, backoff_base_s=1.0, backoff_max_s=60.0, in_place_max_s=5.0
)


def top(_: float = 0) -> float:
    return 1.0  # the largest jitter draw


@pytest.mark.parametrize(
    ("error", "attempt", "expected"),
    [
        (RetryableError("x"), 1, RetryInPlace(1.0)),
        (RetryableError("x"), 3, RetryInPlace(4.0)),
        (RetryableError("x", delay_s=30), 1, RetryLater(30.0)),
        (RetryableError("x", delay_s=1000), 1, RetryLater(60.0)),
        (RetryableError("x", delay_s=2), 2, RetryInPlace(2.0)),
        (RetryableError("x"), 4, DeadLetter),
        (JobTimeout("slow"), 1, RetryInPlace(1.0)),
        (JobTimeout("slow"), 4, DeadLetter),
        (ValueError("bug"), 2, RetryInPlace(2.0)),
        (ValueError("bug"), 4, DeadLetter),
        (PermanentError("bad file"), 1, DeadLetter),
        (DeadlineExceeded("late"), 1, DeadLetter),
    ],
)
def test_decision_table(error: BaseException, attempt: int, expected: object) -> None:
    decision = decide(error, attempt, POLICY, rand=top)
    if expected is DeadLetter:
        assert isinstance(decision, DeadLetter)
        assert str(error) in decision.reason
        assert str(error) in decision.summary
        if isinstance(error, PermanentError):
            assert decision.summary == str(error)
    else:
        assert decision == expected


def test_long_backoffs_go_to_the_retry_topic() -> None:
    policy = POLICY.model_copy(update={"max_attempts": 20})
    assert isinstance(decide(RetryableError("x"), 4, policy, rand=top), RetryLater)  # 8 s > 5 s


@pytest.mark.parametrize("attempt", range(1, 30))
def test_backoff_bounds(attempt: int) -> None:
    ceiling = min(60.0, 2 ** (attempt - 1))
    assert backoff_s(attempt, POLICY, rand=lambda: 0.0) == 0.0
    assert backoff_s(attempt, POLICY, rand=top) == pytest.approx(ceiling)
    assert 0.0 <= backoff_s(attempt, POLICY) <= ceiling


def test_stages() -> None:
    assert stage_of(JobTimeout("t")) is Stage.TIMEOUT
    assert stage_of(DeadlineExceeded("d")) is Stage.TIMEOUT
    assert stage_of(RuntimeError("r")) is Stage.HANDLE
