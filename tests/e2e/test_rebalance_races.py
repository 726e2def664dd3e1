"""Two rebalance races of the offset path, each widened with a test-only delay.

The delays are injected by ``tests/support/hooked_worker.py``: the worker
subprocess is started through that module, which wraps one method with an
``asyncio.sleep``. Nothing in the service (no setting, no environment
variable) can turn them on. Without the delay each race needs an
interleaving that happens on a small fraction of rebalances.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import asyncpg
import pytest

from tests.support.dlq import dlq_rows, wait_dlq
from tests.support.kafka import committed_and_end, read_topic
from tests.support.probe import PROBE_ENV, probe_jobs
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
