"""Start the worker: logging, Sentry, preflight checks, then Faust."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from confluent_kafka import KafkaException

from streams import alerts, logs, tracing
from streams.app import build_app
from streams.commands.postgres import missing_table
from streams.commands.topics import missing_topics
from streams.kafka_config import KafkaSecurityError, Unreachable, connection_problem
from streams.registry import build_registry
from streams.settings import Settings, secret_values
from streams.worker import ConveyorWorker

log = structlog.get_logger(__name__)

EXIT_PREFLIGHT = 1
PREFLIGHT_FIRST_PAUSE_S = 1.0
PREFLIGHT_MAX_PAUSE_S = 8.0


def run_worker(settings: Settings) -> int:
    logs.configure(settings.logging, secret_values(settings), trace_ids=settings.tracing.enabled)
    alerts.init(settings.sentry)
    registry = build_registry(settings)
    problem = preflight_until(settings, settings.worker.preflight_wait_s)
    if problem:
        log.error("worker.preflight_failed", reason=problem)
        return EXIT_PREFLIGHT
    try:
        app = build_app(settings, registry, tracing.setup(settings))
    except KafkaSecurityError as exc:  # e.g. a key that does not match its certificate
        log.error("worker.preflight_failed", reason=str(exc))
        return EXIT_PREFLIGHT
    log.info(
        "worker.starting",
        group_id=settings.kafka.group_id,
        job_types=[s.job_type for s in registry.consumed],
    )
    for spec in registry.specs.values():
        if spec.policy.enabled and spec.handler is None:
            # Not an error, but the job type's jobs wait in Kafka, subject to its
            # retention, until a worker that can run them starts: say so.
            log.warning(
                "worker.topics_not_consumed",
                job_type=spec.job_type,
                topics=[spec.topic, registry.retry_topic(spec)],
                reason=spec.unavailable or "no handler",
            )
    worker = ConveyorWorker(app, settings)
    worker.execute_from_commandline()
    return 0  # pragma: no cover - execute_from_commandline exits


def preflight_until(
    settings: Settings, wait_s: float, check: Callable[[Settings], str | None] | None = None
) -> str | None:
    """:func:`preflight`, tried again while its problem is only that Kafka or Postgres did
    not answer (``Unreachable``), for up to ``wait_s``; the last problem, or None."""
    check = check or preflight
    deadline = time.monotonic() + wait_s
    pause = PREFLIGHT_FIRST_PAUSE_S
    tries = 1
    while True:
        problem = check(settings)
        left = deadline - time.monotonic()
        if not isinstance(problem, Unreachable) or left <= 0:
            return problem
        log.warning(
            "worker.preflight_waiting", reason=str(problem), tries=tries, left_s=round(left, 1)
        )
        time.sleep(min(pause, left))
        pause = min(pause * 2, PREFLIGHT_MAX_PAUSE_S)
        tries += 1


def preflight(settings: Settings) -> str | None:
    """A readable reason the worker cannot start, or None."""
    problem = connection_problem(settings.kafka)  # a refused login or TLS fails here, fast
    if problem:
        return problem
    registry = build_registry(settings)
    try:
        missing = missing_topics(settings, registry)
    except KafkaException as exc:
        return Unreachable(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}")
    if missing:
        return f"topics missing: {', '.join(missing)}; run `conveyor topics create`"
    return asyncio.run(_check_postgres(settings))


async def _check_postgres(settings: Settings) -> str | None:
    return await missing_table(settings, "schema_migrations")
