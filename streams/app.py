"""The Faust app: Conveyor's consumer transport, its start and stop, and its configuration."""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

import faust

from streams.assignor import ConveyorAssignor
from streams.consumer import TrackedTransport
from streams.kafka_config import faust_options
from streams.lifecycle import Conveyor
from streams.registry import Registry
from streams.settings import Settings
from streams.tracing import OFF, Tracing


class ConveyorApp(faust.App):
    """A Faust app whose consumer commits only what Conveyor says is finished."""

    conveyor: Conveyor

    def _new_transport(self) -> Any:
        return TrackedTransport(self.conf.broker_consumer, self, hooks=self.conveyor)

    async def on_start(self) -> None:
        await super().on_start()
        await self.conveyor.start()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self.conveyor.stop()
        # The last spans go to the collector (bounded by tracing.export_timeout_s).
        await asyncio.to_thread(self.conveyor.tracing.shutdown)


def build_app(settings: Settings, registry: Registry, tracing: Tracing = OFF) -> ConveyorApp:
    kafka = settings.kafka
    app = ConveyorApp(
        kafka.group_id,
        broker=[f"kafka://{hp.strip()}" for hp in kafka.bootstrap_servers.split(",")],
        autodiscover=False,
        web_enabled=False,
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="conveyor-faust-"),
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_replication_factor=kafka.replication_factor,
        topic_partitions=kafka.topic_partitions,
        stream_wait_empty=False,
        stream_buffer_maxsize=kafka.buffer_per_partition,
        # Bounded deliveries keep the pools' backlogs short and fair across partitions.
        broker_max_poll_records=kafka.max_poll_records,
        broker_commit_interval=kafka.commit_interval_s,
        broker_commit_every=1_000_000_000,
        broker_session_timeout=kafka.session_timeout_s,
        broker_heartbeat_interval=kafka.heartbeat_interval_s,
        consumer_metadata_max_age_ms=int(kafka.metadata_max_age_s * 1000),
        # A leader that assigned from incomplete metadata makes the group rebalance again.
        PartitionAssignor=ConveyorAssignor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=kafka.max_message_bytes,
        consumer_max_fetch_size=kafka.max_message_bytes,
        **faust_options(kafka),  # TLS and SASL for its consumer and producer
    )
    conveyor = Conveyor(settings, registry, app, tracing)
    app.conveyor = conveyor
    for spec in registry.consumed:
        conveyor.add_job_type(spec)
    if settings.dlq_mirror.enabled:
        conveyor.add_dlq_mirror()
    return app
