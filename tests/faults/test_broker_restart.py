"""Kafka stops for 20 s in the middle of a load and comes back: nothing lost, nothing twice.

The broker is the test's own (tests/support/dedicated_kafka.py) — stopping
the shared one would break every other test run on the machine. One worker
runs 2,000 probe jobs at concurrency 8; at 30 % done the broker is stopped
(SIGTERM, a clean shutdown), left down for 20 s and started again on the
same ports and data. The same worker process must carry on by itself, its
``/readyz`` must say 503 while the broker is gone and 200 once it is back,
and every job's effect must exist exactly once (probe_effects, written in
the same transaction as the job's ledger row).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from tests.support.dedicated_kafka import DedicatedKafka
from tests.support.metrics_port import metrics_env, readyz
from tests.support.probe import PROBE_ENV, effects, probe_jobs, wait_done
from tests.support.services import Endpoints
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

JOBS = 2000
DOWN_S = 20.0
ENV = {**PROBE_ENV, "CONVEYOR_JOBS__PROBE__CONCURRENCY": "8"}


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[DedicatedKafka]:
    broker = DedicatedKafka("restart").start()
    yield broker
    broker.close()


async def test_broker_restart_mid_load_loses_nothing_and_applies_nothing_twice(
    services: Endpoints,
    own_kafka: DedicatedKafka,
    db: asyncpg.Pool,
    worker_factory: Any,
) -> None:
    stack = Stack(own_kafka.bootstrap, services.dsn)
    stack.create_topics()
    port, serve = metrics_env()
    worker = worker_factory(stack, **ENV, **serve)
    worker.wait_ready()
    assert await readyz(port) == 200
    jobs = probe_jobs(JOBS, seed=14)
    stack.publish(jobs)
    await wait_done(db, jobs, JOBS * 0.3, what="30 % of the jobs done")

    await asyncio.to_thread(own_kafka.stop)
    stopped = time.monotonic()
    at_stop = await effects(db, jobs)
    await eventually(lambda: readyz(port), lambda s: s == 503, timeout_s=15, what="not ready")
    unready_after_s = time.monotonic() - stopped
    while (left := DOWN_S - (time.monotonic() - stopped)) > 0:  # the outage itself, 20 s
        assert await readyz(port) == 503, "ready while the broker is down"
        await asyncio.sleep(min(1.0, left))
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()

    restart_s = await asyncio.to_thread(own_kafka.restart)
    back = time.monotonic()
    await eventually(lambda: readyz(port), lambda s: s == 200, timeout_s=90, what="ready again")
    ready_again_s = time.monotonic() - back
    final = await wait_done(db, jobs, timeout_s=240, what="every job done after the restart")
    skipped = sum(
        1
        for e in worker.events
        if e.get("event") == "job.succeeded" and e.get("outcome") == "skipped"
    )
    errors = sorted({e.get("event", "")[:80] for e in worker.events if e.get("level") == "error"})
    print(
        f"\n[broker-restart] jobs={JOBS} effects={final.total} duplicates={final.duplicated} "
        f"done_at_stop={at_stop.distinct} unready_after_s={unready_after_s:.1f} "
        f"broker_restart_s={restart_s:.1f} ready_again_after_s={ready_again_s:.1f} "
        f"redelivered_and_skipped={skipped} "
        f"revocations={worker.count('worker.partitions_revoked')} error_events={errors}"
    )
    assert final.total == JOBS and final.duplicated == 0
    assert worker.proc.poll() is None, "the worker recovers without a restart"
    assert worker.count("worker.partitions_assigned") >= 1


async def test_a_sigterm_while_the_broker_is_down_leaves_no_death_to_count(
    services: Endpoints,
    own_kafka: DedicatedKafka,
    db: asyncpg.Pool,
    worker_factory: Any,
) -> None:
    """The drain tells the crash guard its partitions ended cleanly before it commits.

    Before, the release came after the shutdown commit: with the broker down
    the commit outlasted the hard deadline, the reservations stayed, and the
    next owner blamed every reserved record for a death that never happened.
    """
    await asyncio.to_thread(own_kafka.start)  # up (the test before restarted it)
    stack = Stack(own_kafka.bootstrap, services.dsn)
    stack.create_topics()
    worker = worker_factory(
        stack, **ENV, CONVEYOR_WORKER__DRAIN_TIMEOUT_S="5", CONVEYOR_WORKER__HARD_EXIT_AFTER_S="5"
    )
    worker.wait_ready()
    jobs = probe_jobs(600, seed=15)
    stack.publish(jobs)
    await wait_done(db, jobs, 100, what="some jobs done")
    group = f"{stack.prefix}-group"
    reserved = await db.fetchval(
        "SELECT count(*) FROM job_journal WHERE group_id = $1 AND reserved_to IS NOT NULL", group
    )
    assert reserved > 0, "the running worker holds reservations"

    await asyncio.to_thread(own_kafka.stop)
    worker.signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait_exit, 60)
    left = await db.fetch(
        "SELECT topic, partition, reserved_to, isolated_offset FROM job_journal"
        " WHERE group_id = $1 AND (reserved_to IS NOT NULL OR isolated_offset IS NOT NULL)",
        group,
    )
    assert [dict(r) for r in left] == [], "a clean shutdown left reservations behind"
    await asyncio.to_thread(own_kafka.restart)
