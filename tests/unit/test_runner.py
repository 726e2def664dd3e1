"""The runner, from a consumed record to its end, as one table: every way a job can end.

A real ``JobRunner`` and a real ``RecordPublisher`` over a recording fake
producer; handlers are scripts (one step per attempt); waits are recorded
instead of slept. Policies come from ``Settings()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from handlers.errors import PermanentError, RetryableError
from handlers.types import Job, Outcome
from schemas import jobs
from schemas.envelope import JobEnvelope
from streams.publish import RecordPublisher
from streams.records import Record
from streams.registry import JobSpec
from streams.runner import JobRunner
from streams.settings import Settings
from tests.support.fakes import FakeCrashGuard, FakeRuntime, RecordedSleep, RecordingProducer

TOPIC = "jobs.probe"
RETRY_TOPIC = "jobs.probe.retry"
DLQ_TOPIC = "jobs.dlq"
MAX_JOB_BYTES = 2048
HANG = "hang"

Step = Outcome | BaseException | str  # what the handler does on one attempt


class Script:
    """A handler that does ``steps[i]`` on its (i+1)th call, and a give-up hook."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)
        self.attempts: list[int] = []
        self.gave_up: list[str] = []

    async def handle(self, job: Job[Any], deps: Any) -> Outcome:
        step = self.steps[len(self.attempts)]
        self.attempts.append(job.attempt)
        if step == HANG:
            await asyncio.Event().wait()  # until the runner's timeout cancels it
        if isinstance(step, BaseException):
            raise step
        assert isinstance(step, Outcome)
        return step

    async def on_give_up(self, job: Job[Any], summary: str, deps: Any) -> None:
        self.gave_up.append(summary)


def envelope(**fields: Any) -> bytes:
    data = {"type": "probe", "payload": {}, **fields}
    return JobEnvelope(**data).to_bytes()


@dataclass(frozen=True)
class Case:
    value: bytes | None
    steps: Sequence[Step] = ()
    ends: str = "succeeded"  # succeeded | retry_topic | dead_letter
    stage: str | None = None
    error_class: str | None = None
    attempts: Sequence[int] = ()  # the attempt number of each handler call
    policy: dict[str, Any] = field(default_factory=dict)
    gave_up: bool = False
    crashes: int | None = None  # deaths the crash guard counted for the record
    deadline_in_s: float | None = None  # the envelope's deadline, from when the case runs


CASES: dict[str, Case] = {
    "succeeded": Case(envelope(), [Outcome.SUCCEEDED], attempts=[1]),
    "skipped": Case(envelope(), [Outcome.SKIPPED], attempts=[1]),
    "no value": Case(None, ends="dead_letter", stage="decode", error_class="PermanentError"),
    "bad JSON": Case(b"{not json", ends="dead_letter", stage="decode"),
    "wrong type": Case(
        envelope(type="asset.process"), ends="dead_letter", stage="validate", gave_up=False
    ),
    "invalid payload": Case(
        envelope(payload={"fail": "sideways"}), ends="dead_letter", stage="validate"
    ),
    "oversize": Case(
        envelope(payload={"fail": "none", "sleep_ms": 0}) + b" " * MAX_JOB_BYTES,
        ends="dead_letter",
        stage="decode",
    ),
    "timeout": Case(
        envelope(),
        [HANG],
        ends="dead_letter",
        stage="timeout",
        error_class="JobTimeout",
        attempts=[1],
        policy={"timeout_s": 0.05, "max_attempts": 1},
        gave_up=True,
    ),
    "deadline passed": Case(
        envelope(),
        deadline_in_s=-1.0,
        ends="dead_letter",
        stage="timeout",
        error_class="DeadlineExceeded",
        gave_up=True,
    ),
    "deadline before the next attempt": Case(
        envelope(),
        [RetryableError("come back in a minute", delay_s=60)],
        deadline_in_s=30.0,
        ends="dead_letter",
        stage="timeout",
        error_class="RetryableError",
        attempts=[1],
        gave_up=True,
    ),
    "retry in place": Case(
        envelope(), [RetryableError("flaky"), Outcome.SUCCEEDED], attempts=[1, 2]
    ),
    "retry topic": Case(
        envelope(),
        [RetryableError("come back in a minute", delay_s=60)],
        ends="retry_topic",
        stage="handle",
        error_class="RetryableError",
        attempts=[1],
    ),
    "wait for dependency": Case(
        envelope(), [ConnectionError("postgres down"), Outcome.SUCCEEDED], attempts=[1, 1]
    ),
    "permanent error and give-up hook": Case(
        envelope(),
        [PermanentError("the file is not a PDF")],
        ends="dead_letter",
        stage="handle",
        error_class="PermanentError",
        attempts=[1],
        gave_up=True,
    ),
    "dead letter after max attempts": Case(
        envelope(),
        [RetryableError("flaky"), RuntimeError("a bug")],
        ends="dead_letter",
        stage="handle",
        error_class="RuntimeError",
        attempts=[1, 2],
        policy={"max_attempts": 2},
        gave_up=True,
    ),
    "crashed": Case(
        envelope(),
        ends="dead_letter",
        stage="crashed",
        error_class="WorkerDied",
        policy={"max_crashes": 3},
        gave_up=True,
        crashes=3,
    ),
    "suspect that finishes": Case(
        envelope(), [Outcome.SUCCEEDED], attempts=[1], policy={"max_crashes": 3}, crashes=1
    ),
}


@dataclass
class Ran:
    producer: RecordingProducer
    script: Script
    sleeps: RecordedSleep
    guard: FakeCrashGuard


async def run(
    case: Case, headers: tuple[tuple[str, bytes], ...] = (), *, trusted: bool = False
) -> Ran:
    """Run ``case`` once; ``trusted``: as a record of the retry topic (its headers count)."""
    policy = Settings().jobs.probe.model_copy(
        update={"topic": TOPIC, "backoff_base_s": 0.01, **case.policy}
    )
    script = Script(case.steps)
    spec = JobSpec("probe", jobs.Probe, policy, script.handle, script.on_give_up)
    producer, sleeps = RecordingProducer(), RecordedSleep()
    publisher = RecordPublisher(producer, group_id="g", dlq_topic=DLQ_TOPIC, sleep=sleeps)
    guard = FakeCrashGuard({7: case.crashes} if case.crashes is not None else {})
    runner = JobRunner(
        spec,
        FakeRuntime(deps=None),  # the scripts touch no dependency
        publisher,
        retry_topic=RETRY_TOPIC,
        max_job_bytes=MAX_JOB_BYTES,
        guard=guard,
        sleep=sleeps,
    )
    value = case.value
    if case.deadline_in_s is not None:
        value = envelope(deadline=datetime.now(UTC) + timedelta(seconds=case.deadline_in_s))
    await runner.run(Record(TOPIC, 0, 7, b"key", value, headers, 1_700_000_000_000, trusted))
    return Ran(producer, script, sleeps, guard)


@pytest.mark.parametrize("name", CASES)
async def test_every_way_a_job_ends(name: str) -> None:
    case = CASES[name]
    ran = await run(case)
    assert ran.script.attempts == list(case.attempts)
    assert bool(ran.script.gave_up) is case.gave_up
    sent = ran.producer.sent
    if case.ends == "succeeded":
        assert sent == []
        return
    [record] = sent
    assert record.topic == {"retry_topic": RETRY_TOPIC, "dead_letter": DLQ_TOPIC}[case.ends]
    if case.deadline_in_s is None:
        assert (record.key, record.value) == (b"key", case.value), "raw key and value unchanged"
    assert record.header("conveyor-stage") == case.stage
    if case.error_class is not None:
        assert record.header("conveyor-error-class") == case.error_class
    assert record.header("conveyor-original-topic") == TOPIC
    assert record.header("conveyor-original-offset") == "7"
    made = max(case.attempts, default=1) if case.crashes is None else case.crashes
    assert record.header("conveyor-attempts") == str(made)
    assert (record.header("conveyor-not-before") is not None) is (case.ends == "retry_topic")


async def test_a_retry_in_place_waits_its_backoff_and_a_dependency_wait_spends_no_attempt() -> None:
    in_place = await run(CASES["retry in place"])
    assert len(in_place.sleeps.waits) == 1 and 0 <= in_place.sleeps.waits[0] <= 0.01
    waited = await run(CASES["wait for dependency"])
    [wait_s] = waited.sleeps.waits
    assert 0.25 <= wait_s <= 0.5, "the first wait for a dependency: 0.5 s, half jitter"


async def test_a_retry_record_is_due_after_the_handlers_delay_and_carries_the_attempts() -> None:
    before = datetime.now(UTC)
    ran = await run(CASES["retry topic"])
    [record] = ran.producer.sent
    due = datetime.fromisoformat(record.header("conveyor-not-before") or "")
    assert before + timedelta(seconds=59) < due < datetime.now(UTC) + timedelta(seconds=61)
    retried = Record(RETRY_TOPIC, 0, 3, record.key, record.value, record.headers, None)
    again = Case(record.value, [Outcome.SUCCEEDED], attempts=[2])
    second = await run(again, retried.headers, trusted=True)
    assert second.script.attempts == [2], "the retry record's attempts carry over"


async def test_the_give_up_hook_gets_the_summary_and_a_crash_suspect_is_released() -> None:
    gave_up = await run(CASES["permanent error and give-up hook"])
    assert gave_up.script.gave_up == ["the file is not a PDF"]
    crashed = await run(CASES["crashed"])
    assert "the worker died 3 times" in crashed.script.gave_up[0]
    assert crashed.guard.alone == crashed.guard.left == [7]
    assert crashed.guard.finished_offsets == [7]
    finished = await run(CASES["suspect that finishes"])
    assert finished.guard.alone == [], "one death short of its last chance: it runs beside others"
    assert finished.guard.finished_offsets == [7], "its count is forgotten"
    assert not finished.guard.isolation.exclusive_held and finished.guard.isolation.try_shared()


async def test_a_dead_letter_publish_is_retried_until_the_broker_acknowledges_it() -> None:
    case = CASES["bad JSON"]
    policy = Settings().jobs.probe.model_copy(update={"topic": TOPIC})
    producer, sleeps = RecordingProducer(fail_first=3), RecordedSleep()
    publisher = RecordPublisher(producer, group_id="g", dlq_topic=DLQ_TOPIC, sleep=sleeps)
    runner = JobRunner(
        JobSpec("probe", jobs.Probe, policy),
        FakeRuntime(deps=None),
        publisher,
        retry_topic=RETRY_TOPIC,
        max_job_bytes=MAX_JOB_BYTES,
        sleep=sleeps,
    )
    await runner.run(Record(TOPIC, 0, 1, None, case.value, (), None))
    assert len(producer.to(DLQ_TOPIC)) == 1
    assert sleeps.waits == [0.2, 0.4, 0.8], "backoff between the failed sends"


def test_the_table_covers_every_ending() -> None:
    endings = {(c.ends, c.stage) for c in CASES.values()}
    assert {e for e, _ in endings} == {"succeeded", "retry_topic", "dead_letter"}
    assert {s for e, s in endings if e == "dead_letter"} == {
        "decode",
        "validate",
        "handle",
        "timeout",
        "crashed",
    }


# Anyone can produce a record with conveyor-* headers. Before the one header
# model, an original partition or offset that was not a number raised
# ValueError out of the runner: the record never finished, and its
# partition's commits stopped behind it for good.
HOSTILE = (
    ("conveyor-original-topic", b"elsewhere"),
    ("conveyor-original-partition", b"zero"),
    ("conveyor-original-offset", b"-"),
    ("conveyor-original-timestamp", b"yesterday"),
    ("conveyor-first-failure-at", b"\xff"),
)


async def test_a_fresh_job_cannot_claim_its_attempts_are_spent() -> None:
    """Issue 19: conveyor-attempts set by the producer of a fresh job is not believed."""
    forged = (("conveyor-attempts", b"99"), ("conveyor-original-topic", b"jobs.elsewhere"))
    ran = await run(CASES["retry topic"], forged)
    [record] = ran.producer.sent
    assert record.topic == RETRY_TOPIC and ran.script.attempts == [1]
    assert record.header("conveyor-original-topic") == TOPIC


async def test_unreadable_conveyor_headers_neither_crash_nor_wedge_a_record() -> None:
    ran = await run(CASES["succeeded"], HOSTILE, trusted=True)
    assert ran.script.attempts == [1]
    dead = await run(CASES["bad JSON"], HOSTILE, trusted=True)
    [record] = dead.producer.sent
    assert record.header("conveyor-original-topic") == "elsewhere"
    assert record.header("conveyor-original-partition") == "-1"
    assert record.header("conveyor-stage") == "decode"


class GateWatchingSleep(RecordedSleep):
    """Records, at each wait of the run, what the run held of the crash guard's gate."""

    def __init__(self, guard: FakeCrashGuard) -> None:
        super().__init__()
        self.guard = guard
        self.held: list[tuple[bool, int]] = []  # (exclusive held, shared holders)

    async def __call__(self, delay_s: float) -> None:
        gate = self.guard.isolation
        self.held.append((gate.exclusive_held, gate.shared_holders))
        await super().__call__(delay_s)


@pytest.mark.parametrize("crashes", [None, 1, 2], ids=["fresh", "one death", "last chance"])
async def test_nothing_holds_the_gate_while_a_run_waits(crashes: int | None) -> None:
    """A waiting run (a retry in place, a dependency down) holds neither side of the gate.

    Before, a suspect held the gate alone through its waits (a message waiting
    out a dead run's 48 s lease stopped every job of the worker), and a
    shared run kept a suspect from its turn while it slept.
    """
    policy = Settings().jobs.probe.model_copy(
        update={"topic": TOPIC, "backoff_base_s": 0.01, "max_crashes": 3}
    )
    script = Script(
        [RetryableError("lease held", delay_s=2), ConnectionError("pg"), Outcome.SUCCEEDED]
    )
    guard = FakeCrashGuard({7: crashes} if crashes is not None else {}, last_chance=2)
    sleeps = GateWatchingSleep(guard)
    producer = RecordingProducer()
    runner = JobRunner(
        JobSpec("probe", jobs.Probe, policy, script.handle),
        FakeRuntime(deps=None),
        RecordPublisher(producer, group_id="g", dlq_topic=DLQ_TOPIC, sleep=sleeps),
        retry_topic=RETRY_TOPIC,
        max_job_bytes=MAX_JOB_BYTES,
        guard=guard,
        sleep=sleeps,
    )
    await runner.run(Record(TOPIC, 0, 7, b"key", envelope(), (), 1_700_000_000_000))
    assert script.attempts == [1, 2, 2]
    assert sleeps.held == [(False, 0), (False, 0)], "each wait held nothing"
    alone = crashes == 2
    assert guard.alone == ([7, 7, 7] if alone else []), "a last-chance suspect: alone each attempt"
    assert guard.left == guard.alone
    assert guard.finished_offsets == [7]
    assert guard.isolation.try_shared(), "the gate is free at the end"
