"""Key order in the job pool: one record per key at a time, in offset order, other keys beside.

The issue's own test runs the real worker (tests/e2e/test_key_order.py);
these drive the pool directly, including the 2,000-record case.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable

import pytest

from streams.pool import JobPool, Ordering
from streams.records import Record
from tests.unit.test_pool import OTHER, TP, Flow, close, pool, record

Ident = tuple[str, int, int]


def ident(rec: Record) -> Ident:
    return rec.topic, rec.partition, rec.offset


class Jobs:
    """A fake job body that records each start and end.

    A run holds until released (``hold``), or yields to the event loop a
    random number of times (seeded), so runs end in a shuffled order.
    """

    def __init__(self, *, hold: bool = False, seed: int = 0, max_yields: int = 0) -> None:
        self.hold = hold
        self.rnd = random.Random(seed)
        self.max_yields = max_yields
        self.running: dict[Ident, Record] = {}
        self.started: list[Record] = []
        self.ended: list[Record] = []
        self.overlaps: list[Record] = []  # started while a record of its key ran
        self.in_flight_at_start: list[int] = []
        self._release: defaultdict[Ident, asyncio.Event] = defaultdict(asyncio.Event)
        self._changed = asyncio.Event()

    async def __call__(self, rec: Record) -> None:
        if rec.key is not None and any(r.key == rec.key for r in self.running.values()):
            self.overlaps.append(rec)
        self.running[ident(rec)] = rec
        self.started.append(rec)
        self.in_flight_at_start.append(len(self.running))
        self._notify()
        try:
            if self.hold:
                await self._release[ident(rec)].wait()
            for _ in range(self.rnd.randint(0, self.max_yields)):
                await asyncio.sleep(0)
        finally:
            del self.running[ident(rec)]
        self.ended.append(rec)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def release(self, rec: Record) -> None:
        self._release[ident(rec)].set()

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        async with asyncio.timeout(5):
            while not predicate():
                await self._changed.wait()
        assert predicate(), what

    def running_offsets(self) -> set[int]:
        return {rec.offset for rec in self.running.values()}


def keyed(offsets_keys: str, tp: tuple[str, int] = TP) -> list[Record]:
    """Records at offsets 0.. with one-letter keys; '-' is a record without a key."""
    return [
        record(offset, tp, None if k == "-" else k.encode())
        for offset, k in enumerate(offsets_keys)
    ]


def submit_all(p: JobPool, records: list[Record]) -> None:
    for rec in records:
        p.submit((rec.topic, rec.partition), rec)


async def test_one_record_per_key_at_a_time_in_offset_order_other_keys_beside() -> None:
    jobs = Jobs(hold=True)
    p, tracker = pool(jobs, concurrency=4, ordering="key", high_water=100)
    recs = keyed("aabab-c")
    submit_all(p, recs)
    await jobs.until(lambda: len(jobs.running) == 4, "a, b, the keyless record and c run")
    assert jobs.running_offsets() == {0, 2, 5, 6}, "one record per key; keys side by side"

    jobs.release(recs[2])  # b's first ends: b's next (offset 4) starts, a still waits
    await jobs.until(lambda: 4 in jobs.running_offsets(), "b's next record starts")
    assert jobs.running_offsets() == {0, 4, 5, 6}
    assert tracker.committable(TP) is None, "offset 0 runs: nothing is committable yet"

    for rec in recs:
        jobs.release(rec)
    await jobs.until(lambda: len(jobs.ended) == len(recs), "every record ends")
    assert [r.offset for r in jobs.started if r.key == b"a"] == [0, 1, 3]
    assert [r.offset for r in jobs.started if r.key == b"b"] == [2, 4]
    assert jobs.overlaps == []
    assert tracker.committable(TP) == len(recs)
    await close(p)


async def test_the_oldest_ready_record_starts_first_whatever_its_key() -> None:
    """A key whose record ends does not keep its slot ahead of older records of other keys.

    Otherwise the keys holding the slots keep them while their lanes last,
    and an idle key's older record waits: its partition's commit stalls with it.
    """
    jobs = Jobs(hold=True)
    p, _ = pool(jobs, concurrency=2, ordering="key", high_water=100)
    recs = keyed("abcaxb")  # a and b run; c, then a's next, then x wait; b's next behind b
    submit_all(p, recs)
    await jobs.until(lambda: jobs.running_offsets() == {0, 1}, "a and b run")
    jobs.release(recs[0])
    await jobs.until(lambda: jobs.running_offsets() == {1, 2}, "c (older) before a's next")
    jobs.release(recs[2])
    await jobs.until(lambda: jobs.running_offsets() == {1, 3}, "a's next before x (newer)")
    for rec in recs:
        jobs.release(rec)
    await jobs.until(lambda: len(jobs.ended) == len(recs), "every record ends")
    assert [r.offset for r in jobs.started] == [0, 1, 2, 3, 4, 5]
    await close(p)


@pytest.mark.parametrize(
    ("ordering", "keys", "overlaps"),
    [("none", "aaa", 2), ("key", "---", 0)],
    ids=["without ordering one key runs side by side", "a record without a key is its own key"],
)
async def test_records_that_need_no_order_run_side_by_side(
    ordering: Ordering, keys: str, overlaps: int
) -> None:
    jobs = Jobs(hold=True)
    p, _ = pool(jobs, concurrency=3, ordering=ordering, high_water=100)
    submit_all(p, keyed(keys))
    await jobs.until(lambda: len(jobs.running) == 3, "all three run")
    assert len(jobs.overlaps) == overlaps
    await close(p)


async def test_two_thousand_records_over_fifty_keys_keep_order_and_fill_every_slot() -> None:
    """The issue's numbers in process: a key holding half the records never blocks the others."""
    rnd = random.Random(12)
    keys = [b"hot" if rnd.random() < 0.5 else f"k{rnd.randrange(49)}".encode() for _ in range(2000)]
    recs = [record(offset, TP, key) for offset, key in enumerate(keys)]
    jobs = Jobs(seed=12, max_yields=20)
    p, tracker = pool(jobs, concurrency=8, ordering="key", high_water=10_000)
    submit_all(p, recs)
    await jobs.until(lambda: len(jobs.ended) == len(recs), "every record ends")

    assert jobs.overlaps == [], "two records of one key were in flight together"
    per_key: dict[bytes | None, list[int]] = defaultdict(list)
    for rec in jobs.started:
        per_key[rec.key].append(rec.offset)
    assert all(offsets == sorted(offsets) for offsets in per_key.values())
    assert tracker.committable(TP) == len(recs)
    # Until 90 % of the other keys' records have started, every start finds
    # the other slots busy: the hot key holds one, never more, and waits for
    # none. (A slot yields to the loop once every 64 runs, empty for that turn:
    # a start may then find 7.)
    others = sum(1 for k in keys if k != b"hot")
    started_others, busy = 0, []
    for rec, in_flight in zip(jobs.started, jobs.in_flight_at_start, strict=True):
        started_others += rec.key != b"hot"
        if started_others >= 0.9 * others:
            break
        busy.append(in_flight)
    busy = busy[8:]
    assert min(busy) >= 7, f"slots left idle while other keys waited: {min(busy)}"
    assert sum(busy) / len(busy) > 7.9, sum(busy) / len(busy)
    await close(p)


async def test_a_retry_record_not_yet_due_does_not_hold_its_key() -> None:
    jobs = Jobs(hold=True)
    p, tracker = pool(jobs, concurrency=4, ordering="key", high_water=100)
    retry = record(0, OTHER, b"a")  # a retry-topic record of key a, due in a minute
    p.submit(OTHER, retry, due_in_s=60.0)
    later = keyed("aa")
    submit_all(p, later)
    await jobs.until(lambda: jobs.running_offsets() == {0}, "key a's next record runs")
    jobs.release(later[0])
    jobs.release(later[1])
    await jobs.until(lambda: len(jobs.ended) == 2, "both of key a's records end")
    assert tracker.committable(TP) == 2
    assert p.waiting == 1, "the retry record still waits for its time"
    await close(p)


async def test_a_due_retry_record_waits_behind_its_key_and_runs_next() -> None:
    jobs = Jobs(hold=True)
    p, _ = pool(jobs, concurrency=4, ordering="key", high_water=100)
    first = record(0, TP, b"a")
    p.submit(TP, first)
    await jobs.until(lambda: len(jobs.running) == 1, "key a's record runs")
    retry = record(0, OTHER, b"a")
    p.submit(OTHER, retry, due_in_s=0.01)
    timers = set(p._timers)
    await asyncio.wait(timers)  # the retry record is due now
    assert list(jobs.running.values()) == [first], "the due retry waits behind its key"
    jobs.release(first)
    await jobs.until(lambda: ident(retry) in jobs.running, "the retry record runs next")
    jobs.release(retry)
    await jobs.until(lambda: len(jobs.ended) == 2, "both end")
    assert jobs.overlaps == []
    await close(p)


async def test_records_behind_a_busy_key_pause_only_their_partition() -> None:
    jobs = Jobs(hold=True)
    flow: Flow = []
    p, _ = pool(jobs, concurrency=2, flow=flow, ordering="key", high_water=4)
    hot = keyed("hhhhhh")  # one runs, five wait behind it: past the high-water mark of 4
    submit_all(p, hot)
    assert flow[-1] == (False, frozenset({TP})), "the busy key's partition pauses alone"
    others = keyed("xy", OTHER)  # with h's first: 3 ready, below the mark
    submit_all(p, others)
    await jobs.until(lambda: len(jobs.running) == 2, "another partition's record runs")
    assert flow[-1] == (False, frozenset({TP})), "the other partition keeps flowing"
    for rec in hot[:4]:
        jobs.release(rec)
    await jobs.until(lambda: len([r for r in jobs.ended if r.key == b"h"]) == 4, "h drains")
    assert flow[-1] == (False, frozenset()), "resumed below the low-water mark"
    for rec in hot + others:
        jobs.release(rec)
    await jobs.until(lambda: len(jobs.ended) == 8, "everything ends")
    await close(p)


async def test_a_revoke_drops_its_partitions_records_and_their_keys_move_on() -> None:
    jobs = Jobs(hold=True)
    p, tracker = pool(jobs, concurrency=2, ordering="key", high_water=100)
    going = record(0, OTHER, b"a")
    p.submit(OTHER, going)  # runs; revoked below
    behind = [record(1, OTHER, b"a"), record(0, TP, b"a"), record(2, OTHER, b"a")]
    for rec in behind:
        p.submit((rec.topic, rec.partition), rec)
    await jobs.until(lambda: len(jobs.running) == 1, "key a's first record runs")
    tracker.revoke([OTHER])
    cancelled = await p.drain(0.01, [OTHER])
    assert cancelled == 1
    await jobs.until(lambda: jobs.running_offsets() == {0}, "the kept partition's record runs")
    assert list(jobs.running.values()) == [behind[1]]
    jobs.release(behind[1])
    await jobs.until(lambda: len(jobs.ended) == 1, "it ends")
    assert [ident(r) for r in jobs.started] == [ident(going), ident(behind[1])]
    assert p.waiting == 0 and tracker.committable(TP) == 1
    await close(p)


async def test_a_shutdown_drain_leaves_every_waiting_record_unfinished() -> None:
    jobs = Jobs(hold=True)
    p, tracker = pool(jobs, concurrency=2, ordering="key", high_water=100)
    submit_all(p, keyed("aab"))
    await jobs.until(lambda: len(jobs.running) == 2, "a and b run")
    p.accepting = False
    assert await p.drain(0.01) == 2
    assert p.waiting == 0 and jobs.ended == []
    assert tracker.committable(TP) is None
