"""The storage credential goes only to the configured storage origins, never across a redirect.

Two real servers on loopback: "storage" on 127.0.0.1 (a configured origin)
and "foreign" on 127.0.0.2 (an address the allowlist admits, but no storage
origin). The foreign server must never see the Authorization header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from handlers.assets.fetch import fetch_to_file
from handlers.assets.netguard import Allowlist, guarded_connector_kwargs
from handlers.deps import FetchPolicy
from tests.support.http import serve
from tests.support.policies import FETCH

SECRET = "Bearer storage-secret-7f3a9c"
ALLOWED = ("127.0.0.1:*", "127.0.0.2:*")


@dataclass
class Recorder:
    """Serves ``/file`` and ``/redirect?to=URL``; records the Authorization header it saw."""

    host: str
    port: int = 0
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.headers.get("Authorization")))
        if request.path == "/redirect":
            raise web.HTTPFound(request.query["to"])
        return web.Response(body=b"the file", content_type="text/plain")


@pytest.fixture
async def storage() -> AsyncIterator[Recorder]:
    async with _recorder("127.0.0.1") as rec:
        yield rec


@pytest.fixture
async def foreign() -> AsyncIterator[Recorder]:
    async with _recorder("127.0.0.2") as rec:
        yield rec


def _recorder(host: str) -> _Running:
    return _Running(Recorder(host))


class _Running:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        app = web.Application()
        app.router.add_get("/{tail:.*}", rec.handle)
        self._serve = serve(app, rec.host)

    async def __aenter__(self) -> Recorder:
        self.rec.port = await self._serve.__aenter__()
        return self.rec

    async def __aexit__(self, *exc: object) -> None:
        await self._serve.__aexit__(*exc)


async def _fetch(url: str, policy: FetchPolicy, tmp_path: Path) -> bytes:
    connector = aiohttp.TCPConnector(**guarded_connector_kwargs(Allowlist(policy.allowed_hosts)))
    async with aiohttp.ClientSession(connector=connector) as session:
        path = await fetch_to_file(session, url, policy, tmp_path)
    return path.read_bytes()


def _policy(storage: Recorder) -> FetchPolicy:
    return replace(
        FETCH,
        allowed_hosts=ALLOWED,
        auth_header=SECRET,
        auth_origins=(f"http://{storage.host}:{storage.port}",),
    )


async def test_the_storage_origin_gets_the_credential(storage: Recorder, tmp_path: Path) -> None:
    assert await _fetch(storage.url("/file"), _policy(storage), tmp_path) == b"the file"
    assert storage.seen == [("/file", SECRET)]


async def test_a_foreign_host_never_sees_the_credential(
    storage: Recorder, foreign: Recorder, tmp_path: Path
) -> None:
    assert await _fetch(foreign.url("/file"), _policy(storage), tmp_path) == b"the file"
    assert foreign.seen == [("/file", None)]


async def test_a_redirect_off_the_storage_origin_drops_the_credential(
    storage: Recorder, foreign: Recorder, tmp_path: Path
) -> None:
    back_home = storage.url("/file")
    via_foreign = foreign.url(f"/redirect?to={back_home}")
    url = storage.url(f"/redirect?to={via_foreign}")
    assert await _fetch(url, _policy(storage), tmp_path) == b"the file"
    assert foreign.seen == [("/redirect", None)]
    # Once the chain left the origin, the credential stays off, even back home.
    assert storage.seen == [("/redirect", SECRET), ("/file", None)]


async def test_same_host_on_another_port_is_another_origin(
    storage: Recorder, tmp_path: Path
) -> None:
    async with _recorder("127.0.0.1") as other_port:
        await _fetch(other_port.url("/file"), _policy(storage), tmp_path)
    assert other_port.seen == [("/file", None)]
