"""Console page render times with 100,000 dead letters and 10 workers reporting.

A throwaway database gets 100,000 dead letters, stored by the mirror's own
code (handlers/dlq_mirror.py): six job types, five stages, 50
organizations, 20 error classes, payloads of about 1 KB. Ten stand-in
workers write a status report every second to the status topic (30 running
jobs each). `conveyor console` then runs as its own process, and an
operator's session asks each page ``--rounds`` times after two warm-up
requests: the fleet, the dead-letter list (unfiltered, by organization, by
type and stage, by error class, a deep keyset page), a dead letter's page,
a replay confirmation over a filter (it counts the rows), find a job, CRM,
pause/resume and the audit trail. Times are the client's, request to last
byte, over loopback. Every topic and the database are dropped afterwards.

    eval "$(scripts/services env)"; .venv/bin/python -m bench.console [--dead-letters 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from bench.scratch import scratch_database
from handlers.dlq_mirror import UPSERT, row_of
from schemas.dlq import DeadLetterRecord, FailureContext, Stage
from schemas.envelope import JobEnvelope
from schemas.fleet import InFlightJob, PoolStatus, StatusReport
from streams.follow import FleetWriter
from tests.support.console import OPERATOR_TOKEN, TOKENS, csrf_of
from tests.support.dedicated_kafka import free_ports
from tests.support.stack import JANITOR, Stack

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 300.0
TYPES = ["asset.process", "knowledge_graph.extract", "crm.webhook", "message.send", "probe"]
STAGES = [Stage.HANDLE, Stage.TIMEOUT, Stage.VALIDATE, Stage.DECODE, Stage.CRASHED]
WORKERS = 10
BATCH = 5000


def dead_letter(i: int, dlq_topic: str, rnd: random.Random, now: datetime) -> tuple[object, ...]:
    job_type = TYPES[i % len(TYPES)]
    org = f"org-{rnd.randrange(50)}"
    env = JobEnvelope(
        id=f"job-{i}",
        type=job_type,
        organization_id=org,
        payload={"asset_id": f"asset-{i}", "note": "x" * 800},
    )
    failed = now - timedelta(seconds=100_000 - i)
    context = FailureContext(
        original_topic=f"jobs.{job_type}",
        original_partition=i % 6,
        original_offset=i,
        original_timestamp=failed,
        consumer_group="conveyor",
        job_type=job_type,
        job_id=env.id,
        attempts=5,
        first_failure_at=failed,
        last_failure_at=failed,
        error_class=f"Error{rnd.randrange(20)}",
        error_message="the upstream answered 503 Service Unavailable",
        error_stack="Traceback (most recent call last):\n" + "  File ...\n" * 20,
        stage=rnd.choice(STAGES).value,
        service_version="0.1.0",
        host=f"worker-{i % WORKERS}",
    )
    headers = {k: v.decode() for k, v in context.to_headers()}
    record = DeadLetterRecord(
        dlq_topic=dlq_topic,
        dlq_partition=i % 6,
        dlq_offset=i,
        key=f"lead-{i % 997}".encode(),
        value=env.to_bytes(),
        headers={**headers, "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )
    return row_of(record)


async def fill(dsn: str, dlq_topic: str, n: int) -> None:
    import asyncpg

    rnd = random.Random(7)
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        for start in range(0, n, BATCH):
            rows = [
                dead_letter(i, dlq_topic, rnd, now) for i in range(start, min(start + BATCH, n))
            ]
            await conn.executemany(UPSERT, rows)
        # Dead-lettered over the last 28 hours (the mirror stores each as it comes), and
        # analysed as autovacuum would have by then.
        await conn.execute("UPDATE worker_dlq SET created_at = last_failure_at")
        await conn.execute("VACUUM ANALYZE worker_dlq")
    finally:
        await conn.close()


def report(w: int, group: str) -> StatusReport:
    now = datetime.now(UTC)
    jobs = [
        InFlightJob(
            job_type=TYPES[j % len(TYPES)],
            topic=f"jobs.{TYPES[j % len(TYPES)]}",
            partition=j % 6,
            offset=1000 + j,
            key=f"lead-{j}",
            job_id=f"w{w}-job-{j}",
            organization_id=f"org-{j % 50}",
            attempt=1 + j % 3,
            age_s=float(j * 7),
        )
        for j in range(30)
    ]
    return StatusReport(
        worker_id=f"bench-{w}",
        host=f"worker-{w}",
        pid=1000 + w,
        version="0.1.0",
        group_id=group,
        started_at=now - timedelta(hours=1),
        interval_s=1.0,
        partitions=[f"jobs.{t}:{p}" for t in TYPES for p in range(w % 3, 6, 3)],
        in_flight=jobs,
        in_flight_total=len(jobs),
        pools=[PoolStatus(job_type=t, concurrency=8, in_flight=6, waiting=3) for t in TYPES],
        rss_bytes=300 * 2**20,
        loop_lag_ms=2.5,
    )


async def report_forever(stack: Stack) -> None:
    settings = stack.settings()
    writer = FleetWriter(settings.kafka)
    await writer.start()
    try:
        while True:
            for w in range(WORKERS):
                value = report(w, settings.kafka.group_id).to_bytes()
                await writer.write(settings.kafka.status_topic, f"bench-{w}".encode(), value, 10)
            await asyncio.sleep(1.0)
    finally:
        await writer.stop()


def start_console(stack: Stack, dsn: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    (port,) = free_ports(1)
    env = {
        **os.environ,
        **stack.env,
        "CONVEYOR_POSTGRES__DSN": dsn,
        "CONVEYOR_CONSOLE__TOKENS": TOKENS,
        "CONVEYOR_CONSOLE__PORT": str(port),
        "CONVEYOR_LOGGING__LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.commands.cli", "console"],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}"


async def wait_up(http: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(base + "/healthz") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError("the console did not start")


async def timed(http: aiohttp.ClientSession, url: str, rounds: int) -> list[float]:
    times = []
    for i in range(rounds + 2):
        started = time.perf_counter()
        async with http.get(url) as r:
            body = await r.read()
            assert r.status == 200, f"{url}: {r.status} {body[:300]!r}"
        if i >= 2:  # two warm-up requests
            times.append((time.perf_counter() - started) * 1000)
    return times


async def measure(base: str, rounds: int, n: int) -> dict[str, list[float]]:
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await wait_up(http, base)
        async with http.get(base + "/login") as r:
            csrf = csrf_of(await r.text())
        form = {"token": OPERATOR_TOKEN, "csrf_token": csrf, "next": "/"}
        async with http.post(base + "/login", data=form) as r:
            assert r.status == 200 and "otto" in await r.text()
        # Wait until the console has the ten workers' reports.
        for _ in range(100):
            async with http.get(base + "/") as r:
                if (await r.text()).count("worker-") >= WORKERS:
                    break
            await asyncio.sleep(0.2)
        pages = {
            "fleet (10 workers, 300 running jobs)": "/",
            "dead letters, no filter": "/dlq?status=all",
            "dead letters, one organization": "/dlq?org=org-7&status=all",
            "dead letters, type and stage": "/dlq?job_type=crm.webhook&stage=timeout&status=all",
            "dead letters, error class": "/dlq?error_class=Error3&status=all",
            "dead letters, a filter matching none": (
                "/dlq?job_type=crm.webhook&error_class=NoSuchError&status=all"
            ),
            "dead letters, the last hour": f"/dlq?status=all&since={since}",
            "dead letters, halfway down (keyset)": f"/dlq?status=all&before={n // 2}",
            "a dead letter": f"/dlq/{n // 2 + 1}",
            "replay confirmation over a filter": "/dlq/confirm?action=replay&org=org-7",
            "find a job (by job id)": f"/find?q=job-{n * 3 // 4}",
            "find a job (by asset id)": f"/find?q=asset-{n // 8}",
            "CRM": "/crm",
            "pause/resume": "/control",
            "audit": "/audit",
        }
        return {name: await timed(http, base + path, rounds) for name, path in pages.items()}


async def run(n: int, rounds: int) -> int:
    services = Stack(
        os.environ.get("CONVEYOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        os.environ.get("CONVEYOR_POSTGRES__DSN", ""),
    )
    services.create_topics()
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-console-"))
    try:
        async with scratch_database() as dsn:
            started = time.perf_counter()
            await fill(dsn, services.settings().kafka.dlq_topic, n)
            print(f"{n} dead letters stored in {time.perf_counter() - started:.0f} s", flush=True)
            reporter = asyncio.create_task(report_forever(services))
            proc, base = start_console(services, dsn, workdir / "console.log")
            try:
                results = await measure(base, rounds, n)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
    finally:
        JANITOR.delete(services)
        JANITOR.wait()
    return show(results, n)


def show(results: dict[str, list[float]], n: int) -> int:
    print(f"\npage render times with {n} dead letters and {WORKERS} workers reporting (ms):")
    print(f"  {'page':44s} {'p50':>7s} {'p95':>7s} {'max':>7s}")
    worst = 0.0
    for name, times in results.items():
        ordered = sorted(times)
        p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
        worst = max(worst, p95)
        print(f"  {name:44s} {statistics.median(times):7.1f} {p95:7.1f} {max(times):7.1f}")
    verdict = "met" if worst <= TARGET_MS else "NOT met"
    print(f"  slowest p95 {worst:.1f} ms; target <= {TARGET_MS:.0f} ms: {verdict}")
    return 0 if worst <= TARGET_MS else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dead-letters", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    return asyncio.run(run(args.dead_letters, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
