"""OTLP's protobuf encoding of finished spans, written directly (the export's hot part).

The exporter's own encoder builds a protobuf object per span, attribute and
value in Python: about 30 µs for a span of a dozen attributes, more than a
no-op job costs. This writes the same ``ExportTraceServiceRequest`` bytes
with a few joins per span; key/value pairs that repeat (``messaging.system``
kafka, a topic's name...) are encoded once and remembered. Spans come as the
SDK's ``ReadableSpan`` or as ``Finished`` tuples (the attempts' spans,
recorded by hand: ``streams/otel_spans.py``); a batch of one process's spans
shares one resource and scope, encoded once (``Request``). Decoded by the
official ``opentelemetry-proto`` classes in the tests (tests/e2e/test_tracing.py,
tests/unit/test_otlp.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

log = structlog.get_logger(__name__)

Finished = tuple[
    SpanContext,  # the span's
    SpanContext | None,  # its parent's
    str,  # name
    SpanKind,
    int,  # start, ns
    int,  # end, ns
    Mapping[str, Any],  # attributes
    Sequence[Link],
    bool,  # failed: status ERROR (else UNSET)
]
"""A finished span as plain data, for spans recorded without the SDK's span objects."""

_CACHE_MAX = 4096
_pairs: dict[tuple[str, type, Any], bytes] = {}  # (key, type, value) -> KeyValue bytes
_keys: dict[str, bytes] = {}  # an attribute's key as its KeyValue's field 1
_names: dict[str, bytes] = {}  # a span's name as its field 5
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_KIND_TIMES = struct.Struct("<BBBQBQ")  # kind (field 6), start (7), end (8)
_SMALL = [bytes((n,)) for n in range(0x80)]  # one-byte varints


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _tagged_field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field whose tag is already encoded."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, Sequence):  # ArrayValue: repeated AnyValue values = 1
        return _field(5, b"".join(_field(1, _any_value(v)) for v in value))
    return _field(1, str(value).encode())


def key_value(key: str, value: Any) -> bytes:
    """One ``KeyValue`` (remembered: most pairs repeat from span to span)."""
    remembered = (key, type(value), value)  # the type too: True == 1 == 1.0
    try:
        found = _pairs.get(remembered)
    except TypeError:  # a list value: not hashable, not remembered
        return _field(1, key.encode()) + _field(2, _any_value(value))
    if found is None:
        found = _field(1, key.encode()) + _field(2, _any_value(value))
        if len(_pairs) >= _CACHE_MAX:
            _pairs.clear()
        _pairs[remembered] = found
    return found


def _attribute(key: str, value: Any) -> bytes:
    """A span's attribute: its ``KeyValue`` as field 9. A short string or an int (most
    values, often a new one each span: an offset, a job id) in one join; others as
    ``key_value`` encodes them."""
    head = _keys.get(key)
    if head is None:
        if len(_keys) >= _CACHE_MAX:
            _keys.clear()
        head = _keys[key] = _field(1, key.encode())
    cls = type(value)
    if cls is str:
        data = value.encode()
        n = len(data)
        size = len(head) + n + 4  # the KeyValue: key, then AnyValue {string_value}
        if size < 0x80:
            return b"".join(
                (b"\x4a", _SMALL[size], head, b"\x12", _SMALL[n + 2], b"\x0a", _SMALL[n], data)
            )
    elif cls is int:
        data = _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
        n = len(data)
        size = len(head) + n + 3  # key, then AnyValue {int_value}
        if size < 0x80:
            return b"".join((b"\x4a", _SMALL[size], head, b"\x12", _SMALL[n + 1], b"\x18", data))
    return _tagged_field(b"\x4a", key_value(key, value))


def _attributes(number: int, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    if number == 9:
        return b"".join([_attribute(k, v) for k, v in attributes.items()])
    return b"".join(_field(number, key_value(k, v)) for k, v in attributes.items())


def _link(link: Link) -> bytes:
    context = link.context
    body = (
        _field(1, context.trace_id.to_bytes(16, "big"))
        + _field(2, context.span_id.to_bytes(8, "big"))
        + _attributes(4, link.attributes)
        + b"\x35"  # flags = 6, fixed32
        + _FIXED32.pack(_flags(context.is_remote))
    )
    return _field(13, body)


def _flags(remote: bool) -> int:
    """OTLP's flags: whether the context is remote is known, and if it is (as the SDK's
    own encoder writes them)."""
    return 0x100 | (0x200 if remote else 0)


def _status(code: StatusCode, description: str | None) -> bytes:
    if code is StatusCode.UNSET:
        return b"\x7a\x00"  # an empty status, as the SDK's encoder writes it
    message = _field(2, description.encode()) if description else b""
    return _field(15, message + b"\x18" + _varint(code.value))


def encode_span(span: ReadableSpan) -> bytes:
    """One ``Span`` message (without its field tag)."""
    context = span.context
    assert context is not None
    parent = span.parent
    parts = [
        _field(1, context.trace_id.to_bytes(16, "big")),
        _field(2, context.span_id.to_bytes(8, "big")),
    ]
    if context.trace_state:
        parts.append(_field(3, context.trace_state.to_header().encode()))
    if parent is not None and parent.is_valid:
        parts.append(_field(4, parent.span_id.to_bytes(8, "big")))
    parts += [
        _field(5, span.name.encode()),
        b"\x30" + _varint(span.kind.value + 1),  # SpanKind: INTERNAL is 1 in OTLP
        b"\x39" + _FIXED64.pack(span.start_time or 0),
        b"\x41" + _FIXED64.pack(span.end_time or 0),
        _attributes(9, span.attributes),
        *(_link(link) for link in span.links),
        _status(span.status.status_code, span.status.description),
        b"\x85\x01" + _FIXED32.pack(_flags(bool(parent and parent.is_remote))),  # flags = 16
    ]
    if span.events:
        parts += [_event(e.name, e.timestamp, e.attributes) for e in span.events]
    return b"".join(parts)


def _event(name: str, timestamp: int, attributes: Mapping[str, Any] | None) -> bytes:
    body = b"\x09" + _FIXED64.pack(timestamp) + _field(2, name.encode())
    return _field(11, body + _attributes(3, attributes))


def encode_request(spans: Iterable[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest``: spans grouped by resource, then by scope."""
    groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope
        by_scope = groups.setdefault(id(resource), (resource, {}))[1]
        by_scope.setdefault(id(scope), (scope, []))[1].append(_field(2, encode_span(span)))
    out = []
    for resource, by_scope in groups.values():
        scopes = []
        for scope, encoded in by_scope.values():
            head = b""
            if scope is not None:
                head = _field(
                    1, _field(1, scope.name.encode()) + _field(2, (scope.version or "").encode())
                )
            scopes.append(_field(2, head + b"".join(encoded)))
        resource_part = _field(1, _attributes(1, resource.attributes))
        out.append(_field(1, resource_part + b"".join(scopes)))
    return b"".join(out)


_ERROR_STATUS = _status(StatusCode.ERROR, None)
_UNSET_STATUS = _status(StatusCode.UNSET, None)
_LOCAL_FLAGS = b"\x85\x01" + _FIXED32.pack(_flags(False))
_REMOTE_FLAGS = b"\x85\x01" + _FIXED32.pack(_flags(True))


def encode_finished(span: Finished) -> bytes:
    """One ``Span`` message (without its field tag) from a ``Finished`` span: the
    bytes ``encode_span`` writes for the same span."""
    context, parent, name, kind, start, end, attributes, links, failed = span
    parts = [b"\x0a\x10", context.trace_id.to_bytes(16, "big")]
    parts += (b"\x12\x08", context.span_id.to_bytes(8, "big"))
    if context.trace_state:
        parts.append(_field(3, context.trace_state.to_header().encode()))
    if parent is not None and parent.is_valid:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    encoded_name = _names.get(name)
    if encoded_name is None:
        if len(_names) >= _CACHE_MAX:
            _names.clear()
        encoded_name = _names[name] = _field(5, name.encode())
    parts.append(encoded_name)
    parts.append(_KIND_TIMES.pack(0x30, kind.value + 1, 0x39, start, 0x41, end))
    parts += [_attribute(k, v) for k, v in attributes.items()]
    if links:
        parts += [_link(link) for link in links]
    parts.append(_ERROR_STATUS if failed else _UNSET_STATUS)
    parts.append(_REMOTE_FLAGS if parent is not None and parent.is_remote else _LOCAL_FLAGS)
    return b"".join(parts)


_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)


def readable(span: Finished, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    """A ``Finished`` span as the SDK's ``ReadableSpan`` (for an exporter of the SDK's)."""
    context, parent, name, kind, start, end, attributes, links, failed = span
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        links=links,
        kind=kind,
        status=_ERROR if failed else _UNSET,
        start_time=start,
        end_time=end,
        instrumentation_scope=scope,
    )


class Request:
    """``ExportTraceServiceRequest`` bytes for a batch of one process's spans: its
    resource and scope encoded once; a span of another resource or scope (none in
    Conveyor) goes through ``encode_request``, in the same request."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self.resource = resource
        self.scope = scope
        self._resource = _field(1, _attributes(1, resource.attributes))
        self._scope = _field(
            1, _field(1, scope.name.encode()) + _field(2, (scope.version or "").encode())
        )

    def encode(self, spans: Iterable[Finished | ReadableSpan]) -> bytes:
        encoded = [self._scope]
        others: list[ReadableSpan] = []
        for span in spans:
            if isinstance(span, tuple):
                encoded.append(_tagged_field(b"\x12", encode_finished(span)))
            elif span.resource is self.resource and span.instrumentation_scope == self.scope:
                encoded.append(_tagged_field(b"\x12", encode_span(span)))
            else:
                others.append(span)
        out = b""
        if len(encoded) > 1:
            out = _field(1, self._resource + _field(2, b"".join(encoded)))
        return out + encode_request(others) if others else out


class OtlpHttpExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter (its transport, retries, headers and timeout), the
    spans encoded by ``encode_request``."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            data = encode_request(spans)
        except Exception as error:  # a span the encoder does not know: say which kind
            log.error("tracing.encode_failed", error=type(error).__name__, spans=len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if self.send(data) else SpanExportResult.FAILURE

    def send(self, data: bytes) -> bool:
        """POST an encoded ``ExportTraceServiceRequest`` (retried as the SDK retries)."""
        if self._shutdown:
            return False
        return self._client.export(data).success
