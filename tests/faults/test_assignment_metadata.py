"""An assignment made from metadata that lacks a topic is made again, within seconds.

Found by the compound-fault soak (seed 2, a broker restart under load): the
group's leader assigned partitions from metadata the restarted broker
answered without the job topics; Faust's assignor logged "Ignoring missing
topic" and gave those partitions to nobody, and aiokafka asks for a new
assignment only when a later metadata refresh differs — five minutes later
by default. The whole fleet sat idle, healthy, while the lag grew.

The window is a broker's answer in the moment of an assignment, so the test
widens it with a test-only hook (``tests/support/hooked_worker.py``): the
worker's first assignment, and its metadata until the next answer, lack the
probe topic. The worker's periodic refresh is set to 300 s, so only the
leader's own check (``streams/assignor.py``) can bring the probe
partitions back. Without it the jobs below wait for five minutes.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.support.probe import PROBE_ENV, probe_jobs, wait_done
from tests.support.services import Endpoints
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

JOBS = 40


async def test_partitions_an_assignment_missed_are_assigned_again_in_seconds(
    services: Endpoints, db: asyncpg.Pool, worker_factory: Any
) -> None:
    stack = Stack(services.bootstrap, services.dsn)
    stack.create_topics()
    probe_topic = stack.registry().topic_for("probe")
    worker = worker_factory(
        stack,
        hooks=["--hide-topic-at-first-assignment", probe_topic],
        **PROBE_ENV,
        CONVEYOR_KAFKA__METADATA_MAX_AGE_S="300",
    )
    first = worker.wait_for(lambda e: e.get("event") == "worker.partitions_assigned")
    assert not any(tp.startswith(f"{probe_topic}:") for tp in first["assigned"]), first
    incomplete = worker.wait_for(lambda e: e.get("event") == "worker.assignment_incomplete")
    assert incomplete["topics"] == {probe_topic: 0}

    jobs = probe_jobs(JOBS, seed=31)
    stack.publish(jobs)
    done = await wait_done(db, jobs, timeout_s=45, what="every probe job done")
    assert done.distinct == JOBS and done.duplicated == 0
    again = [
        e
        for e in list(worker.events)
        if e.get("event") == "worker.partitions_assigned"
        and any(tp.startswith(f"{probe_topic}:") for tp in e["assigned"])
    ]
    assert again, "the probe partitions were assigned by a later rebalance"
    assert worker.count("worker.assignment_metadata_complete") >= 1
