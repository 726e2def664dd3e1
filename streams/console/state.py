"""What the console keeps in memory: the fleet topics, followed, and samples of the group's offsets.

Pages render from this state and from Postgres, never waiting on Kafka: the
status and control topics are followed live (streams/fleet.py), and a
sampler reads the group's committed offsets and the logs' ends every
``console.sample_interval_s`` (in a thread: the Kafka client blocks). Per
job type, jobs finished per minute come from how far the committed offset
of its source topic moved over the last hour of samples (since the console
started, when that is shorter).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

from streams.commands.lag import PartitionLag, group_consumer, partition_lags
from streams.control import Pauses
from streams.fleet import FleetView, followers
from streams.follow import TopicFollower
from streams.registry import Registry
from streams.settings import Settings

log = structlog.get_logger(__name__)

WINDOW_S = 3600.0
FAILURES_MAX_AGE_S = 5.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    partitions: list[PartitionLag]

    def committed(self, topic: str) -> int:
        return sum(p.committed for p in self.partitions if p.topic == topic)


@dataclass(frozen=True, slots=True)
class TypeRate:
    job_type: str
    topic: str
    per_minute: float | None  # None until two samples exist
    window_s: float


@dataclass(slots=True)
class Offsets:
    """Samples of the group's committed offsets and the logs' ends, the last hour's."""

    samples: deque[Sample] = field(default_factory=deque)
    error: str | None = None

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        while self.samples and sample.at - self.samples[0].at > WINDOW_S:
            self.samples.popleft()

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def window_s(self) -> float:
        """Seconds between the first and the last sample (0 with fewer than two)."""
        return self.samples[-1].at - self.samples[0].at if len(self.samples) > 1 else 0.0

    def rate(self, job_type: str, topic: str) -> TypeRate:
        if len(self.samples) < 2:
            return TypeRate(job_type, topic, None, 0.0)
        first, last = self.samples[0], self.samples[-1]
        window = last.at - first.at
        done = max(last.committed(topic) - first.committed(topic), 0)
        return TypeRate(job_type, topic, done / window * 60 if window else None, window)


class Cached(Generic[T]):
    """A value read at most once per ``max_age_s`` (pages refreshed by many people at once)."""

    def __init__(self, max_age_s: float) -> None:
        self._max_age_s = max_age_s
        self._value: T | None = None
        self._at = -max_age_s

    async def get(self, read: Callable[[], Awaitable[T]]) -> T:
        now = time.monotonic()
        if self._value is None or now - self._at >= self._max_age_s:
            self._value, self._at = await read(), now
        return self._value


class ConsoleState:
    """The followed fleet topics and the offset sampler, for the console's lifetime."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.fleet = FleetView(settings.fleet.forget_after_s)
        self.pauses = Pauses()
        self.offsets = Offsets()
        # Dead letters per job type over the rate window, read at most every 5 s.
        self.failures: Cached[dict[str, int]] = Cached(FAILURES_MAX_AGE_S)
        self._followers: list[TopicFollower] = followers(settings, self.fleet, self.pauses)
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for follower in self._followers:
            await follower.start()
        self._sampler = asyncio.create_task(self._sample_forever(), name="console-sampler")

    async def stop(self) -> None:
        task, self._sampler = self._sampler, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for follower in self._followers:
            await follower.stop()

    def topics(self) -> list[str]:
        """The job topics whose lag the console shows (source and retry per type, the DLQ)."""
        return [t for t in self.registry.job_topics() if t != self.registry.dlq_topic]

    async def _sample_forever(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.settings.console.sample_interval_s)

    async def sample(self) -> None:
        try:
            parts = await asyncio.to_thread(_read_offsets, self.settings, self.topics())
        except Exception as exc:  # Kafka away: keep the last samples, say so on the page
            self.offsets.error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("console.sample_failed", error=self.offsets.error)
            return
        self.offsets.error = None
        self.offsets.add(Sample(time.monotonic(), parts))


def _read_offsets(settings: Settings, topics: Iterable[str]) -> list[PartitionLag]:
    consumer = group_consumer(settings)
    try:
        return [p for topic in topics for p in partition_lags(consumer, topic)]
    finally:
        consumer.close()
