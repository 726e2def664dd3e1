"""The conveyor-* headers: one model writes them and reads them back, leniently."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from schemas.dlq import FailureContext, FailureHeader, own_headers
from streams.commands.dlq_replay import replay_headers
from streams.records import Record

NOW = datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC)
FULL = FailureContext(
    original_topic="jobs.asset.process",
    original_partition=2,
    original_offset=41,
    original_timestamp=NOW - timedelta(minutes=5),
    consumer_group="conveyor",
    job_type="asset.process",
    job_id="j-1",
    attempts=3,
    first_failure_at=NOW - timedelta(minutes=4),
    last_failure_at=NOW,
    error_class="RetryableError",
    error_message="storage answered 503",
    error_stack="Traceback ...",
    stage="handle",
    service_version="0.1.0",
    host="worker-1",
    not_before=NOW + timedelta(seconds=30),
    omitted="value",
    omitted_bytes=4_194_000,
    value_sha256="ab" * 32,
)


def record(*headers: tuple[str, bytes]) -> Record:
    """A record of a retry topic (its conveyor-* headers are believed)."""
    return Record(
        "jobs.probe.retry", 0, 9, None, b"{}", tuple(headers), 1_700_000_000_000, trusted=True
    )


def test_every_field_has_its_header_and_every_header_its_field() -> None:
    assert [FailureHeader[name.upper()] for name in FailureContext.model_fields] == list(
        FailureHeader
    )


def test_what_is_written_reads_back_the_same() -> None:
    headers = FULL.to_headers()
    assert [name for name, _ in headers] == [h.value for h in FailureHeader]
    assert FailureContext.from_headers(headers) == FULL
    assert dict(headers)["conveyor-last-failure-at"] == b"2026-03-01T12:30:15.250+00:00"


def test_unknown_fields_are_not_written() -> None:
    assert FailureContext(original_topic="t", attempts=1).to_headers() == (
        ("conveyor-original-topic", b"t"),
        ("conveyor-attempts", b"1"),
    )


def test_reading_is_lenient_and_the_last_repeated_header_wins() -> None:
    context = FailureContext.from_headers(
        [
            ("conveyor-attempts", b"2"),
            ("conveyor-attempts", b"5"),
            ("conveyor-original-partition", b"zero"),
            ("conveyor-original-offset", b""),
            ("conveyor-first-failure-at", b"yesterday"),
            ("conveyor-job-id", b"\xff"),
            ("conveyor-not-before", b"2026-03-01T12:00:00"),
            ("traceparent", b"00-abc-01"),
        ]
    )
    assert context.attempts == 5
    assert context.original_partition is None and context.original_offset is None
    assert context.first_failure_at is None
    assert context.job_id == "\ufffd"
    assert context.not_before == datetime(2026, 3, 1, 12, tzinfo=UTC), "no zone: UTC"


def test_a_record_reads_its_attempts_origin_and_due_time() -> None:
    fresh = record()
    assert fresh.attempts_before == 0
    assert fresh.origin() == ("jobs.probe.retry", 0, 9, 1_700_000_000_000)
    retried = record(*FULL.to_headers())
    assert retried.attempts_before == 3
    topic, partition, offset, ts_ms = retried.origin()
    assert (topic, partition, offset) == ("jobs.asset.process", 2, 41)
    assert ts_ms == int(FULL.original_timestamp.timestamp() * 1000)  # type: ignore[union-attr]
    assert retried.due_in_s(NOW) == 30.0
    assert record(("conveyor-attempts", b"-4")).attempts_before == 0


def test_a_due_time_without_a_zone_is_read_as_utc() -> None:
    # Before the one model, the retry topic's agent raised TypeError on this
    # header (a naive time subtracted from an aware one).
    naive = record(("conveyor-not-before", b"2026-03-01T12:30:30"))
    assert naive.due_in_s(NOW) == 14.75
    assert record(("conveyor-not-before", b"soon")).due_in_s(NOW) == 0.0


def test_own_headers_keep_their_order_and_drop_conveyors() -> None:
    headers = [("b", b"1"), ("conveyor-stage", b"handle"), ("a", b"2")]
    assert own_headers(headers) == [("b", b"1"), ("a", b"2")]
    assert record(*headers).own_headers() == (("b", b"1"), ("a", b"2"))


def test_replay_keeps_the_records_own_headers_and_drops_conveyors() -> None:
    """The failed trace's context becomes a link: the replay is a new trace (issue 21)."""
    stored = json.dumps(
        {
            "traceparent": "00-abc-01",
            "tracestate": "vendor=1",
            "conveyor-attempts": "5",
            "conveyor-error-message": "boom",
            "conveyor-trace-link": "00-older-01",
            "tenant": "t1",
        }
    )
    assert replay_headers(stored) == [("tenant", b"t1"), ("conveyor-trace-link", b"00-abc-01")]


def test_conveyors_headers_on_a_fresh_job_are_not_believed() -> None:
    """Issue 19: a producer of a fresh job set conveyor-attempts to skip the retries and
    conveyor-original-* to steer the job's recorded origin."""
    forged = FailureContext(
        original_topic="jobs.elsewhere", original_partition=7, original_offset=1, attempts=99
    ).to_headers()
    fresh = Record("jobs.probe", 1, 5, None, b"{}", tuple(forged), 1_700_000_000_000)
    assert fresh.context == FailureContext()
    assert fresh.attempts_before == 0
    assert fresh.origin() == ("jobs.probe", 1, 5, 1_700_000_000_000)
    assert fresh.due_in_s(NOW) == 0.0
    assert fresh.own_headers() == (), "and they are not carried into a retry or dead letter"
    retried = Record("jobs.probe.retry", 1, 5, None, b"{}", tuple(forged), None, trusted=True)
    assert retried.attempts_before == 99 and retried.origin()[0] == "jobs.elsewhere"
