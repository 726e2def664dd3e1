"""Fair share between organizations: starting in turn, and setting a big backlog aside."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Hashable
from dataclasses import dataclass

from streams.fairness import Fairness, FairQueue, organization_of
from streams.offsets import OffsetTracker
from streams.pool import JobPool
from streams.records import Record

SOURCE, DEFERRED = "jobs.asset.process", "jobs.asset.process.deferred"
TP = (SOURCE, 0)


@dataclass
class Item:
    seq: int
    org: str


def test_organizations_start_in_turn_by_weight() -> None:
    queue = FairQueue({"heavy": 2.0})
    seq = 0
    for org, n in (("a", 6), ("heavy", 6), ("b", 2)):
        for _ in range(n):
            queue.push(Item(seq, org))
            seq += 1
    order = [queue.pop().org for _ in range(12)]
    assert order[:8] == ["a", "heavy", "b", "heavy", "a", "heavy", "b", "heavy"]
    assert order.count("heavy") == 6 and order.count("a") == 4, "heavy gets two turns to one"
    assert len(queue) == 2


def test_an_organization_arriving_late_gets_its_turn_at_once_but_no_saved_credit() -> None:
    queue = FairQueue()
    for i in range(100):
        queue.push(Item(i, "big"))
    for _ in range(50):
        queue.ended(queue.pop().org)
    for i in range(3):
        queue.push(Item(100 + i, "small"))
    order = [queue.pop().org for _ in range(6)]
    assert order == ["small", "big", "small", "big", "small", "big"]


def test_a_cap_on_running_jobs_per_organization() -> None:
    queue = FairQueue(max_running=2)
    for i in range(5):
        queue.push(Item(i, "a"))
    queue.push(Item(5, "b"))
    started = [queue.pop().org for _ in range(3)]
    assert sorted(started) == ["a", "a", "b"]
    assert not queue.startable(), "a runs 2 (its cap), b has nothing left"
    queue.ended("a")
    assert queue.startable() and queue.pop().org == "a"


def test_the_organization_is_read_from_the_envelope() -> None:
    def env(org: object) -> bytes:
        return json.dumps({"type": "asset.process", "organization_id": org, "payload": {}}).encode()

    assert organization_of(env("org-7")) == "org-7"
    assert organization_of(env(None)) == organization_of(env(5)) == ""
    assert organization_of(b'{"type": "x"}') == organization_of(b"[[[") == ""
    assert organization_of(b'{"organization_id": "a"') == "", "unreadable: no organization"


def job(offset: int, org: str, topic: str = SOURCE) -> Record:
    value = json.dumps({"id": f"j{offset}", "organization_id": org}).encode()
    return Record(topic, 0, offset, None, value, (), None)


class Runs:
    """Each run waits until released; records which organizations started, in order."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, rec: Record) -> None:
        self.started.append(organization_of(rec.value))
        await self.release.wait()


class Aside:
    """The deferred topic: records set aside, acknowledged at once (or held)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.ack = asyncio.Event()
        self.ack.set()

    async def __call__(self, rec: Record) -> None:
        await self.ack.wait()
        self.records.append(rec)


def fair_pool(
    runs: Runs,
    tracker: OffsetTracker[Hashable],
    aside: Aside | None,
    *,
    flow: list[tuple[bool, frozenset[Hashable]]] | None = None,
    ordering: str = "none",
) -> JobPool:
    fairness = Fairness(SOURCE, DEFERRED, aside)
    return JobPool(
        "asset.process",
        2,
        runs,
        tracker,
        high_water=10,
        high_water_bytes=10**9,
        flow=(lambda a, p: flow.append((a, p))) if flow is not None else (lambda a, p: None),
        ordering=ordering,  # type: ignore[arg-type]
        fairness=fairness,
    )


def tracked() -> OffsetTracker[Hashable]:
    tracker: OffsetTracker[Hashable] = OffsetTracker()
    tracker.assign([TP, (DEFERRED, 0)])
    tracker.set_positions({TP: 0, (DEFERRED, 0): 0})
    return tracker


async def test_a_big_backlog_is_set_aside_so_the_next_organization_starts_at_once() -> None:
    runs, aside, tracker, flow = Runs(), Aside(), tracked(), []
    pool = fair_pool(runs, tracker, aside, flow=flow)
    for offset in range(300):  # organization a's 300 uploads, then b's 3
        pool.submit(TP, job(offset, "a"))
    for offset in range(300, 303):
        pool.submit(TP, job(offset, "b"))
    assert pool.organization_counts().waiting == {"a": 10, "b": 3}
    assert flow[-1][0], "290 set-asides unanswered: fetching waits for the broker"
    for _ in range(20):  # the sender starts 32 publishes per turn of the loop
        await asyncio.sleep(0)
    assert len(aside.records) == 300 - 10, "beyond the read-ahead (10) a's excess went aside"
    assert {organization_of(r.value) for r in aside.records} == {"a"}
    runs.release.set()
    for _ in range(6):
        await asyncio.sleep(0)
    assert runs.started[:6] == ["a", "b"] * 3, "b's three start in turn with a's"
    await close(pool)
    assert tracker.committable(TP) == 303, "set-aside offsets are finished: all committable"
    assert flow[-1] == (False, frozenset()), "fetching goes on once the set-asides are taken"


async def test_set_aside_records_are_read_back_only_while_the_read_ahead_has_room() -> None:
    runs, aside, tracker, flow = Runs(), Aside(), tracked(), []
    pool = fair_pool(runs, tracker, aside, flow=flow)
    for offset in range(15):
        pool.submit(TP, job(offset, "a"))
    assert flow[-1] == (False, frozenset({DEFERRED})), "the deferred topic waits"
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(aside.records) == 5 and pool.in_flight == 2
    submitted = 0
    while not flow[-1][0]:  # read back: held, never set aside again, up to twice the mark
        pool.submit((DEFERRED, 0), job(submitted, "a", DEFERRED))
        submitted += 1
    assert len(aside.records) == 5
    assert pool.organization_counts().waiting == {"a": 20}, "paused at twice the read-ahead"
    runs.release.set()
    await close(pool)


async def test_a_record_whose_set_aside_is_not_acknowledged_stays_unfinished() -> None:
    runs, aside, tracker = Runs(), Aside(), tracked()
    aside.ack.clear()  # the broker does not answer
    pool = fair_pool(runs, tracker, aside)
    for offset in range(20):
        pool.submit(TP, job(offset, "a"))
    await asyncio.sleep(0)
    runs.release.set()
    await pool.drain(0.5, [TP])  # a revoke: the set-aside publishes are cancelled
    assert aside.records == [] and not pool._aside
    committable = tracker.committable(TP)
    assert committable is not None and committable <= 10, "set-aside offsets stay unfinished"


async def test_key_order_is_never_broken_by_setting_aside() -> None:
    runs, aside, tracker = Runs(), Aside(), tracked()
    pool = fair_pool(runs, tracker, None, ordering="key")
    for offset in range(40):
        pool.submit(TP, Record(SOURCE, 0, offset, b"lead-1", job(offset, "a").value, (), None))
    assert aside.records == [] and pool.waiting == 40, "held in the key's lane, in order"
    runs.release.set()
    await close(pool)


async def close(pool: JobPool) -> None:
    pool.accepting = False
    await pool.drain(0.5)


async def test_a_set_aside_record_keeps_its_origin_for_its_retries_and_dead_letter() -> None:
    from streams.publish import RecordPublisher
    from tests.support.fakes import RecordingProducer

    producer = RecordingProducer()
    publisher = RecordPublisher(producer, group_id="g", dlq_topic="jobs.dlq")
    source = Record(
        SOURCE, 4, 812, b"k", b'{"organization_id": "a"}', (("trace", b"t1"),), 1_700_000_000_000
    )
    await publisher.set_aside(source, DEFERRED)
    [sent] = producer.sent
    assert (sent.topic, sent.key, sent.value) == (DEFERRED, b"k", source.value)
    assert ("trace", b"t1") in sent.headers
    read_back = Record(DEFERRED, 1, 3, sent.key, sent.value, sent.headers, None, trusted=True)
    assert read_back.origin() == (SOURCE, 4, 812, 1_700_000_000_000)
    assert read_back.attempts_before == 0


async def test_the_status_report_shows_each_organizations_share() -> None:
    from streams.status import organization_shares

    runs, aside, tracker = Runs(), Aside(), tracked()
    pool = fair_pool(runs, tracker, aside)
    for offset in range(30):
        pool.submit(TP, job(offset, "a"))
    pool.submit(TP, job(30, "b"))
    for _ in range(20):
        await asyncio.sleep(0)
    shares = {s.organization_id: s for s in organization_shares(pool)}
    assert set(shares) == {"a", "b"}
    assert (shares["b"].running, shares["b"].started) == (1, 1), "b started in its turn"
    assert shares["a"].deferred == 20 and shares["a"].running == 1
    assert shares["a"].waiting == 9
    runs.release.set()
    await close(pool)
