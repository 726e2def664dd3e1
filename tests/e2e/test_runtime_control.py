"""conveyor pause / resume against real workers: nothing starts, nothing is lost, pauses persist."""

from __future__ import annotations

import signal
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support.fleet import cli, held, live_reports
from tests.support.metrics_port import metrics_env, scrape
from tests.support.probe import PROBE_ENV, effects, probe_jobs, wait_done
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

ENV = {**PROBE_ENV, "CONVEYOR_JOBS__PROBE__CONCURRENCY": "2"}
APPLY_S = 2.0  # every worker stops starting a paused type within this


def started_after(workers: list[Any], moment: float) -> list[dict[str, Any]]:
    return [
        e
        for w in workers
        for e in list(w.events)
        if e.get("event") == "probe.ran" and e["started_at"] > moment
    ]


async def test_a_paused_type_stops_starting_everywhere_and_survives_a_restart(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    jobs = probe_jobs(300, max_sleep_ms=60, trace=True)
    workers = [worker_factory(stack, **ENV) for _ in range(2)]
    for w in workers:
        w.wait_ready()
    stack.publish(jobs)
    await wait_done(db, jobs, 60, what="some jobs done before the pause")

    cli(stack, "pause", "probe", "--reason", "upstream down")
    written = time.time()
    await eventually(lambda: held(stack), lambda n: n > 0, 30, "records held by the workers")
    late = started_after(workers, written + APPLY_S)
    assert late == [], f"{len(late)} job(s) started more than {APPLY_S} s after the pause"
    done_at_pause = (await effects(db, jobs)).distinct
    assert done_at_pause < len(jobs)

    # A restart (and the rebalance it causes) keeps the pause: the new worker reads it first.
    workers[0].signal(signal.SIGTERM)
    assert workers[0].wait_exit(60) == 0
    workers.append(worker_factory(stack, **ENV))
    workers[-1].wait_ready()
    reports = await eventually(
        lambda: live_reports(stack),
        lambda rs: len(rs) == 2 and all(r.paused == ["probe"] for r in rs),
        30,
        "both live workers report the pause",
    )
    assert all(r.in_flight_total == 0 for r in reports)
    assert started_after(workers, written + APPLY_S) == []
    assert (await effects(db, jobs)).distinct == done_at_pause, "nothing ran while paused"
    listed = cli(stack, "paused")
    assert "probe" in listed and "upstream down" in listed

    cli(stack, "resume", "probe")
    final = await wait_done(db, jobs, timeout_s=120)
    assert final.total == len(jobs) and final.duplicated == 0
    assert "nothing is paused" in cli(stack, "paused")


async def test_an_organization_pause_holds_only_its_jobs_and_readyz_says_so(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    port, metrics = metrics_env()
    acme = [j.model_copy(update={"organization_id": "acme"}) for j in probe_jobs(10, seed=2)]
    beta = [j.model_copy(update={"organization_id": "beta"}) for j in probe_jobs(10, seed=3)]
    worker = worker_factory(stack, **ENV, **metrics)
    worker.wait_ready()
    cli(stack, "pause", "probe", "--org", "acme", "--reason", "acme's quota")
    await eventually(
        lambda: live_reports(stack),
        lambda rs: bool(rs) and rs[0].paused == ["probe@acme"],
        20,
        "the worker applied the pause",
    )
    stack.publish([j for pair in zip(acme, beta, strict=True) for j in pair])
    await wait_done(db, beta, what="the other organization's jobs")
    assert await eventually(lambda: held(stack), lambda n: n == 10, 20, "acme's jobs held") == 10
    assert (await effects(db, acme)).distinct == 0

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
        assert r.status == 200, "a pause is not a failure"
        assert "paused: probe@acme" in await r.text()
    samples = await scrape(port)
    topic = stack.registry().topic_for("probe")
    paused = samples["conveyor_paused"]
    assert paused[(("job_type", "probe"), ("organization", "acme"), ("topic", topic))] == 1
    assert samples["conveyor_jobs_held"][(("job_type", "probe"),)] == 10

    cli(stack, "resume", "probe", "--org", "acme")
    final = await wait_done(db, acme)
    assert final.total == 10 and final.duplicated == 0
