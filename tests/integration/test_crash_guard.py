"""The crash guard's journal in the real Postgres: who is blamed for a worker's death.

A "death" here is a guard whose connection closes without ``release()``,
which is what Postgres sees when a worker is SIGKILLed; the e2e test
(tests/e2e/test_crash_loop.py) kills real worker processes. The job type
here has ``max_crashes`` 3: a record runs alone from its 2nd death on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from faust.types import TP

from streams.crashguard import CrashGuard, Entry
from streams.isolation import Isolation
from tests.support.services import Endpoints
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

Guards = Callable[[], CrashGuard]
MAX_CRASHES = 3


@pytest.fixture
async def guards(services: Endpoints) -> AsyncIterator[Guards]:
    group = f"g-{uuid.uuid4().hex[:8]}"
    made: list[CrashGuard] = []

    def make() -> CrashGuard:
        guard = CrashGuard(services.dsn, group, {"jobs": MAX_CRASHES}, Isolation(), "conveyor-test")
        made.append(guard)
        return guard

    yield make
    for guard in made:
        await guard.close()


TOPIC = TP("jobs", 0)


async def started(
    guard: CrashGuard, start: int, end: int = 10_000, generation: int = 1
) -> CrashGuard:
    """A guard assigned TOPIC in ``generation`` from ``start``; its log ends at ``end``."""
    await guard.open()
    guard.assigned({TOPIC: start}, {TOPIC: end}, generation=generation)
    return guard


async def enter(guard: CrashGuard, offset: int) -> Entry:
    return guard.enter_now(TOPIC, offset) or await guard.enter(TOPIC, offset)


async def reserved_to(db: asyncpg.Pool, guard: CrashGuard) -> int:
    """The reservation in the table, once every one asked for was written."""
    part = guard._parts[TOPIC]
    while part.reserved < part.requested:
        await part.changed.wait()
    value = await db.fetchval(
        "SELECT reserved_to FROM job_journal WHERE group_id = $1 AND topic = $2",
        guard._group,
        TOPIC.topic,
    )
    assert isinstance(value, int)
    return value


async def died_running_0(guards: Guards, db: asyncpg.Pool) -> int:
    """A worker died running offset 0 of TOPIC; returns how far it had reserved."""
    first = await started(guards(), 0)
    await enter(first, 0)
    top = await reserved_to(db, first)
    await first.close()  # nothing released
    return top


async def test_deaths_among_others_count_up_to_the_last_chance_and_only_a_lone_one_past_it(
    guards: Guards, db: asyncpg.Pool
) -> None:
    first = await started(guards(), 0)
    for offset in range(5):
        entry = await enter(first, offset)
        assert not entry.alone
        if offset < 2:
            first.isolation.release_shared()  # 0 and 1 finished; 2..4 still running
    top = await reserved_to(db, first)
    assert top >= 4, "every running record was reserved before it ran"
    await first.close()  # died: nothing released

    second = await started(guards(), 2)  # committed offset 2
    entry = await enter(second, 2)
    assert not entry.alone and entry.crashes == 1, "one death among others: it runs beside them"
    assert second._parts[TOPIC].suspects == {o: 1 for o in range(2, top + 1)}
    top2 = await reserved_to(db, second)
    await second.close()  # died again, 2 running beside the others

    third = await started(guards(), 2, generation=3)
    entry = await enter(third, 2)
    assert entry.alone and entry.crashes == 2, "its last chance: it runs alone"
    await third.close()  # died while 2 ran alone

    fourth = await started(guards(), 2, generation=4)
    entry = await enter(fourth, 2)
    assert entry.alone and entry.crashes == MAX_CRASHES, "the death while alone is its own"
    assert fourth._parts[TOPIC].suspects == {
        **{o: 1 for o in range(top2 + 1, top + 1)},
        **{o: 2 for o in range(3, top2 + 1)},
        2: MAX_CRASHES,
    }, "the others were never alone: a count of 2 at most"
    await fourth.close()  # even dead-lettering it killed the worker: it stays past the cap

    fifth = await started(guards(), 2, generation=5)
    await enter(fifth, 2)
    assert fifth._parts[TOPIC].suspects[2] == MAX_CRASHES + 1
    assert all(c <= 2 for o, c in fifth._parts[TOPIC].suspects.items() if o != 2)


async def test_a_neighbour_killed_beside_by_other_jobs_is_never_condemned(
    guards: Guards, db: asyncpg.Pool
) -> None:
    """Offset 0 is reserved at five deaths it did not cause (a job of a type without
    the guard kills the worker, say, while 0 waits for its turn to run alone): it
    reaches its last chance and no further, so it is never dead-lettered unrun."""
    for generation in range(1, 6):
        guard = await started(guards(), 0, generation=generation)
        entry = await enter(guard, 0 if generation < 3 else 100 * generation)
        assert not entry.alone
        assert entry.crashes == (generation - 1 if generation < 3 else 0)
        await reserved_to(db, guard)
        await guard.close()
    crashes = await db.fetchval(
        "SELECT crashes FROM job_crashes WHERE group_id = $1 AND record_offset = 0", guard._group
    )
    assert crashes == MAX_CRASHES - 1


async def test_a_late_claim_from_an_older_generation_takes_nothing(
    guards: Guards, db: asyncpg.Pool
) -> None:
    """An old owner's claim, held up by a database outage across a rebalance, lands
    after the new owner's: the new owner keeps the partition and runs its records.

    Before the fence the late claim took the row, the new owner's reservations
    found another owner, and every record of the partition ended cancelled.
    """
    new = await started(guards(), 0, generation=8)
    assert not (await enter(new, 0)).alone
    new.isolation.release_shared()
    old = await started(guards(), 0, generation=7)  # the claim that was held up
    part = old._parts[TOPIC]
    while not part.claimed:
        await part.changed.wait()
    assert part.lost, "the older generation's claim took nothing"
    owner = await db.fetchval(
        "SELECT owner FROM job_journal WHERE group_id = $1 AND topic = $2", new._group, "jobs"
    )
    assert owner == new._owner
    mine = new._parts[TOPIC]
    new._request(TOPIC, mine, mine.reserved + 1)
    assert not (await enter(new, mine.reserved + 1)).alone
    assert not mine.lost
    assert new.stuck(now=10**9) == [] and old.stuck(now=10**9) == ["jobs:0"]


async def test_suspects_that_finish_are_forgotten_and_a_clean_release_blames_nobody(
    guards: Guards, db: asyncpg.Pool
) -> None:
    top = await died_running_0(guards, db)

    second = await started(guards(), 0, generation=2)
    assert sorted((await enter_all(second, top + 2))[TOPIC].suspects) == list(range(top + 1))
    for offset in range(top + 1):
        entry = await enter(second, offset)
        assert not entry.alone and entry.crashes == 1
        second.finished(TOPIC, offset)
        second.isolation.release_shared()
    assert not second._parts[TOPIC].suspects
    await eventually(
        lambda: db.fetchval("SELECT count(*) FROM job_crashes WHERE group_id = $1", second._group),
        lambda rows: rows == 0,
        what="an innocent suspect's count goes once it finished",
    )
    await second.release()
    await second.close()

    third = await started(guards(), top + 2, generation=3)
    entry = await enter(third, top + 2)
    assert not entry.alone and entry.crashes == 0, "a clean release leaves no death to count"
    assert not third._parts[TOPIC].suspects


async def enter_all(guard: CrashGuard, offset: int) -> dict[Any, Any]:
    """Wait until ``guard`` claimed TOPIC (entering ``offset``, then leaving it)."""
    await enter(guard, offset)
    guard.isolation.release_shared()
    return guard._parts


async def test_counts_below_the_committed_offset_are_pruned(
    guards: Guards, db: asyncpg.Pool
) -> None:
    await died_running_0(guards, db)
    second = await started(guards(), 0)
    await enter(second, 0)  # a suspect, alone
    await second.close()

    third = await started(guards(), 5)  # the records before 5 were committed meanwhile
    await enter(third, 5)
    rows = await db.fetchval(
        "SELECT count(*) FROM job_crashes WHERE group_id = $1 AND record_offset < 5",
        third._group,
    )
    assert rows == 0


async def test_a_reservation_from_a_worker_that_lost_the_partition_is_refused(
    guards: Guards,
) -> None:
    old = await started(guards(), 0)
    await enter(old, 0)
    old.isolation.release_shared()
    new = await started(guards(), 0, generation=2)
    await enter(new, 0)  # new owner (it blames 0.. once: old never released)
    part = old._parts[TOPIC]
    old._request(TOPIC, part, part.reserved + 1)
    while not part.lost:
        await part.changed.wait()
    assert part.lost, "the old owner's late reservation changed nothing"


async def test_records_written_after_a_death_are_not_suspects(
    guards: Guards, db: asyncpg.Pool
) -> None:
    assert await died_running_0(guards, db) >= 2

    second = await started(guards(), 0, end=2)  # only offsets 0 and 1 existed
    await enter(second, 0)
    assert second._parts[TOPIC].suspects == {0: 1, 1: 1}


class _FlakyClient(CrashGuard):
    """A guard whose driver fails its next connections outside its usual error classes
    (a protocol error): the fault is injected where the guard meets asyncpg."""

    failures = 0

    async def _connect(self) -> asyncpg.Connection:
        if self.failures:
            self.failures -= 1
            raise asyncpg.exceptions.ProtocolError("unexpected message from the server")
        return await super()._connect()


async def test_a_driver_error_of_no_usual_class_is_waited_out_and_the_claim_lands(
    services: Endpoints, db: asyncpg.Pool
) -> None:
    """Before, ``_write`` waited out only OSError, PostgresError and InterfaceError: any
    other error killed the claim task, and every record of the partition waited for good."""
    guard = _FlakyClient(
        services.dsn, f"g-{uuid.uuid4().hex[:8]}", {"jobs": MAX_CRASHES}, Isolation(), "t"
    )
    try:
        await guard.open()
        assert guard._conn is not None
        await guard._conn.close()  # the claim below connects again, and fails twice
        guard.failures = 2
        guard.assigned({TOPIC: 0}, {TOPIC: 10_000}, generation=1)
        entry = await asyncio.wait_for(enter(guard, 0), timeout=30)
        assert entry.crashes == 0 and not entry.alone
        assert guard._parts[TOPIC].claimed and guard.failures == 0
        owner = await db.fetchval(
            "SELECT owner FROM job_journal WHERE group_id = $1 AND topic = $2",
            guard._group,
            TOPIC.topic,
        )
        assert owner == guard._owner
    finally:
        await guard.close()
