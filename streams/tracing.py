"""Traces through Kafka: the W3C trace context in record headers, one span per attempt.

Off by default. ``OFF`` is what the runner, the publisher and the commands
hold then: every method returns a shared no-op, no OpenTelemetry module is
imported (``setup`` imports ``streams.otel`` only when tracing is enabled),
and a record's own ``traceparent``/``tracestate``/``baggage`` pass through
to its retry and dead-letter records unchanged.

On (``streams.otel``): each attempt of a job is a consumer span, the child
of the context its record carried (a record without one starts a trace);
everything Conveyor publishes — retry, dead-letter and follow-up records,
``conveyor submit``, the demo, ``conveyor dlq replay`` — gets a producer
span whose context replaces the record's trace headers (refreshed, never
duplicated). Links:

- a retry record names the attempt that failed in ``conveyor-trace-link``;
  the next attempt's span links to it (and attempts retried in place link
  to the one before, in the same run);
- ``conveyor dlq replay`` moves a dead letter's ``traceparent`` to
  ``conveyor-trace-link``: the replayed job starts a new trace that links
  to the one that failed.

A link only points at another trace: it is read from any record, trusted
or not (``streams/records.py``), since a producer can set ``traceparent``
anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from streams.records import Headers, Record

if TYPE_CHECKING:
    from handlers.types import Job
    from streams.retry import Decision
    from streams.settings import Settings

TRACEPARENT = "traceparent"
TRACE_HEADERS = frozenset({TRACEPARENT, "tracestate", "baggage"})
LINK_HEADER = "conveyor-trace-link"

H = TypeVar("H", bytes, str, "bytes | str | None")


class AttemptSpan:
    """The span of one attempt (a no-op here): current while the attempt runs, decides
    and publishes; ``decided`` names how it ended, else leaving it means succeeded."""

    __slots__ = ()

    def decided(self, decision: Decision) -> None:
        return None

    def __enter__(self) -> AttemptSpan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class RecordTrace:
    """One consumed record's trace: its attempts' spans (a no-op here)."""

    __slots__ = ()

    def attempt(self, job: Job[Any] | None) -> AttemptSpan:
        """The span of the next attempt (``job`` None: the record never became a job)."""
        return NO_ATTEMPT


class Sending:
    """A publish: ``with tracing.sending(...) as headers`` gives the headers to send."""

    __slots__ = ("headers",)

    def __init__(self, headers: Headers) -> None:
        self.headers = headers

    def __enter__(self) -> Headers:
        return self.headers

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class Tracing:
    """Tracing off: nothing recorded, headers passed through as they are."""

    enabled = False

    def record(self, record: Record) -> RecordTrace:
        return NO_RECORD

    def sending(
        self, topic: str, key: bytes | None, headers: Headers, *, link: bool = False
    ) -> Sending:
        """Publish ``headers`` to ``topic`` (on: under a producer span, with its context;
        ``link``: naming the current span in ``conveyor-trace-link``)."""
        return Sending(headers)

    def shutdown(self) -> None:
        """Export what is left (bounded by the export timeout) and stop."""


NO_ATTEMPT = AttemptSpan()
NO_RECORD = RecordTrace()
OFF = Tracing()


def setup(settings: Settings, *, role: str = "worker") -> Tracing:
    """``OFF`` unless ``tracing.enabled``; then the OpenTelemetry SDK, exporting over
    OTLP/HTTP, installed for this process (handlers' spans included)."""
    if not settings.tracing.enabled:
        return OFF
    from streams.otel import OtelTracing

    return OtelTracing(settings, role=role)


_command: Tracing | None = None


def for_command(settings: Settings) -> Tracing:
    """The tracing of a command that publishes (``conveyor submit``, ``dlq replay``, the
    demo): one per process, flushed when the process exits."""
    global _command
    if _command is None:
        _command = setup(settings, role="command")
    return _command


def without_trace(headers: Iterable[tuple[str, H]], *, link: bool = False) -> list[tuple[str, H]]:
    """``headers`` less the trace context (and ``link``: the trace link), to be written
    afresh."""
    return [
        (k, v) for k, v in headers if k not in TRACE_HEADERS and not (link and k == LINK_HEADER)
    ]


def replayed(headers: Iterable[tuple[str, H]]) -> list[tuple[str, H]]:
    """A dead letter's own headers for its replay: a new trace that links to the one
    that failed (its ``traceparent`` moves to ``conveyor-trace-link``)."""
    items = list(headers)
    kept = without_trace(items, link=True)
    failed = [v for k, v in items if k == TRACEPARENT and v]
    if failed:
        kept.append((LINK_HEADER, failed[-1]))
    return kept
