"""The job pool: bounded concurrency, back-pressure, drain and revoke."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from streams.offsets import OffsetTracker
from streams.pool import JobPool, Ordering, RunFn
from streams.records import Record
from streams.settings import Settings

TP = ("jobs", 0)
OTHER = ("jobs", 1)


def record(offset: int, tp: tuple[str, int] = TP, key: bytes | None = None) -> Record:
    return Record(tp[0], tp[1], offset, key, b"{}", (), None)


class Gate:
    """A fake job body: each run waits until released; records what ran."""

    def __init__(self) -> None:
        self.running: set[int] = set()
        self.peak = 0
        self.done: list[int] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self._progress = asyncio.Condition()

    async def __call__(self, rec: Record) -> None:
        self.running.add(rec.offset)
        self.peak = max(self.peak, len(self.running))
        self.started.set()
        try:
            await self.release.wait()
        finally:
            self.running.discard(rec.offset)
        self.done.append(rec.offset)
        async with self._progress:
            self._progress.notify_all()

    async def wait_done(self, n: int) -> None:
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: len(self.done) >= n), 5)


async def close(p: JobPool) -> None:
    p.accepting = False
    await p.drain(0.1)


Flow = list[tuple[bool, frozenset[Hashable]]]


def pool(
    gate: RunFn,
    concurrency: int = 2,
    flow: Flow | None = None,
    *,
    ordering: Ordering = "none",
    high_water: int = 4,
) -> tuple[JobPool, OffsetTracker[tuple[str, int]]]:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.assign([TP, OTHER])
    tracker.set_positions({TP: 0, OTHER: 0})
    calls = flow if flow is not None else []
    pool = JobPool(
        "t",
        concurrency,
        gate,
        tracker,
        flow=lambda pause_all, paused: calls.append((pause_all, paused)),
        high_water=high_water,
        high_water_bytes=Settings().kafka.backlog_bytes,
        ordering=ordering,
    )
    return pool, tracker


async def test_concurrency_is_bounded_and_all_finish_in_offset_order_commits() -> None:
    gate = Gate()
    p, tracker = pool(gate, concurrency=2)
    for offset in range(6):
        p.submit(TP, record(offset))
    await gate.started.wait()
    await asyncio.sleep(0)
    assert p.in_flight == 2 and gate.peak == 2
    assert tracker.committable(TP) is None
    gate.release.set()
    await gate.wait_done(6)
    assert sorted(gate.done) == list(range(6))
    assert tracker.committable(TP) == 6
    await close(p)


async def test_backlog_past_high_water_pauses_then_resumes() -> None:
    gate = Gate()
    flow: Flow = []
    p, _ = pool(gate, concurrency=1, flow=flow)
    for offset in range(8):
        p.submit(TP, record(offset))
    assert flow and flow[-1] == (True, frozenset()), "paused above the high-water mark"
    gate.release.set()
    await gate.wait_done(8)
    assert flow[-1] == (False, frozenset()), "resumed below the low-water mark"
    await close(p)


async def test_shutdown_drain_cancels_the_late_and_leaves_them_unfinished() -> None:
    gate = Gate()
    p, tracker = pool(gate, concurrency=2)
    for offset in range(5):
        p.submit(TP, record(offset))
    await gate.started.wait()
    p.accepting = False
    cancelled = await p.drain(0.05)
    assert cancelled == 2
    assert gate.done == []
    assert tracker.committable(TP) is None, "nothing finished, nothing to commit"
    p.submit(TP, record(9))
    assert p.waiting == 0, "a draining pool takes nothing new"
    await close(p)


async def test_revoke_drain_touches_only_the_revoked_partitions() -> None:
    gate = Gate()
    p, tracker = pool(gate, concurrency=2)
    p.submit(TP, record(0))
    p.submit(OTHER, record(0, OTHER))
    p.submit(OTHER, record(1, OTHER))  # waits in the backlog
    await gate.started.wait()
    await asyncio.sleep(0)
    tracker.revoke([OTHER])
    cancelled = await p.drain(0.05, [OTHER])
    assert cancelled == 1
    assert p.in_flight == 1 and p.waiting == 0
    gate.release.set()
    await gate.wait_done(1)
    assert gate.done == [0]
    p.submit(TP, record(1))  # the replacement worker still runs jobs
    await gate.wait_done(2)
    await asyncio.sleep(0)
    assert tracker.committable(TP) == 2
    await close(p)
