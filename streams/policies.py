"""The handlers' policies, built from settings: the one place their values come from."""

from __future__ import annotations

from handlers.deps import ChunkingPolicy, ExtractPolicy, FetchPolicy, KnowledgeGraphPolicy
from streams.settings import Settings


def chunking_policy(settings: Settings) -> ChunkingPolicy:
    c = settings.chunking
    return ChunkingPolicy(c.size, c.overlap, settings.embedding.batch_size)


def fetch_policy(settings: Settings) -> FetchPolicy:
    h = settings.http
    return FetchPolicy(
        max_bytes=h.max_download_bytes,
        connect_timeout_s=h.connect_timeout_s,
        read_timeout_s=h.read_timeout_s,
        allowed_hosts=tuple(h.allowed_hosts),
        auth_header=h.storage_auth_header.get_secret_value() if h.storage_auth_header else None,
        auth_origins=tuple(h.storage_auth_origins),
    )


def extract_policy(settings: Settings) -> ExtractPolicy:
    e = settings.extract
    return ExtractPolicy(
        max_pages=e.max_pages,
        max_unpacked_bytes=e.max_unpacked_bytes,
        max_compression_ratio=e.max_compression_ratio,
        time_limit_s=e.time_limit_s,
        max_chars=e.max_chars,
        max_chunks=e.max_chunks,
    )


def knowledge_graph_policy(settings: Settings) -> KnowledgeGraphPolicy:
    return KnowledgeGraphPolicy(settings.llm.batch_chars, settings.llm.output_attempts)
