"""One payload model per job type (``extra="forbid"``, versioned)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Payload(BaseModel):
    """Base of every payload: strict about unknown fields, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1


class AssetProcess(Payload):
    """Turn one uploaded asset into chunks and embeddings."""

    asset_id: str = Field(min_length=1, max_length=200)


class KnowledgeGraphExtract(Payload):
    """Extract entities and relationships from an asset's chunks."""

    asset_id: str = Field(min_length=1, max_length=200)


class CrmSyncPipelines(Payload):
    """Refresh a Kommo connection's pipelines, stages and custom fields."""

    connection_id: str = Field(min_length=1, max_length=200)


# No control character: the signed string joins these fields with newlines.
NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"


class CrmWebhook(Payload):
    """A Kommo webhook delivery as the platform's edge received and signed it.

    Version 2: the signature covers ``timestamp``, ``connection_id``,
    ``event_id`` and ``body`` (docs/KOMMO.md, "The signature contract"); a
    version 1 payload (body-only signature) is refused at validation.
    """

    schema_version: Literal[2] = 2  # type: ignore[assignment]
    connection_id: str = Field(min_length=1, max_length=200, pattern=NO_CONTROL)
    event_id: str = Field(min_length=1, max_length=200, pattern=NO_CONTROL)
    timestamp: int = Field(ge=0, description="Unix seconds when the edge received the delivery")
    signature: str = Field(min_length=1, max_length=200)
    body: str


class MessageSend(Payload):
    """Post an email or chat note to a Kommo lead, exactly once."""

    connection_id: str = Field(min_length=1, max_length=200)
    lead_id: int
    channel: Literal["email", "note"]
    text: str = Field(min_length=1, max_length=20_000)
    idempotency_key: str = Field(min_length=1, max_length=200)


class Probe(Payload):
    """A diagnostic job for reliability tests and benchmarks: sleep, then record."""

    sleep_ms: int = Field(0, ge=0, le=600_000)
    # "kill": SIGKILL the worker process itself (tests of the crash-loop guard).
    fail: Literal["none", "retryable", "permanent", "hang", "kill"] = "none"
    fail_times: int = Field(0, ge=0, description="fail this many attempts, then succeed")
    record: bool = True
    # Log when the handler started and ended (``probe.ran``): tests of the
    # runner's key order read which jobs ran when, and beside which.
    trace: bool = False
