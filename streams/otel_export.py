"""Finished spans on their way to the collector: a bounded queue and one export thread.

Part of tracing-on (``streams.otel``), in place of the SDK's
``BatchSpanProcessor``. The event loop only appends: an attempt's span as a
``Finished`` tuple (``streams/otel_spans.py``), the SDK's own spans (publishes,
handlers' children) as the ``ReadableSpan`` the tracer ends — no lock, no
per-span wake-up. The thread wakes every ``SCHEDULE_DELAY_S``, or once
``EXPORT_BATCH`` spans wait, and exports all that waits in batches: encoded
by ``streams.otlp.Request`` and POSTed by ``OtlpHttpExporter`` (the SDK's
transport: its retries, headers and timeout), or handed as ``ReadableSpan``
to any other ``SpanExporter`` (the tests' in-memory one).

A slow or absent collector costs spans, never a job: past ``max_spans``
waiting, new spans are dropped (counted, and logged once per export round).
``shutdown`` exports what is left, bounded by the export timeout.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

import structlog
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from streams.otlp import Finished, OtlpHttpExporter, Request, readable

log = structlog.get_logger(__name__)

SCHEDULE_DELAY_S = 1.0
EXPORT_BATCH = 1024


class SpanQueue(SpanProcessor):
    """The span processor of ``OtelTracing``'s tracer provider, and where its attempt
    spans go (``add``); see the module docstring."""

    def __init__(
        self,
        exporter: SpanExporter,
        resource: Resource,
        scope: InstrumentationScope,
        *,
        max_spans: int,
        timeout_s: float,
        batch: int = EXPORT_BATCH,
        delay_s: float = SCHEDULE_DELAY_S,
    ) -> None:
        self._exporter = exporter
        self._request = Request(resource, scope)
        self._max = max_spans
        self._batch = min(batch, max_spans)
        self._delay_s = delay_s
        self._timeout_s = timeout_s
        self._queue: collections.deque[Finished | ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._exporting = threading.Lock()  # one export at a time: a flush waits for it
        self._stopping = False
        self.dropped = 0
        self._reported = 0
        self._thread = threading.Thread(target=self._run, name="conveyor-spans", daemon=True)
        self._thread.start()

    def add(self, span: Finished | ReadableSpan) -> None:
        """Queue a finished span (from any thread; never blocks)."""
        queue = self._queue
        if len(queue) >= self._max or self._stopping:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) == self._batch:
            self._wake.set()

    # --- SpanProcessor: the SDK's spans --------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self.add(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export every span queued so far (and wait for an export under way)."""
        if self._stopping:
            return False
        self._export_waiting()
        return True

    def shutdown(self) -> None:
        """Export what is left (bounded by the export timeout), then stop."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(self._timeout_s)
        self._exporter.shutdown()  # also ends an export still retrying

    # --- the export thread ---------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._delay_s)
            self._wake.clear()  # before exporting: a wake-up meanwhile is not lost
            self._export_waiting()
        self._export_waiting()

    def _export_waiting(self) -> None:
        queue = self._queue
        with self._exporting:
            while queue:
                batch = [queue.popleft() for _ in range(min(self._batch, len(queue)))]
                self._export(batch)
            if self.dropped != self._reported:
                log.warning(
                    "tracing.spans_dropped",
                    dropped=self.dropped - self._reported,
                    queue_spans=self._max,
                )
                self._reported = self.dropped

    def _export(self, batch: Sequence[Finished | ReadableSpan]) -> None:
        exporter = self._exporter
        try:
            if isinstance(exporter, OtlpHttpExporter):
                exporter.send(self._request.encode(batch))
            else:
                request = self._request
                exporter.export(
                    [
                        readable(s, request.resource, request.scope) if isinstance(s, tuple) else s
                        for s in batch
                    ]
                )
        except Exception as error:  # the thread goes on: a span the encoder cannot write
            log.error("tracing.export_failed", error=type(error).__name__, spans=len(batch))
