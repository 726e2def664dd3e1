"""A job that kills its worker is dead-lettered after ``max_crashes`` deaths, not rerun forever.

A poison probe job SIGKILLs its own worker process each time it runs. It
is published among 500 ordinary jobs on one partition; the test restarts
the worker each time it dies (as Kubernetes would).
"""

from __future__ import annotations

import signal
from typing import Any

import asyncpg
import pytest

from tests.support.dlq import dlq_rows
from tests.support.kafka import committed_and_end
from tests.support.probe import PROBE_ENV, effects, probe_jobs
from tests.support.services import Endpoints
from tests.support.stack import Stack
from tests.support.waiting import eventually
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.e2e

ORDINARY = 500
MAX_CRASHES = 3
ENV = {
    **PROBE_ENV,
    "CONVEYOR_JOBS__PROBE__CONCURRENCY": "8",
    "CONVEYOR_JOBS__PROBE__MAX_CRASHES": str(MAX_CRASHES),
    # A dead worker leaves the group when its session expires: keep restarts quick.
    "CONVEYOR_KAFKA__SESSION_TIMEOUT_S": "6",
    # Fair share on, with a read-ahead small enough that most of the backlog is set
    # aside to the deferred topic: the guard covers the records read back from it.
    "CONVEYOR_JOBS__PROBE__FAIRNESS": "organization",
    "CONVEYOR_KAFKA__BACKLOG_RECORDS": "50",
}


async def test_a_job_that_kills_its_worker_is_dead_lettered_after_max_crashes(
    services: Endpoints, db: asyncpg.Pool, worker_factory: Any
) -> None:
    stack = Stack(services.bootstrap, services.dsn, {"CONVEYOR_KAFKA__TOPIC_PARTITIONS": "1"})
    stack.create_topics()
    ordinary = probe_jobs(ORDINARY, max_sleep_ms=40, seed=31)
    poison = probe_jobs(1, max_sleep_ms=0, seed=32, fail="kill")[0]
    jobs = [*ordinary[:200], poison, *ordinary[200:]]
    probe_topic = stack.registry().topic_for("probe")
    group = f"{stack.prefix}-group"

    deaths = 0
    worker: WorkerProcess = worker_factory(stack, **ENV)
    worker.wait_ready(timeout_s=120)
    stack.publish(jobs)

    async def state() -> tuple[int, int, bool]:
        done = await effects(db, ordinary)
        committed, end = committed_and_end(stack.bootstrap, group, probe_topic)[0]
        return done.distinct, len(await dlq_rows(db, stack)), committed == end

    while True:
        assert worker.proc is not None
        current = worker.proc

        def settled(s: tuple[int, int, bool], proc: Any = current) -> bool:
            return proc.poll() is not None or (s[0] == ORDINARY and s[1] >= 1 and s[2])

        await eventually(state, settled, timeout_s=180, what="the worker died or all ended")
        if worker.proc.poll() is None:
            break
        assert worker.wait_exit(timeout_s=10) == -signal.SIGKILL, worker.tail()
        deaths += 1
        assert deaths <= MAX_CRASHES, f"the poison job killed {deaths} workers"
        worker = worker_factory(stack, **ENV)
        worker.wait_ready(timeout_s=120)

    final = await effects(db, ordinary)
    dead = await dlq_rows(db, stack)
    print(
        f"\n[crash-loop] deaths={deaths} ordinary={ORDINARY} effects={final.total} "
        f"distinct={final.distinct} dead_letters={len(dead)} "
        f"stage={[d['stage'] for d in dead]} reason={[d['error_message'] for d in dead]}"
    )
    assert deaths == MAX_CRASHES
    assert final.distinct == final.total == ORDINARY, "every ordinary job ran to its end once"
    assert [(d["job_id"], d["stage"]) for d in dead] == [(poison.id, "crashed")]
    assert f"died {MAX_CRASHES} times" in dead[0]["error_message"]
    assert dead[0]["error_class"] == "WorkerDied"
