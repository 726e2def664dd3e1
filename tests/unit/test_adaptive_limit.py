"""AdaptiveLimiter: whole-number pace, one cut per window, the share cap, additive recovery."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from handlers.providers.adaptive_limit import (
    BLOCK_S,
    HEADROOM,
    LATE_S,
    SHARE_FRACTION,
    WINDOW_S,
    AdaptiveLimiter,
)

CEILING = 7.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, decrease: float = 0.5) -> AdaptiveLimiter:
    return AdaptiveLimiter(7.0, 0.5, decrease, 1.0, clock=clock)


def test_the_pace_is_the_whole_part_of_the_rate_less_headroom() -> None:
    lim = limiter(Clock())
    assert lim.pace == pytest.approx(7 * HEADROOM)
    for rate, pace in ((3.99, 3), (3.0, 3), (2.9, 2), (1.0, 1)):
        lim.rate = rate
        assert lim.pace == pytest.approx(pace * HEADROOM)
    lim.rate = 0.6  # under one a second: as it is
    assert lim.pace == pytest.approx(0.6 * HEADROOM)


def test_a_cut_moves_the_pace_of_a_limiter_that_just_stepped_up_only() -> None:
    clock = Clock()
    stepped_up, settled = limiter(clock, 0.85), limiter(clock, 0.85)
    stepped_up.rate, settled.rate = 3.05, 3.9
    for lim in (stepped_up, settled):
        lim.on_rate_limited(clock.now, 1.0)
    assert stepped_up.pace == pytest.approx(2 * HEADROOM)  # 2.59: back to 2 a second
    assert settled.pace == pytest.approx(3 * HEADROOM)  # 3.32: keeps its 3


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


async def test_a_limiter_at_full_pace_is_cut_to_what_the_account_accepted_of_it() -> None:
    """Workers that all start at 7/s: after the first cut each learns its share from
    one crowded window, instead of cutting by 15 % a second for six seconds."""
    clock = Clock()
    lim = AdaptiveLimiter(7.0, 0.5, 0.85, 0.001, clock=clock)
    lim.on_rate_limited(clock.now, 1.0)  # the first 429: nothing known yet, 7 x 0.85
    assert lim.rate == pytest.approx(5.95)
    grants = []
    for _ in range(7):  # the next window, at full pace (4.9/s)
        clock.now += 1.0 / lim.pace
        grants.append(await lim.acquire())  # due at once: the clock moved, nothing sleeps
    for granted in grants[2:]:  # two accepted, then refusals: the third a window after the cut
        lim.on_rate_limited(granted, 1.0)
    assert lim.rate == pytest.approx(2 + SHARE_FRACTION)  # not 5.95 x 0.85
    assert lim.pace == pytest.approx(2 * HEADROOM)


def test_a_limiter_that_sent_little_learns_nothing_about_its_share() -> None:
    clock = Clock()
    lim = limiter(clock, decrease=0.85)
    lim.on_rate_limited(clock.now, 1.0)  # its one request of the second was refused
    assert lim.rate == pytest.approx(7 * 0.85)


def test_the_rate_creeps_back_to_the_ceiling_but_not_while_paused() -> None:
    clock = Clock()
    lim = limiter(clock)
    assert lim.rate == CEILING
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


async def test_a_stalled_event_loop_delays_the_queue_instead_of_releasing_a_burst() -> None:
    """Waiters whose turns passed while the loop was blocked still go 1/pace apart.

    (The limiter used to hand out reserved slots: after a stall every waiter
    whose slot had passed went at once, and the account saw a burst.)
    """
    lim = AdaptiveLimiter(10.0, 1.0, 0.5, 0.1)
    await lim.acquire()
    waiters = [asyncio.ensure_future(lim.acquire()) for _ in range(4)]
    await asyncio.sleep(0)  # every waiter queued, the first asleep until its turn
    time.sleep(0.6)  # noqa: ASYNC251 - the point: the loop is blocked past all four turns
    grants = await asyncio.gather(*waiters)
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert min(gaps) >= 1.0 / lim.pace - LATE_S - 0.001


def test_a_pause_longer_than_block_holds_everyone() -> None:
    clock = Clock()
    lim = limiter(clock)
    lim.on_rate_limited(clock.now, 30.0)
    assert lim._paused_until == pytest.approx(clock.now + 30.0)


async def test_old_grants_are_forgotten() -> None:
    clock = Clock()
    lim = limiter(clock)
    for _ in range(50):
        await lim.acquire()
        clock.now += 0.5
    assert len(lim._granted) <= 4  # two windows
