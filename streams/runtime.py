"""Build the handlers' dependencies once at start-up, close them at shutdown."""

from __future__ import annotations

from typing import Protocol

import aiohttp
import asyncpg
import structlog

from handlers import tracing
from handlers.assets.netguard import Allowlist, guarded_connector_kwargs
from handlers.cpu_pool import ProcessCpuPool
from handlers.crm.services import crm_services
from handlers.deps import Deps
from schemas.envelope import JobEnvelope
from streams.looplag import LoopLagMonitor
from streams.policies import chunking_policy, extract_policy, fetch_policy, knowledge_graph_policy
from streams.providers import Providers, open_providers
from streams.publish import RecordPublisher
from streams.registry import Registry
from streams.settings import Settings

log = structlog.get_logger(__name__)


class DepsSource(Protocol):
    """Where runners get the handlers' dependencies: the runtime, once it is open."""

    @property
    def deps(self) -> Deps: ...


class KafkaJobPublisher:
    """Publishes follow-up jobs to their job type's topic, awaiting the broker's ack."""

    def __init__(self, registry: Registry, records: RecordPublisher) -> None:
        self._registry = registry
        self._records = records

    async def publish(self, envelope: JobEnvelope, *, key: bytes | None = None) -> None:
        topic = self._registry.topic_for(envelope.type)
        await self._records.publish_job(topic, envelope, key)


APPLICATION_NAME = "conveyor"  # how the worker's sessions show in pg_stat_activity


async def create_db_pool(settings: Settings) -> asyncpg.Pool:
    pg = settings.postgres
    return await asyncpg.create_pool(
        dsn=pg.dsn.get_secret_value(),
        min_size=pg.pool_min_size,
        max_size=pg.pool_max_size,
        timeout=pg.connect_timeout_s,
        command_timeout=pg.command_timeout_s,
        server_settings={"application_name": APPLICATION_NAME},
        init=_watched if tracing.enabled() else None,  # each query a span of its job
    )


async def _watched(conn: asyncpg.Connection) -> None:
    tracing.watch_queries(conn)


class Runtime:
    """Owns the db pool, HTTP session and embedder for the worker's lifetime."""

    def __init__(self, settings: Settings, registry: Registry, records: RecordPublisher) -> None:
        self.settings = settings
        self.registry = registry
        self.records = records
        self._deps: Deps | None = None
        self._providers: Providers | None = None
        self._cpu: ProcessCpuPool | None = None
        self._loop_lag = LoopLagMonitor()

    @property
    def loop_lag_ms(self) -> float | None:
        """p99 event-loop lag of the last 10 s window (None before the first one)."""
        return self._loop_lag.last_p99_ms

    @property
    def deps(self) -> Deps:
        if self._deps is None:
            raise RuntimeError("runtime is not open")
        return self._deps

    async def open(self) -> None:
        if self._deps is not None:
            return
        s = self.settings
        db = await create_db_pool(s)
        allowlist = Allowlist(s.http.allowed_hosts)
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, **guarded_connector_kwargs(allowlist)),
            headers={"User-Agent": s.http.user_agent},
        )
        providers = self._providers = open_providers(s, db)
        cpu = self._cpu = ProcessCpuPool(
            s.extract.workers,
            preload=["handlers.assets.extract"],
            memory_limit_bytes=s.extract.memory_limit_bytes,
        )
        await cpu.start()
        self._deps = Deps(
            db=db,
            http=http,
            embedder=providers.embedder,
            publisher=KafkaJobPublisher(self.registry, self.records),
            chunking=chunking_policy(s),
            fetch=fetch_policy(s),
            knowledge_graph=knowledge_graph_policy(s),
            extract=extract_policy(s),
            llm=providers.llm,
            cpu=cpu,
            crm=crm_services(http, s.crm),
        )
        self._loop_lag.start()
        log.info("runtime.opened", db_pool_max=s.postgres.pool_max_size)

    async def close(self) -> None:
        deps, self._deps = self._deps, None
        if deps is None:
            return
        await self._loop_lag.stop()
        await deps.http.close()
        if self._cpu is not None:
            self._cpu.shutdown()
            self._cpu = None
        if self._providers is not None:
            await self._providers.close()
            self._providers = None
        await deps.db.close()
        log.info("runtime.closed")
