"""The decision after a failed attempt, as a table: (error, attempt, deadline, outages) -> what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from handlers.errors import (
    DeadlineExceeded,
    Deferred,
    JobTimeout,
    PermanentError,
    RetryableError,
)
from schemas.dlq import Stage
from streams.retry import (
    DeadLetter,
    Decision,
    RetryInPlace,
    RetryTopic,
    WaitForDependency,
    decide,
)
from streams.settings import Settings

POLICY = Settings().jobs.probe.model_copy(
    update={"max_attempts": 4, "backoff_base_s": 1.0, "backoff_max_s": 60.0, "in_place_max_s": 5.0}
)
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
HANDLE, TIMEOUT = Stage.HANDLE, Stage.TIMEOUT


def top() -> float:
    return 1.0  # the largest jitter draw


def dead(stage: Stage = HANDLE) -> DeadLetter:
    return DeadLetter("", "", stage)  # compared by kind and stage only


OUTAGE = ConnectionError("connection refused")
FLAKY = RetryableError("storage answered 503")

# (error, attempt, seconds until the job's deadline or None, waits for a dependency so far)
TABLE: list[tuple[BaseException, int, float | None, int, Decision]] = [
    # retryable: backoff 1, 2, 4 s in place; a handler's delay wins; long waits on the topic
    (FLAKY, 1, None, 0, RetryInPlace(1.0)),
    (FLAKY, 3, None, 0, RetryInPlace(4.0)),
    (RetryableError("x", delay_s=2), 2, None, 0, RetryInPlace(2.0)),
    (RetryableError("x", delay_s=30), 1, None, 0, RetryTopic(30.0)),
    (RetryableError("x", delay_s=1000), 1, None, 0, RetryTopic(60.0)),
    (ValueError("a bug"), 2, None, 0, RetryInPlace(2.0)),
    (JobTimeout("slow"), 1, None, 0, RetryInPlace(1.0, TIMEOUT)),
    # out of attempts
    (FLAKY, 4, None, 0, dead()),
    (ValueError("a bug"), 4, None, 0, dead()),
    (JobTimeout("slow"), 4, None, 0, dead(TIMEOUT)),
    # permanent: at once, whatever is left
    (PermanentError("bad file"), 1, None, 0, dead()),
    (DeadlineExceeded("late"), 1, None, 0, dead(TIMEOUT)),
    (asyncpg.exceptions.CharacterNotInRepertoireError("0x00"), 1, None, 0, dead()),
    # a dependency down: wait (0.5 s doubling to 10 s), spending no attempt
    (OUTAGE, 1, None, 0, WaitForDependency(0.5, 1)),
    (OUTAGE, 4, None, 0, WaitForDependency(0.5, 1)),
    (asyncpg.exceptions.CannotConnectNowError("starting"), 2, None, 5, WaitForDependency(10.0, 6)),
    (asyncpg.exceptions.TooManyConnectionsError("full"), 1, None, 3, WaitForDependency(4.0, 4)),
    # another run of the same work in progress: wait for it, spending nothing
    (Deferred("another sync runs", delay_s=5.0), 4, None, 0, WaitForDependency(5.0, 1)),
    # a failover: the database answers read-only (25006); the job is not at fault
    (
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"),
        3,
        None,
        0,
        WaitForDependency(0.5, 1),
    ),
    # a lost race or a statement timeout is an ordinary failure; the data refused is permanent
    (asyncpg.exceptions.SerializationError("conflict"), 1, None, 0, RetryInPlace(1.0)),
    (asyncpg.exceptions.QueryCanceledError("statement timeout"), 1, None, 0, RetryInPlace(1.0)),
    (asyncpg.exceptions.NumericValueOutOfRangeError("too big"), 1, None, 0, dead()),
    # the deadline: no wait or retry that could only start after it
    (FLAKY, 1, 10.0, 0, RetryInPlace(1.0)),
    (FLAKY, 1, 0.5, 0, dead(TIMEOUT)),
    (RetryableError("x", delay_s=30), 1, 20.0, 0, dead(TIMEOUT)),
    (OUTAGE, 1, 0.1, 0, dead(TIMEOUT)),
    (PermanentError("bad file"), 1, 0.1, 0, dead()),
]


@pytest.mark.parametrize(("error", "attempt", "deadline_in_s", "outages", "expected"), TABLE)
def test_decision_table(
    error: BaseException,
    attempt: int,
    deadline_in_s: float | None,
    outages: int,
    expected: Decision,
) -> None:
    deadline = None if deadline_in_s is None else NOW + timedelta(seconds=deadline_in_s)
    decision = decide(error, attempt, POLICY, deadline, outages=outages, now=NOW, rand=top)
    if not isinstance(expected, DeadLetter):
        assert decision == expected
        return
    assert isinstance(decision, DeadLetter)
    assert decision.stage is expected.stage
    assert str(error) in decision.reason and str(error) in decision.summary


def test_the_summary_of_a_permanent_error_is_its_own_message() -> None:
    decision = decide(PermanentError("the file is not a PDF"), 1, POLICY)
    assert decision == DeadLetter("permanent error: the file is not a PDF", "the file is not a PDF")


def test_the_reasons_name_the_kind_of_ending() -> None:
    late = NOW + timedelta(seconds=0.5)
    assert decide(FLAKY, 1, POLICY, late, now=NOW, rand=top).reason.startswith("deadline: ")
    assert "gave up after 4 attempts" in decide(FLAKY, 4, POLICY).summary
    data = decide(asyncpg.exceptions.CharacterNotInRepertoireError("0x00"), 1, POLICY)
    assert "refused the job's data" in data.summary


def test_long_backoffs_go_to_the_retry_topic() -> None:
    policy = POLICY.model_copy(update={"max_attempts": 20})
    assert decide(FLAKY, 4, policy, rand=top) == RetryTopic(8.0)  # 8 s > in_place_max_s
