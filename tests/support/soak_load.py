"""The soak's mixed load: probe, asset.process and message.send jobs published at steady rates.

The jobs are planned up front from the seed (what each one is and when it is
published, relative to the load's start) and published by a thread through
the broker's direct listener — the platform's producers are not what the
soak tests; the faults sit between the workers and the services. Every job
has an expected ending: ``good`` ones must complete, ``bad`` ones (a probe
that fails permanently, an asset whose file is gone, a poison record) must be
dead-lettered.

Poison records are raw values no job can be made of, published to the
``crm.webhook`` topic (which carries nothing else here, so a record that
wedges its partition holds up only itself): bytes that are not JSON, JSON
nested thousands deep, and a value just under the broker's record limit
(``kafka.max_message_bytes``), whose dead letter — the raw value plus the
failure headers — is larger than the limit. They have no job id: the
publisher records where each landed, and the oracle finds its dead letter by
the ``conveyor-original-*`` headers.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
from confluent_kafka import Message, Producer

from schemas.envelope import JobEnvelope
from streams.kafka_config import confluent_config
from tests.support.documents import words
from tests.support.http import FileServer
from tests.support.messages import lead_key, message_envelopes
from tests.support.stack import Stack

TICK_S = 0.25


@dataclass(frozen=True)
class Rates:
    """Jobs per second of each type; shares of the probes and assets that are meant to fail."""

    probe: float = 6.0
    message: float = 2.0
    asset: float = 0.4
    probe_flaky: float = 0.05  # fail once (retryable), then succeed
    probe_bad: float = 0.05  # fail permanently: dead-lettered
    asset_bad: float = 0.1  # the file is gone (HTTP 404): dead-lettered, the asset failed
    poison: float = 0.05  # raw records no job can be made of (see above)


POISON_KINDS = ("not_json", "nested", "near_limit")
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # kafka.max_message_bytes' default: the topics' limit


def poison_value(kind: str) -> bytes:
    if kind == "not_json":
        return b"\xff\xfe not json {"
    if kind == "nested":
        return b"[" * 5000 + b"]" * 5000
    # The record fits (with its key and batch overhead); its dead letter, the same value
    # plus some 1 KB of failure headers, does not.
    return b'{"id": "' + b"x" * (MAX_MESSAGE_BYTES - 400) + b'"}'


@dataclass(frozen=True)
class Planned:
    at_s: float
    envelope: JobEnvelope  # for a poison record: its id and topic only
    key: bytes
    kind: str  # probe | asset | message | poison
    good: bool
    raw: bytes | None = None  # a poison record's value

    @property
    def id(self) -> str:
        return self.envelope.id


@dataclass
class Plan:
    jobs: list[Planned]
    asset_ids: dict[str, str] = field(default_factory=dict)  # job id -> asset id
    message_keys: dict[str, str] = field(default_factory=dict)  # job id -> idempotency key

    def of(self, kind: str) -> list[Planned]:
        return [j for j in self.jobs if j.kind == kind]


def _times(rate: float, duration_s: float, rnd: random.Random) -> list[float]:
    """Publish times of a Poisson stream of ``rate`` per second over ``duration_s``."""
    out, t = [], rnd.expovariate(rate)
    while t < duration_s:
        out.append(round(t, 3))
        t += rnd.expovariate(rate)
    return out


def _probe(i: int, run: str, rnd: random.Random, rates: Rates) -> tuple[JobEnvelope, bool]:
    roll = rnd.random()
    payload: dict[str, object] = {"sleep_ms": rnd.randint(0, 50)}
    good = True
    if roll < rates.probe_bad:
        payload["fail"], good = "permanent", False
    elif roll < rates.probe_bad + rates.probe_flaky:
        payload |= {"fail": "retryable", "fail_times": 1}
    return JobEnvelope(id=f"soak-{run}-p{i:06d}", type="probe", payload=payload), good


INSERT_ASSET = """
INSERT INTO assets (id, organization_id, source_url, mime_type) VALUES ($1, $2, $3, 'text/plain')
"""


async def plan_load(
    seed: int,
    duration_s: float,
    rates: Rates,
    *,
    db: asyncpg.Pool,
    files: FileServer,
    connection_id: str,
    leads: list[int],
    organization_id: str,
) -> Plan:
    """Every job of the run, with its publish time; asset rows are inserted (``pending``)."""
    rnd = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    plan = Plan([])
    for i, at in enumerate(_times(rates.probe, duration_s, rnd)):
        envelope, good = _probe(i, run, rnd, rates)
        plan.jobs.append(Planned(at, envelope, envelope.id.encode(), "probe", good))
    await _plan_assets(plan, rnd, run, duration_s, rates, db, files, organization_id)
    for i, at in enumerate(_times(rates.poison, duration_s, rnd)):
        kind = rnd.choice(POISON_KINDS)
        carrier = JobEnvelope(id=f"soak-{run}-x{i:04d}-{kind}", type="crm.webhook", payload={})
        plan.jobs.append(Planned(at, carrier, b"poison", "poison", False, poison_value(kind)))
    times = _times(rates.message, duration_s, rnd)
    messages = message_envelopes(
        connection_id, leads, len(times), organization_id=organization_id, seed=seed
    )
    for at, envelope in zip(times, messages, strict=True):
        plan.message_keys[envelope.id] = str(envelope.payload["idempotency_key"])
        plan.jobs.append(Planned(at, envelope, lead_key(envelope), "message", True))
    plan.jobs.sort(key=lambda j: j.at_s)
    return plan


async def _plan_assets(
    plan: Plan,
    rnd: random.Random,
    run: str,
    duration_s: float,
    rates: Rates,
    db: asyncpg.Pool,
    files: FileServer,
    organization_id: str,
) -> None:
    bodies = [files.add(f"doc-{n}.txt", words(300 + 150 * n, seed=n).encode()) for n in range(4)]
    for i, at in enumerate(_times(rates.asset, duration_s, rnd)):
        good = rnd.random() >= rates.asset_bad
        url = rnd.choice(bodies) if good else files.url(f"gone-{run}-{i}.txt")
        asset_id = f"soak-{run}-a{i:05d}"
        await db.execute(INSERT_ASSET, asset_id, organization_id, url)
        envelope = JobEnvelope(
            id=f"soak-{run}-asset{i:05d}",
            type="asset.process",
            organization_id=organization_id,
            payload={"asset_id": asset_id},
        )
        plan.asset_ids[envelope.id] = asset_id
        plan.jobs.append(Planned(at, envelope, asset_id.encode(), "asset", good))


#: The publisher's librdkafka lines: hundreds of "connection refused" while the broker
#: restarts, which would bury a failure's report.
QUIET = logging.getLogger("tests.soak.librdkafka")
QUIET.setLevel(logging.CRITICAL)
QUIET.propagate = False


def quiet_producer(stack: Stack) -> Producer:
    """The stack's producer (acks=all, direct listener) without its log lines."""
    config = confluent_config(stack.settings().kafka)
    return Producer(
        {
            **config,
            "acks": "all",
            "linger.ms": 5,
            "logger": QUIET,
            "message.max.bytes": 2 * MAX_MESSAGE_BYTES,  # the near-limit poison record
        }
    )


class Publisher(threading.Thread):
    """Publishes the plan's jobs at their times (relative to ``start()``); counts what was sent."""

    def __init__(self, plan: Plan, producer: Producer, topics: dict[str, str]) -> None:
        super().__init__(daemon=True, name="soak-publisher")
        self.plan, self.topics = plan, topics
        self.producer: Producer | None = producer
        self.sent: Counter[str] = Counter()
        self.count = 0  # the plan's first ``count`` jobs are published (it is sorted by time)
        self.origins: dict[tuple[str, int, int], str] = {}  # where each poison record landed
        self.errors: list[str] = []
        self.started_at = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        assert self.producer is not None
        try:
            self._publish(self.producer)
        finally:
            self.producer = None  # librdkafka would retry its broker long after the soak

    def _publish(self, producer: Producer) -> None:
        self.started_at = time.monotonic()
        pending = list(self.plan.jobs)
        while pending and not self.halt.is_set():
            now = time.monotonic() - self.started_at
            due = next((i for i, job in enumerate(pending) if job.at_s > now), len(pending))
            batch, pending = pending[:due], pending[due:]
            for job in batch:
                producer.produce(
                    self.topics[job.envelope.type],
                    job.envelope.to_bytes() if job.raw is None else job.raw,
                    job.key,
                    on_delivery=functools.partial(self._delivered, job),
                )
            producer.flush(30)
            self.sent.update(job.kind for job in batch)
            self.count += len(batch)
            self.halt.wait(TICK_S)
        if producer.flush(30):
            self.errors.append("jobs left unacknowledged by Kafka")

    def _delivered(self, job: Planned, err: object, msg: Message) -> None:
        if err is not None:
            self.errors.append(f"{job.id}: {err}")
        elif job.raw is not None:
            self.origins[(msg.topic(), msg.partition(), msg.offset())] = job.id

    def published(self) -> list[Planned]:
        return self.plan.jobs[: self.count]

    def countable(self) -> int:
        """Published jobs that ``ended`` counts once they end (poison records are not)."""
        return self.count - self.sent["poison"]


PROGRESS = """
SELECT (SELECT count(DISTINCT job_id) FROM probe_effects)
     + (SELECT count(*) FROM assets WHERE status IN ('completed', 'failed'))
     + (SELECT count(*) FROM message_sends WHERE state = 'sent')
     + (SELECT count(DISTINCT job_id) FROM worker_dlq WHERE job_type IN ('probe', 'message.send'))
"""


async def ended(db: asyncpg.Pool) -> int:
    """Jobs of the soak that ended so far (an effect, a final asset status, a sent message, or a
    mirrored dead letter); the soak's database holds nothing else."""
    return int(await db.fetchval(PROGRESS))
