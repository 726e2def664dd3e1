"""Where each assigned partition starts, the seeks on aiokafka's thread, and the stale drop.

These drive the consumer's own code with small stand-ins for Faust's and
aiokafka's objects; tests/e2e/test_rebalance_races.py runs the same code
against a real broker. Each measure is tested here on its own, since the
e2e race passes with either of the two measures alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from streams.agents import _agent
from streams.consumer import TrackedConsumer, start_positions
from streams.offsets import OffsetTracker
from streams.records import Record

A, B, C, D, E = (TP("jobs", p) for p in range(5))


def test_a_partition_starts_at_its_commit_when_the_log_holds_it() -> None:
    starts, moved = start_positions(
        committed={A: 7, B: None, C: 900, D: 2, E: 50},
        earliest={A: 0, B: 3, C: 0, D: 10, E: 0},
        ends={A: 20, B: 9, C: 40, D: 30, E: 50},
    )
    assert starts == {A: 7, B: 3, C: 0, D: 10, E: 50}
    # nothing committed: the log start; committed past the end (a truncated or
    # re-created topic) or below the start (retention): the log start, sought
    assert moved == {B: 3, C: 0, D: 10}


@dataclass
class FakeHooks:
    tracker: OffsetTracker[Any] = field(default_factory=OffsetTracker)
    joined: bool = True
    starts: list[tuple[dict[Any, int], dict[Any, int]]] = field(default_factory=list)

    async def on_revoke(self, revoked: set[Any]) -> None: ...

    def on_starts(self, starts: dict[Any, int], ends: dict[Any, int]) -> None:
        self.tracker.set_positions(starts)
        self.starts.append((starts, ends))


@dataclass
class FakeConsumer:
    """The parts of TrackedConsumer that ``_seek_starts`` uses."""

    assigned: set[Any]
    committed: dict[Any, int | None]
    earliest: dict[Any, int]
    ends: dict[Any, int]
    _conveyor: FakeHooks = field(default_factory=FakeHooks)
    sought: list[dict[Any, int]] = field(default_factory=list)

    def assignment(self) -> set[Any]:
        return self.assigned

    @property
    def _committed_offset(self) -> dict[Any, int | None]:
        return self.committed

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.earliest[tp] for tp in tps}

    async def highwaters(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.ends[tp] for tp in tps}

    async def seek_on_consumer_thread(self, offsets: dict[Any, int]) -> None:
        self.sought.append(dict(offsets))


async def test_a_commit_beyond_the_logs_end_does_not_refuse_every_record_forever() -> None:
    """Before, the tracker expected the committed offset (500) while the consumer
    reset to the log start: every record below 500 was taken for a redelivery."""
    fake = FakeConsumer({A}, committed={A: 500}, earliest={A: 0}, ends={A: 40})
    fake._conveyor.tracker.assign([A])
    await TrackedConsumer._seek_starts(fake)  # type: ignore[arg-type]
    assert fake.sought == [{A: 0}]
    assert fake._conveyor.starts == [({A: 0}, {A: 40})]
    ticket = fake._conveyor.tracker.start(A, 0)
    assert ticket is not None, "the first record of the log runs"


async def test_a_partition_with_nothing_committed_is_sought_to_its_log_start() -> None:
    fake = FakeConsumer(
        {A, B}, committed={A: 12, B: None}, earliest={A: 0, B: 5}, ends={A: 30, B: 9}
    )
    fake._conveyor.tracker.assign([A, B])
    await TrackedConsumer._seek_starts(fake)  # type: ignore[arg-type]
    assert fake.sought == [{B: 5}], "only the partition not at its commit is sought"
    tracker = fake._conveyor.tracker
    assert tracker.start(A, 12) is not None and tracker.start(B, 5) is not None
    assert tracker.start(B, 7) is None, "a record past the start is a gap, not the start"


@dataclass
class FakeAioConsumer:
    assigned: set[Any]
    seeks: list[tuple[Any, int]] = field(default_factory=list)
    thread: str = ""

    def assignment(self) -> set[Any]:
        return self.assigned

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


@dataclass
class FakeThread:
    consumer: FakeAioConsumer
    calls: int = 0

    def _ensure_consumer(self) -> FakeAioConsumer:
        return self.consumer

    async def call_thread(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.calls += 1
        await fn()


async def test_seeks_run_through_the_consumer_thread_and_skip_partitions_no_longer_assigned() -> (
    None
):
    aio = FakeAioConsumer({A})

    @dataclass
    class Holder:
        _thread: FakeThread

    holder = Holder(FakeThread(aio))
    await TrackedConsumer.seek_on_consumer_thread(holder, {A: 3, B: 8})  # type: ignore[arg-type]
    assert holder._thread.calls == 1, "run on aiokafka's own thread"
    assert aio.seeks == [(A, 3)], "B was revoked meanwhile: left alone"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    generation_id: int
    key: bytes | None = b"k"
    value: bytes | None = b"{}"
    headers: Any = ()
    timestamp: float | None = None

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class Event:
    message: Message


class Channel:
    def __init__(self, events: list[Event]) -> None:
        self._events = events

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> Event:
        if not self._events:
            raise StopAsyncIteration
        return self._events.pop(0)


async def test_a_record_fetched_before_the_last_rebalance_is_dropped_not_run() -> None:
    submitted: list[tuple[Any, int]] = []

    class Pool:
        def submit(self, tp: Any, record: Record, due_in_s: float = 0.0) -> None:
            submitted.append((tp, record.offset))

    class App:
        consumer_generation_id = 5

    @dataclass
    class Stream:
        channel: Channel

    events = [Event(Message("jobs", 0, 564, generation_id=4)), Event(Message("jobs", 0, 0, 5))]
    agent = _agent(App(), Pool(), delayed=False)  # type: ignore[arg-type]
    await asyncio.wait_for(agent(Stream(Channel(events))), timeout=5)
    assert submitted == [(A, 0)], "the stale delivery (offset 564, generation 4) never ran"


def test_the_producer_is_idempotent() -> None:
    """A batch the broker wrote but whose answer was lost is resent by the client; without
    idempotence that wrote a second dead letter with no worker death (the fault soak saw it
    during broker resets)."""
    from streams.consumer import IdempotentProducer, TrackedTransport

    assert TrackedTransport.Producer is IdempotentProducer
    settings = IdempotentProducer._settings_extra(None)  # type: ignore[arg-type]
    assert settings == {"acks": "all", "enable_idempotence": True}
