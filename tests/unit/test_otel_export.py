"""The span queue: bounded, never blocking the loop, flushed at shutdown within its bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from streams.otel_export import SpanQueue
from streams.otlp import Finished

RESOURCE = Resource({"service.name": "conveyor"})
SCOPE = InstrumentationScope("conveyor", "0.1.0")
SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def finished(span_id: int) -> Finished:
    context = SpanContext(1, span_id, False, SAMPLED)
    return (context, None, "process t", SpanKind.CONSUMER, 1, 2, {"n": span_id}, (), False)


class Collector(SpanExporter):
    """Keeps what it is sent; ``gate`` cleared: each export waits for it (a slow collector)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.batches = 0
        self.gate = threading.Event()
        self.gate.set()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait(30)
        self.batches += 1
        self.spans += spans
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.gate.set()


def test_shutdown_exports_every_span_waiting_in_batches() -> None:
    collector = Collector()
    queue = SpanQueue(collector, RESOURCE, SCOPE, max_spans=10_000, timeout_s=10, batch=100)
    for i in range(1, 251):
        queue.add(finished(i))
    queue.shutdown()
    assert [s.context.span_id for s in collector.spans if s.context] == list(range(1, 251))
    assert collector.batches >= 3, "at most a batch per request"
    assert (collector.spans[0].attributes or {})["n"] == 1
    assert collector.spans[0].resource is RESOURCE and collector.spans[0].kind is SpanKind.CONSUMER


def test_a_slow_collector_costs_spans_never_a_wait() -> None:
    collector = Collector()
    collector.gate.clear()
    queue = SpanQueue(collector, RESOURCE, SCOPE, max_spans=64, timeout_s=10, batch=16)
    started = time.monotonic()
    for i in range(1, 1001):
        queue.add(finished(i))
    assert time.monotonic() - started < 1.0, "adding never waits for the collector"
    assert 1000 - 64 - 16 <= queue.dropped <= 1000 - 64  # the queue, and a batch in flight
    collector.gate.set()
    queue.shutdown()
    assert len(collector.spans) == 1000 - queue.dropped


def test_shutdown_is_bounded_when_the_collector_hangs() -> None:
    hung = threading.Event()

    class Hanging(Collector):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            hung.wait(30)
            return SpanExportResult.FAILURE

        def shutdown(self) -> None:
            hung.set()  # as the OTLP exporter's shutdown ends its retries

    queue = SpanQueue(Hanging(), RESOURCE, SCOPE, max_spans=100, timeout_s=0.5, batch=1)
    queue.add(finished(1))
    queue.add(finished(2))
    started = time.monotonic()
    queue.shutdown()
    assert time.monotonic() - started < 5.0
