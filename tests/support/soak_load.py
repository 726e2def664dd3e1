"""The soak's mixed load: probe, asset.process and message.send jobs published at steady rates.

The jobs are planned up front from the seed (what each one is and when it is
published, relative to the load's start) and published by a thread through
the broker's direct listener — the platform's producers are not what the
soak tests; the faults sit between the workers and the services. Every job
has an expected ending: ``good`` ones must complete, ``bad`` ones (a probe
that fails permanently, an asset whose file is gone) must be dead-lettered.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
from confluent_kafka import Producer

from schemas.envelope import JobEnvelope
from tests.support.documents import words
from tests.support.http import FileServer
from tests.support.messages import lead_key, message_envelopes

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


@dataclass(frozen=True)
class Planned:
    at_s: float
    envelope: JobEnvelope
    key: bytes
    kind: str  # probe | asset | message
    good: bool

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
    jobs: list[Planned] = []
    for i, at in enumerate(_times(rates.probe, duration_s, rnd)):
        envelope, good = _probe(i, run, rnd, rates)
        jobs.append(Planned(at, envelope, envelope.id.encode(), "probe", good))
    plan = Plan(jobs)
    bodies = [files.add(f"doc-{n}.txt", words(300 + 150 * n, seed=n).encode()) for n in range(4)]
    for i, at in enumerate(_times(rates.asset, duration_s, rnd)):
        good = rnd.random() >= rates.asset_bad
        url = rnd.choice(bodies) if good else files.url(f"gone-{run}-{i}.txt")
        asset_id = f"soak-{run}-a{i:05d}"
        await db.execute(
            "INSERT INTO assets (id, organization_id, source_url, mime_type)"
            " VALUES ($1, $2, $3, 'text/plain')",
            asset_id,
            organization_id,
            url,
        )
        envelope = JobEnvelope(
            id=f"soak-{run}-asset{i:05d}",
            type="asset.process",
            organization_id=organization_id,
            payload={"asset_id": asset_id},
        )
        plan.asset_ids[envelope.id] = asset_id
        jobs.append(Planned(at, envelope, asset_id.encode(), "asset", good))
    times = _times(rates.message, duration_s, rnd)
    messages = message_envelopes(
        connection_id, leads, len(times), organization_id=organization_id, seed=seed
    )
    for at, envelope in zip(times, messages, strict=True):
        plan.message_keys[envelope.id] = str(envelope.payload["idempotency_key"])
        jobs.append(Planned(at, envelope, lead_key(envelope), "message", True))
    jobs.sort(key=lambda j: j.at_s)
    return plan


class Publisher(threading.Thread):
    """Publishes the plan's jobs at their times (relative to ``start()``); counts what was sent."""

    def __init__(self, plan: Plan, producer: Producer, topics: dict[str, str]) -> None:
        super().__init__(daemon=True, name="soak-publisher")
        self.plan, self.topics = plan, topics
        self.producer: Producer | None = producer
        self.sent: Counter[str] = Counter()
        self.count = 0  # the plan's first ``count`` jobs are published (it is sorted by time)
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
                    job.envelope.to_bytes(),
                    job.key,
                    on_delivery=self._delivered,
                )
            producer.flush(30)
            self.sent.update(job.kind for job in batch)
            self.count += len(batch)
            self.halt.wait(TICK_S)
        if producer.flush(30):
            self.errors.append("jobs left unacknowledged by Kafka")

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self.errors.append(str(err))

    def published(self) -> list[Planned]:
        return self.plan.jobs[: self.count]


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
