"""The soak's rig: Kafka and Postgres behind Toxiproxy, and the injector that plays a schedule.

The workers reach both services only through Toxiproxy: Postgres through
the ``postgres`` proxy (their DSN names its port), Kafka through the
``kafka`` proxy, which forwards to the broker's PROXIED listener — a listener
that advertises the proxy's port, so the metadata sends them back through
it. The soak's own reads and publishes use the direct addresses, so a fault
never blinds the oracle.

Postgres read-only is the soak database's own setting
(``ALTER DATABASE … SET default_transaction_read_only``), then the workers'
sessions of that database are terminated so that their pools reconnect
read-only — and again when it is lifted, as after a failover. The shared
cluster's system settings are never touched: other sessions use it. The
soak's own sessions are named ``conveyor-soak-harness`` and set
``default_transaction_read_only=off`` for themselves.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from tests.support.dedicated_kafka import DedicatedKafka
from tests.support.soak_fleet import Fleet
from tests.support.soak_schedule import Fault
from tests.support.toxiproxy import Toxiproxy

PG_PROXY, KAFKA_PROXY = "postgres", "kafka"
HARNESS_APP = "conveyor-soak-harness"
TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = $1 AND pid <> pg_backend_pid() AND coalesce(application_name, '') <> $2
"""

READ_ONLY_SET = """
SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
WHERE d.datname = $1 AND 'default_transaction_read_only=on' = ANY(s.setconfig)
"""


def with_address(dsn: str, host_port: str, database: str | None = None) -> str:
    """``dsn`` with another host:port (and database)."""
    parts = urllib.parse.urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    path = f"/{database}" if database else parts.path
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host_port}", path=path))


def address_of(dsn: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}"


def advertised(bootstrap: str) -> set[str]:
    """The broker addresses a client that bootstraps at ``bootstrap`` is told to use."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
    return {f"{b.host}:{b.port}" for b in metadata.brokers.values()}


async def harness_pool(dsn: str) -> asyncpg.Pool:
    """The soak's own sessions: writable whatever the database's default, named for the filter."""
    return await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=4,
        server_settings={"application_name": HARNESS_APP, "default_transaction_read_only": "off"},
    )


@dataclass
class Rig:
    toxi: Toxiproxy
    kafka: DedicatedKafka
    database: str
    direct_dsn: str  # the soak database, straight to Postgres (the harness)
    worker_dsn: str  # the same database through the Postgres proxy (the workers)


@dataclass
class Executed:
    """A fault as it happened (wall-clock times, time.time())."""

    fault: Fault
    applied_at: float = 0.0
    reverted_at: float | None = None
    target: str = ""
    error: str = ""


@dataclass
class Injector:
    """Plays a schedule against the rig and the fleet; ``heal()`` undoes whatever is left."""

    rig: Rig
    fleet: Fleet
    db: asyncpg.Pool
    executed: list[Executed] = field(default_factory=list)
    _locks: defaultdict[str, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )
    _down: set[str] = field(default_factory=set)

    async def play(self, schedule: list[Fault], started: float) -> None:
        """Run every fault at its time (``started``: time.monotonic() of the window's start)."""
        await asyncio.gather(*(self._run(fault, started) for fault in schedule))

    async def _run(self, fault: Fault, started: float) -> None:
        await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
        async with self._locks[fault.kind]:  # one fault of a kind at a time
            entry = Executed(fault, applied_at=time.time())
            self.executed.append(entry)
            try:
                entry.target = await self._apply(fault)
                if fault.duration_s:
                    await asyncio.sleep(fault.duration_s)
                    await self._revert(fault)
            except Exception as exc:  # reported with the schedule; heal() cleans up
                entry.error = f"{type(exc).__name__}: {exc}"
            entry.reverted_at = time.time()

    async def _apply(self, fault: Fault) -> str:
        kind, p = fault.kind, fault.params
        if kind == "sigkill":
            return self.fleet.kill(fault.pick)
        if kind == "sigterm":
            return self.fleet.terminate(fault.pick)
        if kind == "scale_up":
            return self.fleet.scale_up()
        if kind == "scale_down":
            return self.fleet.terminate(fault.pick, replace=False)
        if kind == "pg_outage":
            self._down.add(PG_PROXY)
            await self._toxi(self.rig.toxi.set_enabled, PG_PROXY, False)
            return PG_PROXY
        if kind == "pg_read_only":
            return await self._read_only(True)
        if kind == "broker_restart":
            await asyncio.to_thread(self.rig.kafka.stop)
            return "broker"
        proxy = PG_PROXY if kind.startswith("pg_") else KAFKA_PROXY
        for stream in self._streams(kind):
            await self._toxi(
                self.rig.toxi.add_toxic, proxy, _TOXIC[kind.split("_", 1)[1]],
                name=f"{kind}_{stream}", stream=stream, **_attributes(kind, p),
            )  # fmt: skip
        return proxy

    async def _revert(self, fault: Fault) -> None:
        kind = fault.kind
        if kind == "pg_outage":
            await self._toxi(self.rig.toxi.set_enabled, PG_PROXY, True)
            self._down.discard(PG_PROXY)
        elif kind == "pg_read_only":
            await self._read_only(False)
        elif kind == "broker_restart":
            await asyncio.to_thread(self.rig.kafka.restart)
        else:
            proxy = PG_PROXY if kind.startswith("pg_") else KAFKA_PROXY
            for stream in self._streams(kind):
                await self._toxi(self.rig.toxi.remove_toxic, proxy, f"{kind}_{stream}")
            if kind.endswith("_stall") and proxy not in self._down:
                # A stalled link dropped what it carried: close it, as a broken
                # connection would be after a partition heals.
                await self._toxi(self.rig.toxi.set_enabled, proxy, False)
                await self._toxi(self.rig.toxi.set_enabled, proxy, True)

    @staticmethod
    def _streams(kind: str) -> tuple[str, ...]:
        return ("upstream", "downstream") if kind.endswith("_latency") else ("downstream",)

    @staticmethod
    async def _toxi(call: object, *args: object, **kwargs: object) -> None:
        await asyncio.to_thread(call, *args, **kwargs)  # type: ignore[arg-type]

    async def _read_only(self, on: bool) -> str:
        db = self.rig.database
        setting = (
            "SET default_transaction_read_only = on"
            if on
            else "RESET default_transaction_read_only"
        )
        async with self.db.acquire() as conn:
            await conn.execute(f'ALTER DATABASE "{db}" {setting}')
            terminated = await conn.fetchval(TERMINATE, db, HARNESS_APP)
        return f"{db} ({terminated} sessions terminated)"

    async def heal(self) -> None:
        """Every fault undone: proxies enabled and clean, the database writable, the broker up."""
        await asyncio.to_thread(self.rig.toxi.reset)
        self._down.clear()
        async with self.db.acquire() as conn:
            read_only = await conn.fetchval(READ_ONLY_SET, self.rig.database)
        if read_only:
            await self._read_only(False)
        await asyncio.to_thread(self.rig.kafka.restart)  # idempotent: quick when it runs


_TOXIC = {"latency": "latency", "reset": "reset_peer", "stall": "timeout", "bandwidth": "bandwidth"}


def _attributes(kind: str, p: dict[str, float]) -> dict[str, float]:
    if kind.endswith("_latency"):
        return {"latency": p["latency_ms"], "jitter": p["jitter_ms"]}
    if kind.endswith("_reset"):
        return {"timeout": p["after_ms"], "toxicity": p["toxicity"]}
    if kind.endswith("_stall"):
        return {"timeout": p["close_after_ms"]}
    return {"rate": p["rate_kb_s"]}
