"""Bounded concurrency per job type, with offset tickets and a drain.

The agent hands each record to ``submit()`` in partition order. The record's
offset is started at once (so nothing later can be committed past it), then
the record waits for a free slot and runs in its own task. Only a run that
returns finishes the offset; a cancelled one leaves it for redelivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable

import structlog

from streams.offsets import OffsetTracker, Ticket
from streams.records import Record

log = structlog.get_logger("conveyor.pool")

RunFn = Callable[[Record], Awaitable[None]]


class JobPool:
    """Runs records of one job type, at most ``concurrency`` at a time."""

    def __init__(
        self, name: str, concurrency: int, run: RunFn, tracker: OffsetTracker[Hashable]
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self._run = run
        self._tracker = tracker
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[asyncio.Task[None], tuple[Hashable, Ticket]] = {}
        self.accepting = True
        self.finished = 0

    async def submit(self, tp: Hashable, record: Record) -> None:
        """Start ``record``'s offset and run it once a slot is free."""
        if not self.accepting:
            return
        ticket = self._tracker.start(tp, record.offset)
        if ticket is None:
            return  # the partition was revoked: its new owner will run the record
        await self._slots.acquire()
        if not self.accepting or ticket.revoked:
            self._slots.release()
            return
        task = asyncio.create_task(
            self._guarded(record, ticket), name=f"{self.name}@{record.offset}"
        )
        self._tasks[task] = (tp, ticket)
        task.add_done_callback(self._done)

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
        self._slots.release()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def tasks_for(self, tps: Iterable[Hashable] | None = None) -> list[asyncio.Task[None]]:
        wanted = None if tps is None else set(tps)
        return [t for t, (tp, _) in self._tasks.items() if wanted is None or tp in wanted]

    async def drain(self, timeout_s: float, tps: Iterable[Hashable] | None = None) -> int:
        """Wait up to ``timeout_s`` for running jobs (of ``tps``), cancel the rest.

        Returns how many were cancelled. Cancelled jobs stay unfinished.
        """
        tasks = self.tasks_for(tps)
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        return len(pending)
