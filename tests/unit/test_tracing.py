"""Traces through the runner: one consumer span per attempt, the context in and out of Kafka
headers, retries and replays linked — with the real SDK exporting to memory.

A real ``JobRunner`` and ``RecordPublisher`` over a recording producer (as in
test_runner.py); the records a run publishes are fed back as the next records,
as the broker would deliver them. ``conveyor dlq replay`` publishes through its
own code (``_publish``) into a recording confluent-kafka stand-in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.trace import SpanKind

from handlers.errors import PermanentError, RetryableError
from handlers.types import Outcome
from schemas import jobs
from schemas.envelope import JobEnvelope
from streams.commands import dlq_replay
from streams.commands.submit import JobProducer, publish
from streams.publish import RecordPublisher
from streams.records import Record
from streams.registry import JobSpec
from streams.runner import JobRunner
from streams.settings import Settings
from streams.tracing import OFF, Tracing
from tests.support.fakes import FakeCrashGuard, FakeRuntime, RecordedSleep, RecordingProducer, Sent
from tests.support.tracing import Traced, traced
from tests.unit.test_runner import DLQ_TOPIC, RETRY_TOPIC, TOPIC, Script, Step, envelope

PRODUCER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PRODUCER_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{PRODUCER_TRACE:032x}-{PRODUCER_SPAN:016x}-01".encode()


class Worker:
    """A runner for the probe job type, publishing into ``producer``."""

    def __init__(self, steps: Sequence[Step], tracing: Tracing, **policy: Any) -> None:
        settings = Settings().jobs.probe.model_copy(update={"topic": TOPIC, **policy})
        self.script = Script(steps)
        spec = JobSpec("probe", jobs.Probe, settings, self.script.handle, self.script.on_give_up)
        self.producer = RecordingProducer()
        publisher = RecordPublisher(
            self.producer, group_id="g", dlq_topic=DLQ_TOPIC, sleep=RecordedSleep(), tracing=tracing
        )
        self.runner = JobRunner(
            spec,
            FakeRuntime(deps=None),  # type: ignore[arg-type]  # the scripts touch none
            publisher,
            retry_topic=RETRY_TOPIC,
            max_job_bytes=4096,
            guard=FakeCrashGuard(),
            sleep=RecordedSleep(),
            tracing=tracing,
        )

    async def run(self, record: Record) -> None:
        await self.runner.run(record)


def fresh(headers: tuple[tuple[str, bytes], ...] = (("traceparent", TRACEPARENT),)) -> Record:
    return Record(TOPIC, 0, 7, b"lead-42", envelope(id="job-1"), headers, 1_700_000_000_000)


def delivered(sent: Sent, offset: int = 3) -> Record:
    """``sent`` as a consumer reads it back (retry topics are trusted)."""
    trusted = sent.topic == RETRY_TOPIC
    return Record(sent.topic, 0, offset, sent.key, sent.value, sent.headers, None, trusted)


def headers_named(sent: Sent, name: str) -> list[bytes]:
    return [v for k, v in sent.headers if k == name]


async def test_a_completed_job_is_one_consumer_span_under_the_producers_context() -> None:
    with traced() as t:
        worker = Worker([Outcome.SUCCEEDED], t.tracing)
        await worker.run(fresh())
        tree = t.tree()
    span = tree.one(f"process {TOPIC}")
    assert span.kind is SpanKind.CONSUMER
    assert span.context.trace_id == PRODUCER_TRACE, "the producer's trace goes on"
    assert span.parent is not None and span.parent.span_id == PRODUCER_SPAN
    attributes = dict(span.attributes or {})
    assert attributes == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": TOPIC,
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 7,
        "messaging.consumer.group.name": "conveyor",
        "messaging.kafka.message.key": "lead-42",
        "messaging.message.id": "job-1",
        "conveyor.job.type": "probe",
        "conveyor.job.attempt": 1,
        "conveyor.job.outcome": "succeeded",
    }


async def test_a_job_without_a_context_starts_a_trace() -> None:
    with traced() as t:
        await Worker([Outcome.SUCCEEDED], t.tracing).run(fresh(headers=()))
        span = t.tree().one(f"process {TOPIC}")
    assert span.parent is None and span.context.trace_id != PRODUCER_TRACE


async def test_a_job_retried_through_the_retry_topic_is_one_trace_with_linked_attempts() -> None:
    with traced() as t:
        worker = Worker(
            [RetryableError("come back later", delay_s=60), Outcome.SUCCEEDED], t.tracing
        )
        await worker.run(fresh())
        [retry] = worker.producer.to(RETRY_TOPIC)
        await worker.run(delivered(retry))
        tree = t.tree()
    first, second = tree.named(f"process {TOPIC}") + tree.named(f"process {RETRY_TOPIC}")
    assert tree.trace_ids() == {PRODUCER_TRACE}, f"one trace:\n{tree}"
    assert (first.attributes or {})["conveyor.job.outcome"] == "retry"
    assert (second.attributes or {})["conveyor.job.outcome"] == "succeeded"
    assert (second.attributes or {})["conveyor.job.attempt"] == 2
    send = tree.one(f"send {RETRY_TOPIC}")
    assert send.kind is SpanKind.PRODUCER and tree.parent(send) is first
    assert tree.parent(second) is send, "the retry record carried the send span's context"
    [link] = second.links
    assert link.context.span_id == first.context.span_id, "linked to the attempt before"
    assert (link.attributes or {})["conveyor.link.reason"] == "previous_attempt"
    # The record's trace headers were refreshed, not added to the producer's.
    assert headers_named(retry, "traceparent") == [
        f"00-{PRODUCER_TRACE:032x}-{send.context.span_id:016x}-01".encode()
    ]
    assert headers_named(retry, "conveyor-trace-link") == [
        f"00-{PRODUCER_TRACE:032x}-{first.context.span_id:016x}-01".encode()
    ]


async def test_attempts_retried_in_place_are_sibling_spans_linked_in_order() -> None:
    with traced() as t:
        worker = Worker(
            [RetryableError("flaky"), RetryableError("flaky"), Outcome.SUCCEEDED], t.tracing
        )
        await worker.run(fresh())
        tree = t.tree()
    attempts = tree.named(f"process {TOPIC}")
    assert [(a.attributes or {})["conveyor.job.attempt"] for a in attempts] == [1, 2, 3]
    assert [(a.attributes or {})["conveyor.job.outcome"] for a in attempts] == [
        "retry",
        "retry",
        "succeeded",
    ]
    assert all(a.parent is not None and a.parent.span_id == PRODUCER_SPAN for a in attempts)
    assert [link.context.span_id for a in attempts for link in a.links] == [
        attempts[0].context.span_id,
        attempts[1].context.span_id,
    ]


class RecordingConfluent:
    """The part of confluent-kafka's Producer that ``JobProducer`` uses; acks at flush."""

    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []

    def produce(self, topic: str, **record: Any) -> None:
        self.produced.append({"topic": topic, **record})

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        for record in self.produced:
            record["on_delivery"](None, None)
        return 0


def mirrored(sent: Sent, row_id: int = 1) -> dict[str, Any]:
    """A ``worker_dlq`` row as the mirror stores the dead letter ``sent``."""
    headers = {k: v.decode() for k, v in sent.headers}
    return {
        "id": row_id,
        "original_topic": headers["conveyor-original-topic"],
        "raw_key": sent.key,
        "raw_value": sent.value,
        "headers": json.dumps(headers),
    }


async def replay(t: Traced | None, row: dict[str, Any]) -> dict[str, Any]:
    """``conveyor dlq replay``'s publish of ``row``; the record it produced."""
    confluent = RecordingConfluent()
    prod = JobProducer(confluent, t.tracing if t else OFF)  # type: ignore[arg-type]
    report = dlq_replay.ReplayReport()
    assert dlq_replay._publish(prod, [row], report) == [row["id"]]  # type: ignore[list-item]
    [record] = confluent.produced
    return record


async def test_a_dead_lettered_job_replayed_starts_a_trace_linked_to_the_one_that_failed() -> None:
    with traced() as t:
        failing = Worker([PermanentError("the lead is gone")], t.tracing)
        await failing.run(fresh())
        [dead] = failing.producer.to(DLQ_TOPIC)
        produced = await replay(t, mirrored(dead))
        headers = tuple((k, v) for k, v in produced["headers"])
        fixed = Worker([Outcome.SUCCEEDED], t.tracing)
        await fixed.run(Record(TOPIC, 0, 99, produced["key"], produced["value"], headers, None))
        tree = t.tree()
    failed, replayed = tree.named(f"process {TOPIC}")
    assert failed.context.trace_id == PRODUCER_TRACE
    assert (failed.attributes or {})["conveyor.job.outcome"] == "dead_letter"
    dlq_send = tree.one(f"send {DLQ_TOPIC}")
    assert tree.parent(dlq_send) is failed
    assert headers_named(dead, "traceparent") == [
        f"00-{PRODUCER_TRACE:032x}-{dlq_send.context.span_id:016x}-01".encode()
    ]
    replay_send = tree.one(f"send {TOPIC}")
    assert replay_send.context.trace_id != PRODUCER_TRACE, "the replay is a new trace"
    assert tree.parent(replayed) is replay_send
    for span in (replay_send, replayed):
        [link] = span.links
        assert link.context.trace_id == PRODUCER_TRACE, f"{span.name} links to the failure"
        assert link.context.span_id == dlq_send.context.span_id
        assert (link.attributes or {})["conveyor.link.reason"] == "replay_of"
    assert [k for k, _ in headers].count("traceparent") == 1


async def test_a_replay_without_tracing_links_to_the_failed_trace_all_the_same() -> None:
    with traced() as t:
        failing = Worker([PermanentError("the lead is gone")], t.tracing)
        await failing.run(fresh())
        [dead] = failing.producer.to(DLQ_TOPIC)
        produced = await replay(None, mirrored(dead))  # the command's tracing off
        headers = tuple((k, v) for k, v in produced["headers"])
        fixed = Worker([Outcome.SUCCEEDED], t.tracing)
        await fixed.run(Record(TOPIC, 0, 99, produced["key"], produced["value"], headers, None))
        tree = t.tree()
    assert [k for k, _ in headers].count("traceparent") == 0
    replayed = tree.named(f"process {TOPIC}")[-1]
    assert replayed.parent is None and replayed.context.trace_id != PRODUCER_TRACE
    [link] = replayed.links
    assert link.context.trace_id == PRODUCER_TRACE


@pytest.mark.parametrize(
    ("value", "stage"),
    [(b"{not json", "decode"), (envelope(payload={"fail": "sideways"}), "validate")],
)
async def test_a_record_that_never_becomes_a_job_has_a_dead_letter_span(
    value: bytes, stage: str
) -> None:
    with traced() as t:
        worker = Worker([], t.tracing)
        await worker.run(Record(TOPIC, 0, 7, None, value, (("traceparent", TRACEPARENT),), None))
        tree = t.tree()
    span = tree.one(f"process {TOPIC}")
    attributes = span.attributes or {}
    assert attributes["conveyor.job.outcome"] == "dead_letter"
    assert attributes["conveyor.job.stage"] == stage
    assert tree.parent(tree.one(f"send {DLQ_TOPIC}")) is span


async def test_with_tracing_off_the_producers_context_passes_through_unchanged() -> None:
    worker = Worker([RetryableError("later", delay_s=60)], OFF)
    await worker.run(fresh())
    [retry] = worker.producer.to(RETRY_TOPIC)
    assert headers_named(retry, "traceparent") == [TRACEPARENT]
    assert headers_named(retry, "conveyor-trace-link") == []


NO_OTEL = """
import asyncio, sys
from streams.commands import cli, dlq, dlq_replay, run, submit, demo
from streams import app, lifecycle, runner, tracing
from streams.settings import Settings
from handlers import tracing as handler_tracing
from handlers.assets import process
from tests.unit.test_runner import CASES, run

assert tracing.setup(Settings()) is tracing.OFF
with handler_tracing.span("x"), handler_tracing.http("GET", "https", "h", 443, "/"):
    pass
ran = asyncio.run(run(CASES["dead letter after max attempts"], (("traceparent", TRACEPARENT),)))
assert ran.producer.sent, "the job ran to its dead letter"
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
print(loaded)
sys.exit(1 if loaded else 0)
""".replace("TRACEPARENT", repr(TRACEPARENT))


def test_with_tracing_off_no_opentelemetry_module_is_imported() -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_OTEL], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_an_unsampled_job_records_nothing_and_its_context_travels_on() -> None:
    with traced(sampling_ratio=0.0) as t:
        worker = Worker([RetryableError("later", delay_s=60)], t.tracing)
        await worker.run(fresh(headers=()))
        assert t.spans() == []
    [retry] = worker.producer.to(RETRY_TOPIC)
    [carried] = headers_named(retry, "traceparent")
    version, trace_id, span_id, flags = carried.decode().split("-")
    assert (version, flags) == ("00", "00") and int(trace_id, 16) and int(span_id, 16)
    # The next attempt follows that decision, whatever its own worker's ratio.
    with traced(sampling_ratio=1.0) as t:
        again = Worker([Outcome.SUCCEEDED], t.tracing)
        await again.run(delivered(retry))
        assert t.spans() == []


async def test_a_producers_decision_not_to_sample_is_followed_and_passed_on() -> None:
    unsampled = TRACEPARENT[:-2] + b"00"
    with traced(sampling_ratio=1.0) as t:
        worker = Worker([RetryableError("later", delay_s=60)], t.tracing)
        await worker.run(fresh(headers=(("traceparent", unsampled), ("tracestate", b"v=1"))))
        assert t.spans() == []
    [retry] = worker.producer.to(RETRY_TOPIC)
    assert headers_named(retry, "traceparent") == [unsampled]
    assert headers_named(retry, "tracestate") == [b"v=1"]


async def test_a_sampled_producers_job_is_recorded_whatever_the_ratio() -> None:
    with traced(sampling_ratio=0.0) as t:
        await Worker([Outcome.SUCCEEDED], t.tracing).run(fresh())
        [span] = t.spans()
    assert span.context.trace_id == PRODUCER_TRACE


def test_conveyor_submit_starts_a_trace_for_each_job_when_tracing_is_on() -> None:
    job = JobEnvelope(type="probe", payload={})
    with traced() as t:
        confluent = RecordingConfluent()
        publish(JobProducer(confluent, t.tracing), TOPIC, job, b"k1")  # type: ignore[arg-type]
        tree = t.tree()
    send = tree.one(f"send {TOPIC}")
    assert send.parent is None and send.kind is SpanKind.PRODUCER
    [record] = confluent.produced
    [(name, value)] = record["headers"]
    _, trace_id, span_id, flags = value.decode().split("-")
    assert (name, int(trace_id, 16), int(span_id, 16)) == (
        "traceparent",
        send.context.trace_id,
        send.context.span_id,
    )
    assert int(flags, 16) & 1, "sampled"
    off = RecordingConfluent()
    publish(JobProducer(off, OFF), TOPIC, job, b"k1")  # type: ignore[arg-type]
    assert off.produced[0]["headers"] == []


@pytest.mark.parametrize(
    "headers",
    [
        (("traceparent", TRACEPARENT),),
        (("traceparent", TRACEPARENT[:-2] + b"00"), ("x", b"y")),
        (("traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01"),),
        (("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-" + b"0" * 16 + b"-01"),),
        (("traceparent", TRACEPARENT.upper()),),
        (("traceparent", b" " + TRACEPARENT),),
        (("traceparent", TRACEPARENT + b"-extra"),),
        (("traceparent", b"01" + TRACEPARENT[2:] + b"-extra"),),
        (("traceparent", b"ff" + TRACEPARENT[2:]),),
        (("traceparent", b"junk"), ("traceparent", TRACEPARENT)),
        (("traceparent", TRACEPARENT), ("tracestate", b"v=1")),
        (("traceparent", TRACEPARENT), ("baggage", b"k=v")),
        (("baggage", b"k=v"),),
    ],
)
def test_a_records_context_is_read_as_the_propagator_reads_it(headers: Any) -> None:
    from opentelemetry import baggage, trace

    from streams.otel_context import HEADERS, PROPAGATOR, extract

    ours, theirs = extract(headers), PROPAGATOR.extract(headers, getter=HEADERS)
    assert (
        trace.get_current_span(ours).get_span_context()
        == trace.get_current_span(theirs).get_span_context()
    )
    assert baggage.get_all(ours) == baggage.get_all(theirs)
