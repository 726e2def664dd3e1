"""Tracing on: the OpenTelemetry SDK behind ``streams.tracing`` and ``handlers.tracing``.

Imported only when ``tracing.enabled`` (``streams.tracing.setup``). Spans go
to a batch processor and from there, in its own thread, to the collector over
OTLP/HTTP. Everything is configured from ``settings.tracing`` alone: the
SDK's own ``OTEL_*`` environment variables are not consulted for the
endpoint, headers, sampler, propagators or resource.

Semantic conventions: a job's attempt is a ``process <topic>`` consumer span
(``messaging.*``), each publish a ``send <topic>`` producer span. A Kafka key
is recorded only when it looks like an id (a key may be anything, e.g. a
payload, and payloads stay out of traces).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from handlers import tracing as handler_tracing
from handlers.tracing import Attributes, SpanRecord, Value
from streams import __version__
from streams.records import Headers, Record
from streams.retry import DeadLetter, Decision
from streams.settings import Settings, parse_pairs
from streams.tracing import (
    LINK_HEADER,
    AttemptSpan,
    RecordTrace,
    Sending,
    Tracing,
    without_trace,
)

KINDS = {
    handler_tracing.INTERNAL: SpanKind.INTERNAL,
    handler_tracing.CLIENT: SpanKind.CLIENT,
    handler_tracing.PRODUCER: SpanKind.PRODUCER,
    handler_tracing.CONSUMER: SpanKind.CONSUMER,
}
_ID_KEY = re.compile(r"^[A-Za-z0-9_.:@\-]{1,128}$")
SCHEDULE_DELAY_MS = 1000
EXPORT_BATCH = 512


class _Headers(Getter[Headers], Setter[list[tuple[str, bytes]]]):
    """Kafka headers as a propagation carrier: (name, bytes) pairs, the last one wins."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        found = [v for k, v in carrier if k == key]
        return [found[-1].decode("latin-1")] if found else None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]

    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode("latin-1")))


HEADERS = _Headers()
TRACECONTEXT = TraceContextTextMapPropagator()
PROPAGATOR = CompositePropagator([TRACECONTEXT, W3CBaggagePropagator()])


def id_key(key: bytes | None) -> str | None:
    """The record key as a span attribute, when it is a short id; else None."""
    if not key or len(key) > 128:
        return None
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if _ID_KEY.match(text) else None


def traceparent(span_context: SpanContext) -> str:
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{int(span_context.trace_flags):02x}"
    )


def linked(value: bytes | str, reason: str) -> Link | None:
    """A link to the span a ``conveyor-trace-link`` header names (None if unreadable)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    span = trace.get_current_span(TRACECONTEXT.extract({"traceparent": text}))
    found = span.get_span_context()
    return Link(found, {"conveyor.link.reason": reason}) if found.is_valid else None


def resource(settings: Settings, role: str) -> Resource:
    attributes: dict[str, str] = {
        "service.name": settings.worker.service_name,
        "service.version": __version__,
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        "conveyor.process.role": role,
    }
    attributes.update(parse_pairs(settings.tracing.resource_attributes, "resource_attributes"))
    return Resource(attributes)


def exporter(settings: Settings) -> SpanExporter:
    t = settings.tracing
    headers = parse_pairs(t.headers.get_secret_value(), "headers") if t.headers else {}
    return OTLPSpanExporter(endpoint=t.endpoint, headers=headers, timeout=t.export_timeout_s)


class OtelTracing(Tracing):
    """``streams.tracing.Tracing`` on the OpenTelemetry SDK (see the module docstring)."""

    enabled = True

    def __init__(
        self, settings: Settings, *, role: str = "worker", export: SpanExporter | None = None
    ) -> None:
        t = settings.tracing
        self.group_id = settings.kafka.group_id
        self.resource = resource(settings, role)
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(t.sampling_ratio)),
            resource=self.resource,
            shutdown_on_exit=role != "worker",  # a command's spans leave as it exits
        )
        self.processor = BatchSpanProcessor(
            export or exporter(settings),
            max_queue_size=t.queue_spans,
            schedule_delay_millis=SCHEDULE_DELAY_MS,
            max_export_batch_size=min(EXPORT_BATCH, t.queue_spans),
            export_timeout_millis=t.export_timeout_s * 1000,
        )
        self.provider.add_span_processor(self.processor)
        self.scope = InstrumentationScope("conveyor", __version__)
        self.tracer = self.provider.get_tracer("conveyor", __version__)
        handler_tracing.install(HandlerBackend(self))

    def record(self, record: Record) -> RecordTrace:
        return _RecordTrace(self, record)

    def sending(
        self, topic: str, key: bytes | None, headers: Headers, *, link: bool = False
    ) -> Sending:
        return _Sending(self, topic, key, headers, link)

    def shutdown(self) -> None:
        handler_tracing.install(None)
        self.provider.shutdown()

    async def aclose(self) -> None:
        """``shutdown`` off the event loop (it waits for the last export)."""
        await asyncio.to_thread(self.shutdown)


class _RecordTrace(RecordTrace):
    __slots__ = ("_attributes", "_link", "_parent", "_previous", "_record", "_topic", "_tracing")

    def __init__(self, tracing: OtelTracing, record: Record) -> None:
        self._tracing = tracing
        self._record = record
        self._parent: Context = PROPAGATOR.extract(record.headers, getter=HEADERS)
        self._link: Link | None = None
        for name, value in record.headers:
            if name == LINK_HEADER:
                reason = "previous_attempt" if record.trusted else "replay_of"
                self._link = linked(value, reason)
        self._previous: SpanContext | None = None
        self._attributes = _consumed(record, tracing.group_id)

    def attempt(self, job: Any) -> AttemptSpan:
        if self._previous is not None:
            links = [Link(self._previous, {"conveyor.link.reason": "previous_attempt"})]
        else:
            links = [self._link] if self._link is not None else []
        attributes = dict(self._attributes)
        if job is not None:
            attributes["messaging.message.id"] = job.id
            attributes["conveyor.job.type"] = job.type
            attributes["conveyor.job.attempt"] = job.attempt
            if job.organization_id:
                attributes["conveyor.organization.id"] = job.organization_id
        else:
            attributes["conveyor.job.attempt"] = self._record.attempts_before + 1
        span = self._tracing.tracer.start_span(
            f"process {self._record.topic}",
            self._parent,
            SpanKind.CONSUMER,
            attributes,
            links,
            record_exception=False,
            set_status_on_exception=False,
        )
        return _AttemptSpan(self, span)

    def ended(self, span_context: SpanContext) -> None:
        self._previous = span_context


def _consumed(record: Record, group_id: str) -> dict[str, Value]:
    attributes: dict[str, Value] = {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": group_id,
        "messaging.message.body.size": len(record.value or b""),
    }
    key = id_key(record.key)
    if key is not None:
        attributes["messaging.kafka.message.key"] = key
    return attributes


def outcome_of(decision: Decision) -> str:
    if isinstance(decision, DeadLetter):
        return "crashed" if decision.stage.value == "crashed" else "dead_letter"
    return "retry"


class _AttemptSpan(AttemptSpan):
    __slots__ = ("_outcome", "_span", "_token", "_trace")

    def __init__(self, record_trace: _RecordTrace, span: trace.Span) -> None:
        self._trace = record_trace
        self._span = span
        self._outcome = "succeeded"
        self._token: Any = None

    def decided(self, decision: Decision) -> None:
        self._outcome = outcome_of(decision)
        self._span.set_attribute("conveyor.job.stage", decision.stage.value)
        if self._outcome != "retry":
            self._span.set_status(Status(StatusCode.ERROR))

    def __enter__(self) -> AttemptSpan:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if error is not None:
            self._outcome = "interrupted"
            span.set_attribute("error.type", type(error).__name__)
        span.set_attribute("conveyor.job.outcome", self._outcome)
        span.end()
        otel_context.detach(self._token)
        self._trace.ended(span.get_span_context())


class _Sending(Sending):
    __slots__ = ("_link", "_span", "_token", "_tracing")

    def __init__(
        self, tracing: OtelTracing, topic: str, key: bytes | None, headers: Headers, link: bool
    ) -> None:
        super().__init__(headers)
        attributes: dict[str, Value] = {
            "messaging.system": "kafka",
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
        }
        if (shown := id_key(key)) is not None:
            attributes["messaging.kafka.message.key"] = shown
        self._tracing = tracing
        self._link = trace.get_current_span().get_span_context() if link else None
        links = (
            [] if link else [found for v in _links(headers) if (found := linked(v, "replay_of"))]
        )
        self._span = tracing.tracer.start_span(
            f"send {topic}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            links=links,
            record_exception=False,
        )
        self._token: Any = None

    def __enter__(self) -> Headers:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        carried: list[tuple[str, bytes]] = without_trace(self.headers, link=self._link is not None)
        PROPAGATOR.inject(carried, setter=HEADERS)
        if self._link is not None and self._link.is_valid:
            carried.append((LINK_HEADER, traceparent(self._link).encode()))
        return tuple(carried)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if error is not None:
            self._span.set_attribute("error.type", type(error).__name__)
            self._span.set_status(Status(StatusCode.ERROR))
        self._span.end()
        otel_context.detach(self._token)


def _links(headers: Headers) -> list[bytes]:
    return [v for k, v in headers if k == LINK_HEADER]


# --- the handlers' backend (handlers/tracing.py) --------------------------------------


class _Span(handler_tracing.Span):
    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token: Any = None

    def set(self, key: str, value: Value) -> None:
        self._span.set_attribute(key, value)

    def update(self, attributes: Attributes) -> None:
        self._span.set_attributes(attributes)

    def fail(self, error: BaseException | str) -> None:
        kind = error if isinstance(error, str) else type(error).__name__
        self._span.set_attribute("error.type", kind)
        self._span.set_status(Status(StatusCode.ERROR))

    def __enter__(self) -> handler_tracing.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if error is not None:
            self.fail(error)
        self._span.end()
        otel_context.detach(self._token)


class HandlerBackend:
    """``handlers.tracing.Backend`` on the SDK; child processes' spans are exported as
    they were recorded (``adopt``)."""

    def __init__(self, tracing: OtelTracing) -> None:
        self._tracing = tracing
        self._tracer = tracing.tracer

    def span(self, name: str, kind: str, attributes: Attributes | None) -> handler_tracing.Span:
        return _Span(
            self._tracer.start_span(
                name, kind=KINDS[kind], attributes=attributes, record_exception=False
            )
        )

    def current(self) -> handler_tracing.Span:
        return _Span(trace.get_current_span())

    def finished(self, name: str, start_ns: int, end_ns: int, attributes: Attributes) -> None:
        if not trace.get_current_span().is_recording():
            return  # no job's span: not worth a trace of its own
        span = self._tracer.start_span(
            name, kind=SpanKind.CLIENT, attributes=attributes, start_time=start_ns
        )
        if "error.type" in attributes:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end_ns)

    def parent(self) -> tuple[int, int] | None:
        found = trace.get_current_span().get_span_context()
        if not found.is_valid or not found.trace_flags.sampled:
            return None
        return found.trace_id, found.span_id

    def adopt(self, records: Sequence[SpanRecord]) -> None:
        for r in records:
            self._tracing.processor.on_end(self._readable(r))

    def ids(self) -> tuple[str, str] | None:
        found = trace.get_current_span().get_span_context()
        if not found.is_valid:
            return None
        return f"{found.trace_id:032x}", f"{found.span_id:016x}"

    def _readable(self, r: SpanRecord) -> ReadableSpan:
        flags = TraceFlags(TraceFlags.SAMPLED)
        return ReadableSpan(
            name=r.name,
            context=SpanContext(r.trace_id, r.span_id, False, flags),
            parent=SpanContext(r.trace_id, r.parent_id, False, flags),
            resource=self._tracing.resource,
            attributes=r.attributes,
            kind=SpanKind.INTERNAL,
            status=Status(StatusCode.ERROR) if r.error_type else Status(StatusCode.UNSET),
            start_time=r.start_ns,
            end_time=r.end_ns,
            instrumentation_scope=self._tracing.scope,
        )
