"""Fair share between organizations within a job type (``jobs.<type>.fairness: organization``).

A partition is a queue in offset order: an organization that uploads 5,000
documents would put every other organization's job behind them. Two things
keep a share for each organization that has work:

- **Starting in turn.** The pool's ready records are kept per organization
  and started by stride scheduling: each organization has a *pass*, the
  next record to start is the oldest of the organization with the lowest
  pass, and starting one adds ``1 / weight`` to its pass (``fairness.weights``,
  default 1). An organization that had nothing waiting joins at the current
  pass, with no credit saved up. ``fairness.max_running_per_organization``
  caps what one organization runs at once (0: no cap).
- **Looking ahead, setting aside.** A job type's pool holds up to
  ``kafka.backlog_records`` ready records (its read-ahead). When it is full,
  fetching goes on instead of pausing: a record from the source topic whose
  organization already holds its weighted share of the read-ahead is set
  aside — published to ``<topic>.deferred`` with its key, value and headers,
  its source offset finished once the broker took it — so the records of
  other organizations behind it are fetched and start at once. The deferred
  topic is read only while the read-ahead has room, so set-aside work comes
  back at the pace the pool frees up, and a record read from it is never set
  aside again. Nothing is kept only in memory: a crash before the deferred
  record was acknowledged redelivers the source record; after, the deferred
  topic has it.

Key order: a job type with ``ordering: key`` starts in turn but never sets
aside (a key's later records could not know that an earlier one waits in
the deferred topic after a crash), so a key's jobs stay in offset order.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from streams.records import Record

log = structlog.get_logger(__name__)

NO_ORG = ""  # records without an organization share one turn
_MARK = b'"organization_id"'


def organization_of(value: bytes | None) -> str:
    """The envelope's ``organization_id`` ('' when it has none or cannot be read)."""
    if not value or _MARK not in value:
        return NO_ORG
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return NO_ORG
    org = data.get("organization_id") if isinstance(data, dict) else None
    return org if isinstance(org, str) else NO_ORG


class Queued(Protocol):
    """What the fair queue needs of a pool item."""

    seq: int
    org: str


@dataclass(slots=True)
class _Org:
    heap: list[tuple[int, Any]] = field(default_factory=list)
    pass_: float = 0.0


class FairQueue:
    """Ready records per organization, started by weighted stride scheduling."""

    def __init__(self, weights: Mapping[str, float] | None = None, max_running: int = 0) -> None:
        self._weights = dict(weights or {})
        self._max_running = max_running
        self._orgs: dict[str, _Org] = {}
        self.running: Counter[str] = Counter()
        self.started: Counter[str] = Counter()
        self._size = 0
        self._now = 0.0  # the pass of the last organization to start one

    def weight(self, org: str) -> float:
        return self._weights.get(org, 1.0)

    def push(self, item: Queued) -> None:
        """A record ready to run (arrived, or let go by its key's lane: its seq says which)."""
        state = self._orgs.get(item.org)
        if state is None:
            state = self._orgs[item.org] = _Org(pass_=self._now)
        heapq.heappush(state.heap, (item.seq, item))
        self._size += 1

    promote = push

    def __len__(self) -> int:
        return self._size

    def startable(self) -> bool:
        if not self._size:
            return False
        if not self._max_running:
            return True
        return any(self.running[org] < self._max_running for org in self._orgs)

    def pop(self) -> Any:
        """The next record to start (``startable()`` is true)."""
        chosen: str | None = None
        best = 0.0
        for org, state in self._orgs.items():
            if self._max_running and self.running[org] >= self._max_running:
                continue
            if chosen is None or state.pass_ < best:
                chosen, best = org, state.pass_
        assert chosen is not None, "pop() without a startable record"
        state = self._orgs[chosen]
        _, item = heapq.heappop(state.heap)
        self._size -= 1
        self._now = state.pass_
        state.pass_ += 1.0 / self.weight(chosen)
        if not state.heap:
            del self._orgs[chosen]  # it rejoins at the current pass
        self.running[chosen] += 1
        self.started[chosen] += 1
        return item

    def ended(self, org: str) -> None:
        """A record this queue started has ended (or left without running)."""
        self.running[org] -= 1
        if self.running[org] <= 0:
            del self.running[org]

    def held(self, org: str) -> int:
        state = self._orgs.get(org)
        return len(state.heap) if state is not None else 0

    def holders(self) -> Iterable[str]:
        return self._orgs.keys()

    def items(self) -> Iterator[Any]:
        for state in self._orgs.values():
            for _, item in state.heap:
                yield item

    def remove(self, dropped: Callable[[Any], bool]) -> list[Any]:
        """Take out the items ``dropped`` says; return them."""
        gone: list[Any] = []
        for org in list(self._orgs):
            state = self._orgs[org]
            kept = [(s, i) for s, i in state.heap if not dropped(i)]
            gone += [i for _, i in state.heap if dropped(i)]
            if kept:
                heapq.heapify(kept)
                state.heap = kept
            else:
                del self._orgs[org]
        self._size -= len(gone)
        return gone


# (record) -> done once the broker took it (``RecordPublisher.set_aside``)
SetAside = Callable[[Record], Coroutine[Any, Any, None]]


@dataclass
class Fairness:
    """One job type's fair-share policy, as its pool applies it."""

    source_topic: str
    deferred_topic: str
    set_aside: SetAside | None  # None: start in turn only (ordering key)
    weights: Mapping[str, float] = field(default_factory=dict)
    max_running: int = 0
    deferred: Counter[str] = field(default_factory=Counter)

    _reported: Counter[str] = field(default_factory=Counter)
    _reported_at: float = 0.0
    _flush_due: bool = False

    def report(self, job_type: str) -> None:
        """Log what was set aside (``job.set_aside``): at once, then at most once a second."""
        now = time.monotonic()
        wait_s = 1.0 - (now - self._reported_at)
        if wait_s <= 0:
            self._log(job_type, now)
        elif not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_later(wait_s, self._flush, job_type)

    def _flush(self, job_type: str) -> None:
        self._flush_due = False
        self._log(job_type, time.monotonic())

    def _log(self, job_type: str, now: float) -> None:
        since = self.deferred - self._reported
        self._reported, self._reported_at = Counter(self.deferred), now
        if since:
            log.info(
                "job.set_aside",
                job_type=job_type,
                records=since.total(),
                organizations=dict(since.most_common(10)),
                deferred_topic=self.deferred_topic,
            )

    def queue(self) -> FairQueue:
        return FairQueue(self.weights, self.max_running)

    def over_share(self, queue: FairQueue, org: str, read_ahead: int) -> bool:
        """Whether ``org`` holds its weighted share of a full read-ahead already."""
        holders = set(queue.holders()) | {org}
        total = sum(queue.weight(o) for o in holders)
        share = read_ahead * queue.weight(org) / total
        return queue.held(org) >= share
