"""Which offsets may be committed: the end of each partition's run of finished jobs.

Faust's own acking commits offsets of events whose agent raised or was
cancelled, can commit past an in-flight message at concurrency > 1
(faust-streaming #606) and drops finished-but-uncommitted offsets of revoked
partitions (#502). Conveyor tracks offsets itself: an offset is *started*
when the agent takes the message, and *finished* only when its job succeeded
or was handed to a retry or dead-letter topic with the broker's
acknowledgement. The committable offset of a partition is the smallest
unfinished offset, or one past the highest finished one.

Offsets are also accepted strictly in sequence, starting at the position
the consumer starts the partition from at assignment (its committed offset,
or where the consumer resets to when there is none) — never at the first
record seen, which may be a stale delivery from before a rebalance. Until
that start is known nothing of the partition runs. Faust can skip records
without telling its agents: a read-offset it restores after a rebalance, or
a delivery cut short when flow is suspended, makes it drop the records below
that offset. A tracker that only counted what it was given would then commit
past jobs nobody ran. So a record beyond the next expected offset is refused
and a seek back to the expected offset is requested; only if the gap
survives several seeks (a transactional producer's control records, say) is
it accepted as real.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

TP = TypeVar("TP", bound=Hashable)

log = structlog.get_logger(__name__)

GAP_GRACE_S = 5.0
GAP_SEEKS = 3


@dataclass(slots=True)
class PartitionOffsets:
    """Offsets of one partition during one assignment."""

    pending: set[int] = field(default_factory=set)
    first: int = -1
    highest: int = -1
    expected: int | None = None
    committed: int | None = None
    revoked: bool = False
    gap_at: int | None = None
    gap_seeks: int = 0
    gap_since: float = 0.0

    def committable(self) -> int | None:
        """The offset to commit (next to read), or None when nothing new finished."""
        if self.highest < 0:
            return None
        offset = min(self.pending) if self.pending else self.highest + 1
        if offset <= self.first or (self.committed is not None and offset <= self.committed):
            return None
        return offset


@dataclass(frozen=True, slots=True)
class Ticket:
    """A started offset; ``finish()`` it when its job has truly finished."""

    partition: PartitionOffsets
    offset: int

    @property
    def revoked(self) -> bool:
        return self.partition.revoked

    def finish(self) -> None:
        self.partition.pending.discard(self.offset)


class OffsetTracker(Generic[TP]):
    """Started and finished offsets of every assigned partition."""

    def __init__(
        self,
        on_gap: Callable[[TP, int], None] = lambda tp, offset: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._partitions: dict[TP, PartitionOffsets] = {}
        self._assigned: set[TP] = set()
        self._unknown_start: set[TP] = set()
        self._on_gap = on_gap
        self._clock = clock

    def assign(self, tps: Iterable[TP]) -> None:
        """Partitions handed to this worker: their offsets start fresh."""
        for tp in tps:
            self._assigned.add(tp)
            self._unknown_start.discard(tp)
            old = self._partitions.pop(tp, None)
            if old is not None:
                old.revoked = True

    def set_positions(self, positions: dict[TP, int]) -> None:
        """Where the consumer starts each assigned partition: its first expected offset."""
        for tp, offset in positions.items():
            if tp in self._assigned:
                part = self._partitions.setdefault(tp, PartitionOffsets())
                if part.highest < 0:
                    part.expected = offset

    def revoke(self, tps: Iterable[TP]) -> None:
        """Partitions being taken away: no new offset starts; running ones may still finish."""
        for tp in tps:
            self._assigned.discard(tp)
            part = self._partitions.get(tp)
            if part is not None:
                part.revoked = True

    def start(self, tp: TP, offset: int) -> Ticket | None:
        """Start ``offset``; None when it must not run now (see the module docstring)."""
        if tp not in self._assigned:
            return None  # revoked: the partition's new owner runs it
        part = self._partitions.get(tp)
        if part is None or part.expected is None:
            self._start_unknown(tp, offset)
            return None  # where the partition starts is not known yet
        if offset != part.expected:
            if offset < part.expected:
                return None  # a redelivery of an offset already started here
            if not self._accept_gap(tp, part, offset):
                return None
        part.gap_at = None
        part.gap_seeks = 0
        part.expected = offset + 1
        if part.first < 0:
            part.first = offset
        part.pending.add(offset)
        part.highest = max(part.highest, offset)
        return Ticket(part, offset)

    def _start_unknown(self, tp: TP, offset: int) -> None:
        if tp not in self._unknown_start:
            self._unknown_start.add(tp)
            log.warning("offsets.start_unknown", partition=str(tp), offset=offset)

    def _accept_gap(self, tp: TP, part: PartitionOffsets, offset: int) -> bool:
        expected = part.expected
        assert expected is not None
        now = self._clock()
        if part.gap_at != expected:
            part.gap_at, part.gap_seeks, part.gap_since = expected, 0, now
        elif now - part.gap_since < GAP_GRACE_S:
            return False  # a seek back is under way
        if part.gap_seeks >= GAP_SEEKS:
            log.warning(
                "offsets.gap_accepted",
                partition=str(tp),
                missing_from=expected,
                missing_to=offset - 1,
                seeks=part.gap_seeks,
            )
            return True
        part.gap_seeks += 1
        part.gap_since = now
        log.warning(
            "offsets.gap_detected",
            partition=str(tp),
            expected=expected,
            got=offset,
            seek=part.gap_seeks,
        )
        self._on_gap(tp, expected)
        return False

    def committable(self, tp: TP) -> int | None:
        part = self._partitions.get(tp)
        return None if part is None else part.committable()

    def all_committable(self) -> dict[TP, int]:
        out: dict[TP, int] = {}
        for tp, part in self._partitions.items():
            offset = part.committable()
            if offset is not None:
                out[tp] = offset
        return out

    def mark_committed(self, offsets: dict[TP, int]) -> None:
        for tp, offset in offsets.items():
            part = self._partitions.get(tp)
            if part is not None and (part.committed is None or offset > part.committed):
                part.committed = offset

    def pending(self, tp: TP) -> int:
        part = self._partitions.get(tp)
        return 0 if part is None else len(part.pending)

    def next_offset(self, tp: TP) -> int | None:
        """The next offset this worker will start on ``tp`` (None while that is unknown)."""
        part = self._partitions.get(tp)
        return None if part is None else part.expected

    def forget(self, tps: Iterable[TP]) -> None:
        """Drop revoked partitions once their finished work is committed."""
        tps = list(tps)
        self.revoke(tps)
        for tp in tps:
            self._partitions.pop(tp, None)

    def partitions(self) -> Iterator[TP]:
        return iter(list(self._partitions))
