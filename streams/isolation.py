"""Jobs run side by side, except a suspect (see ``streams.crashguard``), which runs alone.

A readers-writer gate for the whole process: every job attempt holds it
*shared* while its code runs; a job attempt on its last chance before being
dead-lettered as a crash suspect takes it *exclusive*, so that a death while
it runs is its own. Nobody holds the gate while waiting between attempts.

A suspect waiting for the gate stops new jobs from starting (so that the
running ones can end and it gets its turn), but only for ``block_s``: if the
jobs running then are long ones, new jobs start again and the suspect waits
for a quiet moment beside them for ``yield_s``, then asks again. So a
suspect queued behind a 15-minute job costs the worker at most ``block_s``
of every ``block_s + yield_s`` seconds of new starts, never the whole 15
minutes. Suspects queue in order; the shared fast path is two attribute
reads and an increment.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

BLOCK_S = 10.0
YIELD_FACTOR = 3.0  # a suspect that could not get its turn lets jobs start 3x as long


@dataclass(eq=False, slots=True)
class _Waiter:
    future: asyncio.Future[None]
    blocking: bool = True  # new shared holders wait while it blocks


class Isolation:
    def __init__(self, block_s: float = BLOCK_S, yield_s: float | None = None) -> None:
        self.block_s = block_s
        self.yield_s = block_s * YIELD_FACTOR if yield_s is None else yield_s
        self._shared = 0
        self._exclusive = False
        self._queue: deque[_Waiter] = deque()
        self._blocking = 0  # waiters in the queue that block new shared holders
        self._readers: list[asyncio.Future[None]] = []

    @property
    def exclusive_waiting(self) -> bool:
        return any(not w.future.done() for w in self._queue)

    @property
    def exclusive_held(self) -> bool:
        return self._exclusive

    @property
    def blocking(self) -> bool:
        """A waiting suspect keeps new jobs from starting now."""
        return bool(self._blocking)

    @property
    def shared_holders(self) -> int:
        return self._shared

    def try_shared(self) -> bool:
        if self._exclusive or self._blocking:
            return False
        self._shared += 1
        return True

    async def shared(self) -> None:
        while not self.try_shared():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._readers.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._readers:
                    self._readers.remove(waiter)

    def release_shared(self) -> None:
        self._shared -= 1
        if self._shared == 0:
            self._grant()

    async def exclusive(self) -> None:
        """Wait until nothing else holds the gate, then hold it alone."""
        waiter = _Waiter(asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self._blocking += 1
        self._grant()
        try:
            while not waiter.future.done():
                wait_s = self.block_s if waiter.blocking else self.yield_s
                await asyncio.wait({waiter.future}, timeout=wait_s)
                if not waiter.future.done():
                    self._set_blocking(waiter, not waiter.blocking)
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release_exclusive()  # granted just as it was cancelled
            else:
                waiter.future.cancel()
                self._remove(waiter)
            raise

    def release_exclusive(self) -> None:
        self._exclusive = False
        self._grant()

    def _set_blocking(self, waiter: _Waiter, blocking: bool) -> None:
        if waiter.blocking == blocking:
            return
        waiter.blocking = blocking
        self._blocking += 1 if blocking else -1
        if not blocking:
            self._wake_readers()

    def _remove(self, waiter: _Waiter) -> None:
        if waiter in self._queue:
            self._queue.remove(waiter)
        if waiter.blocking:
            waiter.blocking = False
            self._blocking -= 1
        self._grant()

    def _grant(self) -> None:
        if self._exclusive or self._shared:
            return
        while self._queue:
            waiter = self._queue.popleft()
            if waiter.blocking:
                waiter.blocking = False
                self._blocking -= 1
            if not waiter.future.done():
                self._exclusive = True
                waiter.future.set_result(None)
                return
        self._wake_readers()

    def _wake_readers(self) -> None:
        if self._exclusive or self._blocking:
            return
        readers, self._readers = self._readers, []
        for waiter in readers:
            if not waiter.done():
                waiter.set_result(None)
