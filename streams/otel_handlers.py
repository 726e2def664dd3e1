"""The handlers' spans (``handlers.tracing``) on the OpenTelemetry SDK.

Part of tracing-on (``streams.otel``). Handlers' spans are recorded only under
a sampled span (an attempt's, or one of its children): never a trace of their
own. An extraction process's spans arrive as plain data and are exported as
it recorded them.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from handlers import tracing as handler_tracing
from handlers.tracing import Attributes, SpanRecord, Value
from streams.otel_context import QUIET

if TYPE_CHECKING:
    from streams.otel import OtelTracing

KINDS = {
    handler_tracing.INTERNAL: SpanKind.INTERNAL,
    handler_tracing.CLIENT: SpanKind.CLIENT,
    handler_tracing.PRODUCER: SpanKind.PRODUCER,
    handler_tracing.CONSUMER: SpanKind.CONSUMER,
}


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
        flags = TraceFlags(TraceFlags.SAMPLED)
        for r in records:
            self._tracing.processor.add(
                (
                    SpanContext(r.trace_id, r.span_id, False, flags),
                    SpanContext(r.trace_id, r.parent_id, False, flags),
                    r.name,
                    SpanKind.INTERNAL,
                    r.start_ns,
                    r.end_ns,
                    r.attributes,
                    (),
                    r.error_type is not None,
                )
            )

    def ids(self) -> tuple[str, str] | None:
        quiet = QUIET.get()
        if quiet is not None:
            trace_id, span_id = quiet.ids()
        else:
            found = trace.get_current_span().get_span_context()
            if not found.is_valid:
                return None
            trace_id, span_id = found.trace_id, found.span_id
        return f"{trace_id:032x}", f"{span_id:016x}"
