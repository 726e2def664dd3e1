"""A dead letter always fits its topic; a record too large for the retry topic is dead-lettered.

Before, a record near the size limit made the dead letter (its raw value plus
Conveyor's headers) too large for the topic: the publisher resent it forever
(~46,000 sends observed), its slot, its partition's commit and its key were
stuck, and every restart did it again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from aiokafka.errors import MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from handlers.errors import PermanentError
from schemas import jobs
from schemas.dlq import FailureContext, Stage
from schemas.envelope import JobEnvelope
from streams.publish import Failure, RecordPublisher
from streams.records import Headers, Record
from streams.registry import JobSpec
from streams.runner import JobRunner
from streams.settings import Settings
from tests.support.fakes import FakeRuntime, RecordedSleep, Sent

LIMIT = 8_000
DLQ = "jobs.dlq"


@dataclass
class LimitedProducer:
    """Refuses a record larger than ``limit`` as aiokafka does (wrapped by Faust)."""

    limit: int = LIMIT
    sent: list[Sent] = field(default_factory=list)
    refused: int = 0

    async def __call__(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > self.limit:
            self.refused += 1
            cause = MessageSizeTooLargeError(f"The message is {size} bytes")
            raise ProducerSendError(f"Error while sending: {cause!r}") from cause
        self.sent.append(Sent(topic, key, value, tuple(headers)))


def record(value: bytes | None, headers: Headers = (), key: bytes | None = b"lead-7") -> Record:
    return Record("jobs.probe", 2, 41, key, value, headers, 1_700_000_000_000)


def failure() -> Failure:
    try:
        raise PermanentError("x" * 3000)
    except PermanentError as exc:
        return Failure(Stage.HANDLE, exc, 1, "probe", "job-1")


async def dead_letter(rec: Record) -> tuple[LimitedProducer, FailureContext]:
    producer = LimitedProducer()
    publisher = RecordPublisher(producer, group_id="g", dlq_topic=DLQ, sleep=RecordedSleep())
    await publisher.dead_letter(rec, failure())
    [sent] = producer.sent
    return producer, FailureContext.from_headers(sent.headers)


async def test_a_record_that_fits_goes_whole() -> None:
    producer, context = await dead_letter(record(b"v" * 100))
    assert producer.refused == 0 and producer.sent[0].value == b"v" * 100
    assert context.omitted is None and context.error_stack


async def test_a_long_stack_is_left_out_before_anything_of_the_record() -> None:
    value = b"v" * (LIMIT - 3000)
    producer, context = await dead_letter(record(value, (("trace", b"t1"),)))
    [sent] = producer.sent
    assert sent.value == value and sent.key == b"lead-7" and ("trace", b"t1") in sent.headers
    assert context.error_stack is None and len(context.error_message or "") == 200
    assert context.omitted is None


async def test_a_value_near_the_limit_is_left_out_and_named() -> None:
    value = b"v" * (LIMIT - 200)
    producer, context = await dead_letter(record(value, (("trace", b"t1"),)))
    [sent] = producer.sent
    assert sent.value is None and sent.key == b"lead-7" and ("trace", b"t1") in sent.headers
    assert context.omitted == "value" and context.omitted_bytes == len(value)
    assert context.value_sha256 == hashlib.sha256(value).hexdigest()
    assert (context.original_topic, context.original_partition, context.original_offset) == (
        "jobs.probe",
        2,
        41,
    ), "where the original is"
    assert context.job_id == "job-1" and context.stage == "handle"


async def test_huge_own_headers_leave_out_the_key_and_headers_too() -> None:
    headers = (("blob", b"h" * LIMIT),)
    producer, context = await dead_letter(record(b"small", headers))
    [sent] = producer.sent
    assert sent.value == b"" and sent.key is None, "a record needs a key or a value"
    assert all(k.startswith("conveyor-") for k, _ in sent.headers)
    assert context.omitted == "value,key,headers"
    assert context.omitted_bytes == len(b"small") + len(b"lead-7") + len("blob") + LIMIT


async def test_a_retry_record_too_large_for_the_retry_topic_is_dead_lettered() -> None:
    policy = Settings().jobs.probe.model_copy(
        update={"topic": "jobs.probe", "in_place_max_s": 0.0, "backoff_base_s": 30.0}
    )

    async def flaky(job: object, deps: object) -> None:
        raise RuntimeError("storage answered 503")

    producer = LimitedProducer()
    sleeps = RecordedSleep()
    publisher = RecordPublisher(producer, group_id="g", dlq_topic=DLQ, sleep=sleeps)
    runner = JobRunner(
        JobSpec("probe", jobs.Probe, policy, flaky),  # type: ignore[arg-type]
        FakeRuntime(deps=None),  # type: ignore[arg-type]
        publisher,
        retry_topic="jobs.probe.retry",
        max_job_bytes=LIMIT,
        sleep=sleeps,
    )
    value = JobEnvelope(type="probe", payload={}).to_bytes()
    await runner.run(record(value, (("blob", b"h" * (LIMIT - len(value) - 300)),)))
    [sent] = producer.sent
    assert sent.topic == DLQ
    context = FailureContext.from_headers(sent.headers)
    assert context.stage == "handle" and "storage answered 503" in (context.error_message or "")


async def test_a_record_without_key_or_value_is_dead_lettered_not_resent_forever() -> None:
    """aiokafka refuses to send a record with neither (an AssertionError, once retried forever)."""
    producer, context = await dead_letter(record(None, key=None))
    assert producer.sent[0].value == b"" and producer.sent[0].key is None
    assert context.omitted is None
