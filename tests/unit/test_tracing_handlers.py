"""Spans of the handlers' work and outside calls, and what they must never carry.

An ``asset.process`` job runs through the real runner with a real extraction
process (its spans come back across the process boundary), a loopback file
server, the hash embedder and the recording producer for its follow-up job.
The outside calls run against the local stand-ins: the OpenAI-compatible API
(tests/support/openai_server.py) and a Kommo account (kommo_server.py).
Every span, attribute, event, link and resource value is then searched for the
secrets, tokens and texts of the run.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sentry_sdk
import structlog
from opentelemetry.trace import SpanKind
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from handlers import tracing as handler_tracing
from handlers.assets import process
from handlers.assets.extract import ExtractRequest, extract_to_file
from handlers.assets.netguard import Allowlist, guarded_connector_kwargs
from handlers.cpu_pool import ProcessCpuPool
from handlers.deps import Deps
from handlers.errors import PermanentError
from handlers.providers.embed import HashEmbedder
from handlers.providers.llm import OpenAIChat
from handlers.types import Outcome
from schemas.dlq import Stage
from schemas.envelope import JobEnvelope
from streams import alerts, logs
from streams.publish import Failure, RecordPublisher
from streams.records import Record
from streams.registry import JobSpec, build_registry
from streams.runner import JobRunner
from streams.runtime import KafkaJobPublisher
from streams.settings import LoggingSettings, Settings
from tests.support.crm import MemoryTokens, config
from tests.support.documents import words
from tests.support.fake_db import FakeDb
from tests.support.fakes import FakeCrashGuard, FakeRuntime, RecordingProducer
from tests.support.http import FileServer, file_server
from tests.support.kommo_server import KommoServer, kommo_server
from tests.support.openai_server import API_KEY, openai_server
from tests.support.policies import CHUNKING, EXTRACT, FETCH, KNOWLEDGE_GRAPH
from tests.support.tracing import Traced, every_value, traced
from tests.unit.test_openai_provider import client as api_client

SETTINGS = Settings()
REGISTRY = build_registry(SETTINGS)
TEXT = "\n\n".join(words(150, seed=p) for p in range(6))
SECRET_WORD = "zanzibar-confidential-7731"  # in the document and the prompt: never in a span
STORAGE_CREDENTIAL = "Bearer storage-cred-5f1e2d"
SIGNATURE = "X-Amz-Signature=feedc0ffee0123456789"
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def files() -> AsyncIterator[FileServer]:
    async with file_server() as served:
        yield served


@pytest.fixture
async def cpu() -> AsyncIterator[ProcessCpuPool]:
    pool = ProcessCpuPool(1, preload=["handlers.assets.extract"])
    await pool.start()
    yield pool
    pool.shutdown()


async def run_asset_job(t: Traced, files: FileServer, cpu: ProcessCpuPool) -> RecordingProducer:
    """One ``asset.process`` job through the runner, as a consumed record with a context."""
    url = files.add("a-1.txt", f"{TEXT}\n\n{SECRET_WORD}".encode())
    producer = RecordingProducer()
    records = RecordPublisher(producer, group_id="g", dlq_topic="jobs.dlq", tracing=t.tracing)
    fetch = replace(
        FETCH,
        allowed_hosts=("127.0.0.1:*",),
        auth_header=STORAGE_CREDENTIAL,
        auth_origins=(f"http://127.0.0.1:{files.port}",),
    )
    db = FakeDb()
    db.add_asset("a-1", f"{url}?{SIGNATURE}")
    connector = aiohttp.TCPConnector(**guarded_connector_kwargs(Allowlist(fetch.allowed_hosts)))
    async with aiohttp.ClientSession(connector=connector) as http:
        deps = Deps(
            db=db,
            http=http,
            embedder=HashEmbedder(16),
            publisher=KafkaJobPublisher(REGISTRY, records),
            chunking=replace(CHUNKING, batch_size=8),
            fetch=fetch,
            knowledge_graph=KNOWLEDGE_GRAPH,
            extract=EXTRACT,
            cpu=cpu,
        )
        spec = REGISTRY.specs["asset.process"]
        runner = JobRunner(
            replace(spec, handler=process.handle),
            FakeRuntime(deps),
            records,
            retry_topic="jobs.asset.process.retry",
            max_job_bytes=4096,
            guard=FakeCrashGuard(),
            tracing=t.tracing,
        )
        job = JobEnvelope(
            id="job-a1", type="asset.process", organization_id="org-1", payload={"asset_id": "a-1"}
        )
        headers = (("traceparent", TRACEPARENT),)
        await runner.run(Record(spec.topic, 2, 41, b"a-1", job.to_bytes(), headers, None))
    return producer


async def test_an_asset_jobs_trace_shows_each_stage_and_the_follow_up_job(
    files: FileServer, cpu: ProcessCpuPool
) -> None:
    with traced() as t:
        producer = await run_asset_job(t, files, cpu)
        tree = t.tree()
    attempt = tree.one("process jobs.asset.process")
    assert (attempt.attributes or {})["conveyor.job.outcome"] == "succeeded", str(tree)
    assert tree.trace_ids() == {int(TRACEPARENT.split(b"-")[1], 16)}, f"one trace:\n{tree}"
    stages = [s.name for s in tree.children(attempt)]
    assert stages == [
        "asset.fetch",
        "asset.extract",
        "asset.embed",
        "COPY asset_chunks",  # 13 chunks, 8 a batch
        "COPY asset_chunks",
        "send jobs.knowledge_graph.extract",
    ], str(tree)
    assert tree.names_under(tree.one("asset.fetch")) == ["GET"]
    # Extraction ran in the other process: its spans came back under the job's.
    assert tree.names_under(tree.one("asset.extract")) == ["asset.open", "asset.chunk"]
    chunk = tree.one("asset.chunk")
    assert (chunk.attributes or {})["conveyor.asset.chunks"] >= 8
    embeddings = tree.names_under(tree.one("asset.embed"))
    assert embeddings and set(embeddings) == {"embeddings hash-16"}
    embedding = tree.named("embeddings hash-16")[0]
    assert embedding.kind is SpanKind.CLIENT
    assert (embedding.attributes or {})["gen_ai.operation.name"] == "embeddings"
    # The follow-up job carries the context of its send span.
    [follow_up] = producer.to("jobs.knowledge_graph.extract")
    send = tree.one("send jobs.knowledge_graph.extract")
    assert follow_up.header("traceparent") == (
        f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}-01"
    )
    get = tree.one("GET")
    assert (get.attributes or {})["url.full"] == f"http://127.0.0.1:{files.port}/REDACTED"
    assert (get.attributes or {})["http.response.status_code"] == 200
    shown = " ".join(every_value(tree.spans))
    for secret in (SECRET_WORD, STORAGE_CREDENTIAL, "storage-cred", SIGNATURE, "a-1.txt"):
        assert secret not in shown


async def test_a_failed_extraction_brings_its_spans_back_with_the_error(
    cpu: ProcessCpuPool, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b"   \n\n  ")
    request = ExtractRequest(str(blank), "text/plain", str(tmp_path / "out"), EXTRACT, 600, 120)
    with traced() as t:
        with t.job(), pytest.raises(PermanentError, match="no text"):
            await cpu.run(extract_to_file, request, timeout_s=30)
        tree = t.tree()
    assert tree.names_under(tree.one("job")) == ["asset.open", "asset.chunk"], str(tree)
    assert (tree.one("asset.chunk").attributes or {}).get("error.type") == "PermanentError"


async def test_llm_and_embedding_calls_are_genai_spans_with_token_usage(
    session: aiohttp.ClientSession,
) -> None:
    async with openai_server() as server:
        with traced() as t, t.job():
            server.chat_reply = lambda messages: '{"entities": [], "relationships": []}'
            chat = OpenAIChat(api_client(server, session, model="test-chat"), 256)
            prompt = [{"role": "user", "content": f"find entities in: {SECRET_WORD}"}]
            await chat.complete_json(prompt, "org-1")
            embedder_api = api_client(server, session)
            await embedder_api.post(
                "/embeddings",
                {"model": "test-embed", "input": [SECRET_WORD], "dimensions": 16},
                "org-1",
                3,
                lambda answer: answer,
            )
        tree = t.tree()
    llm = tree.one("chat test-chat")
    attributes = llm.attributes or {}
    assert llm.kind is SpanKind.CLIENT
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "test-chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.max_tokens"] == 256
    assert attributes["gen_ai.usage.input_tokens"] == 4  # the stand-in counts words
    assert attributes["gen_ai.usage.output_tokens"] == 4
    embedding = tree.one("embeddings test-embed").attributes or {}
    assert embedding["gen_ai.usage.input_tokens"] == 1
    assert embedding["gen_ai.embeddings.dimension.count"] == 16
    shown = " ".join(every_value(tree.spans))
    assert SECRET_WORD not in shown and API_KEY not in shown


@pytest.fixture
async def kommo() -> AsyncIterator[KommoServer]:
    async with kommo_server(rate_limit=None) as server:
        yield server


async def test_kommo_calls_are_http_spans_without_token_or_query(
    kommo: KommoServer, session: aiohttp.ClientSession
) -> None:
    from handlers.providers.kommo import Kommo

    lead = kommo.add_lead(name=f"Lead {SECRET_WORD}")
    api = Kommo(session, config())
    tokens = MemoryTokens(api, kommo)
    client = api.client(kommo.base_url, tokens)
    kommo.revoke_access(tokens.access)  # the first call answers 401: one refresh
    with traced() as t:
        with t.job():
            await client.lead(lead["id"])
            await client.notes("leads", lead["id"], note_types=("common",), updated_since=1)
        tree = t.tree()
    names = tree.names_under(tree.one("job"))
    assert names == [
        "GET /api/v4/leads/{id}",
        "POST /oauth2/access_token",
        "GET /api/v4/leads/{id}",
        "GET /api/v4/leads/{id}/notes",
    ], str(tree)
    first = tree.named("GET /api/v4/leads/{id}")[0].attributes or {}
    assert first["http.response.status_code"] == 401
    assert first["url.full"] == f"{kommo.base_url}/api/v4/leads/{lead['id']}"
    assert first["server.address"] == "127.0.0.1"
    shown = " ".join(every_value(tree.spans))
    for secret in (tokens.access, tokens.refresh, SECRET_WORD, "filter", "updated_at"):
        assert secret not in shown


@pytest.fixture
def json_logs() -> Iterator[None]:
    """The worker's logging (JSON lines, trace ids) for one test; then as it was."""
    saved = structlog.get_config()
    names = ("", *logs.NOISY)
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = logging.getLogger().handlers[:]
    logs.configure(LoggingSettings(format="json"), trace_ids=True)
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)
    logging.getLogger().handlers = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("json_logs")
async def test_a_jobs_log_lines_carry_its_trace_and_span_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with traced() as t:
        spec = JobSpec(
            "probe",
            REGISTRY.specs["probe"].payload_model,
            SETTINGS.jobs.probe.model_copy(update={"max_attempts": 1}),
            _fail,
        )
        producer = RecordingProducer()
        runner = JobRunner(
            spec,
            FakeRuntime(deps=None),  # type: ignore[arg-type]
            RecordPublisher(producer, group_id="g", dlq_topic="jobs.dlq", tracing=t.tracing),
            retry_topic="jobs.probe.retry",
            max_job_bytes=4096,
            tracing=t.tracing,
        )
        value = JobEnvelope(id="j-1", type="probe", payload={}).to_bytes()
        await runner.run(Record("jobs.probe", 0, 1, None, value, (), None))
        tree = t.tree()
    # Each line's event as the processors left it for the JSON renderer.
    lines = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    attempt = tree.one("process jobs.probe")
    ours = [line for line in lines if line.get("job_id") == "j-1"]
    assert {line["event"] for line in ours} >= {"job.dead_lettered"}
    for line in ours:
        assert line["trace_id"] == f"{attempt.context.trace_id:032x}", line
        assert line["span_id"] == f"{attempt.context.span_id:016x}", line


async def _fail(job: Any, deps: Any) -> Outcome:
    raise PermanentError("no such lead")


class Captured(Transport):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        event = envelope.get_event()
        if event is not None:
            self.events.append(event)


def test_a_dead_letter_alert_names_the_jobs_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = Captured()
    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=transport)
    monkeypatch.setattr(alerts, "_enabled", True)
    try:
        with traced() as t, t.job():
            alerts.dead_lettered(Failure(Stage.HANDLE, PermanentError("x"), 1, "probe", "j-1"))
            job = t.tree().spans  # nothing finished yet: the span is still open
            ids = handler_tracing.ids()
    finally:
        sentry_sdk.init(dsn=None)
    assert job == [] and ids is not None
    [event] = transport.events
    assert event["tags"]["trace_id"] == ids[0]
    assert event["contexts"]["trace"]["trace_id"] == ids[0]
    assert event["contexts"]["trace"]["span_id"] == ids[1]
