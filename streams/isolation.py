"""Jobs run side by side, except a suspect (see ``streams.crashguard``), which runs alone.

A readers-writer gate for the whole process: every job holds it *shared*
while it runs; a job suspected of killing the worker takes it *exclusive*,
which waits for the running jobs to finish and keeps new ones from starting
until it is done. Suspects queue in order; the shared fast path is two
attribute reads and an increment.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Isolation:
    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._queue: deque[asyncio.Future[None]] = deque()
        self._readers: list[asyncio.Future[None]] = []

    @property
    def exclusive_waiting(self) -> bool:
        return any(not f.done() for f in self._queue)

    @property
    def exclusive_held(self) -> bool:
        return self._exclusive

    def try_shared(self) -> bool:
        if self._exclusive or self._queue:
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
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        self._grant()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release_exclusive()  # granted just as it was cancelled
            else:
                if waiter in self._queue:
                    self._queue.remove(waiter)
                self._grant()
            raise

    def release_exclusive(self) -> None:
        self._exclusive = False
        self._grant()

    def _grant(self) -> None:
        if self._exclusive or self._shared:
            return
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                self._exclusive = True
                waiter.set_result(None)
                return
        readers, self._readers = self._readers, []
        for waiter in readers:
            if not waiter.done():
                waiter.set_result(None)
