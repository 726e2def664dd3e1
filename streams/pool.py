"""Bounded concurrency per job type, with offset tickets, key order, back-pressure and a drain.

``concurrency`` long-lived worker coroutines take records from a ready queue
(cheaper than a task per job: a job that needs no I/O costs no extra turn of
the event loop). The agent hands each record to ``submit()`` in partition
order and never waits: Faust delivers every topic of the worker through one loop, so an
agent that blocked (on a full pool, or on a retry record that is not due
yet) would stall every other job type. Instead the record's offset is
started at once (nothing later can be committed past it) and the record
joins the pool — or, when it is a retry not yet due, a timer.

**Key order** (``ordering="key"``): records with the same Kafka key never
run at the same time, and start in the order they joined the pool — a
partition's records in offset order, a retry record when it is due. A key
with a record ready or running has a *lane*: the records of that key
waiting behind it. A record whose key has none is ready at once, so a busy
key holds one slot and never keeps other keys waiting. Of the records ready
to run, the one that joined the pool first starts first: when a key's
record ends, its lane's next record goes before every record that came
after it, and after every older one — a busy key neither loses its turn
nor keeps a slot while older records of other keys wait (which would stall
their partitions' commits). A record without a key is its own key. Offsets
still finish in any order; the tracker commits only the contiguous run.

**Back-pressure** (streams/pool_flow.py): the pool pauses its topics'
partitions while it holds too much, and resumes them below the low-water
marks.

Only a run that returns finishes the offset; a cancelled or dropped record
stays unfinished and is redelivered.

**Runtime control** (``gate``, streams/control.py): while its job type has a
pause, the pool has a gate and asks it before a record starts (no gate, no
cost); a record of a paused job type (or organization) is *held* —
unstarted, its offset unfinished, its key's lane kept so later records of
the key wait behind it, counted like lane records for back-pressure — until
``release_held()`` is called on a resume.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from streams.fairness import NO_ORG, Fairness, FairQueue, organization_of
from streams.metrics import OrgCounts
from streams.offsets import OffsetTracker
from streams.pool_flow import Backpressure, FlowFn
from streams.pool_queue import Fifo, Item
from streams.records import Record

log = structlog.get_logger(__name__)

RunFn = Callable[[Record], Awaitable[None]]
# CONTROL: may this record start now? (streams/control.py JobGate; False holds it)
StartGate = Callable[[Record], bool]
Ordering = Literal["none", "key"]


YIELD_EVERY = 64
ASIDE_BATCH = 32  # set-aside publishes started per turn of the event loop


@dataclass(slots=True)
class _Slot:
    """One worker coroutine and the record it is running, if any."""

    task: asyncio.Task[None] | None = None
    tp: Hashable | None = None
    done: asyncio.Future[None] | None = None
    idle: asyncio.Future[None] | None = field(default=None)
    record: Record | None = None  # STATUS: what it runs, since when (streams/status.py)
    started: float = 0.0


class JobPool:
    """Runs records of one job type, at most ``concurrency`` at a time."""

    def __init__(
        self,
        name: str,
        concurrency: int,
        run: RunFn,
        tracker: OffsetTracker[Hashable],
        *,
        high_water: int,
        high_water_bytes: int,
        flow: FlowFn = lambda pause_all, paused: None,
        ordering: Ordering = "none",
        fairness: Fairness | None = None,
        gate: StartGate | None = None,
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self._run = run
        self._tracker = tracker
        self._keyed = ordering == "key"
        self.high_water = high_water
        self._bytes = 0  # of the records in the ready queue and the lanes
        self.fairness = fairness
        self._pressure = Backpressure(flow, high_water, high_water_bytes, fairness)
        # Ready to run: oldest first (Fifo), or per organization in turn (FairQueue).
        self._queue: Fifo | FairQueue = fairness.queue() if fairness else Fifo()
        self._seq = itertools.count()
        self._lanes: dict[bytes, deque[Item]] = {}
        self._behind: Counter[Hashable] = Counter()  # per partition: records in lanes
        self._timers: dict[asyncio.Task[None], Hashable] = {}
        self._aside: dict[asyncio.Task[None], Hashable] = {}  # set-aside publishes in flight
        self._aside_waiting: deque[Item] = deque()  # to set aside, not started yet
        self._aside_sender: asyncio.Task[None] | None = None
        self._slots: list[_Slot] = []
        self.accepting = True
        self.finished = 0
        self.gate = gate  # CONTROL: set while the job type has a pause (streams/control.py)
        self._held: list[Item] = []

    def submit(self, tp: Hashable, record: Record, due_in_s: float = 0.0) -> None:
        """Start ``record``'s offset and queue it (after ``due_in_s``); never blocks."""
        if not self.accepting:
            return
        ticket = self._tracker.start(tp, record.offset)
        if ticket is None:
            return  # not to run here now (revoked partition, redelivery, or a gap)
        fair = self.fairness
        org = organization_of(record.value) if fair is not None else NO_ORG
        item = Item(tp, record, ticket, record.key if self._keyed else None, org)
        if due_in_s > 0:
            timer = asyncio.create_task(self._later(item, due_in_s))
            self._timers[timer] = tp
            timer.add_done_callback(lambda t: self._timers.pop(t, None))
        elif fair is not None and self._sets_aside(fair, item):
            self._set_aside(fair, item)
        else:
            self._enqueue(item)
        self._wake()

    async def _later(self, item: Item, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._enqueue(item)
        self._wake()

    def _sets_aside(self, fair: Fairness, item: Item) -> bool:
        """A source record of an organization that holds its share of a full read-ahead."""
        queue = self._queue
        return (
            fair.set_aside is not None
            and item.record.topic == fair.source_topic
            and len(queue) >= self.high_water
            and isinstance(queue, FairQueue)
            and fair.over_share(queue, item.org, self.high_water)
        )

    def _set_aside(self, fair: Fairness, item: Item) -> None:
        """Queue ``item`` for the deferred topic; the sender publishes in order."""
        self._aside_waiting.append(item)
        if self._aside_sender is None or self._aside_sender.done():
            self._aside_sender = asyncio.create_task(self._send_aside(fair))

    async def _send_aside(self, fair: Fairness) -> None:
        """Start the set-aside publishes a few at a time, so that a burst of thousands
        does not hold the event loop (the jobs' starts) for a noticeable while."""
        assert fair.set_aside is not None
        waiting = self._aside_waiting
        sent = 0
        while waiting:
            item = waiting.popleft()
            task = asyncio.create_task(fair.set_aside(item.record))
            self._aside[task] = item.tp
            task.add_done_callback(functools.partial(self._aside_done, fair, item))
            sent += 1
            if sent % ASIDE_BATCH == 0:
                await asyncio.sleep(0)

    def _aside_done(self, fair: Fairness, item: Item, task: asyncio.Task[None]) -> None:
        self._aside.pop(task, None)
        if task.cancelled():
            return  # drain or revoke: unfinished, redelivered
        if task.exception() is not None:  # it cannot be set aside: it runs here instead
            log.warning("pool.set_aside_failed", error=repr(task.exception())[:300])
            self._enqueue(item)
            self._wake()
            return
        item.ticket.finish()
        fair.deferred[item.org] += 1
        fair.report(self.name)
        self._flow_check()

    def _enqueue(self, item: Item) -> None:
        self._bytes += item.size
        item.seq = next(self._seq)
        if item.key is not None:
            lane = self._lanes.get(item.key)
            if lane is not None:  # its key is ready or running: wait behind it
                lane.append(item)
                self._behind[item.tp] += 1
                return
            self._lanes[item.key] = deque()
        self._queue.push(item)

    def _left(self, item: Item) -> None:
        """``item`` (ready or running) has left the pool: its key's next record may start."""
        if item.key is None:
            return
        lane = self._lanes.get(item.key)
        if lane is None:
            return
        if not lane:
            del self._lanes[item.key]
            return
        following = lane.popleft()
        self._behind[following.tp] -= 1
        if not self._behind[following.tp]:
            del self._behind[following.tp]
        self._queue.promote(following)  # before all that came later
        self._wake()

    def _wake(self) -> None:
        if not self._slots and self.accepting:
            self._slots = [self._spawn(_Slot()) for _ in range(self.concurrency)]
        wanted = len(self._queue) if self._queue.startable() else 0
        for slot in self._slots:
            if not wanted:
                break
            if slot.idle is not None and not slot.idle.done():
                slot.idle.set_result(None)
                wanted -= 1
        self._flow_check()

    def _flow_check(self) -> None:
        ready = len(self._queue)
        aside = len(self._aside) + len(self._aside_waiting)
        self._pressure.check(
            ready, ready + len(self._timers), aside, self._bytes, self._behind, self.accepting
        )

    def _spawn(self, slot: _Slot) -> _Slot:
        slot.task = asyncio.create_task(self._work(slot), name=f"{self.name}-worker")
        slot.task.add_done_callback(lambda _: self._respawn(slot))
        return slot

    def _respawn(self, slot: _Slot) -> None:
        """A worker ends only when cancelled (drain or revoke); replace it while running."""
        slot.tp = slot.record = None
        if self.accepting:
            self._spawn(slot)

    async def _work(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        ran = 0
        while True:
            if not queue.startable() or not self.accepting:
                slot.idle = loop.create_future()
                await slot.idle
                continue
            item = queue.pop()
            self._bytes -= item.size
            if item.ticket.revoked:
                queue.ended(item.org)
                self._left(item)
                continue
            if self.gate is not None and not self.gate(item.record):
                queue.ended(item.org)
                self._hold(item)  # CONTROL: paused; its offset stays unfinished
                continue
            slot.tp, slot.done = item.tp, loop.create_future()
            slot.record, slot.started = item.record, loop.time()
            try:
                await self._run(item.record)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The runner handles every job error itself; reaching here is a bug.
                # The offset stays unfinished so the record is redelivered, not lost
                # (its key's later records go on: holding them would stall the key
                # until a restart, and the commit stops here anyway).
                log.exception("pool.run_crashed", job_pool=self.name, offset=item.record.offset)
            else:
                item.ticket.finish()
                self.finished += 1
            finally:
                slot.tp = slot.record = None
                slot.done.set_result(None)
                queue.ended(item.org)
                self._left(item)
                self._flow_check()
            ran += 1
            if ran % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def organization_counts(self) -> OrgCounts:
        """Per organization: ready, running, started and set aside (fair pools)."""
        queue, fair = self._queue, self.fairness
        if not isinstance(queue, FairQueue) or fair is None:
            return OrgCounts({}, {}, {}, {})
        waiting = {org: queue.held(org) for org in queue.holders()}
        return OrgCounts(waiting, dict(queue.running), dict(queue.started), dict(fair.deferred))

    # CONTROL (streams/control.py): records held while their job type or organization is paused.

    def _hold(self, item: Item) -> None:
        """Keep ``item`` unstarted (its lane too) until ``release_held`` lets it go."""
        self._held.append(item)
        self._behind[item.tp] += 1
        self._bytes += item.size
        self._flow_check()

    def release_held(self) -> int:
        """Requeue the held records the gate (if any) now lets start, before later ones."""
        gate = self.gate
        if not self._held:
            return 0
        verdicts = [(item, gate is None or gate(item.record)) for item in self._held]
        freed = [item for item, may in verdicts if may]
        if not freed:
            return 0
        self._held = [item for item, may in verdicts if not may]
        for item in freed:
            self._behind[item.tp] -= 1
            if not self._behind[item.tp]:
                del self._behind[item.tp]
            self._queue.promote(item)  # keeps its place in line
        self._wake()
        return len(freed)

    @property
    def held(self) -> int:
        return len(self._held)

    def running(self) -> list[tuple[Record, float]]:
        """STATUS: each record running now, with the loop time it started."""
        return [(s.record, s.started) for s in self._slots if s.record is not None]

    @property
    def in_flight(self) -> int:
        return sum(1 for slot in self._slots if slot.tp is not None)

    @property
    def waiting(self) -> int:
        """Records taken from Kafka but not running yet (ready, in lanes, retry timers,
        being set aside)."""
        aside = len(self._aside) + len(self._aside_waiting)
        return len(self._queue) + self._behind.total() + len(self._timers) + aside

    def _drop_waiting(self, tps: set[Hashable] | None) -> None:
        """Drop the waiting records of ``tps`` (None: all); their keys' lanes move on."""

        def dropped(item: Item) -> bool:
            return tps is None or item.tp in tps

        for key, lane in self._lanes.items():
            if any(dropped(item) for item in lane):
                self._lanes[key] = deque(item for item in lane if not dropped(item))
        gone = self._queue.remove(dropped) + [item for item in self._held if dropped(item)]
        self._held = [item for item in self._held if not dropped(item)]
        for item in gone:
            self._left(item)  # a lane's next record (of a partition kept) becomes ready
        behind = [item for lane in self._lanes.values() for item in lane] + self._held
        self._behind = Counter(item.tp for item in behind)
        self._bytes = sum(item.size for item in (*self._queue.items(), *behind))
        self._aside_waiting = deque(i for i in self._aside_waiting if not dropped(i))
        for tasks in (self._timers, self._aside):
            for task, tp in list(tasks.items()):
                if tps is None or tp in tps:
                    task.cancel()

    async def drain(self, timeout_s: float, tps: Iterable[Hashable] | None = None) -> int:
        """Drop waiting records, wait up to ``timeout_s`` for running ones, cancel the rest.

        Returns how many running jobs were cancelled. Dropped and cancelled
        records stay unfinished, so they are redelivered.
        """
        wanted = None if tps is None else set(tps)
        self._drop_waiting(wanted)
        busy = [
            s
            for s in self._slots
            if s.tp is not None and (wanted is None or s.tp in wanted) and s.done
        ]
        cancelled = 0
        if busy:
            futures = {s.done for s in busy if s.done is not None}
            _, pending = await asyncio.wait(futures, timeout=timeout_s)
            late = [s for s in busy if s.done in pending]
            for slot in late:
                if slot.task is not None:
                    slot.task.cancel()
            if late:
                await asyncio.wait(pending, timeout=5.0)
            cancelled = len(late)
        if not self.accepting:
            for slot in self._slots:
                if slot.task is not None:
                    slot.task.cancel()
        self._flow_check()
        return cancelled
