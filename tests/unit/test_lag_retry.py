"""``conveyor lag`` waits out a coordinator that is still loading, and only that."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.commands.lag import _retrying


def _failing(errors: list[KafkaError]) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise KafkaException(errors[len(calls) - 1])
        return "done"

    return calls, call


def test_retriable_errors_are_waited_out() -> None:
    not_coordinator = KafkaError(KafkaError.NOT_COORDINATOR, "loading", retriable=True)
    calls, call = _failing([not_coordinator, not_coordinator])
    waits: list[float] = []
    assert _retrying(call, sleep=waits.append) == "done"
    assert len(calls) == 3 and len(waits) == 2 and all(0 < w <= 4.0 for w in waits)


def test_other_errors_and_the_last_attempt_are_raised() -> None:
    denied = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "denied")
    calls, call = _failing([denied])
    with pytest.raises(KafkaException):
        _retrying(call, sleep=lambda _: None)
    assert len(calls) == 1
    busy = KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, "loading", retriable=True)
    calls, call = _failing([busy] * 10)
    with pytest.raises(KafkaException):
        _retrying(call, sleep=lambda _: None, attempts=3)
    assert len(calls) == 3


def test_a_leader_moving_is_waited_out_though_librdkafka_does_not_flag_it() -> None:
    """The watermark call's NOT_LEADER_FOR_PARTITION on a topic just created is not flagged
    retriable by librdkafka; before, it failed `conveyor lag` (and its test) at once."""
    moving = KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, "not leader", retriable=False)
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KafkaException(moving)
        return "done"

    assert _retrying(call, sleep=lambda _: None) == "done" and len(calls) == 3
