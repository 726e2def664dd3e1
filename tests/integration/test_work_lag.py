"""The worker's lag gauge leaves out finished work stuck behind a poison pill; Kafka's does not.

One partition, a job that hangs at its head, then 50 quick jobs behind it.
The quick ones run and finish on the other slots, but the committed offset
cannot pass the hung job: the broker's lag (what KEDA's Kafka scaler and a
Kafka exporter read) stays at 51 and would scale the group out, while the
worker's own gauge says 1 — the one record that is not done. Records that
pile up while nothing takes them count in full.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from streams.commands.lag import group_lag
from tests.support.metrics_port import metrics_env, scrape
from tests.support.probe import PROBE_ENV, effects, probe_jobs
from tests.support.services import Endpoints
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_a_hung_job_counts_once_in_the_worker_lag_not_the_work_behind_it(
    services: Endpoints, db: asyncpg.Pool, worker_factory: Any
) -> None:
    stack = Stack(services.bootstrap, services.dsn, extra={"CONVEYOR_KAFKA__TOPIC_PARTITIONS": "1"})
    stack.create_topics()
    port, serve = metrics_env()
    worker = worker_factory(
        stack,
        **PROBE_ENV,
        **serve,
        CONVEYOR_JOBS__PROBE__CONCURRENCY="4",
        CONVEYOR_JOBS__PROBE__TIMEOUT_S="300",
    )
    worker.wait_ready()
    joined = worker.wait_for(lambda e: e.get("event") == "worker.partitions_assigned")
    topic = stack.registry().topic_for("probe")
    hung = JobEnvelope(type="probe", payload={"fail": "hang"})
    quick = probe_jobs(50, max_sleep_ms=5)
    stack.publish([hung, *quick])
    await eventually(lambda: effects(db, quick), lambda c: c.distinct == 50, what="50 jobs")

    broker = group_lag(stack.settings(), stack.registry())
    (probe_lag,) = [t for t in broker.topics if t.topic == topic]
    assert probe_lag.lag == 51, "the committed offset waits for the hung job"

    series = (("partition", "0"), ("topic", topic))
    metrics = await eventually(
        lambda: scrape(port),
        lambda m: m.get("conveyor_consumer_lag", {}).get(series) == 1,
        what="the worker's lag to count the hung job only",
    )
    lag = metrics["conveyor_consumer_lag"]
    assert {dict(labels)["topic"] for labels in lag} == {
        stack.registry().topic_for(job) for job in ("asset.process", "knowledge_graph.extract")
    } | {topic}, "source topics only: no retry topic, no dead-letter topic"
    assert metrics["conveyor_assigned_partitions"][()] == joined["partitions"]

    # Work nobody has taken yet counts in full: 30 more records while the
    # worker's slots are all hung.
    more = [JobEnvelope(type="probe", payload={"fail": "hang"}) for _ in range(3)]
    waiting = probe_jobs(30, max_sleep_ms=5)
    stack.publish([*more, *waiting])
    await eventually(
        lambda: scrape(port),
        lambda m: m.get("conveyor_consumer_lag", {}).get(series) == 1 + 3 + 30,
        timeout_s=30,
        what="hung jobs and the 30 waiting behind them counted",
    )
