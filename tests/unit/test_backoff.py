"""The one backoff formula, and the waits each of its users draws from it."""

from __future__ import annotations

import pytest

from handlers.backoff import backoff_s
from streams.publish import SEND_BACKOFF_BASE_S, SEND_BACKOFF_MAX_S
from streams.retry import dependency_wait_s, retry_backoff_s
from streams.settings import Settings


def top() -> float:
    return 1.0  # the largest jitter draw


def bottom() -> float:
    return 0.0


def test_the_ceiling_doubles_up_to_the_cap() -> None:
    assert [backoff_s(a, 0.5, 4.0, rand=top) for a in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_s(10_000, 0.5, 4.0, rand=lambda: 0.5) == 2.0, "no overflow at any attempt"


@pytest.mark.parametrize(
    ("jitter", "low", "high"), [(1.0, 0.0, 8.0), (0.5, 4.0, 8.0), (0.0, 8.0, 8.0)]
)
def test_jitter_is_the_share_of_the_ceiling_the_wait_is_drawn_from(
    jitter: float, low: float, high: float
) -> None:
    assert backoff_s(4, 1.0, 60.0, jitter=jitter, rand=bottom) == low
    assert backoff_s(4, 1.0, 60.0, jitter=jitter, rand=top) == high
    assert low <= backoff_s(4, 1.0, 60.0, jitter=jitter) <= high


@pytest.mark.parametrize("attempt", range(1, 30))
def test_a_job_types_retries_use_full_jitter_under_its_policy(attempt: int) -> None:
    policy = Settings().jobs.asset_process
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempt - 1))
    assert retry_backoff_s(attempt, policy, rand=bottom) == 0.0
    assert retry_backoff_s(attempt, policy, rand=top) == pytest.approx(ceiling)


def test_waits_for_a_dependency_double_from_half_a_second_to_ten_with_half_jitter() -> None:
    assert [dependency_wait_s(s, rand=top) for s in (1, 2, 3, 6, 7)] == [0.5, 1, 2, 10, 10]
    assert dependency_wait_s(1, rand=bottom) == 0.25


def test_unacknowledged_sends_are_retried_without_jitter() -> None:
    waits = [backoff_s(n, SEND_BACKOFF_BASE_S, SEND_BACKOFF_MAX_S, jitter=0.0) for n in (1, 2, 3)]
    assert waits == pytest.approx([0.2, 0.4, 0.8])
    assert backoff_s(9, SEND_BACKOFF_BASE_S, SEND_BACKOFF_MAX_S, jitter=0.0) == 10.0
