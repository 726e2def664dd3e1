"""A second worker joins the group mid-load, then leaves: nothing lost, nothing twice."""

from __future__ import annotations

import signal
from typing import Any

import asyncpg
import pytest

from tests.support.probe import PROBE_ENV, probe_jobs, wait_done
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

JOBS = 2000
ENV = {**PROBE_ENV, "CONVEYOR_JOBS__PROBE__CONCURRENCY": "8"}


async def test_worker_joining_and_leaving_mid_load(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    jobs = probe_jobs(JOBS, seed=3)
    first = worker_factory(stack, **ENV)
    first.wait_ready()
    stack.publish(jobs)
    await wait_done(db, jobs, JOBS * 0.25, what="a quarter done")

    second = worker_factory(stack, **ENV)
    second.wait_ready()
    joined = second.wait_for(lambda e: e.get("event") == "worker.partitions_assigned")
    assert any(tp.startswith(f"{stack.prefix}.probe:") for tp in joined["assigned"])
    first.wait_for(lambda e: e.get("event") == "worker.partitions_revoked", timeout_s=60)
    await wait_done(db, jobs, JOBS * 0.6, what="60 % done with two workers")

    second.signal(signal.SIGTERM)
    assert second.wait_exit(timeout_s=40) == 0, second.tail()
    final = await wait_done(db, jobs, timeout_s=180)
    skipped = sum(
        1
        for w in (first, second)
        for e in w.events
        if e.get("event") == "job.succeeded" and e.get("outcome") == "skipped"
    )
    revokes = [
        e
        for w in (first, second)
        for e in w.events
        if e.get("event") == "worker.partitions_revoked"
    ]
    print(
        f"\n[rebalance] jobs={JOBS} effects={final.total} duplicates={final.duplicated} "
        f"revocations={len(revokes)} cancelled_on_revoke={sum(e['cancelled'] for e in revokes)}"
        f" redelivered_and_skipped={skipped} second_worker_jobs={second.count('job.succeeded')}"
    )
    assert final.total == JOBS and final.duplicated == 0
