"""Typed dependencies handed to every handler: built once at start-up, closed at shutdown."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import aiohttp

from handlers.db import Pool
from schemas.envelope import JobEnvelope

if TYPE_CHECKING:
    from handlers.crm.services import CrmServices

A = TypeVar("A")
R = TypeVar("R")


class Embedder(Protocol):
    """Turns texts into vectors; shared by all jobs of the process."""

    model: str
    dimensions: int

    async def embed(self, texts: list[str], organization_id: str | None) -> list[list[float]]: ...


class ChatModel(Protocol):
    """An LLM answering chat messages with one JSON object (as text); shared by all jobs."""

    model: str

    async def complete_json(
        self, messages: list[dict[str, str]], organization_id: str | None
    ) -> str: ...


class CpuPool(Protocol):
    """Runs CPU-heavy work in other processes, off the event loop; shared by all jobs.

    ``fn`` and ``arg`` must be picklable. When the work is still running
    ``timeout_s`` plus a grace period after it started, its process is
    killed and replaced, so a hung parse never holds a slot for good.
    """

    async def run(self, fn: Callable[[A], R], arg: A, *, timeout_s: float) -> R: ...


class JobPublisher(Protocol):
    """Publishes a follow-up job and waits for the broker's acknowledgement."""

    async def publish(self, envelope: JobEnvelope, *, key: bytes | None = None) -> None: ...


# The policies below have no defaults: their values come from settings
# (streams/settings.py, the one place for defaults; streams/policies.py builds them).


@dataclass(frozen=True, slots=True)
class ChunkingPolicy:
    """Chunk size and overlap (characters); chunks are embedded and stored in batches."""

    size: int
    overlap: int
    batch_size: int


@dataclass(frozen=True, slots=True)
class ExtractPolicy:
    """Guards of text extraction, enforced per document in the extraction process."""

    max_pages: int
    max_unpacked_bytes: int
    max_compression_ratio: float
    time_limit_s: float
    max_chars: int
    max_chunks: int


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """How assets are downloaded; ``auth_header`` is sent only to ``auth_origins``."""

    max_bytes: int
    connect_timeout_s: float
    read_timeout_s: float
    allowed_hosts: tuple[str, ...]
    auth_header: str | None
    auth_origins: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KnowledgeGraphPolicy:
    """How knowledge-graph extraction batches chunks and retries unusable LLM output."""

    batch_chars: int
    output_attempts: int


@dataclass(frozen=True, slots=True)
class Deps:
    """Everything a handler may touch."""

    db: Pool
    http: aiohttp.ClientSession
    embedder: Embedder
    publisher: JobPublisher
    chunking: ChunkingPolicy
    fetch: FetchPolicy
    knowledge_graph: KnowledgeGraphPolicy
    extract: ExtractPolicy
    llm: ChatModel | None = None  # None: no LLM configured
    cpu: CpuPool | None = None
    crm: CrmServices | None = None  # Kommo connections; None without a keyring
