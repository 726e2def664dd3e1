"""The compound-fault soak: three workers under mixed load while a seeded schedule breaks things.

Workers run ``probe``, ``asset.process`` (a local file store and embeddings
server) and ``message.send`` (a local Kommo account) jobs published at
steady rates, and reach Kafka and Postgres only through Toxiproxy
(tests/support/soak_rig.py). A seeded schedule (tests/support/soak_schedule.py)
SIGKILLs and SIGTERMs workers, scales the group up and down, takes Postgres
away and makes it read-only, restarts the broker, and adds latency, resets,
stalls and a thin pipe between the workers and both services — often two at
once. Then the faults are healed, the load stops, the fleet drains, and the
oracle (tests/support/soak_oracle.py) checks that every job ended exactly
once, every dead letter reached ``worker_dlq``, no partition is stuck and no
Kommo note was sent twice. The seed, the schedule as played, and the figures
are printed (``-s``) and written to ``soak-report.txt`` beside the workers'
logs in ``.services/test-soak/runs/<time>-seed<N>/`` (the last ten runs are
kept); the same seed plays the same schedule on the same load again.

``make test`` runs the short variant (a 60 s window, durations times 0.6, seed 1);
``make soak-faults`` the long one (``CONVEYOR_FAULT_SOAK_S=1200``).
``CONVEYOR_FAULT_SEED`` picks the seed. docs/RELIABILITY.md, "The
compound-fault soak".
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from streams.commands.migrate import migrate
from tests.support.crm import register_account
from tests.support.dedicated_kafka import DedicatedKafka, free_ports
from tests.support.http import file_server
from tests.support.kommo_server import KommoServer, kommo_server
from tests.support.messages import worker_env
from tests.support.openai_server import API_KEY, openai_server
from tests.support.probe import PROBE_ENV
from tests.support.services import Endpoints
from tests.support.soak_evidence import (
    Backlog,
    Sample,
    diagnosis,
    gather,
    job_figures,
    lag_by_topic,
    never_counted,
    schedule_lines,
)
from tests.support.soak_fleet import Fleet
from tests.support.soak_load import Plan, Publisher, Rates, ended, plan_load, quiet_producer
from tests.support.soak_oracle import Evidence, Verdict, judge
from tests.support.soak_rig import (
    KAFKA_PROXY,
    PG_PROXY,
    Injector,
    Rig,
    address_of,
    advertised,
    harness_pool,
    with_address,
)
from tests.support.soak_schedule import (
    START_WORKERS,
    Fault,
    make_schedule,
    overlapping_pairs,
)
from tests.support.stack import Stack
from tests.support.toxiproxy import ToxiproxyServer

WINDOW_S = float(os.environ.get("CONVEYOR_FAULT_SOAK_S") or 60)
LONG = WINDOW_S > 60
TIME_SCALE = 1.0 if LONG else 0.6
SEED = int(os.environ.get("CONVEYOR_FAULT_SEED") or (random.randrange(10**6) if LONG else 1))
DRAIN_S = 600.0 if LONG else 180.0
SETTLED_S = 15.0
LEADS = 20
RATES = Rates()
RUNS_DIR = Path(__file__).resolve().parents[2] / ".services" / "test-soak" / "runs"
KEEP_RUNS = 10

pytestmark = [pytest.mark.e2e, pytest.mark.fault_soak]


@pytest.fixture(scope="module")
def toxiproxy() -> Iterator[ToxiproxyServer]:
    server = ToxiproxyServer("soak").start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxied_kafka(toxiproxy: ToxiproxyServer) -> Iterator[DedicatedKafka]:
    broker = DedicatedKafka("soak", proxied=True).start()
    toxiproxy.client.proxy(KAFKA_PROXY, broker.proxied_bootstrap, broker.proxied_upstream)
    # The workers stay behind the proxy: the broker sends them back to its port.
    assert advertised(broker.proxied_bootstrap) == {broker.proxied_bootstrap}
    assert advertised(broker.bootstrap) == {broker.bootstrap}
    yield broker
    broker.stop()  # always: the soak restarts it, so whoever started it first, this run owns it


@pytest.fixture
async def rig(
    services: Endpoints, toxiproxy: ToxiproxyServer, proxied_kafka: DedicatedKafka
) -> AsyncIterator[Rig]:
    """A database of the soak's own (read-only is set on it), reached through the Postgres proxy."""
    name = f"conveyor_soak_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    direct = with_address(services.dsn, address_of(services.dsn), name)
    await migrate(direct)
    toxi = toxiproxy.client
    toxi.reset()
    [port] = free_ports(1)
    listen = toxi.proxy(PG_PROXY, f"127.0.0.1:{port}", address_of(services.dsn))["listen"]
    yield Rig(toxi, proxied_kafka, name, direct, with_address(direct, listen))
    toxi.reset()
    admin = await asyncpg.connect(services.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _run_dir() -> Path:
    """Where this run's report and worker logs go: kept (the last ``KEEP_RUNS``) past the session,
    unlike pytest's temporary folders, which other sessions on the machine rotate away."""
    runs = RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir())[: -KEEP_RUNS + 1]:
        shutil.rmtree(old, ignore_errors=True)
    made = runs / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-seed{SEED}"
    made.mkdir()
    return made


def _worker_env(stack: Stack, rig: Rig, embeddings_url: str) -> dict[str, str]:
    return {
        **stack.env,
        "CONVEYOR_KAFKA__BOOTSTRAP_SERVERS": rig.kafka.proxied_bootstrap,
        "CONVEYOR_POSTGRES__DSN": rig.worker_dsn,
        **PROBE_ENV,
        "CONVEYOR_JOBS__PROBE__CONCURRENCY": "8",
        "CONVEYOR_JOBS__PROBE__BACKOFF_BASE_S": "0.05",
        "CONVEYOR_JOBS__PROBE__BACKOFF_MAX_S": "0.5",
        **worker_env(lease_s=3.0, settle_s=1.0, timeout_s=0.5),
        "CONVEYOR_CRM__REQUESTS_PER_SECOND": "200",
        "CONVEYOR_EMBEDDING__PROVIDER": "openai",
        "CONVEYOR_EMBEDDING__BASE_URL": embeddings_url,
        "CONVEYOR_EMBEDDING__API_KEY": API_KEY,
        "CONVEYOR_EMBEDDING__DIMENSIONS": "16",
        "CONVEYOR_EXTRACT__WORKERS": "1",
    }


async def _sample(db: asyncpg.Pool, publisher: Publisher, out: list[Sample]) -> None:
    while True:
        out.append(Sample(time.time(), publisher.countable(), await ended(db)))
        await asyncio.sleep(1.0)


async def _drain(db: asyncpg.Pool, stack: Stack, publisher: Publisher) -> tuple[float, str]:
    """Seconds until every job ended and the group's lag is 0 everywhere; what was left if not.

    Lag 0 on every topic for ``SETTLED_S`` also ends the wait: every record was
    consumed and committed, so a job that has not ended by then never will.
    """
    started = time.monotonic()
    settled_at: float | None = None
    left = "nothing read yet"
    while (now := time.monotonic()) - started < DRAIN_S:
        done = await ended(db)
        lag = await asyncio.to_thread(lag_by_topic, stack)
        behind = {t: n for t, n in lag.items() if n}
        settled_at = None if behind else (settled_at or now)
        left = f"{publisher.countable() - done} jobs not ended, lag {behind}"
        if not behind and (done >= publisher.countable() or now - settled_at >= SETTLED_S):
            return now - started, "" if done >= publisher.countable() else left
        await asyncio.sleep(2.0)
    return time.monotonic() - started, left


@pytest.mark.timeout(int(WINDOW_S * 1.5 + DRAIN_S + 420))
async def test_compound_faults_end_every_job_exactly_once(rig: Rig) -> None:
    schedule = make_schedule(SEED, WINDOW_S, time_scale=TIME_SCALE)
    run_dir = _run_dir()
    load_s = max(f.ends_s for f in schedule) + 5
    stack = Stack(rig.kafka.bootstrap, rig.direct_dsn)
    stack.create_topics()
    db = await harness_pool(rig.direct_dsn)
    report: list[str] = [
        f"[fault-soak] seed={SEED} window_s={WINDOW_S:g} faults={len(schedule)} "
        f"overlapping_pairs={overlapping_pairs(schedule)} load_s={load_s:.0f} "
        f"(CONVEYOR_FAULT_SEED={SEED} CONVEYOR_FAULT_SOAK_S={WINDOW_S:g} reproduces it)"
    ]
    print("\n" + report[0], flush=True)
    try:
        async with (
            file_server() as files,
            openai_server() as api,
            kommo_server(rate_limit=None, seed=SEED) as kommo,
        ):
            org = f"org-soak-{SEED}-{uuid.uuid4().hex[:6]}"
            connection = await register_account(db, kommo, organization_id=org)
            leads = [kommo.add_lead()["id"] for _ in range(LEADS)]
            plan = await plan_load(
                SEED, load_s, RATES, db=db, files=files, connection_id=connection.id,
                leads=leads, organization_id=org,
            )  # fmt: skip
            fleet = Fleet(_worker_env(stack, rig, api.base_url), run_dir, START_WORKERS)
            try:
                verdict_text = await _soak(
                    rig, stack, db, plan, fleet, kommo, org, schedule, report
                )
            finally:
                await fleet.stop_all()
    finally:
        await db.close()
        (run_dir / "soak-report.txt").write_text("\n".join(report) + "\n")
    assert not verdict_text, f"{verdict_text}\n(report and worker logs in {run_dir})"


@dataclass
class Played:
    """What the load and the schedule did (wall-clock times)."""

    publisher: Publisher
    injector: Injector
    samples: list[Sample]
    started: float
    healed_s: float = 0.0
    drain_s: float = 0.0
    left: str = ""


async def _soak(
    rig: Rig,
    stack: Stack,
    db: asyncpg.Pool,
    plan: Plan,
    fleet: Fleet,
    kommo: KommoServer,
    org: str,
    schedule: list[Fault],
    report: list[str],
) -> str:
    """Run the load and the schedule, drain, judge; the oracle's failures ('' if none)."""
    await fleet.wait_ready()
    played = await _play(rig, stack, db, plan, fleet, schedule)
    evidence = await gather(db, stack, plan, played.publisher, kommo, fleet, org)
    verdict = judge(evidence)
    report += _report(played, evidence, verdict, fleet)
    print("\n".join(report[1:]), flush=True)
    if verdict.ok:
        return ""
    # Where it hung, in the assertion itself: a CI run keeps its output, not the logs.
    played_lines = "" if LONG else "\n".join(report[1:-1]) + "\n"
    found = await asyncio.to_thread(diagnosis, stack, fleet)
    report.append("[fault-soak] at the end:\n" + found)
    return f"{verdict.text()}\n{played_lines}at the end:\n{found}"


async def _play(
    rig: Rig, stack: Stack, db: asyncpg.Pool, plan: Plan, fleet: Fleet, schedule: list[Fault]
) -> Played:
    """Publish the load and play the schedule; heal; drain."""
    registry = stack.registry()
    kinds = ("probe", "asset.process", "message.send", "crm.webhook")
    publisher = Publisher(plan, quiet_producer(stack), {t: registry.topic_for(t) for t in kinds})
    played = Played(publisher, Injector(rig, fleet, db), [], time.time())
    stop = asyncio.Event()
    background = [
        asyncio.create_task(fleet.supervise(stop)),
        asyncio.create_task(_sample(db, publisher, played.samples)),
    ]
    publisher.start()
    try:
        try:
            await played.injector.play(schedule, time.monotonic())
        finally:
            await played.injector.heal()
        await asyncio.to_thread(publisher.join, 120)
        played.healed_s = time.time() - played.started
        played.drain_s, played.left = await _drain(db, stack, publisher)
    finally:
        publisher.halt.set()
        stop.set()
        background[1].cancel()
        await asyncio.gather(*background, return_exceptions=True)
    return played


def _report(played: Played, evidence: Evidence, verdict: Verdict, fleet: Fleet) -> list[str]:
    slack = max(5, int(2 * (RATES.probe + RATES.message + RATES.asset)))
    lost = [played.started + job.at_s for job in never_counted(evidence)]
    lines = ["[fault-soak] schedule as played (t from the window's start):"]
    lines += schedule_lines(
        played.injector.executed, played.started, Backlog(played.samples, lost, slack)
    )
    lines.append(
        f"[fault-soak] faults_and_load_s={played.healed_s:.0f} drain_s={played.drain_s:.1f}"
        + (f" NOT DRAINED: {played.left}" if played.left else "")
    )
    lines += [f"[fault-soak] {k}: {v}" for k, v in job_figures(evidence, fleet).items()]
    lines += [
        f"[fault-soak] dead letters repeated but excused by a worker death: "
        f"{len(verdict.excused)} {verdict.excused[:5]}",
        f"[fault-soak] publish errors: {played.publisher.errors[:3]}",
        "[fault-soak] verdict: "
        + ("every rule holds" if verdict.ok else "FAILED\n" + verdict.text()),
    ]
    return lines
