"""The records a job pool (streams/pool.py) holds, and its ready queue, oldest first.

A fair pool keeps its ready records per organization instead
(streams/fairness.py ``FairQueue``, the same methods).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable

from streams.offsets import Ticket
from streams.records import Record


class Item:
    """A started record in the pool; ``key`` is its lane (None: it needs none).

    ``seq`` is the order in which it joined the pool (its arrival, or a retry
    record's due time): of the records ready to run, the smallest starts first.
    """

    __slots__ = ("key", "org", "record", "seq", "size", "ticket", "tp")

    def __init__(
        self, tp: Hashable, record: Record, ticket: Ticket, key: bytes | None, org: str
    ) -> None:
        self.tp = tp
        self.record = record
        self.ticket = ticket
        self.key = key
        self.org = org
        self.size = len(record.value or b"")
        self.seq = 0


class Fifo:
    """Ready records, oldest first: arrivals in order, records let go by a lane by seq."""

    __slots__ = ("_promoted", "_ready")

    def __init__(self) -> None:
        self._ready: deque[Item] = deque()
        self._promoted: list[tuple[int, Item]] = []

    def push(self, item: Item) -> None:
        self._ready.append(item)

    def promote(self, item: Item) -> None:
        heapq.heappush(self._promoted, (item.seq, item))  # before all that came later

    def __len__(self) -> int:
        return len(self._ready) + len(self._promoted)

    def startable(self) -> bool:
        return bool(self._ready or self._promoted)

    def pop(self) -> Item:
        promoted = self._promoted
        if promoted and (not self._ready or promoted[0][0] < self._ready[0].seq):
            return heapq.heappop(promoted)[1]
        return self._ready.popleft()

    def ended(self, org: str) -> None:
        pass

    def items(self) -> list[Item]:
        return [*self._ready, *(item for _, item in self._promoted)]

    def remove(self, dropped: Callable[[Item], bool]) -> list[Item]:
        gone = [item for item in self.items() if dropped(item)]
        if gone:
            self._ready = deque(item for item in self._ready if not dropped(item))
            self._promoted = [entry for entry in self._promoted if not dropped(entry[1])]
            heapq.heapify(self._promoted)
        return gone
