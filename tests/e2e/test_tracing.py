"""One trace from the producer into the worker: OTLP/HTTP to a receiver the test runs.

The worker runs as a subprocess with tracing on, exporting to a real OTLP/HTTP
receiver on loopback (tests/support/otlp.py decodes the protobuf requests).
The test produces a probe job with its own ``traceparent``; the job fails its
first attempt (retried in place) and records its effect in Postgres on the
second. The producer's trace id must arrive on the worker's spans — both
attempts, linked, and the Postgres queries under the second — and on every
log line of the job. The exporter's configured header reaches the receiver;
the job's payload reaches no span.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from tests.support.otlp import ReceivedSpan, otlp_receiver
from tests.support.probe import PROBE_ENV, wait_done
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

TRACE_ID = uuid.uuid4().hex
PARENT_ID = uuid.uuid4().hex[:16]
TOKEN = "collector-token-" + uuid.uuid4().hex[:8]


def attempts(spans: list[ReceivedSpan], topic: str) -> list[ReceivedSpan]:
    found = [s for s in spans if s.name == f"process {topic}" and s.trace_id == TRACE_ID]
    return sorted(found, key=lambda s: s.attributes["conveyor.job.attempt"])


async def test_the_producers_trace_goes_through_the_worker_to_its_spans_and_log_lines(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    topic = stack.registry().topic_for("probe")
    async with otlp_receiver() as receiver:
        worker = worker_factory(
            stack,
            **PROBE_ENV,
            CONVEYOR_JOBS__PROBE__BACKOFF_BASE_S="0.1",
            CONVEYOR_TRACING__ENABLED="true",
            CONVEYOR_TRACING__ENDPOINT=receiver.endpoint,
            CONVEYOR_TRACING__HEADERS=f"authorization=Bearer {TOKEN}",
            CONVEYOR_TRACING__RESOURCE_ATTRIBUTES="deployment.environment=e2e",
        )
        worker.wait_ready()
        job = JobEnvelope(
            type="probe",
            organization_id="org-e2e",
            payload={"fail": "retryable", "fail_times": 1, "trace": True},
        )
        producer = stack.producer()
        headers = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode())]
        producer.produce(topic, job.to_bytes(), b"lead-7", headers=headers)
        assert producer.flush(30) == 0
        await wait_done(db, [job], timeout_s=60)
        spans = await receiver.wait_for(lambda got: len(attempts(got, topic)) == 2)
        first, second = attempts(spans, topic)
        queries = await receiver.wait_for(
            lambda got: any(s.parent_span_id == second.span_id for s in got)
        )
        worker.stop()

    assert first.parent_span_id == second.parent_span_id == PARENT_ID, "the producer's span"
    assert first.attributes["conveyor.job.outcome"] == "retry"
    assert second.attributes["conveyor.job.outcome"] == "succeeded"
    assert second.links == ((TRACE_ID, first.span_id),), "the attempt before, linked"
    assert second.attributes["messaging.message.id"] == job.id
    assert second.attributes["conveyor.organization.id"] == "org-e2e"
    assert second.resource["service.name"] == "conveyor"
    assert second.resource["deployment.environment"] == "e2e"
    inserts = [
        s
        for s in queries
        if s.parent_span_id == second.span_id and s.attributes.get("db.operation.name") == "INSERT"
    ]
    assert inserts and all(s.trace_id == TRACE_ID for s in inserts)
    assert all(h.get("Authorization") == f"Bearer {TOKEN}" for h in receiver.headers)
    shown = " ".join(str(v) for s in receiver.spans for v in s.attributes.values())
    assert TOKEN not in shown

    lines = [e for e in worker.events if e.get("job_id") == job.id]
    events = {e["event"] for e in lines}
    assert {"job.retrying", "probe.ran", "job.succeeded"} <= events, events
    for line in lines:
        assert line.get("trace_id") == TRACE_ID, line
    by_attempt = {e["attempt"]: e["span_id"] for e in lines if e["event"] == "probe.ran"}
    assert by_attempt == {1: first.span_id, 2: second.span_id}
