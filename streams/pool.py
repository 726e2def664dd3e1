"""Bounded concurrency per job type, with offset tickets, back-pressure and a drain.

The agent hands each record to ``submit()`` in partition order and never
waits: Faust delivers every topic of the worker through one loop, so an
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

import structlog

from streams.offsets import OffsetTracker, Ticket
from streams.records import Record

log = structlog.get_logger("conveyor.pool")

RunFn = Callable[[Record], Awaitable[None]]
FlowFn = Callable[[bool], None]  # True: pause the pool's partitions; False: resume


class JobPool:
    """Runs records of one job type, at most ``concurrency`` at a time."""

    def __init__(
        self,
        name: str,
        concurrency: int,
        run: RunFn,
        tracker: OffsetTracker[Hashable],
        flow: FlowFn = lambda pause: None,
        high_water: int | None = None,
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self._run = run
        self._tracker = tracker
        self._flow = flow
        self.high_water = high_water or max(16, 4 * concurrency)
        self.low_water = self.high_water // 2
        self._backlog: deque[tuple[Hashable, Record, Ticket]] = deque()
        self._timers: dict[asyncio.Task[None], Hashable] = {}
        self._tasks: dict[asyncio.Task[None], Hashable] = {}
        self._paused = False
        self.accepting = True
        self.finished = 0

    def submit(self, tp: Hashable, record: Record, due_in_s: float = 0.0) -> None:
        """Start ``record``'s offset and queue it (after ``due_in_s``); never blocks."""
        if not self.accepting:
            return
        ticket = self._tracker.start(tp, record.offset)
        if ticket is None:
            return  # the partition was revoked: its new owner will run the record
        if due_in_s > 0:
            timer = asyncio.create_task(self._later(tp, record, ticket, due_in_s))
            self._timers[timer] = tp
            timer.add_done_callback(lambda t: self._timers.pop(t, None))
        else:
            self._backlog.append((tp, record, ticket))
        self._pump()

    async def _later(self, tp: Hashable, record: Record, ticket: Ticket, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._backlog.append((tp, record, ticket))
        self._pump()

    def _pump(self) -> None:
        while self.accepting and self._backlog and len(self._tasks) < self.concurrency:
            tp, record, ticket = self._backlog.popleft()
            if ticket.revoked:
                continue
            task = asyncio.create_task(
                self._guarded(record, ticket), name=f"{self.name}@{record.offset}"
            )
            self._tasks[task] = tp
            task.add_done_callback(self._done)
        waiting = self.waiting
        if waiting >= self.high_water and self.accepting:
            self._paused = True
            self._flow(True)  # idempotent; re-asserted in case Faust resumed them
        elif self._paused and waiting <= self.low_water:
            self._paused = False
            self._flow(False)

    async def _guarded(self, record: Record, ticket: Ticket) -> None:
        try:
            await self._run(record)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The runner handles every job error itself; reaching here is a bug.
            # The offset stays unfinished so the record is redelivered, not lost.
            log.exception("pool.run_crashed", job_pool=self.name, offset=record.offset)
            return
        ticket.finish()
        self.finished += 1

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._pump()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def waiting(self) -> int:
        """Records taken from Kafka but not running yet (backlog and retry timers)."""
        return len(self._backlog) + len(self._timers)

    def _drop_waiting(self, tps: set[Hashable] | None) -> None:
        self._backlog = deque(
            item for item in self._backlog if tps is not None and item[0] not in tps
        )
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
        tasks = [t for t, tp in self._tasks.items() if wanted is None or tp in wanted]
        cancelled = 0
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
            cancelled = len(pending)
        self._pump()
        return cancelled
