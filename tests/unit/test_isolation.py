"""The gate that makes a suspect job run alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from streams.isolation import Isolation


async def test_shared_holders_run_together_and_an_exclusive_waits_for_them() -> None:
    gate = Isolation()
    assert gate.try_shared() and gate.try_shared()
    alone = asyncio.create_task(gate.exclusive())
    await asyncio.sleep(0)
    assert not alone.done(), "a suspect waits for the running jobs"
    assert not gate.try_shared(), "nothing new starts while a suspect waits"
    gate.release_shared()
    await asyncio.sleep(0)
    assert not alone.done()
    gate.release_shared()
    await alone
    assert gate.exclusive_held


async def test_jobs_waiting_behind_a_suspect_start_when_it_is_done() -> None:
    gate = Isolation()
    await gate.exclusive()
    waiting = [asyncio.create_task(gate.shared()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in waiting)
    gate.release_exclusive()
    await asyncio.gather(*waiting)
    assert gate.try_shared(), "the gate is shared again: more jobs may join"
    for _ in range(4):
        gate.release_shared()
    assert not gate.exclusive_held


async def test_suspects_run_one_at_a_time_in_order() -> None:
    gate = Isolation()
    order: list[int] = []

    async def suspect(n: int) -> None:
        await gate.exclusive()
        order.append(n)
        await asyncio.sleep(0)
        assert gate.exclusive_held
        gate.release_exclusive()

    await asyncio.gather(*(suspect(n) for n in range(4)))
    assert order == [0, 1, 2, 3]
    assert gate.try_shared()


async def test_a_cancelled_waiting_suspect_does_not_block_the_others() -> None:
    gate = Isolation()
    assert gate.try_shared()
    first = asyncio.create_task(gate.exclusive())
    second = asyncio.create_task(gate.exclusive())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    gate.release_shared()
    await second
    assert gate.exclusive_held
    gate.release_exclusive()
    assert gate.try_shared()


async def test_a_waiting_suspect_stops_new_starts_only_for_a_while() -> None:
    """A suspect queued behind a long job lets new jobs start again after ``block_s``.

    Before, a queued suspect kept every new job waiting until all running
    ones ended (a 900 s knowledge-graph job stopped the whole worker).
    """
    gate = Isolation(block_s=0.05, yield_s=0.05)
    assert gate.try_shared()  # a long job
    alone = asyncio.create_task(gate.exclusive())
    await asyncio.sleep(0)
    assert gate.blocking and not gate.try_shared(), "at first nothing new starts"
    late = asyncio.create_task(gate.shared())
    await asyncio.wait_for(late, timeout=2.0)  # let in once the suspect yields
    assert not alone.done() and gate.shared_holders == 2
    gate.release_shared()  # the job let in ends
    await asyncio.wait_for(until(lambda: gate.blocking), timeout=2.0)  # the suspect asks again
    gate.release_shared()  # the long job ends
    await asyncio.wait_for(alone, timeout=2.0)
    assert gate.exclusive_held and not gate.blocking
    gate.release_exclusive()
    assert gate.try_shared()


async def until(condition: Callable[[], bool]) -> None:
    """Poll (bounded by the caller's wait_for): the gate's toggle has no event to await."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.005)
