"""The trace context in Kafka headers, and the jobs whose trace is not sampled.

Part of tracing-on (``streams.otel``): reading and writing W3C ``traceparent``,
``tracestate`` and ``baggage`` in record headers, the ``conveyor-trace-link``
header, and ``Quiet``: an unsampled job costs a context variable, not a span,
while its context still travels to what it publishes and into its log lines.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streams.records import Headers
from streams.tracing import TRACEPARENT, AttemptSpan, RecordTrace

_ID_KEY = re.compile(r"^[A-Za-z0-9_.:@\-]{1,128}$")
_OTHERS = frozenset({"tracestate", "baggage"})


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
_PLAIN = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE, _NO_SPAN = b"0" * 32, b"0" * 16


def extract(headers: Headers) -> Context:
    """The context a record's trace headers carry: ``PROPAGATOR.extract``'s, read
    directly when they are a plain version-00 ``traceparent`` alone (the usual case;
    the propagator's regular expressions and getter cost more than a no-op job)."""
    parent: bytes | None = None
    for name, value in headers:
        if name == TRACEPARENT:
            parent = value
        elif name in _OTHERS:
            return PROPAGATOR.extract(headers, getter=HEADERS)
    found = _PLAIN.fullmatch(parent) if parent is not None else None
    if found is None or found[1] == _NO_TRACE or found[2] == _NO_SPAN:
        return PROPAGATOR.extract(headers, getter=HEADERS)
    context = SpanContext(int(found[1], 16), int(found[2], 16), True, TraceFlags(int(found[3], 16)))
    return trace.set_span_in_context(NonRecordingSpan(context), Context())


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


def sampled_flag(traceparent: bytes) -> bool | None:
    """The sampled flag of a W3C ``traceparent`` (None when it cannot be read)."""
    parts = traceparent.split(b"-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        int(parts[1], 16), int(parts[2], 16)
        return bool(int(parts[3], 16) & 1)
    except ValueError:
        return None


class Quiet(RecordTrace, AttemptSpan):
    """A job whose trace is not sampled: nothing is recorded, but its context travels on
    (the record's own trace headers, or a new context with the sampled flag off) and
    names its log lines. Its attempts set it as ``QUIET``."""

    __slots__ = ("_made", "_own", "_token")

    def __init__(self, own: Headers = ()) -> None:
        self._own = own  # the record's trace headers, its traceparent readable
        self._made: tuple[int, int] | None = None
        self._token: Any = None

    def ids(self) -> tuple[int, int]:
        """(trace id, span id) for log lines: the record's context, or a new one."""
        if self._made is None:
            found = [v for k, v in self._own if k == TRACEPARENT]
            if found:
                parts = found[-1].split(b"-")
                self._made = int(parts[1], 16), int(parts[2], 16)
            else:
                self._made = random.getrandbits(128) or 1, random.getrandbits(64) or 1
        return self._made

    def headers(self) -> Headers:
        """The trace headers of what the job publishes."""
        if any(k == TRACEPARENT for k, _ in self._own):
            return self._own
        trace_id, span_id = self.ids()
        return ((TRACEPARENT, f"00-{trace_id:032x}-{span_id:016x}-00".encode()),)

    def attempt(self, job: Any) -> AttemptSpan:
        return self

    def __enter__(self) -> AttemptSpan:
        self._token = QUIET.set(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        QUIET.reset(self._token)


QUIET: ContextVar[Quiet | None] = ContextVar("conveyor_unsampled_job", default=None)
