"""The spans Conveyor records by hand: an attempt's consumer span, each publish's.

Part of tracing-on (``streams.otel``). An attempt's span skips the SDK's span
objects (see ``_AttemptSpan``); a publish's is an ordinary SDK span whose
context replaces the record's trace headers.
"""

from __future__ import annotations

import random
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from handlers.tracing import Value
from streams.otel_context import HEADERS, PROPAGATOR, extract, id_key, linked, traceparent
from streams.records import Headers, Record
from streams.retry import DeadLetter, Decision
from streams.tracing import (
    LINK_HEADER,
    TRACE_HEADERS,
    AttemptSpan,
    RecordTrace,
    Sending,
    without_trace,
)

if TYPE_CHECKING:
    from streams.otel import OtelTracing


class RecordSpans(RecordTrace):
    """A sampled record's attempts (an unsampled one is ``otel_context.Quiet``)."""

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
            self._parent = extract(record.headers)
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
_NEW = TraceFlags(TraceFlags.SAMPLED | 0x02)


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
    objects: its ids, times and attributes go straight into the export queue as a
    ``streams.otlp.Finished`` tuple (the SDK's checks of a dozen attributes, its
    ``ReadableSpan`` and batch processor cost more than a no-op job does). Its context
    is current meanwhile, so the SDK records its children."""

    __slots__ = ("_attributes", "_context", "_links", "_outcome", "_start", "_token", "_trace")

    def __init__(
        self, record_trace: RecordSpans, attributes: dict[str, Value], links: tuple[Link, ...]
    ) -> None:
        parent = record_trace._parent_span
        span_id = random.getrandbits(64) or 1
        if parent is not None:
            self._context = SpanContext(
                parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state
            )
        else:  # a new trace: sampled, its id random (W3C trace context level 2)
            self._context = SpanContext(random.getrandbits(128) or 1, span_id, False, _NEW)
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
        record_trace = self._trace
        record_trace._tracing.processor.add(
            (
                self._context,
                record_trace._parent_span,
                "process " + record_trace._record.topic,
                SpanKind.CONSUMER,
                self._start,
                end,
                self._attributes,
                self._links,
                self._outcome in ("dead_letter", "crashed"),
            )
        )
        record_trace._previous = self._context


class SendSpan(Sending):
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
