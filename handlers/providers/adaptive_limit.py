"""A request rate that adapts to 429s (AIMD), for APIs whose limit is shared with others.

Kommo allows 7 requests per second per account, and every worker pod calling
one account shares that budget without knowing about the others. Each pod
keeps one AdaptiveLimiter per account: it slows down multiplicatively when
the account answers 429 and speeds up additively while it does not — the
congestion control of TCP — so the pods settle together just under the
account's limit without coordinating. (aiolimiter's AsyncLimiter has a
fixed rate, set when it is built.)

Why the pace is a whole number of requests per second: a limiter that
spaces its requests ``1/r`` apart puts up to ``floor(r) + 1`` of them into
some one-second window, not ``r``. Three pods at 2.3/s each average 6.9/s
but their windows hold 3 + 3 + 3 = 9 whenever their phases line up, and
Kommo answers 429 though the sum is under 7. Paced at a whole ``k`` (less a
little headroom), a pod never has more than ``k`` requests in any second,
so pods whose paces add up to 7 never cross the account's limit, whatever
their phases (docs/BENCHMARKS.md, "Kommo's rate limit").
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

# Kommo counts requests per second: a request granted less than a second
# after a cut shares the server's window with those sent before it, so its
# 429 says nothing about the new rate.
WINDOW_S = 1.0
# A Retry-After longer than a per-second limit needs: the account is blocked.
BLOCK_S = 2.0
# Requests spaced exactly 1/k apart put the 1st and the (k+1)th exactly one
# second apart, and any network jitter then crosses the server's window: the
# pace stays this much under the whole number (20 ms a second).
HEADROOM = 0.98
# How late a turn may be taken and still count from when it was due (well
# under the headroom's 20 ms a second, so k + 1 requests never fit in one).
LATE_S = 0.005
# A cut to a limiter's measured share leaves it just under the next whole
# number: it keeps the pace it was granted and probes the next one soon.
SHARE_FRACTION = 0.99


class AdaptiveLimiter:
    """One Kommo account's request rate, found by AIMD without talking to other workers.

    ``rate`` starts at ``max_rate``; requests are sent at ``pace``: the rate
    rounded down to a whole number per second (less 2 % headroom), one at
    a time, each at least ``1/pace`` after the previous grant. A 429 cuts
    the rate — at most once a window: only a request granted a window after
    the last cut is evidence that the new rate is too high — to ``decrease``
    times itself, and never above the requests this limiter got accepted in
    the last window (its share of the account, which brings a crowd of
    workers that all started at 7/s down in one step). Without 429s the
    rate grows back by ``increase_per_s`` each second, up to ``max_rate``.

    A cut that leaves the whole number unchanged changes nothing sent: the
    limiter that just stepped up (its rate barely over the whole number)
    steps back down, one that has held its pace for a while keeps it. That
    is what lets three workers settle at 3 + 2 + 2 with few 429s.

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
        self.max_rate = max_rate
        self.min_rate = min(min_rate, max_rate)
        self.decrease, self.increase_per_s = decrease, increase_per_s
        self.rate = max_rate
        self._clock = clock
        self._turn = asyncio.Lock()
        self._last_grant = -math.inf
        self._paused_until = 0.0
        self._last_cut = -math.inf
        self._last_grow = clock()
        self._granted: deque[float] = deque()  # grant times of the last two windows
        self._refused: deque[float] = deque()  # grant times of those answered 429

    @property
    def pace(self) -> float:
        """Requests per second actually sent: the whole part of ``rate``, less headroom."""
        whole = math.floor(self.rate)
        return (whole if whole >= 1 else self.rate) * HEADROOM

    async def acquire(self) -> float:
        """Wait for this caller's turn; returns when it was granted (for ``on_rate_limited``).

        One caller at a time, in arrival order, each at least ``1/pace`` after
        the previous grant as the clock saw it: a stalled event loop delays
        the next request instead of releasing a burst.
        """
        async with self._turn:
            while True:
                now = self._clock()
                self._grow(now)
                due = max(self._last_grant + 1.0 / self.pace, self._paused_until)
                if now >= due:
                    break
                await asyncio.sleep(due - now)  # then look again: a cut or pause may move it
            # A turn taken a moment late (the loop's timer) counts from when it was
            # due, or the pace would drift down; one taken much later (an idle or
            # stalled loop) counts from now, so nothing queued goes out in a burst.
            self._last_grant = due if now - due <= LATE_S else now
            self._forget(now)
            self._granted.append(now)
            return now

    def on_rate_limited(self, granted_at: float, retry_after_s: float | None) -> None:
        now = self._clock()
        self._forget(now)
        self._refused.append(granted_at)
        if retry_after_s is not None and retry_after_s > BLOCK_S:
            self._paused_until = max(self._paused_until, now + retry_after_s)
        if granted_at >= self._last_cut + WINDOW_S:
            cut = min(self.rate * self.decrease, self._share_cap(granted_at))
            self.rate = max(self.min_rate, cut)
            self._last_cut = now
        self._last_grow = max(now, self._paused_until)  # no growth while paused

    def _share_cap(self, refused_at: float) -> float:
        """The rate the window before a refused request says this limiter may keep: its
        requests the account accepted in it (just under the next whole number) — if it
        sent at about its full pace; one that sent less learnt nothing about its share."""
        since = refused_at - WINDOW_S
        sent = sum(1 for t in self._granted if since < t <= refused_at)
        if sent < math.floor(self.pace):
            return math.inf
        refused = sum(1 for t in self._refused if since < t <= refused_at)
        return max(1, sent - refused) + SHARE_FRACTION

    def _forget(self, now: float) -> None:
        """Keep the grants and refusals of the last two windows only."""
        since = now - 2 * WINDOW_S
        while self._granted and self._granted[0] <= since:
            self._granted.popleft()
        if self._refused and min(self._refused) <= since:  # answers arrive in any order
            self._refused = deque(t for t in self._refused if t > since)

    def _grow(self, now: float) -> None:
        if now > self._last_grow:
            grown = self.rate + self.increase_per_s * (now - self._last_grow)
            self.rate = min(self.max_rate, grown)
            self._last_grow = now
