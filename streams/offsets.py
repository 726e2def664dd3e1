"""Which offsets may be committed: the end of each partition's run of finished jobs.

Faust's own acking commits offsets of events whose agent raised or was
cancelled, can commit past an in-flight message at concurrency > 1
(faust-streaming #606) and drops finished-but-uncommitted offsets of revoked
partitions (#502). Conveyor tracks offsets itself: an offset is *started*
when the agent takes the message, in partition order, and *finished* only
when its job succeeded or was handed to a retry or dead-letter topic with
the broker's acknowledgement. The committable offset of a partition is the
smallest unfinished offset, or one past the highest finished one.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

TP = TypeVar("TP", bound=Hashable)


@dataclass(slots=True)
class PartitionOffsets:
    """Offsets of one partition during one assignment."""

    pending: set[int] = field(default_factory=set)
    first: int = -1
    highest: int = -1
    committed: int | None = None
    revoked: bool = False

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

    def __init__(self) -> None:
        self._partitions: dict[TP, PartitionOffsets] = {}
        self._assigned: set[TP] = set()

    def assign(self, tps: Iterable[TP]) -> None:
        """Partitions handed to this worker: their offsets start fresh."""
        for tp in tps:
            self._assigned.add(tp)
            old = self._partitions.pop(tp, None)
            if old is not None:
                old.revoked = True

    def revoke(self, tps: Iterable[TP]) -> None:
        """Partitions being taken away: no new offset starts; running ones may still finish."""
        for tp in tps:
            self._assigned.discard(tp)
            part = self._partitions.get(tp)
            if part is not None:
                part.revoked = True

    def start(self, tp: TP, offset: int) -> Ticket | None:
        """Start ``offset``; None when ``tp`` is not (or no longer) assigned here."""
        if tp not in self._assigned:
            return None
        part = self._partitions.get(tp)
        if part is None:
            part = self._partitions[tp] = PartitionOffsets()
        if part.first < 0:
            part.first = offset
        part.pending.add(offset)
        part.highest = max(part.highest, offset)
        return Ticket(part, offset)

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

    def forget(self, tps: Iterable[TP]) -> None:
        """Drop revoked partitions once their finished work is committed."""
        self.revoke(tps)
        for tp in tps:
            self._partitions.pop(tp, None)

    def partitions(self) -> Iterator[TP]:
        return iter(list(self._partitions))
