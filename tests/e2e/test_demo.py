"""`make demo` as the README describes it: every sample, PDF and DOCX included, is indexed."""

from __future__ import annotations

from typing import Any

import pytest

from streams.commands.demo import MIME, SAMPLES, run_demo
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


async def test_demo_indexes_every_sample_document(stack: Stack, worker_factory: Any) -> None:
    samples = sorted(p.suffix for p in SAMPLES.iterdir() if p.suffix in MIME)
    assert samples == [".docx", ".md", ".pdf", ".txt"]
    worker = worker_factory(stack)
    worker.wait_ready()
    assert await run_demo(stack.settings(), timeout_s=120) == 0
    indexed = [e for e in worker.events if e.get("event") == "asset.indexed"]
    assert len(indexed) == len(samples)
    assert all(e["chunks_count"] > 0 for e in indexed)
