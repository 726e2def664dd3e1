"""Poison pills are dead-lettered at once with a readable reason; the worker keeps going."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer

from schemas.envelope import JobEnvelope
from tests.support.dlq import wait_dlq
from tests.support.probe import PROBE_ENV, probe_jobs, wait_done
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def _produce(stack: Stack, topic: str, values: list[bytes]) -> None:
    prod = Producer(
        {"bootstrap.servers": stack.bootstrap, "acks": "all", "message.max.bytes": 4 * 1024 * 1024}
    )
    for i, value in enumerate(values):
        prod.produce(topic, value, f"k{i}".encode(), headers=[("trace-id", f"tr-{i}".encode())])
    assert prod.flush(30) == 0


async def test_poison_pills_are_dead_lettered_and_the_worker_keeps_consuming(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    topic = stack.registry().topic_for("probe")
    pills = {
        b"{not json": ("decode", "not valid JSON"),
        json.dumps({"hello": "world"}).encode(): ("validate", "invalid envelope"),
        JobEnvelope(type="no.such.type", payload={}).to_bytes(): ("validate", "does not belong"),
        JobEnvelope(type="probe", payload={"sleep_ms": "slow"}).to_bytes(): (
            "validate",
            "invalid probe payload",
        ),
        JobEnvelope(type="probe", payload={"pad": "x" * (2 * 1024 * 1024)}).to_bytes(): (
            "decode",
            "limit for a job is 1.0 MB",
        ),
    }
    worker = worker_factory(stack, **PROBE_ENV)
    worker.wait_ready()
    _produce(stack, topic, list(pills))
    good = probe_jobs(5, max_sleep_ms=0)
    stack.publish(good)

    rows = await wait_dlq(db, stack, len(pills))
    assert len(rows) == len(pills)
    by_value = {bytes(r["raw_value"]): r for r in rows}
    assert set(by_value) == set(pills), "raw values are kept unchanged"
    for value, (stage, reason) in pills.items():
        row = by_value[value]
        assert row["stage"] == stage, row
        assert reason in row["error_message"], row["error_message"]
        assert row["original_topic"] == topic
        assert row["consumer_group"] == f"{stack.prefix}-group"
        assert row["attempts"] == 1
        assert row["error_class"] == "PermanentError"
        assert json.loads(row["headers"])["trace-id"].startswith("tr-"), "headers kept"
        assert row["status"] == "new"
    await wait_done(db, good, what="good jobs after the pills")
    assert worker.proc.poll() is None, "the worker is still running"
