"""Tracing in tests: the real SDK exporting to memory, and the span tree as text.

``traced()`` sets tracing up as the worker does (``streams.otel.OtelTracing``,
handlers' backend installed) but exports to an ``InMemorySpanExporter``;
``Tree`` reads the finished spans back as parent/child lines, so a failing
assertion prints the whole tree.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streams.otel import OtelTracing
from streams.settings import Settings


@dataclass
class Traced:
    tracing: OtelTracing
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        self.tracing.processor.force_flush()
        return list(self.exporter.get_finished_spans())

    def tree(self) -> Tree:
        return Tree(self.spans())

    def job(self) -> AbstractContextManager[Any]:
        """A recorded span named ``job`` made current, standing in for a job's attempt
        (handlers' spans are only recorded under one)."""
        return self.tracing.tracer.start_as_current_span("job")


@contextmanager
def traced(settings: Settings | None = None, **tracing: Any) -> Iterator[Traced]:
    """Tracing on (100 % sampling unless given), spans kept in memory."""
    base = settings or Settings()
    options = {"enabled": True, **tracing}
    configured = base.model_copy(update={"tracing": base.tracing.model_copy(update=options)})
    exporter = InMemorySpanExporter()
    otel = OtelTracing(configured, export=exporter)
    try:
        yield Traced(otel, exporter)
    finally:
        otel.shutdown()


class Tree:
    """Finished spans by parent; ``str()`` draws the tree with each span's key attributes."""

    SHOWN = (
        "conveyor.job.outcome",
        "conveyor.job.attempt",
        "messaging.destination.name",
        "gen_ai.request.model",
        "http.response.status_code",
        "db.operation.name",
        "error.type",
    )

    def __init__(self, spans: Sequence[ReadableSpan]) -> None:
        self.spans = sorted(spans, key=lambda s: s.start_time or 0)
        self.by_id = {s.context.span_id: s for s in self.spans}

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r} in\n{self}"
        return found[0]

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return self.by_id.get(span.parent.span_id) if span.parent else None

    def children(self, span: ReadableSpan) -> list[ReadableSpan]:
        return [s for s in self.spans if s.parent and s.parent.span_id == span.context.span_id]

    def names_under(self, span: ReadableSpan) -> list[str]:
        """Every descendant's name, depth first."""
        found = []
        for child in self.children(span):
            found.append(child.name)
            found += self.names_under(child)
        return found

    def roots(self) -> list[ReadableSpan]:
        return [s for s in self.spans if self.parent(s) is None]

    def trace_ids(self) -> set[int]:
        return {s.context.trace_id for s in self.spans}

    def __str__(self) -> str:
        lines: list[str] = []

        def draw(span: ReadableSpan, depth: int) -> None:
            attributes = span.attributes or {}
            shown = ", ".join(f"{k}={attributes[k]}" for k in self.SHOWN if k in attributes)
            remote = " (parent elsewhere)" if depth == 0 and span.parent else ""
            lines.append(f"{'  ' * depth}{span.name} [{shown}]{remote}")
            for child in self.children(span):
                draw(child, depth + 1)

        for root in self.roots():
            draw(root, 0)
        return "\n".join(lines)


def every_value(spans: Sequence[ReadableSpan]) -> list[str]:
    """Every attribute value, event and link attribute of ``spans``, as text."""
    found: list[str] = []
    for span in spans:
        found.append(span.name)
        found += [str(v) for v in (span.attributes or {}).values()]
        for event in span.events:
            found.append(event.name)
            found += [str(v) for v in (event.attributes or {}).values()]
        for link in span.links:
            found += [str(v) for v in (link.attributes or {}).values()]
        found += [str(v) for v in span.resource.attributes.values()]
    return found
