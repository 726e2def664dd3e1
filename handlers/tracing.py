"""Spans for handlers and providers: a facade that costs nothing while tracing is off.

Handlers mark their stages and outside calls with ``span`` (and ``http``,
``genai``, ``db`` for the OpenTelemetry semantic conventions' attributes).
While tracing is off — the default — each returns one shared no-op object:
no OpenTelemetry module is imported and nothing is recorded. When it is on,
``streams.tracing`` installs a backend here (``install``); handlers never
import ``streams`` or the SDK.

What goes into a span is chosen here and at each call site: names, sizes,
counts, models, hosts, paths and SQL text — never a secret, a token, a query
parameter, message text or document content. Errors are recorded by class
(``error.type``), not by message.

The extraction processes hold no secret, the collector's headers included,
so they export nothing: ``in_child`` records their spans as plain data under
the worker's context, and the worker exports them (``adopt``).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

A = TypeVar("A")
R = TypeVar("R")

Value = str | bool | int | float
Attributes = Mapping[str, Value]

INTERNAL, CLIENT, PRODUCER, CONSUMER = "internal", "client", "producer", "consumer"


class Span:
    """A span being recorded; this base class records nothing (tracing off).

    Use it as a context manager: inside, it is the current span (children
    and log lines see it); leaving it ends it, marking an exception's class.
    """

    __slots__ = ()

    def set(self, key: str, value: Value) -> None:
        """Set one attribute."""

    def update(self, attributes: Attributes) -> None:
        """Set several attributes."""

    def fail(self, error: BaseException | str) -> None:
        """Mark the span failed with ``error``'s class (or a short reason), never its text."""

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NOOP = Span()


class Backend(Protocol):
    """What ``streams.tracing`` (or the recorder of an extraction process) provides."""

    def span(self, name: str, kind: str, attributes: Attributes | None) -> Span: ...

    def current(self) -> Span: ...

    def finished(self, name: str, start_ns: int, end_ns: int, attributes: Attributes) -> None: ...

    def parent(self) -> tuple[int, int] | None: ...

    def adopt(self, records: Sequence[SpanRecord]) -> None: ...

    def ids(self) -> tuple[str, str] | None: ...


_backend: Backend | None = None


def install(backend: Backend | None) -> None:
    """Turn tracing on for this process (``None``: off again)."""
    global _backend
    _backend = backend


def enabled() -> bool:
    return _backend is not None


def span(name: str, attributes: Attributes | None = None, kind: str = INTERNAL) -> Span:
    """A child span of the current one (use with ``with``)."""
    backend = _backend
    return NOOP if backend is None else backend.span(name, kind, attributes)


def current() -> Span:
    """The current span, to add attributes to (e.g. token usage once the answer is in)."""
    backend = _backend
    return NOOP if backend is None else backend.current()


def ids() -> tuple[str, str] | None:
    """The current span's (trace id, span id) in hex, for log lines and alerts; None
    when tracing is off or no span is current."""
    backend = _backend
    return None if backend is None else backend.ids()


# --- the semantic conventions' spans -----------------------------------------------

_ID_SEGMENT = re.compile(r"/\d+(?=/|$)")


def http(
    method: str,
    scheme: str,
    host: str,
    port: int | None,
    path: str | None,
    name: str | None = None,
) -> Span:
    """An HTTP client span. ``path`` None leaves the path out of ``url.full`` (a
    user-supplied URL's path may be a capability); a query string is never recorded.
    Numeric path segments become ``{id}`` in the span's name (``url.template``)."""
    backend = _backend
    if backend is None:
        return NOOP
    shown = path if path is not None else "/REDACTED"
    template = _ID_SEGMENT.sub("/{id}", shown) if path is not None else None
    default_port = 443 if scheme == "https" else 80
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    attributes: dict[str, Value] = {
        "http.request.method": method,
        "url.full": f"{scheme}://{netloc}{shown}",
        "server.address": host,
        "server.port": port or default_port,
    }
    if template is not None:
        attributes["url.template"] = template
    label = name or (f"{method} {template}" if template else method)
    return backend.span(label, CLIENT, attributes)


def genai(operation: str, model: str, provider: str, server: str | None = None) -> Span:
    """A GenAI client span (``chat`` or ``embeddings``): the provider sets the token
    usage on it (``usage``) when the answer says."""
    backend = _backend
    if backend is None:
        return NOOP
    attributes: dict[str, Value] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "gen_ai.provider.name": provider,
    }
    if server:
        attributes["server.address"] = server
    return backend.span(f"{operation} {model}", CLIENT, attributes)


def usage(answer: Any) -> None:
    """Add an OpenAI-style answer's token usage and model to the current span."""
    backend = _backend
    if backend is None or not isinstance(answer, dict):
        return
    found: dict[str, Value] = {}
    counts = answer.get("usage")
    if isinstance(counts, dict):
        for source, target in (
            ("prompt_tokens", "gen_ai.usage.input_tokens"),
            ("completion_tokens", "gen_ai.usage.output_tokens"),
        ):
            if isinstance(counts.get(source), int):
                found[target] = counts[source]
    if isinstance(answer.get("model"), str):
        found["gen_ai.response.model"] = answer["model"]
    if found:
        backend.current().update(found)


def db(operation: str, target: str) -> Span:
    """A Postgres span for what asyncpg's query logger does not see (COPY)."""
    backend = _backend
    if backend is None:
        return NOOP
    attributes = {
        "db.system.name": "postgresql",
        "db.operation.name": operation,
        "db.collection.name": target,
    }
    return backend.span(f"{operation} {target}", CLIENT, attributes)


def watch_queries(conn: Any) -> None:
    """asyncpg pool ``init``: each query of ``conn`` becomes a span of the job that ran
    it (its SQL text, never its parameters). Queries outside any span are not recorded,
    nor the pool's reset on release."""
    reset = conn.get_reset_query()

    def logged(record: Any) -> None:
        backend = _backend
        if backend is None or record.query == reset:
            return
        end = time.time_ns()
        backend.finished(
            _operation(record.query),
            end - int(record.elapsed * 1e9),
            end,
            _query_attributes(record),
        )

    conn.add_query_logger(logged)


def _operation(query: str) -> str:
    words = query.lstrip().split(None, 1)
    return words[0].rstrip(";").upper() if words else "postgresql"


def _query_attributes(record: Any) -> dict[str, Value]:
    attributes: dict[str, Value] = {
        "db.system.name": "postgresql",
        "db.operation.name": _operation(record.query),
        "db.query.text": " ".join(record.query.split())[:2000],
    }
    params = record.conn_params
    if getattr(params, "database", None):
        attributes["db.namespace"] = params.database
    addr = record.conn_addr
    if isinstance(addr, tuple):
        attributes["server.address"], attributes["server.port"] = str(addr[0]), int(addr[1])
    if record.exception is not None:
        attributes["error.type"] = type(record.exception).__name__
    return attributes


# --- the extraction processes --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """A span recorded in an extraction process, sent back to the worker to export."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Value]
    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class ChildResult:
    """What ``in_child`` returns: the work's result or error, and its spans."""

    value: Any
    failed: bool
    spans: tuple[SpanRecord, ...]


def parent() -> tuple[int, int] | None:
    """(trace id, span id) of the current span if it is recorded, to carry to a child."""
    backend = _backend
    return None if backend is None else backend.parent()


def in_child(call: tuple[Callable[[A], R], A, tuple[int, int]]) -> ChildResult:
    """Run ``fn(arg)`` in an extraction process with spans recorded under ``parent``."""
    fn, arg, (trace_id, parent_id) = call
    recorder = _Recorder(trace_id, parent_id)
    install(recorder)
    try:
        return ChildResult(fn(arg), False, tuple(recorder.records))
    except Exception as exc:
        return ChildResult(exc, True, tuple(recorder.records))
    finally:
        install(None)


def adopt(result: ChildResult) -> Any:
    """In the worker: export a child's spans, then return its value (or raise its error)."""
    backend = _backend
    if backend is not None and result.spans:
        backend.adopt(result.spans)
    if result.failed:
        raise result.value
    return result.value


_OPEN: ContextVar[int | None] = ContextVar("conveyor_child_span", default=None)


class _Recorder:
    """The backend of an extraction process: spans as ``SpanRecord`` data, nothing else."""

    def __init__(self, trace_id: int, parent_id: int) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id
        self.records: list[SpanRecord] = []

    def span(self, name: str, kind: str, attributes: Attributes | None) -> Span:
        return _RecordedSpan(self, name, dict(attributes or {}))

    def current(self) -> Span:
        return NOOP

    def finished(self, name: str, start_ns: int, end_ns: int, attributes: Attributes) -> None:
        return None

    def parent(self) -> tuple[int, int] | None:
        return None

    def adopt(self, records: Sequence[SpanRecord]) -> None:
        return None

    def ids(self) -> tuple[str, str] | None:
        return None


class _RecordedSpan(Span):
    __slots__ = (
        "_attributes",
        "_error",
        "_id",
        "_name",
        "_parent",
        "_recorder",
        "_start",
        "_token",
    )

    def __init__(self, recorder: _Recorder, name: str, attributes: dict[str, Value]) -> None:
        self._recorder = recorder
        self._name = name
        self._attributes = attributes
        self._error: str | None = None
        self._id = random.getrandbits(64) or 1
        self._parent = 0
        self._start = 0
        self._token: Any = None

    def set(self, key: str, value: Value) -> None:
        self._attributes[key] = value

    def update(self, attributes: Attributes) -> None:
        self._attributes.update(attributes)

    def fail(self, error: BaseException | str) -> None:
        self._error = error if isinstance(error, str) else type(error).__name__

    def __enter__(self) -> Span:
        self._parent = _OPEN.get() or self._recorder.parent_id
        self._token = _OPEN.set(self._id)
        self._start = time.time_ns()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if error is not None and self._error is None:
            self.fail(error)
        _OPEN.reset(self._token)
        if self._error is not None:
            self._attributes["error.type"] = self._error
        recorder = self._recorder
        recorder.records.append(
            SpanRecord(
                self._name,
                recorder.trace_id,
                self._id,
                self._parent,
                self._start,
                time.time_ns(),
                self._attributes,
                self._error,
            )
        )
