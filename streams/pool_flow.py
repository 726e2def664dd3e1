"""Back-pressure of a job pool (streams/pool.py): when to pause its topics' partitions.

When the records ready to run (and retry timers) pass the high-water mark,
or the bytes held pass theirs, the pool pauses all its topics' partitions,
and resumes them below the low-water marks. Records waiting in lanes are not
ready to run, so they do not pause the others: a partition whose lanes hold
``high_water`` records pauses alone, and resumes below ``low_water``.

A fair pool (streams/fairness.py) reads on past a full read-ahead, setting
records aside: it pauses at twice the mark, and reads set-aside records back
only while the read-ahead has room.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable

from streams.fairness import Fairness

# (pause every partition of the pool, else pause exactly these — partitions, or topic
# names for all their partitions — and resume the rest)
FlowFn = Callable[[bool, frozenset[Hashable]], None]


class Backpressure:
    """What the pool has paused, and saying it to ``flow`` (Faust's pause and resume)."""

    def __init__(
        self, flow: FlowFn, high_water: int, high_water_bytes: int, fairness: Fairness | None
    ) -> None:
        self._flow = flow
        self.high_water = high_water
        self.low_water = self.high_water // 2
        self.high_water_bytes = high_water_bytes
        self.fairness = fairness
        self._paused_all = False
        self._paused: frozenset[Hashable] = frozenset()
        self._flowed_at = 0.0  # when the flow was last said

    def check(
        self,
        ready: int,
        runnable: int,
        aside: int,
        held_bytes: int,
        behind: Counter[Hashable],
        accepting: bool,
    ) -> None:
        """Pause or resume from what the pool holds: ``ready`` records, ``runnable``
        (ready and retry timers), ``aside`` (set-asides not answered), ``held_bytes``,
        records ``behind`` others per partition (lanes, held); say it if it changed."""
        # A fair pool reads on past a full read-ahead (setting records aside): it
        # pauses at twice the mark, or with that many set-asides unanswered, and
        # stops reading set-aside records back at the mark.
        limit = self.high_water * 2 if self.fairness is not None else self.high_water
        if (
            runnable < self.high_water
            and aside < self.high_water
            and held_bytes < self.high_water_bytes
            and not (self._paused_all or self._paused or behind)
        ):
            return  # nothing paused, nothing to pause (the common case)
        pause_all = self._paused_all
        if accepting and (
            runnable >= limit or aside >= limit or held_bytes >= self.high_water_bytes
        ):
            pause_all = True
        elif (
            runnable <= limit // 2
            and aside <= limit // 2
            and held_bytes <= self.high_water_bytes // 2
        ):
            pause_all = False
        paused = self._paused
        if behind or paused:
            paused = frozenset(
                tp
                for tp, n in behind.items()
                if n >= self.high_water or (n > self.low_water and tp in self._paused)
            )
        paused = self._deferred_flow(paused, ready)
        changed = pause_all != self._paused_all or paused != self._paused
        self._paused_all, self._paused = pause_all, paused
        # While anything is paused, say so again now and then: Faust resumes
        # partitions at a rebalance. (Not at every check: with many partitions
        # that cost more than the jobs.)
        now = time.monotonic()
        again = accepting and (pause_all or paused) and now - self._flowed_at >= 1.0
        if changed or again:
            self._flowed_at = now
            self._flow(pause_all, paused)

    def _deferred_flow(self, paused: frozenset[Hashable], ready: int) -> frozenset[Hashable]:
        """Set-aside records are read back only while the read-ahead has room."""
        fair = self.fairness
        if fair is None or fair.set_aside is None:
            return paused
        topic = fair.deferred_topic
        if ready >= self.high_water or (topic in self._paused and ready > self.low_water):
            return paused | {topic}
        return paused
