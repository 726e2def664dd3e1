"""AdaptiveLimiter: spacing, multiplicative decrease once per window, additive recovery."""

from __future__ import annotations

import time

import pytest

from handlers.providers.adaptive_limit import BLOCK_S, HEADROOM, WINDOW_S, AdaptiveLimiter

CEILING = 7.0 * HEADROOM


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock) -> AdaptiveLimiter:
    return AdaptiveLimiter(7.0, 0.5, 0.5, 1.0, clock=clock)


def test_one_cut_per_window_however_many_429s_arrive() -> None:
    clock = Clock()
    lim = limiter(clock)
    for _ in range(5):  # a burst granted before the cut, refused together
        lim.on_rate_limited(clock.now, None)
    assert lim.rate == pytest.approx(CEILING / 2)
    clock.now += 0.5
    lim.on_rate_limited(clock.now, None)  # granted within the window after the cut
    assert lim.rate == pytest.approx(CEILING / 2)
    granted = clock.now = clock.now + WINDOW_S
    lim.on_rate_limited(granted, None)
    assert lim.rate == pytest.approx(CEILING / 4)
    for _ in range(10):
        clock.now += WINDOW_S
        lim.on_rate_limited(clock.now, None)
    assert lim.rate == 0.5  # the floor


def test_the_rate_creeps_back_to_the_ceiling_but_not_while_paused() -> None:
    clock = Clock()
    lim = limiter(clock)
    assert lim.rate == CEILING  # 2 % under the account's limit
    lim.on_rate_limited(clock.now, BLOCK_S + 3)  # blocked: paused for 5 s
    assert lim.rate == pytest.approx(CEILING / 2)
    clock.now += BLOCK_S + 3
    lim._grow(clock.now)
    assert lim.rate == pytest.approx(CEILING / 2)
    clock.now += 2.0
    lim._grow(clock.now)
    assert lim.rate == pytest.approx(CEILING / 2 + 2.0)
    clock.now += 60.0
    lim._grow(clock.now)
    assert lim.rate == CEILING


async def test_requests_are_spaced_and_a_block_pauses_every_caller() -> None:
    lim = AdaptiveLimiter(50.0, 1.0, 0.5, 0.1)
    started = time.monotonic()
    for _ in range(11):
        await lim.acquire()
    assert time.monotonic() - started >= 0.19
    short = AdaptiveLimiter(50.0, 1.0, 0.5, 0.1)
    short.on_rate_limited(await short.acquire(), 1.0)  # a per-second 429: no pause for others
    started = time.monotonic()
    await short.acquire()
    assert time.monotonic() - started < 0.5


def test_a_pause_longer_than_block_holds_everyone() -> None:
    clock = Clock()
    lim = limiter(clock)
    lim.on_rate_limited(clock.now, 30.0)
    assert lim._paused_until == pytest.approx(clock.now + 30.0)
