"""SIGTERM and SIGKILL under load: nothing lost, nothing applied twice, clean exit.

Figures (jobs, effects, duplicates, drain time) are printed with -s and
recorded in the closing notes of the reliability issue.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import asyncpg
import pytest

from tests.support.probe import PROBE_ENV, effects, probe_jobs, wait_done
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

JOBS = 2000
DRAIN_TIMEOUT_S = 10.0
ENV = {
    **PROBE_ENV,
    "CONVEYOR_JOBS__PROBE__CONCURRENCY": "8",
    "CONVEYOR_WORKER__DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
}


async def _interrupt_at(db: asyncpg.Pool, jobs: list[Any], fraction: float) -> None:
    await wait_done(db, jobs, JOBS * fraction, what=f"{fraction:.0%} of the jobs done")


async def _finish(db: asyncpg.Pool, jobs: list[Any]) -> Any:
    return await wait_done(db, jobs, timeout_s=180)


async def test_sigterm_mid_load_drains_and_loses_nothing(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    jobs = probe_jobs(JOBS)
    first = worker_factory(stack, **ENV)
    first.wait_ready()
    stack.publish(jobs)
    await _interrupt_at(db, jobs, 0.4)
    sent = time.monotonic()
    first.signal(signal.SIGTERM)
    code = first.wait_exit(timeout_s=DRAIN_TIMEOUT_S + 20)
    drain_s = time.monotonic() - sent
    drained = first.wait_for(lambda e: e.get("event") == "worker.drained", timeout_s=1)
    assert code == 0, first.tail()
    assert drain_s < DRAIN_TIMEOUT_S + 5
    at_stop = await effects(db, jobs)

    second = worker_factory(stack, **ENV)
    second.wait_ready()
    final = await _finish(db, jobs)
    assert final.total == JOBS and final.duplicated == 0
    redelivered = second.count("job.succeeded") - (JOBS - at_stop.distinct)
    print(
        f"\n[sigterm] jobs={JOBS} effects={final.total} duplicates={final.duplicated} "
        f"done_at_sigterm={at_stop.distinct} drain_s={drain_s:.2f} "
        f"in_flight={drained.get('in_flight')} cancelled={drained.get('cancelled')} "
        f"redelivered_after_restart={redelivered}"
    )
    assert drained.get("cancelled") == 0
    assert redelivered == 0, "a clean drain commits everything that finished"


async def test_sigkill_mid_load_loses_nothing_and_applies_nothing_twice(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    jobs = probe_jobs(JOBS, seed=2)
    first = worker_factory(stack, **ENV, CONVEYOR_KAFKA__SESSION_TIMEOUT_S="10")
    first.wait_ready()
    stack.publish(jobs)
    await _interrupt_at(db, jobs, 0.4)
    first.signal(signal.SIGKILL)
    assert first.wait_exit(timeout_s=10) == -signal.SIGKILL
    at_kill = await effects(db, jobs)

    second = worker_factory(stack, **ENV)
    second.wait_ready(timeout_s=120)
    final = await _finish(db, jobs)
    skipped = sum(
        1
        for e in second.events
        if e.get("event") == "job.succeeded" and e.get("outcome") == "skipped"
    )
    print(
        f"\n[sigkill] jobs={JOBS} effects={final.total} duplicates={final.duplicated} "
        f"done_at_kill={at_kill.distinct} redelivered_and_skipped={skipped}"
    )
    assert final.total == JOBS and final.duplicated == 0
