"""A per-test slice of the real services: own topics, own consumer group, shared test DB."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from schemas.envelope import JobEnvelope
from streams.commands.topics import create_topics
from streams.kafka_config import confluent_config
from streams.registry import Registry, build_registry
from streams.settings import JobsSettings, Settings, load_settings


@contextmanager
def patched_env(env: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: Stacks whose topics were created during the running test (deleted at its end).
CREATED: list[Stack] = []


class TopicJanitor:
    """Deletes test stacks' topics in the background, so a test does not wait for it.

    The broker is shared by every test session on the machine: topics left
    behind pile up partitions until it runs out of heap. ``delete`` asks the
    broker and returns at once (one admin client per broker, kept open);
    ``wait`` collects the answers. The catalog's topics are deleted by name,
    whether or not the broker's metadata lists them yet.
    """

    def __init__(self) -> None:
        self._admins: dict[str, AdminClient] = {}
        self._pending: list[Future[None]] = []

    def delete(self, stack: Stack) -> None:
        admin = self._admins.get(stack.bootstrap)
        if admin is None:
            admin = self._admins[stack.bootstrap] = AdminClient(
                {"bootstrap.servers": stack.bootstrap}
            )
        futures = admin.delete_topics(stack.registry().all_topics(), operation_timeout=10)
        self._pending += futures.values()

    def wait(self, timeout_s: float = 30.0) -> int:
        """Wait (up to ``timeout_s`` in all) for the deletions asked; how many succeeded."""
        deadline = time.monotonic() + timeout_s
        deleted = 0
        for future in self._pending:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # never made, gone already, or the broker is slow
                continue
            deleted += 1
        self._pending.clear()
        return deleted


#: The test session's janitor (tests/conftest.py).
JANITOR = TopicJanitor()


@dataclass
class Stack:
    """Environment for one worker set-up, isolated by a topic prefix and group id."""

    bootstrap: str
    dsn: str
    extra: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")

    @property
    def env(self) -> dict[str, str]:
        env = {
            "CONVEYOR_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "CONVEYOR_POSTGRES__DSN": self.dsn,
            "CONVEYOR_KAFKA__GROUP_ID": f"{self.prefix}-group",
            "CONVEYOR_KAFKA__DLQ_TOPIC": f"{self.prefix}.dlq",
            "CONVEYOR_KAFKA__CONTROL_TOPIC": f"{self.prefix}.control",
            "CONVEYOR_KAFKA__STATUS_TOPIC": f"{self.prefix}.status",
            # Reports often enough that a test sees a worker (and one gone) quickly.
            "CONVEYOR_FLEET__REPORT_INTERVAL_S": "1",
            "CONVEYOR_KAFKA__TOPIC_PARTITIONS": "3",
            "CONVEYOR_HTTP__ALLOWED_HOSTS": "127.0.0.1:*",  # test servers use random ports
            "CONVEYOR_CRM__ALLOWED_ACCOUNT_HOSTS": "127.0.0.1:*",  # Kommo stand-ins, too
            "CONVEYOR_LOGGING__FORMAT": "json",
            "CONVEYOR_LOGGING__LEVEL": "info",
            "CONVEYOR_WORKER__DRAIN_TIMEOUT_S": "10",
            # Several workers share this machine: no fixed metrics port (a
            # test that scrapes one picks a free port through `extra`).
            "CONVEYOR_WORKER__METRICS_PORT": "0",
        }
        defaults = JobsSettings()
        for name in JobsSettings.model_fields:
            suffix = getattr(defaults, name).topic.removeprefix("jobs.")
            env[f"CONVEYOR_JOBS__{name.upper()}__TOPIC"] = f"{self.prefix}.{suffix}"
        env.update(self.extra)
        return env

    def settings(self) -> Settings:
        with patched_env(self.env):
            return load_settings()

    def registry(self) -> Registry:
        return build_registry(self.settings())

    def create_topics(self) -> None:
        CREATED.append(self)  # its topics are deleted when the test ends (conftest)
        create_topics(self.settings(), self.registry())

    def producer(self) -> Producer:
        """A producer with the stack's connection settings (TLS and SASL included)."""
        config = confluent_config(self.settings().kafka)
        return Producer({**config, "acks": "all", "linger.ms": 5})

    def publish(
        self,
        envelopes: list[JobEnvelope],
        *,
        raw: list[bytes] | None = None,
        topic: str | None = None,
        keys: list[bytes] | None = None,
    ) -> None:
        """Publish jobs keyed by their id, or by ``keys`` (one per envelope)."""
        prod = self.producer()
        registry = self.registry()
        chosen = keys if keys is not None else [env.id.encode() for env in envelopes]
        assert len(chosen) == len(envelopes)
        for env, key in zip(envelopes, chosen, strict=True):
            prod.produce(topic or registry.topic_for(env.type), env.to_bytes(), key)
        for value in raw or []:
            assert topic is not None
            prod.produce(topic, value)
        assert prod.flush(30) == 0, "Kafka did not acknowledge every test message"
