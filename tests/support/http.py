"""Real local HTTP servers for tests: file storage with injectable faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class FileServer:
    """Serves ``files`` by name; ``faults`` maps a name to a status code or "hang"."""

    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    faults: dict[str, int | str] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/{name}"

    def add(self, name: str, body: bytes, content_type: str = "text/plain") -> str:
        self.files[name] = (body, content_type)
        return self.url(name)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        fault = self.faults.get(name)
        if fault == "hang":
            await asyncio.Event().wait()
        if isinstance(fault, int):
            return web.Response(status=fault, text="injected fault")
        if name not in self.files:
            return web.Response(status=404, text="no such file")
        body, content_type = self.files[name]
        return web.Response(body=body, content_type=content_type)


@asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """Run ``app`` on an ephemeral loopback port; yields the port."""
    runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def file_server(host: str = "127.0.0.1") -> AsyncIterator[FileServer]:
    """A FileServer on ``host`` (a loopback address) and an ephemeral port."""
    server = FileServer(host=host)
    app = web.Application()
    app.router.add_get("/{name}", server._handle)
    async with serve(app, server.host) as port:
        server.port = port
        yield server
