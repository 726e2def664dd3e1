"""The crash guard's journal in the real Postgres: who is blamed for a worker's death.

A "death" here is a guard whose connection closes without ``release()``,
which is what Postgres sees when a worker is SIGKILLed; the e2e test
(tests/e2e/test_crash_loop.py) kills real worker processes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from faust.types import TP

from streams.crashguard import CrashGuard, Entry
from streams.isolation import Isolation
from tests.support.services import Endpoints

pytestmark = pytest.mark.integration

Guards = Callable[[], CrashGuard]


@pytest.fixture
async def guards(services: Endpoints) -> AsyncIterator[Guards]:
    group = f"g-{uuid.uuid4().hex[:8]}"
    made: list[CrashGuard] = []

    def make() -> CrashGuard:
        guard = CrashGuard(services.dsn, group, ["jobs"], Isolation(), "conveyor-test")
        made.append(guard)
        return guard

    yield make
    for guard in made:
        await guard.close()


TOPIC = TP("jobs", 0)


async def started(guard: CrashGuard, start: int, end: int = 10_000) -> CrashGuard:
    """A guard assigned TOPIC, starting at ``start``, its log ending at ``end``."""
    await guard.open()
    guard.assigned({TOPIC: start}, {TOPIC: end}, generation=1)
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


async def test_a_death_blames_the_reserved_records_and_a_lone_run_narrows_it_to_one(
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
    assert entry.alone and entry.crashes == 1
    assert second._parts[TOPIC].suspects == {o: 1 for o in range(2, top + 1)}
    await second.close()  # died again, while 2 ran alone

    third = await started(guards(), 2)
    entry = await enter(third, 2)
    assert entry.alone and entry.crashes == 2
    assert third._parts[TOPIC].suspects == {2: 2, **{o: 1 for o in range(3, top + 1)}}, (
        "the death while 2 ran alone is 2's alone"
    )


async def test_suspects_that_finish_are_forgotten_and_a_clean_release_blames_nobody(
    guards: Guards, db: asyncpg.Pool
) -> None:
    top = await died_running_0(guards, db)

    second = await started(guards(), 0)
    assert await enter(second, top + 1) is not None  # claimed
    second.isolation.release_shared()
    assert sorted(second._parts[TOPIC].suspects) == list(range(top + 1))
    for offset in range(top + 1):
        entry = await enter(second, offset)
        assert entry.alone and entry.crashes == 1
        await second.leave_alone(entry, finished=True)
    assert not second._parts[TOPIC].suspects
    rows = await db.fetchval("SELECT count(*) FROM job_crashes WHERE group_id = $1", second._group)
    assert rows == 0, "an innocent suspect's count goes once it finished"
    await second.release()
    await second.close()

    third = await started(guards(), top + 2)
    entry = await enter(third, top + 2)
    assert not entry.alone, "a clean release leaves no death to count"
    assert not third._parts[TOPIC].suspects


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
    new = await started(guards(), 0)
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
