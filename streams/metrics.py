"""Prometheus metrics and the health endpoints, on ``worker.metrics_port``.

One small aiohttp server on the worker's own event loop (0 disables it):

- ``/metrics`` — Prometheus text format: job endings, retries, dead letters,
  attempt durations, jobs running and waiting per type, event-loop lag, plus
  prometheus-client's process metrics (memory, CPU, file descriptors).
- ``/healthz`` — 200 while the event loop answers (a liveness probe: a
  stalled loop also stalls Kafka heartbeats).
- ``/readyz`` — 200 once the worker has joined its consumer group and while
  its consumer reaches the group's broker; 503 before that, while the
  brokers are gone, and while it drains. Paused job types (``conveyor
  pause``) are listed in the body (``paused: asset.process, ...``): a
  paused type does not make a worker unready.

Beside the broker's consumer lag (a Kafka exporter on the group), the worker
reports its own view per partition — ``conveyor_consumer_lag``, which leaves
out what no extra replica could help with (streams/work_lag.py) — and how
many partitions it holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = structlog.get_logger(__name__)

JOBS = Counter(
    "conveyor_jobs",
    "Jobs that ended, by job type and outcome (succeeded, skipped, retry_topic, dead_lettered)",
    ["job_type", "outcome"],
)
RETRIES = Counter(
    "conveyor_job_retries",
    "Failed attempts that will be retried, by job type and where (in_place, retry_topic)",
    ["job_type", "where"],
)
DEAD_LETTERS = Counter(
    "conveyor_dead_letters",
    "Records written to the dead-letter topic, by job type and stage",
    ["job_type", "stage"],
)
DEPENDENCY_WAITS = Counter(
    "conveyor_dependency_waits",
    "Attempts that found a shared dependency (Postgres) down and waited for it",
    ["job_type"],
)
DURATION = Histogram(
    "conveyor_job_attempt_seconds",
    "Duration of successful attempts, by job type",
    ["job_type"],
    buckets=(0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 60, 150, 300, 900),
)
IN_FLIGHT = Gauge("conveyor_jobs_in_flight", "Jobs running now, by job type", ["job_type"])
WAITING = Gauge(
    "conveyor_jobs_waiting",
    "Records taken from Kafka that wait for a slot or a retry time, by job type",
    ["job_type"],
)
LOOP_LAG = Gauge(
    "conveyor_event_loop_lag_seconds",
    "How late a 50 ms timer fired over the last 10 s window (quantile 1 is the maximum)",
    ["quantile"],
)
READY = Gauge(
    "conveyor_ready",
    "1 once the worker joined its group, while it reaches the group's broker and is not draining",
)
ASSIGNED_PARTITIONS = Gauge(
    "conveyor_assigned_partitions", "Partitions of the consumer group assigned to this worker"
)
WORK_LAG = Gauge(
    "conveyor_consumer_lag",
    "Records of a job topic's partition that wait for their first run here: not taken yet,"
    " or taken and unfinished; finished records behind a stuck one, retries and dead letters"
    " are left out (streams/work_lag.py)",
    ["topic", "partition"],
)


class OrganizationShares:
    """Per organization, for job types with fair share: waiting, running, started, set aside.

    Read from the pools at scrape time (organizations come and go; nothing is
    counted per job beyond what the fair queue keeps anyway).
    """

    def __init__(self) -> None:
        self._pools: list[tuple[str, Callable[[], OrgCounts]]] = []

    def track(self, job_type: str, counts: Callable[[], OrgCounts]) -> None:
        if not self._pools:
            REGISTRY.register(self)
        self._pools.append((job_type, counts))

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "conveyor_organization_jobs_waiting",
            "Records ready to run, by job type and organization ('' for none)",
            labels=["job_type", "organization"],
        )
        running = GaugeMetricFamily(
            "conveyor_organization_jobs_running",
            "Jobs running, by job type and organization",
            labels=["job_type", "organization"],
        )
        started = CounterMetricFamily(
            "conveyor_organization_jobs_started",
            "Jobs started, by job type and organization (rate(): started per second)",
            labels=["job_type", "organization"],
        )
        deferred = CounterMetricFamily(
            "conveyor_organization_jobs_deferred",
            "Records set aside to the deferred topic, by job type and organization",
            labels=["job_type", "organization"],
        )
        for job_type, counts in self._pools:
            c = counts()
            for family, values in (
                (waiting, c.waiting),
                (running, c.running),
                (started, c.started),
                (deferred, c.deferred),
            ):
                for org, value in values.items():
                    family.add_metric([job_type, org], value)
        yield from (waiting, running, started, deferred)


@dataclass(frozen=True, slots=True)
class OrgCounts:
    waiting: Mapping[str, int]
    running: Mapping[str, int]
    started: Mapping[str, int]
    deferred: Mapping[str, int]


ORGANIZATIONS = OrganizationShares()

PAUSED = Gauge(
    "conveyor_paused",
    "1 while a job type is paused (conveyor pause): its jobs are not started; organization"
    ' "" is the whole type, else only that organization\'s jobs; one series per topic of the'
    " type (source and retry), so lag alerts can leave paused topics out",
    ["job_type", "organization", "topic"],
)
HELD = Gauge(
    "conveyor_jobs_held",
    "Records taken from Kafka and held unstarted because their job type or organization is"
    " paused (counted in conveyor_jobs_waiting too)",
    ["job_type"],
)


def track_pool(name: str, in_flight: Callable[[], int], waiting: Callable[[], int]) -> None:
    """Report a job pool's running and waiting counts whenever metrics are scraped."""
    IN_FLIGHT.labels(name).set_function(in_flight)
    WAITING.labels(name).set_function(waiting)


def track_held(name: str, held: Callable[[], int]) -> None:
    HELD.labels(name).set_function(held)


class _Paused(Protocol):
    @property
    def job_type(self) -> str: ...

    @property
    def organization_id(self) -> str | None: ...


def set_paused(pauses: Iterable[_Paused], topics_of: Callable[[str], list[str]]) -> None:
    """The pauses in force now (the control topic), as ``conveyor_paused`` series."""
    PAUSED.clear()
    for pause in pauses:
        for topic in topics_of(pause.job_type):
            PAUSED.labels(pause.job_type, pause.organization_id or "", topic).set(1)


class HealthServer:
    """Serves /metrics, /healthz and /readyz on ``host:port`` from the worker's loop.

    ``refresh`` (if given) runs before each scrape, for gauges that need I/O.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ready: Callable[[], bool],
        refresh: Callable[[], Awaitable[None]] | None = None,
        paused: Callable[[], list[str]] = list,
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._refresh = refresh
        self._paused = paused
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        log.info("worker.metrics_serving", host=self.host, port=self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        if self._refresh is not None:
            await self._refresh()
        READY.set(1 if self._ready() else 0)
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        # A paused job type is said, not failed: the worker is ready, it just starts none.
        paused = self._paused()
        extra = f"paused: {', '.join(paused)}\n" if paused else ""
        if self._ready():
            return web.Response(text="ready\n" + extra)
        return web.Response(status=503, text="not ready\n" + extra)
