"""Fakes of the runner's and the handlers' dependencies, for the unit ring.

Each implements the Protocol (or callable type) the service declares for
that dependency, and records what it was asked to do, so a test asserts on
what the code under test did — never on how it called a mock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from handlers.deps import Deps
from schemas.envelope import JobEnvelope
from streams.crashguard import SHARED, Entry
from streams.isolation import Isolation
from streams.records import Headers

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class Sent:
    """One record the producer was asked to send."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k == name]
        return found[-1].decode() if found else None


@dataclass
class RecordingProducer:
    """``streams.publish.SendFn``: acknowledges every send at once, after failing the first
    ``fail_first`` ones (a broker that is down for a while)."""

    fail_first: int = 0
    sent: list[Sent] = field(default_factory=list)
    failures: int = 0

    async def __call__(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        if self.failures < self.fail_first:
            self.failures += 1
            raise ConnectionError("broker unreachable (fake)")
        self.sent.append(Sent(topic, key, value, tuple(headers)))

    def to(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]


@dataclass
class RecordedSleep:
    """An ``asyncio.sleep`` that returns at once and remembers each requested wait."""

    waits: list[float] = field(default_factory=list)

    async def __call__(self, delay_s: float) -> None:
        self.waits.append(delay_s)
        await asyncio.sleep(0)


@dataclass
class FakeRuntime:
    """``streams.runtime.DepsSource``: an open runtime holding ``deps``."""

    deps: Deps


class RecordingJobPublisher:
    """``handlers.deps.JobPublisher``: keeps every follow-up job it is given."""

    def __init__(self) -> None:
        self.published: list[tuple[JobEnvelope, bytes | None]] = []

    async def publish(self, envelope: JobEnvelope, *, key: bytes | None = None) -> None:
        self.published.append((envelope, key))


class NoFollowUps:
    """``handlers.deps.JobPublisher`` for handlers that publish no follow-up job."""

    async def publish(self, envelope: JobEnvelope, *, key: bytes | None = None) -> None:
        raise AssertionError(f"unexpected follow-up job {envelope.type}")


class ThreadCpuPool:
    """``handlers.deps.CpuPool`` in a thread; or raises ``error`` (a pool failure)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls = 0

    async def run(self, fn: Callable[[A], R], arg: A, *, timeout_s: float) -> R:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return await asyncio.to_thread(fn, arg)


class FakeCrashGuard:
    """The runner's view of ``streams.crashguard.CrashGuard``: records at ``suspects``
    (offset -> deaths so far) on their last chance (``last_chance`` deaths) run alone;
    every other record runs shared."""

    def __init__(self, suspects: dict[int, int] | None = None, last_chance: int = 2) -> None:
        self.suspects = suspects or {}
        self.last_chance = last_chance
        self.isolation = Isolation()
        self.alone: list[int] = []  # offsets, each time one ran alone
        self.left: list[int] = []  # offsets, each time one stopped running alone
        self.finished_offsets: list[int] = []

    def enter_now(self, tp: Any, offset: int) -> Entry | None:
        if offset in self.suspects or not self.isolation.try_shared():
            return None
        return SHARED

    async def enter(self, tp: Any, offset: int) -> Entry:
        crashes = self.suspects.get(offset, 0)
        if crashes < self.last_chance:
            await self.isolation.shared()
            return Entry(tp, offset, crashes) if crashes else SHARED
        await self.isolation.exclusive()
        self.alone.append(offset)
        return Entry(tp, offset, crashes, alone=True)

    async def leave_alone(self, entry: Entry) -> None:
        self.left.append(entry.offset)
        self.isolation.release_exclusive()

    def finished(self, tp: Any, offset: int) -> None:
        self.finished_offsets.append(offset)
