"""``conveyor demo``: index the sample documents, sync a CRM account, show the results.

Serves ``docs/samples`` (markdown, text, a PDF and a DOCX; the binary two are
made by ``scripts/make_samples.py``) on a loopback port, creates one asset row per file,
publishes an ``asset.process`` job for each, then waits (with a progress bar)
until every asset is completed or failed. Then the CRM part
(streams/commands/demo_kommo.py): a pipeline sync of a stand-in Kommo account
and a signed and an unsigned webhook. The worker must be running
(``make run``) with ``127.0.0.1:*`` (any port) in ``CONVEYOR_HTTP__ALLOWED_HOSTS``
and the same ``crm.keyring`` as the demo (``make run`` and ``make demo`` set a dev key).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
from aiohttp import web
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from handlers.assets.formats.sniff import DOCX_MIME
from schemas.envelope import JobEnvelope
from streams.commands.demo_kommo import run_crm_demo, serve_loopback
from streams.commands.postgres import database
from streams.commands.submit import producer, publish
from streams.registry import build_registry
from streams.settings import Settings

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
MIME = {
    ".md": "text/markdown",
    ".txt": "text/plain",
    ".pdf": "application/pdf",
    ".docx": DOCX_MIME,
}
out = Console(highlight=False)

INSERT_ASSET = """
INSERT INTO assets (id, organization_id, source_url, mime_type, filename)
VALUES ($1, $2, $3, $4, $5)
"""
STATUS = "SELECT id, filename, status, chunks_count, error FROM assets WHERE id = ANY($1)"


def console_url(settings: Settings) -> str:
    c = settings.console
    host = "127.0.0.1" if c.host in ("0.0.0.0", "::") else c.host
    return f"http://{host}:{c.port}/"


async def run_demo(settings: Settings, timeout_s: float) -> int:
    url = console_url(settings)
    out.print(
        f"Watch it in the console: {url} (`make console` in another terminal; it prints"
        " the dev logins)",
        markup=False,
    )
    indexed = await _index_samples(settings, timeout_s)
    synced = await run_crm_demo(settings, timeout_s)
    out.print(f"The dead letter and the jobs, in the console: {url}dlq, {url}find", markup=False)
    return 0 if indexed and synced else 1


async def _index_samples(settings: Settings, timeout_s: float) -> bool:
    files = sorted(p for p in SAMPLES.iterdir() if p.suffix in MIME)
    app = web.Application()
    app.router.add_static("/", SAMPLES)
    async with serve_loopback(app) as samples_url, database(settings) as conn:
        ids = await _submit(settings, conn, files, samples_url)
        rows = await _wait(conn, ids, timeout_s)
    table = Table("asset", "file", "status", "chunks", "error")
    for r in rows:
        table.add_row(
            r["id"], r["filename"], r["status"], str(r["chunks_count"] or 0), r["error"] or ""
        )
    out.print(table)
    done = all(r["status"] == "completed" for r in rows)
    if not done:
        out.print("[yellow]not every asset completed: is `make run` running?[/]")
    return done


async def _submit(
    settings: Settings, conn: asyncpg.Connection, files: list[Path], samples_url: str
) -> list[str]:
    spec = build_registry(settings).specs["asset.process"]
    prod = producer(settings)
    ids = []
    for path in files:
        asset_id = f"demo-{uuid.uuid4().hex[:8]}"
        url = f"{samples_url}/{path.name}"
        await conn.execute(INSERT_ASSET, asset_id, "demo-org", url, MIME[path.suffix], path.name)
        envelope = JobEnvelope(
            type="asset.process", organization_id="demo-org", payload={"asset_id": asset_id}
        )
        publish(prod, spec.topic, envelope, asset_id.encode())
        ids.append(asset_id)
    prod.flush(30)
    out.print(f"published {len(ids)} asset.process job(s); waiting for the worker...")
    return ids


async def _wait(conn: asyncpg.Connection, ids: list[str], timeout_s: float) -> list[asyncpg.Record]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    with Progress(console=out, transient=True) as progress:
        bar = progress.add_task("indexing", total=len(ids))
        while True:
            rows = await conn.fetch(STATUS, ids)
            finished = sum(r["status"] in ("completed", "failed") for r in rows)
            progress.update(bar, completed=finished)
            if finished == len(ids) or loop.time() > deadline:
                return list(rows)
            await asyncio.sleep(0.5)
