"""Bounded concurrency per job type, with offset tickets, back-pressure and a drain.

``concurrency`` long-lived worker coroutines take records from a backlog
(cheaper than a task per job: a job that needs no I/O costs no extra turn of
the event loop). The agent hands each record to ``submit()`` in partition
order and never waits: Faust delivers every topic of the worker through one loop, so an
agent that blocked (on a full pool, or on a retry record that is not due
yet) would stall every other job type. Instead the record's offset is
started at once (nothing later can be committed past it) and the record
joins the pool's backlog — or, when it is a retry not yet due, a timer.
When the backlog passes its high-water mark the pool pauses its topics'
partitions, and resumes them below the low-water mark.

Only a run that returns finishes the offset; a cancelled or dropped record
stays unfinished and is redelivered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field

import structlog

from streams.offsets import OffsetTracker, Ticket
from streams.records import Record

log = structlog.get_logger(__name__)

RunFn = Callable[[Record], Awaitable[None]]
FlowFn = Callable[[bool], None]  # True: pause the pool's partitions; False: resume


YIELD_EVERY = 64


@dataclass(slots=True)
class _Slot:
    """One worker coroutine and the record it is running, if any."""

    task: asyncio.Task[None] | None = None
    tp: Hashable | None = None
    done: asyncio.Future[None] | None = None
    idle: asyncio.Future[None] | None = field(default=None)


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
        flow: FlowFn = lambda pause: None,
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self._run = run
        self._tracker = tracker
        self._flow = flow
        self.high_water = high_water
        self.low_water = self.high_water // 2
        self.high_water_bytes = high_water_bytes
        self._backlog_bytes = 0
        self._backlog: deque[tuple[Hashable, Record, Ticket]] = deque()
        self._timers: dict[asyncio.Task[None], Hashable] = {}
        self._slots: list[_Slot] = []
        self._paused = False
        self.accepting = True
        self.finished = 0

    def submit(self, tp: Hashable, record: Record, due_in_s: float = 0.0) -> None:
        """Start ``record``'s offset and queue it (after ``due_in_s``); never blocks."""
        if not self.accepting:
            return
        ticket = self._tracker.start(tp, record.offset)
        if ticket is None:
            return  # not to run here now (revoked partition, redelivery, or a gap)
        if due_in_s > 0:
            timer = asyncio.create_task(self._later(tp, record, ticket, due_in_s))
            self._timers[timer] = tp
            timer.add_done_callback(lambda t: self._timers.pop(t, None))
        else:
            self._enqueue(tp, record, ticket)
        self._wake()

    async def _later(self, tp: Hashable, record: Record, ticket: Ticket, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._enqueue(tp, record, ticket)
        self._wake()

    def _enqueue(self, tp: Hashable, record: Record, ticket: Ticket) -> None:
        self._backlog.append((tp, record, ticket))
        self._backlog_bytes += len(record.value or b"")

    def _wake(self) -> None:
        if not self._slots and self.accepting:
            self._slots = [self._spawn(_Slot()) for _ in range(self.concurrency)]
        for slot in self._slots:
            if slot.idle is not None and not slot.idle.done() and self._backlog:
                slot.idle.set_result(None)
        self._flow_check()

    def _flow_check(self) -> None:
        waiting = self.waiting
        full = waiting >= self.high_water or self._backlog_bytes >= self.high_water_bytes
        if full and self.accepting:
            self._paused = True
            self._flow(True)  # idempotent; re-asserted in case Faust resumed them
        elif (
            self._paused
            and waiting <= self.low_water
            and self._backlog_bytes <= self.high_water_bytes // 2
        ):
            self._paused = False
            self._flow(False)

    def _spawn(self, slot: _Slot) -> _Slot:
        slot.task = asyncio.create_task(self._work(slot), name=f"{self.name}-worker")
        slot.task.add_done_callback(lambda _: self._respawn(slot))
        return slot

    def _respawn(self, slot: _Slot) -> None:
        """A worker ends only when cancelled (drain or revoke); replace it while running."""
        slot.tp = None
        if self.accepting:
            self._spawn(slot)

    async def _work(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        ran = 0
        while True:
            if not self._backlog or not self.accepting:
                slot.idle = loop.create_future()
                await slot.idle
                continue
            tp, record, ticket = self._backlog.popleft()
            self._backlog_bytes -= len(record.value or b"")
            if ticket.revoked:
                continue
            slot.tp, slot.done = tp, loop.create_future()
            try:
                await self._run(record)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The runner handles every job error itself; reaching here is a bug.
                # The offset stays unfinished so the record is redelivered, not lost.
                log.exception("pool.run_crashed", job_pool=self.name, offset=record.offset)
            else:
                ticket.finish()
                self.finished += 1
            finally:
                slot.tp = None
                slot.done.set_result(None)
                self._flow_check()
            ran += 1
            if ran % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    @property
    def in_flight(self) -> int:
        return sum(1 for slot in self._slots if slot.tp is not None)

    @property
    def waiting(self) -> int:
        """Records taken from Kafka but not running yet (backlog and retry timers)."""
        return len(self._backlog) + len(self._timers)

    def _drop_waiting(self, tps: set[Hashable] | None) -> None:
        self._backlog = deque(
            item for item in self._backlog if tps is not None and item[0] not in tps
        )
        self._backlog_bytes = sum(len(item[1].value or b"") for item in self._backlog)
        for timer, tp in list(self._timers.items()):
            if tps is None or tp in tps:
                timer.cancel()

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
