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

import os
import random
import re
import socket
import time
from collections.abc import Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from handlers import tracing as handler_tracing
from handlers.tracing import Attributes, SpanRecord, Value
from streams import __version__
from streams.otlp import OtlpHttpExporter
from streams.records import Headers, Record
from streams.retry import DeadLetter, Decision
from streams.settings import Settings, parse_pairs
from streams.tracing import (
    LINK_HEADER,
    TRACE_HEADERS,
    TRACEPARENT,
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

    def sampled(self) -> bool:
        """Whether a new trace is recorded (``sampling_ratio``)."""
        return self.ratio >= 1.0 or random.random() < self.ratio

    def record(self, record: Record) -> RecordTrace:
        incoming: bytes | None = None
        for name, value in record.headers:
            if name == TRACEPARENT:
                incoming = value
        flagged = None if incoming is None else _sampled_flag(incoming)
        if flagged if flagged is not None else self.sampled():
            return _RecordTrace(self, record)
        own = tuple((k, v) for k, v in record.headers if k in TRACE_HEADERS)
        return _QuietTrace(_Quiet(own if flagged is not None else ()))

    def sending(
        self, topic: str, key: bytes | None, headers: Headers, *, link: bool = False
    ) -> Sending:
        quiet = _QUIET.get()
        if (
            quiet is None
            and not trace.get_current_span().get_span_context().is_valid
            and not self.sampled()
        ):
            quiet = _Quiet(())  # a command's publish: a new trace, not recorded
        if quiet is not None:
            return Sending(tuple(without_trace(headers)) + quiet.headers())
        return _Sending(self, topic, key, headers, link)

    def shutdown(self) -> None:
        handler_tracing.install(None)
        self.provider.shutdown()


def _sampled_flag(traceparent: bytes) -> bool | None:
    """The sampled flag of a W3C ``traceparent`` (None when it cannot be read)."""
    parts = traceparent.split(b"-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        return bool(int(parts[3], 16) & 1)
    except ValueError:
        return None


class _Quiet:
    """A job whose trace is not sampled: nothing is recorded, but its context travels on
    (the record's own, or a new one with the sampled flag off)."""

    __slots__ = ("_made", "_own")

    def __init__(self, own: Headers) -> None:
        self._own = own
        self._made: tuple[int, int] | None = None

    def ids(self) -> tuple[int, int]:
        if self._made is None:
            parts = self._own[0][1].split(b"-") if self._own else ()
            if len(parts) >= 3 and self._own[0][0] == TRACEPARENT:
                self._made = int(parts[1], 16), int(parts[2], 16)
            else:
                self._made = random.getrandbits(128) or 1, random.getrandbits(64) or 1
        return self._made

    def headers(self) -> Headers:
        if any(k == TRACEPARENT for k, _ in self._own):
            return self._own
        trace_id, span_id = self.ids()
        return ((TRACEPARENT, f"00-{trace_id:032x}-{span_id:016x}-00".encode()),)


_QUIET: ContextVar[_Quiet | None] = ContextVar("conveyor_unsampled_job", default=None)


class _QuietTrace(RecordTrace, AttemptSpan):
    """The attempts of an unsampled job: the context is set for publishes and log lines."""

    __slots__ = ("_quiet", "_token")

    def __init__(self, quiet: _Quiet) -> None:
        self._quiet = quiet
        self._token: Any = None

    def attempt(self, job: Any) -> AttemptSpan:
        return self

    def __enter__(self) -> AttemptSpan:
        self._token = _QUIET.set(self._quiet)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _QUIET.reset(self._token)


class _RecordTrace(RecordTrace):
    """A sampled record's attempts (an unsampled one is ``_QuietTrace``)."""

    __slots__ = ("_link", "_parent", "_parent_span", "_previous", "_record", "_tracing")

    def __init__(self, tracing: OtelTracing, record: Record) -> None:
        self._tracing = tracing
        self._record = record
        self._parent: Context = _ROOT
        self._parent_span: SpanContext | None = None
        self._link: Link | None = None
        self._previous: SpanContext | None = None
        carried = False
        for name, value in record.headers:
            if name in TRACE_HEADERS:
                carried = True
            elif name == LINK_HEADER:
                self._link = linked(value, "previous_attempt" if record.trusted else "replay_of")
        if carried:
            self._parent = PROPAGATOR.extract(record.headers, getter=HEADERS)
            found = trace.get_current_span(self._parent).get_span_context()
            self._parent_span = found if found.is_valid else None

    def attempt(self, job: Any) -> AttemptSpan:
        if self._previous is not None:
            link: Link | None = Link(self._previous, {"conveyor.link.reason": "previous_attempt"})
        else:
            link = self._link
        attributes = _consumed(self._record, job, self._tracing.group_id)
        return _AttemptSpan(self, attributes, (link,) if link is not None else ())


_ROOT = Context()  # no parent: the record carried no trace context
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def _consumed(record: Record, job: Any, group_id: str) -> dict[str, Value]:
    attributes: dict[str, Value] = {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": group_id,
    }
    key = id_key(record.key)
    if key is not None:
        attributes["messaging.kafka.message.key"] = key
    if job is None:
        attributes["conveyor.job.attempt"] = record.attempts_before + 1
        return attributes
    attributes["messaging.message.id"] = job.id
    attributes["conveyor.job.type"] = job.type
    attributes["conveyor.job.attempt"] = job.attempt
    if job.organization_id:
        attributes["conveyor.organization.id"] = job.organization_id
    return attributes


def outcome_of(decision: Decision) -> str:
    if isinstance(decision, DeadLetter):
        return "crashed" if decision.stage.value == "crashed" else "dead_letter"
    return "retry"


class _AttemptSpan(AttemptSpan):
    """An attempt's consumer span, recorded by hand rather than through the SDK's span
    objects: its ids, times and attributes go straight into a ``ReadableSpan`` for the
    batch processor (the SDK's checks of a dozen attributes cost more than a no-op job
    does). Its context is current meanwhile, so the SDK records its children."""

    __slots__ = ("_attributes", "_context", "_links", "_outcome", "_start", "_token", "_trace")

    def __init__(
        self, record_trace: _RecordTrace, attributes: dict[str, Value], links: tuple[Link, ...]
    ) -> None:
        parent = record_trace._parent_span
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
        state = parent.trace_state if parent is not None else None
        self._context = SpanContext(trace_id, random.getrandbits(64) or 1, False, _SAMPLED, state)
        self._trace = record_trace
        self._attributes = attributes
        self._links = links
        self._outcome = "succeeded"
        self._start = 0
        self._token: Any = None

    def decided(self, decision: Decision) -> None:
        self._outcome = outcome_of(decision)
        self._attributes["conveyor.job.stage"] = decision.stage.value

    def __enter__(self) -> AttemptSpan:
        current = trace.set_span_in_context(NonRecordingSpan(self._context), self._trace._parent)
        self._token = otel_context.attach(current)
        self._start = time.time_ns()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        end = time.time_ns()
        otel_context.detach(self._token)
        if error is not None:
            self._outcome = "interrupted"
            self._attributes["error.type"] = type(error).__name__
        self._attributes["conveyor.job.outcome"] = self._outcome
        failed = self._outcome in ("dead_letter", "crashed")
        tracing = self._trace._tracing
        tracing.processor.on_end(
            ReadableSpan(
                name=f"process {self._trace._record.topic}",
                context=self._context,
                parent=self._trace._parent_span,
                resource=tracing.resource,
                attributes=self._attributes,
                links=self._links,
                kind=SpanKind.CONSUMER,
                status=_ERROR if failed else _UNSET,
                start_time=self._start,
                end_time=end,
                instrumentation_scope=tracing.scope,
            )
        )
        self._trace._previous = self._context


_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)


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


def _sampled_context() -> bool:
    """A sampled span is current (a recorded attempt or one of its children)."""
    found = trace.get_current_span().get_span_context()
    return found.is_valid and found.trace_flags.sampled


class HandlerBackend:
    """``handlers.tracing.Backend`` on the SDK; child processes' spans are exported as
    they were recorded (``adopt``)."""

    def __init__(self, tracing: OtelTracing) -> None:
        self._tracing = tracing
        self._tracer = tracing.tracer

    def span(self, name: str, kind: str, attributes: Attributes | None) -> handler_tracing.Span:
        if not _sampled_context():
            return handler_tracing.NOOP  # an unsampled job, or none: no trace of its own
        return _Span(
            self._tracer.start_span(
                name, kind=KINDS[kind], attributes=attributes, record_exception=False
            )
        )

    def current(self) -> handler_tracing.Span:
        span = trace.get_current_span()
        return _Span(span) if span.is_recording() else handler_tracing.NOOP

    def finished(self, name: str, start_ns: int, end_ns: int, attributes: Attributes) -> None:
        if not _sampled_context():
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
        quiet = _QUIET.get()
        if quiet is not None:
            trace_id, span_id = quiet.ids()
        else:
            found = trace.get_current_span().get_span_context()
            if not found.is_valid:
                return None
            trace_id, span_id = found.trace_id, found.span_id
        return f"{trace_id:032x}", f"{span_id:016x}"

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
