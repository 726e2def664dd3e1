"""Shared limiters, the pause gate and Retry-After (pure or in-process, fast)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from handlers.providers.limits import (
    Budget,
    PauseGate,
    RateLimits,
    estimate_tokens,
    per_minute,
    retry_after_s,
)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": " 1.5 "}, 1.5),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "soon"}, None),
        ({"retry-after-ms": "250", "Retry-After": "1"}, 0.25),
        ({"retry-after-ms": "x", "Retry-After": "2"}, 2.0),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(headers) == expected


def test_retry_after_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert retry_after_s({"Retry-After": header}, now=now) == 42.0
    past = format_datetime(now - timedelta(seconds=42), usegmt=True)
    assert retry_after_s({"Retry-After": past}, now=now) == 0.0


def test_token_estimate_is_chars_over_four() -> None:
    assert estimate_tokens(["a" * 400, "b" * 401]) == 201
    assert estimate_tokens([""]) == 1


def test_per_minute_bursts_about_one_second_and_never_less_than_one() -> None:
    fast = per_minute(1200)
    assert (fast.max_rate, fast.time_period) == (20, 1)
    slow = per_minute(6)
    assert slow.max_rate == pytest.approx(1) and slow.time_period == 10


async def test_gate_holds_every_waiter_until_the_pause_ends() -> None:
    loop = asyncio.get_running_loop()
    gate = PauseGate()
    gate.pause(0.3)
    gate.pause(0.1)  # a shorter pause never shortens the one in force
    started = loop.time()
    done = await asyncio.gather(*(_timed(gate.wait()) for _ in range(5)))
    assert all(t - started >= 0.29 for t in done)
    assert max(done) - min(done) < 0.05


async def _timed(awaitable: Awaitable[None]) -> float:
    await awaitable
    return asyncio.get_running_loop().time()


async def test_global_request_rate_is_respected() -> None:
    limits = RateLimits(Budget(requests_per_minute=1200))  # 20/s, burst 20
    loop = asyncio.get_running_loop()
    started = loop.time()
    done = await asyncio.gather(*(_timed(limits.acquire(None, 1)) for _ in range(50)))
    elapsed = max(done) - started
    assert elapsed >= (50 - 20) / 20 - 0.05
    assert elapsed < 2.5


async def test_one_busy_organization_does_not_hold_up_another() -> None:
    limits = RateLimits(Budget(requests_per_minute=60_000, org_requests_per_minute=600))
    loop = asyncio.get_running_loop()
    started = loop.time()
    busy = [_timed(limits.acquire("org-busy", 1)) for _ in range(20)]
    quiet = [_timed(limits.acquire("org-quiet", 1)) for _ in range(5)]
    done = await asyncio.gather(*busy, *quiet)
    assert max(done[:20]) - started >= (20 - 10) / 10 - 0.05
    assert max(done[20:]) - started < 0.2


async def test_tokens_are_acquired_in_full_even_beyond_one_bucket() -> None:
    limits = RateLimits(Budget(requests_per_minute=60_000, tokens_per_minute=600_000))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await limits.acquire(None, 13_000)  # bucket holds 10 000; 3 000 more drip in at 10 000/s
    assert loop.time() - started >= 0.28
