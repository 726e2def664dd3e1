"""A request rate that adapts to 429s (AIMD), for APIs whose limit is shared with others.

Kommo allows 7 requests per second per account, and every worker pod calling
one account shares that budget without knowing about the others. Each pod
keeps one AdaptiveLimiter per account: it slows down multiplicatively when
the account answers 429 and speeds up additively while it does not — the
congestion control of TCP — so the pods settle together just under the
account's limit without coordinating. (aiolimiter's AsyncLimiter has a
fixed rate, set when it is built.)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

# Kommo counts requests per second: a request granted less than a second
# after a cut shares the server's window with those sent before it, so its
# 429 says nothing about the new rate.
WINDOW_S = 1.0
# A Retry-After longer than a per-second limit needs: the account is blocked.
BLOCK_S = 2.0
# Requests spaced exactly 1/limit apart put the 1st and the (limit+1)th exactly
# one second apart, and any network jitter then crosses the server's window:
# the ceiling stays this much under the configured limit.
HEADROOM = 0.98


class AdaptiveLimiter:
    """One Kommo account's request rate, found by AIMD without talking to other workers.

    Starts at ``max_rate`` (less 2 % headroom for network jitter) and spaces
    requests 1/rate apart. A 429 multiplies
    the rate by ``decrease`` (once per round: only a request granted a
    window after the last cut is evidence that the new rate is too high); without
    429s the rate grows back by ``increase_per_s`` each second, up to
    ``max_rate``. Workers sharing an account each back off when the
    account's limit is crossed and probe back up slowly, so together they
    settle just under it.

    The refused request itself waits its ``Retry-After`` (the caller does
    that). A ``Retry-After`` longer than ``BLOCK_S`` — more than a per-second
    limit needs — means the account is blocked: every caller pauses.
    """

    def __init__(
        self,
        max_rate: float,
        min_rate: float,
        decrease: float,
        increase_per_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_rate = max_rate * HEADROOM
        self.min_rate = min(min_rate, self.max_rate)
        self.decrease, self.increase_per_s = decrease, increase_per_s
        self.rate = self.max_rate
        self._clock = clock
        self._next = 0.0
        self._paused_until = 0.0
        self._last_cut = -math.inf
        self._last_grow = clock()

    async def acquire(self) -> float:
        """Wait for this caller's turn; returns when it was granted (for ``on_rate_limited``)."""
        while True:
            now = self._clock()
            self._grow(now)
            slot = max(now, self._next, self._paused_until)
            self._next = slot + 1.0 / self.rate
            if slot > now:
                await asyncio.sleep(slot - now)
            granted = self._clock()
            if granted >= self._paused_until:  # a pause set while we slept sends us round again
                return granted

    def on_rate_limited(self, granted_at: float, retry_after_s: float | None) -> None:
        now = self._clock()
        if retry_after_s is not None and retry_after_s > BLOCK_S:
            self._paused_until = max(self._paused_until, now + retry_after_s)
        if granted_at >= self._last_cut + WINDOW_S:
            self.rate = max(self.min_rate, self.rate * self.decrease)
            self._last_cut = now
        self._last_grow = max(now, self._paused_until)  # no growth while paused

    def _grow(self, now: float) -> None:
        if now > self._last_grow:
            grown = self.rate + self.increase_per_s * (now - self._last_grow)
            self.rate = min(self.max_rate, grown)
            self._last_grow = now
