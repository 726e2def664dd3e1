"""The embedding provider and the LLM are chosen by settings alone."""

from __future__ import annotations

import hashlib
import math
import random
import re

from handlers.providers.embed import HashEmbedder, OpenAIEmbedder
from handlers.providers.llm import OpenAIChat
from streams.policies import knowledge_graph_policy
from streams.providers import open_providers
from streams.settings import load_settings
from tests.support.openai_server import API_KEY, openai_server
from tests.support.stack import patched_env


async def test_defaults_are_the_local_hash_embedder_and_no_llm() -> None:
    with patched_env({}):
        providers = open_providers(load_settings())
    assert isinstance(providers.embedder, HashEmbedder)
    assert providers.llm is None and providers.session is None
    await providers.close()


async def test_openai_provider_and_llm_share_one_session_of_their_own() -> None:
    env = {
        "CONVEYOR_EMBEDDING__PROVIDER": "openai",
        "CONVEYOR_EMBEDDING__DIMENSIONS": "512",
        "CONVEYOR_EMBEDDING__BATCH_SIZE": "16",
        "CONVEYOR_LLM__API_KEY": "sk-x",
        "CONVEYOR_LLM__BATCH_CHARS": "5000",
    }
    with patched_env(env):
        settings = load_settings()
        providers = open_providers(settings)
    try:
        embedder, llm = providers.embedder, providers.llm
        assert isinstance(embedder, OpenAIEmbedder) and isinstance(llm, OpenAIChat)
        assert (embedder.dimensions, embedder.batch_size) == (512, 16)
        assert embedder.model == "openai/text-embedding-3-small"
        assert knowledge_graph_policy(settings).batch_chars == 5000
        assert providers.session is not None and not providers.session.closed
    finally:
        await providers.close()
    assert providers.session.closed


async def test_every_llm_call_sends_the_configured_max_tokens() -> None:
    async with openai_server() as server:
        server.chat_reply = lambda messages: '{"entities": []}'
        env = {
            "CONVEYOR_LLM__API_KEY": API_KEY,
            "CONVEYOR_LLM__BASE_URL": server.base_url,
            "CONVEYOR_LLM__MAX_OUTPUT_TOKENS": "333",
        }
        with patched_env(env):
            providers = open_providers(load_settings())
        try:
            assert providers.llm is not None
            await providers.llm.complete_json([{"role": "user", "content": "hi"}], "org-1")
        finally:
            await providers.close()
    assert [body["max_tokens"] for body in server.chat_bodies] == [333]


def _reference_vector(text: str, dimensions: int) -> list[float]:
    """The hash embedder as first written: every word hashed at every use."""
    values = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dimensions
        values[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values] if norm else values


def test_hash_embedder_remembered_words_give_the_same_vectors_bit_for_bit() -> None:
    embedder = HashEmbedder(64)
    embedder.SLOTS_MAX = 50  # forgets several times over these texts
    rng = random.Random(7)
    words = [f"w{i}" for i in range(120)] + ["Straße", "ÉTÉ", "naïve", "x_1", "42"]
    texts = ["", "   ", "?!"] + [
        " ".join(rng.choice(words) for _ in range(rng.randint(1, 300))) for _ in range(60)
    ]
    for text in texts:
        assert embedder.vector(text) == _reference_vector(text, 64), text
    assert len(embedder._slots) <= 50
