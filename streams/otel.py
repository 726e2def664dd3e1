"""Tracing on: the OpenTelemetry SDK behind ``streams.tracing`` and ``handlers.tracing``.

Imported only when ``tracing.enabled`` (``streams.tracing.setup``). Spans go
to a bounded queue and from there, in its own thread, to the collector over
OTLP/HTTP (``streams.otel_export``). Everything is configured from ``settings.tracing`` alone: the
SDK's own ``OTEL_*`` environment variables are not consulted for the
endpoint, headers, sampler, propagators or resource.

Semantic conventions: a job's attempt is a ``process <topic>`` consumer span
(``messaging.*``), each publish a ``send <topic>`` producer span. A Kafka key
is recorded only when it looks like an id (a key may be anything, e.g. a
payload, and payloads stay out of traces).
"""

from __future__ import annotations

import os
import random
import socket

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from handlers import tracing as handler_tracing
from streams import __version__
from streams.otel_context import QUIET, Quiet, sampled_flag
from streams.otel_export import SpanQueue
from streams.otel_handlers import HandlerBackend
from streams.otel_spans import RecordSpans, SendSpan
from streams.otlp import OtlpHttpExporter
from streams.records import Headers, Record
from streams.settings import Settings, parse_pairs
from streams.tracing import (
    TRACE_HEADERS,
    TRACEPARENT,
    RecordTrace,
    Sending,
    Tracing,
    without_trace,
)


def resource(settings: Settings, role: str) -> Resource:
    attributes: dict[str, str] = {
        "service.name": settings.worker.service_name,
        "service.version": __version__,
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        "conveyor.process.role": role,
    }
    configured = settings.tracing.resource_attributes or ""
    attributes.update(parse_pairs(configured, "resource_attributes"))
    return Resource(attributes)


def exporter(settings: Settings) -> SpanExporter:
    t = settings.tracing
    headers = parse_pairs(t.headers.get_secret_value(), "headers") if t.headers else {}
    return OtlpHttpExporter(
        endpoint=t.endpoint,
        headers=headers,
        timeout=t.export_timeout_s,
        compression=Compression.NoCompression,
    )


class OtelTracing(Tracing):
    """``streams.tracing.Tracing`` on the OpenTelemetry SDK (see the module docstring)."""

    enabled = True

    def __init__(
        self, settings: Settings, *, role: str = "worker", export: SpanExporter | None = None
    ) -> None:
        t = settings.tracing
        self.group_id = settings.kafka.group_id
        self.resource = resource(settings, role)
        self.ratio = t.sampling_ratio
        self.provider = TracerProvider(
            # New traces are sampled here (``sampled``), before any span exists; the SDK
            # then records what descends from a sampled context.
            sampler=ParentBased(ALWAYS_ON),
            resource=self.resource,
            shutdown_on_exit=role != "worker",  # a command's spans leave as it exits
        )
        self.scope = InstrumentationScope("conveyor", __version__)
        self.processor = SpanQueue(
            export or exporter(settings),
            self.resource,
            self.scope,
            max_spans=t.queue_spans,
            timeout_s=t.export_timeout_s,
        )
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("conveyor", __version__)
        handler_tracing.install(HandlerBackend(self))

    def sampled(self) -> bool:
        """Whether a new trace is recorded (``sampling_ratio``)."""
        return self.ratio >= 1.0 or random.random() < self.ratio

    def record(self, record: Record) -> RecordTrace:
        incoming: bytes | None = None
        if record.headers:
            for name, value in record.headers:
                if name == TRACEPARENT:
                    incoming = value
        if incoming is None:  # a new trace (also when unreadable, below)
            return RecordSpans(self, record) if self.sampled() else Quiet()
        flagged = sampled_flag(incoming)
        if flagged is None:
            return RecordSpans(self, record) if self.sampled() else Quiet()
        if flagged:
            return RecordSpans(self, record)
        return Quiet(tuple((k, v) for k, v in record.headers if k in TRACE_HEADERS))

    def sending(
        self, topic: str, key: bytes | None, headers: Headers, *, link: bool = False
    ) -> Sending:
        quiet = QUIET.get()
        if (
            quiet is None
            and not trace.get_current_span().get_span_context().is_valid
            and not self.sampled()
        ):
            quiet = Quiet()  # a command's publish: a new trace, not recorded
        if quiet is not None:
            return Sending(tuple(without_trace(headers)) + quiet.headers())
        return SendSpan(self, topic, key, headers, link)

    def shutdown(self) -> None:
        handler_tracing.install(None)
        self.provider.shutdown()
