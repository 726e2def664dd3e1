"""Two rebalance races of the offset path, each widened with a test-only delay.

The delays are injected by ``tests/support/hooked_worker.py``: the worker
subprocess is started through that module, which wraps one method with an
``asyncio.sleep``. Nothing in the service (no setting, no environment
variable) can turn them on. Without the delay each race needs an
interleaving that happens on a small fraction of rebalances.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from tests.support.dlq import dlq_rows, wait_dlq
from tests.support.kafka import committed_and_end, read_topic
from tests.support.probe import PROBE_ENV, effects, probe_jobs, wait_done
from tests.support.services import Endpoints
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


async def _all_committed(stack: Stack, topics: list[str], timeout_s: float = 180.0) -> None:
    """Wait until the group's committed offset is the end of every partition of ``topics``."""
    group = f"{stack.prefix}-group"

    async def lagging() -> dict[str, dict[int, tuple[int, int]]]:
        state = {t: committed_and_end(stack.bootstrap, group, t) for t in topics}
        return {t: {p: ce for p, ce in s.items() if ce[0] != ce[1]} for t, s in state.items()}

    await eventually(
        lagging,
        lambda lag: not any(lag.values()),
        timeout_s=timeout_s,
        what="every partition committed to its end",
    )


# -- 1. the revoke commit while Faust's periodic commit is in flight ---------------------

COMMIT_DELAY_S = 2.0
SLOW_COMMIT_ENV = {
    **PROBE_ENV,
    "CONVEYOR_JOBS__PROBE__CONCURRENCY": "2",
    "CONVEYOR_JOBS__PROBE__MAX_ATTEMPTS": "2",
    "CONVEYOR_JOBS__PROBE__IN_PLACE_MAX_S": "0",  # every retry goes through the retry topic
    "CONVEYOR_JOBS__PROBE__BACKOFF_BASE_S": "0.05",
    "CONVEYOR_JOBS__PROBE__BACKOFF_MAX_S": "0.1",
    # A periodic commit every 0.1 s that takes 2 s: one is nearly always in flight.
    "CONVEYOR_KAFKA__COMMIT_INTERVAL_S": "0.1",
}


async def test_a_commit_in_flight_at_revoke_does_not_make_jobs_end_twice(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    """Faust's ``commit()`` returns False without committing while another commit runs.

    The periodic commit took its offsets before the last jobs finished; if
    the revoke then forgets the partitions, the next owner runs those jobs
    again: a second dead letter, a second retry record. Test-only hook:
    every commit of the first worker waits ``COMMIT_DELAY_S`` before it
    reaches the broker (``--commit-delay-s``).
    """
    # Each job fails every attempt: one retry record (attempt 1), one dead letter (attempt 2).
    # Both endings are visible when a job runs again, whichever topic it is redone from.
    jobs = probe_jobs(400, max_sleep_ms=200, seed=11, fail="retryable")

    first = worker_factory(
        stack, hooks=["--commit-delay-s", str(COMMIT_DELAY_S)], **SLOW_COMMIT_ENV
    )
    first.wait_ready()
    stack.publish(jobs)
    await wait_dlq(db, stack, 10)
    second = worker_factory(stack, **SLOW_COMMIT_ENV)
    second.wait_ready()
    revoked = first.wait_for(
        lambda e: e.get("event") == "worker.partitions_revoked" and e.get("committed_offsets"),
        timeout_s=60,
    )

    await wait_dlq(db, stack, len(jobs), timeout_s=240)
    registry = stack.registry()
    probe_topic = registry.topic_for("probe")
    retry_topic = f"{probe_topic}.retry"
    await _all_committed(stack, [probe_topic, retry_topic])
    await _all_committed(stack, [f"{stack.prefix}.dlq"])

    dead = Counter(r["job_id"] for r in await dlq_rows(db, stack))
    retried = Counter(m.key().decode() for m in read_topic(stack.bootstrap, retry_topic))
    twice_dead = {j: n for j, n in dead.items() if n != 1}
    twice_retried = {j: n for j, n in retried.items() if n != 1}
    print(
        f"\n[revoke-commit] jobs={len(jobs)} dead_letters={sum(dead.values())} "
        f"retry_records={sum(retried.values())} "
        f"revoke={ {k: revoked.get(k) for k in ('committed_offsets', 'commit_attempts')} }"
    )
    assert set(dead) == set(retried) == {j.id for j in jobs}
    assert not twice_dead, f"jobs dead-lettered more than once: {twice_dead}"
    assert not twice_retried, f"jobs sent to the retry topic more than once: {twice_retried}"


# -- 2. a delivery held across a rebalance, on a partition without a committed offset ----

HELD_JOBS = 1500
HEAD_SLEEP_MS = 30_000
HELD_PUT_ENV = {
    **PROBE_ENV,
    "CONVEYOR_JOBS__PROBE__TIMEOUT_S": "120",
    # The revoke cancels the head job at once: the partition keeps no committed offset.
    "CONVEYOR_WORKER__REBALANCE_DRAIN_TIMEOUT_S": "0",
    "CONVEYOR_WORKER__DRAIN_TIMEOUT_S": "5",
}


async def test_a_delivery_held_across_a_rebalance_does_not_skip_a_partitions_first_jobs(
    services: Endpoints, db: asyncpg.Pool, worker_factory: Any
) -> None:
    """A stale delivery must not become the start of a partition with no committed offset.

    Offset 0 of the only partition is a slow job, so nothing is committed.
    Faust delivers to a full channel queue through a put task; test-only
    hook: that task waits ``--queue-put-delay-s`` before its first step, so
    a rebalance (a second, idle worker leaving) comes while one is held.
    The held record arrives after the new assignment; had it been taken as
    the partition's first offset, the fresh offsets below it (the head job
    among them) would be refused as redeliveries and committed past.
    """
    head = probe_jobs(1, max_sleep_ms=0, seed=21)[0]
    head = head.model_copy(update={"payload": {**head.payload, "sleep_ms": HEAD_SLEEP_MS}})
    jobs = [head, *probe_jobs(HELD_JOBS - 1, max_sleep_ms=0, seed=22)]
    hooks = ["--queue-put-delay-s", "0.5"]
    stack = Stack(services.bootstrap, services.dsn, {"CONVEYOR_KAFKA__TOPIC_PARTITIONS": "1"})
    stack.create_topics()

    first = worker_factory(stack, hooks=hooks, **HELD_PUT_ENV)
    first.wait_ready()
    idle = worker_factory(stack, **HELD_PUT_ENV)
    joined = idle.wait_for(lambda e: e.get("event") == "worker.partitions_assigned")
    assert joined["partitions"] == 0, "one partition per topic: they all stay with the first"
    first.wait_for(lambda e: e.get("event") == "worker.partitions_assigned" and e["generation"] > 1)

    stack.publish(jobs)
    await wait_done(db, jobs, 300, what="300 jobs done, the head job still running")
    idle.signal(signal.SIGTERM)  # the group rebalances while deliveries are held
    assert idle.wait_exit(timeout_s=40) == 0, idle.tail()
    first.wait_for(lambda e: e.get("event") == "worker.partitions_revoked", timeout_s=60)

    probe_topic = stack.registry().topic_for("probe")
    await _all_committed(stack, [probe_topic], timeout_s=240)
    done = await effects(db, jobs)
    started = [
        e["offset"]
        for e in first.events
        if e.get("event") == "job.succeeded" and e.get("topic") == probe_topic
    ]
    print(
        f"\n[held-delivery] jobs={HELD_JOBS} effects={done.total} distinct={done.distinct} "
        f"head_done={await _has_effect(db, head)} "
        f"stale_dropped={first.count('worker.stale_dropped')}"
        f" gaps={first.count('offsets.gap_detected')} lowest_finished={min(started, default=None)}"
    )
    assert done.distinct == HELD_JOBS, (
        f"{HELD_JOBS - done.distinct} jobs never ran although the offset was committed past them"
    )
    assert done.total == HELD_JOBS


async def _has_effect(db: asyncpg.Pool, job: JobEnvelope) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM probe_effects WHERE job_id = $1", job.id))
