"""Rate limiting shared by every job of the process: limiters, a pause gate, Retry-After.

Budgets are per minute (what providers publish) but enforced as a leaky
bucket refilled continuously, with a burst of about one second's worth, so
a fresh process does not fire a whole minute's budget at once — providers
also enforce their per-minute limits over shorter periods.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from aiolimiter import AsyncLimiter

MAX_ORG_LIMITERS = 10_000
CHARS_PER_TOKEN = 4


def per_minute(rate: float) -> AsyncLimiter:
    """A limiter allowing ``rate`` per minute, bursting at most ~1 s of budget (at least 1)."""
    window_s = max(1.0, 60.0 / rate)
    return AsyncLimiter(rate * window_s / 60.0, window_s)


async def acquire(limiter: AsyncLimiter, amount: float) -> None:
    """Acquire ``amount``, in bucket-sized pieces when it exceeds the bucket (big requests)."""
    remaining = amount
    while remaining > 0:
        piece = min(remaining, limiter.max_rate)
        await limiter.acquire(piece)
        remaining -= piece


def estimate_tokens(texts: Sequence[str]) -> int:
    """A provider-independent estimate: about four characters per token."""
    return max(1, math.ceil(sum(len(t) for t in texts) / CHARS_PER_TOKEN))


class PauseGate:
    """A shared "not before" time: after a 429 every caller waits until it has passed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0

    def pause(self, delay_s: float) -> None:
        """Hold every caller for ``delay_s`` from now (never shortens an earlier pause)."""
        self._until = max(self._until, self._clock() + delay_s)

    def remaining_s(self) -> float:
        return max(0.0, self._until - self._clock())

    async def wait(self) -> None:
        """Return once no pause is in force (a pause extended meanwhile is honoured)."""
        remaining = self.remaining_s()
        while remaining > 0:  # a timed wait: the pause may be extended while we sleep
            await asyncio.sleep(remaining)
            remaining = self.remaining_s()


@dataclass(frozen=True, slots=True)
class Budget:
    """Per-minute budgets; ``None`` means unlimited at that level."""

    requests_per_minute: float
    tokens_per_minute: float | None = None
    org_requests_per_minute: float | None = None
    org_tokens_per_minute: float | None = None


class _Pair:
    """A requests limiter and an optional tokens limiter."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self.requests = per_minute(requests_per_minute) if requests_per_minute else None
        self.tokens = per_minute(tokens_per_minute) if tokens_per_minute else None

    async def acquire(self, tokens: int) -> None:
        if self.requests is not None:
            await self.requests.acquire()
        if self.tokens is not None:
            await acquire(self.tokens, tokens)

    def idle(self) -> bool:
        return all(
            lim is None or lim.has_capacity(lim.max_rate) for lim in (self.requests, self.tokens)
        )


class RateLimits:
    """One global pair of limiters and one pair per organization, plus the pause gate.

    Built once per process and shared by every job, so concurrent jobs draw
    from the same budget and back off together.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.gate = PauseGate()
        self._global = _Pair(budget.requests_per_minute, budget.tokens_per_minute)
        self._orgs: dict[str, _Pair] = {}

    async def acquire(self, organization_id: str | None, tokens: int) -> None:
        """Wait for the gate, the organization's budget, then the global budget."""
        await self.gate.wait()
        org = self._org(organization_id)
        if org is not None:
            await org.acquire(tokens)
        await self._global.acquire(tokens)
        await self.gate.wait()

    def _org(self, organization_id: str | None) -> _Pair | None:
        b = self.budget
        if organization_id is None or not (b.org_requests_per_minute or b.org_tokens_per_minute):
            return None
        pair = self._orgs.get(organization_id)
        if pair is None:
            if len(self._orgs) >= MAX_ORG_LIMITERS:
                self._orgs = {k: v for k, v in self._orgs.items() if not v.idle()}
            pair = self._orgs[organization_id] = _Pair(
                b.org_requests_per_minute, b.org_tokens_per_minute
            )
        return pair


def retry_after_s(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The server's requested wait: ``retry-after-ms``, else ``Retry-After`` (seconds or date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None and (seconds := _seconds(millis)) is not None:
        return seconds / 1000.0
    value = headers.get("Retry-After")
    if value is None:
        return None
    if (seconds := _seconds(value)) is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _seconds(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None
