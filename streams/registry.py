"""The job registry: each job type's topic, payload model, handler and policy, in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from handlers import probe
from handlers.assets import process as asset_process
from handlers.crm import sync as crm_sync
from handlers.crm import webhook as crm_webhook
from handlers.deps import Deps
from handlers.knowledge_graph import extract as knowledge_graph
from handlers.messaging import send as message_send
from handlers.types import Job, Outcome
from schemas import jobs
from streams.settings import JobPolicy, Settings

Handler = Callable[[Job[Any], Deps], Awaitable[Outcome]]
# (job, the DeadLetter summary, deps): runs before the job is dead-lettered.
GiveUpHook = Callable[[Job[Any], str, Deps], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything the runner needs to know about one job type."""

    job_type: str
    payload_model: type[BaseModel]
    policy: JobPolicy
    handler: Handler | None = None
    on_give_up: GiveUpHook | None = None
    # Why a job type has no handler in this configuration (its jobs wait in Kafka).
    unavailable: str | None = None

    @property
    def topic(self) -> str:
        return self.policy.topic


@dataclass(frozen=True, slots=True)
class Registry:
    """Job types by name; ``consumed`` are those this worker runs."""

    specs: dict[str, JobSpec]
    retry_suffix: str
    dlq_topic: str
    deferred_suffix: str = ".deferred"
    control_topic: str = "conveyor.control"
    status_topic: str = "conveyor.status"

    @property
    def consumed(self) -> list[JobSpec]:
        return [s for s in self.specs.values() if s.policy.enabled and s.handler is not None]

    def retry_topic(self, spec: JobSpec) -> str:
        return spec.topic + self.retry_suffix

    def deferred_topic(self, spec: JobSpec) -> str:
        """Where records set aside for fair share wait (``streams.fairness``)."""
        return spec.topic + self.deferred_suffix

    def topic_for(self, job_type: str) -> str:
        spec = self.specs.get(job_type)
        if spec is None:
            raise KeyError(f"unknown job type {job_type!r}")
        return spec.topic

    def topics_of(self, job_type: str) -> list[str]:
        """A job type's source, retry and deferred topics (none for an unknown type)."""
        spec = self.specs.get(job_type)
        if spec is None:
            return []
        return [spec.topic, self.retry_topic(spec), self.deferred_topic(spec)]

    def job_topics(self) -> list[str]:
        """The topics jobs travel through: source, retry and deferred per job type, the DLQ."""
        topics = [self.dlq_topic]
        for spec in self.specs.values():
            topics += [spec.topic, self.retry_topic(spec), self.deferred_topic(spec)]
        return topics

    def fleet_topics(self) -> list[str]:
        """The compacted topics of the fleet: runtime control and status reports."""
        return [self.control_topic, self.status_topic]

    def all_topics(self) -> list[str]:
        """Every topic the catalog needs: the job topics and the fleet's."""
        return [*self.job_topics(), *self.fleet_topics()]


def build_registry(settings: Settings) -> Registry:
    j = settings.jobs
    specs = [
        JobSpec(
            "asset.process",
            jobs.AssetProcess,
            j.asset_process,
            asset_process.handle,
            asset_process.on_give_up,
        ),
        JobSpec(
            "knowledge_graph.extract",
            jobs.KnowledgeGraphExtract,
            j.knowledge_graph_extract,
            knowledge_graph.handle,
        ),
        _crm(settings, "crm.sync_pipelines", jobs.CrmSyncPipelines, j.crm_sync_pipelines, crm_sync),
        _crm(settings, "crm.webhook", jobs.CrmWebhook, j.crm_webhook, crm_webhook),
        _crm(settings, "message.send", jobs.MessageSend, j.message_send, message_send),
        JobSpec("probe", jobs.Probe, j.probe, probe.handle),
    ]
    return Registry(
        specs={s.job_type: s for s in specs},
        retry_suffix=settings.kafka.retry_suffix,
        dlq_topic=settings.kafka.dlq_topic,
        deferred_suffix=settings.kafka.deferred_suffix,
        control_topic=settings.kafka.control_topic,
        status_topic=settings.kafka.status_topic,
    )


NO_KEYRING = "crm.keyring is not set: CRM connections cannot be read"


def _crm(
    settings: Settings,
    job_type: str,
    payload_model: type[BaseModel],
    policy: JobPolicy,
    module: Any,
) -> JobSpec:
    """A CRM-side job type: consumed only when CRM connections can be decrypted.

    Without the keyring every such job would fail; its jobs wait in Kafka
    instead (the worker says so at start) until a worker with the keyring runs.
    """
    if settings.crm.keyring is None:
        return JobSpec(job_type, payload_model, policy, unavailable=NO_KEYRING)
    return JobSpec(job_type, payload_model, policy, module.handle)
