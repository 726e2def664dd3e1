"""Conveyor's OTLP span encoding gives the very bytes' meaning of the SDK's own encoder."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from streams.otlp import Finished, Request, encode_request, readable

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
WORKER = Resource({"service.name": "conveyor", "replica": 3, "ratio": 0.5, "on": True, "l": ["a"]})
COMMAND = Resource({"service.name": "conveyor", "conveyor.process.role": "command"})
SCOPE = InstrumentationScope("conveyor", "0.1.0")


def span(name: str, span_id: int, **fields: object) -> ReadableSpan:
    options: dict[str, object] = {
        "context": SpanContext(TRACE, span_id, False, SAMPLED),
        "resource": WORKER,
        "instrumentation_scope": SCOPE,
        "start_time": 1_700_000_000_000_000_000 + span_id,
        "end_time": 1_700_000_000_100_000_000 + span_id,
        **fields,
    }
    return ReadableSpan(name=name, **options)  # type: ignore[arg-type]


def decoded(data: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    return request


def test_every_kind_of_field_and_value_decodes_as_the_sdks_encoding() -> None:
    parent = SpanContext(TRACE, 1, True, SAMPLED)
    spans = [
        span(
            "process jobs.probe",
            2,
            parent=parent,
            kind=SpanKind.CONSUMER,
            context=SpanContext(TRACE, 2, False, SAMPLED, TraceState([("vendor", "x")])),
            attributes={
                "messaging.kafka.offset": 2**40,
                "negative": -5,
                "ratio": 0.25,
                "flag": True,
                "zero": 0,
                "text": "ünïcode",
                "ints": (1, 2, 3),
                "names": ["a", "b"],
            },
            links=[Link(parent, {"conveyor.link.reason": "previous_attempt"})],
            status=Status(StatusCode.ERROR, "dead letter"),
        ),
        span("asset.chunk", 3, parent=SpanContext(TRACE, 2, False, SAMPLED)),
        span(
            "chat m",
            4,
            kind=SpanKind.CLIENT,
            events=[Event("retry", {"attempt": 2}, timestamp=5)],
            status=Status(StatusCode.OK),
        ),
        span("send jobs.probe", 5, resource=COMMAND, kind=SpanKind.PRODUCER),
        span("other scope", 6, instrumentation_scope=InstrumentationScope("x", None)),
    ]
    assert decoded(encode_request(spans)) == encode_spans(spans)


def test_values_equal_in_python_keep_their_own_types() -> None:
    """True == 1 == 1.0: the remembered encodings must not mix them up."""
    spans = [span("s", i, attributes={"v": value}) for i, value in enumerate((1, True, 1.0), 1)]
    assert decoded(encode_request(spans)) == encode_spans(spans)


def finished_spans() -> list[Finished]:
    parent = SpanContext(TRACE, 1, True, SAMPLED)
    stated = SpanContext(TRACE, 7, False, SAMPLED, TraceState([("vendor", "x")]))
    link = Link(SpanContext(TRACE, 9, False, SAMPLED), {"conveyor.link.reason": "replay_of"})
    attributes = {"messaging.kafka.offset": 2**40, "conveyor.job.attempt": 2, "key": "ünï"}
    return [
        (SpanContext(TRACE, 2, False, SAMPLED), parent, "process t", SpanKind.CONSUMER, 5, 9,
         attributes, (link,), False),
        (stated, None, "process t", SpanKind.CONSUMER, 5, 9, {"flag": True}, (), True),
        (SpanContext(TRACE, 8, False, SAMPLED), SpanContext(TRACE, 2, False, SAMPLED), "x" * 200,
         SpanKind.INTERNAL, 1, 2, {"long": "v" * 300, "ratio": 0.5}, (), False),
    ]  # fmt: skip


def test_finished_spans_decode_as_the_sdks_encoding_of_the_same_spans() -> None:
    """The attempts' spans skip ``ReadableSpan``: the request must not tell."""
    finished = finished_spans()
    sdk = [span("send t", 3, kind=SpanKind.PRODUCER, parent=SpanContext(TRACE, 2, False, SAMPLED))]
    others = [span("elsewhere", 4, resource=COMMAND)]
    as_readable = [readable(f, WORKER, SCOPE) for f in finished]
    request = Request(WORKER, SCOPE).encode([*finished, *sdk, *others])
    expected = encode_spans([*as_readable, *sdk, *others])
    assert decoded(request) == expected
    assert Request(WORKER, SCOPE).encode([]) == b""
