"""The guard on the network path, loopback only: numeric hosts, ports, invalid URLs.

A server on 127.0.0.2 stands for "an address the URL must not reach"; the
assertions check that it saw no request at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from handlers.assets.fetch import fetch_to_file
from handlers.assets.netguard import Allowlist, guarded_connector_kwargs
from handlers.errors import PermanentError
from tests.support.http import FileServer, file_server
from tests.support.policies import FETCH


async def _fetch(url: str, allowed: tuple[str, ...], tmp_path: Path) -> bytes:
    policy = replace(FETCH, allowed_hosts=allowed)
    connector = aiohttp.TCPConnector(**guarded_connector_kwargs(Allowlist(allowed)))
    async with aiohttp.ClientSession(connector=connector) as session:
        path = await fetch_to_file(session, url, policy, tmp_path)
    return path.read_bytes()


@pytest.fixture
async def target() -> AsyncIterator[FileServer]:
    async with file_server(host="127.0.0.2") as files:
        files.add("file", b"internal data")
        yield files


@pytest.mark.parametrize(
    "host", ["2130706434", "017700000002", "0x7f000002", "0x7f.0.0.2", "127.2", "127.0.2"]
)
async def test_numeric_forms_of_an_address_are_refused_before_any_request(
    target: FileServer, tmp_path: Path, host: str
) -> None:
    # Even with 127.0.0.2 allowlisted: a host spelled as a bare number is never
    # fetched, whatever the resolver would make of it.
    allowed = ("127.0.0.1:*", "127.0.0.2:*")
    with pytest.raises(PermanentError, match="numeric host"):
        await _fetch(f"http://{host}:{target.port}/file", allowed, tmp_path)
    assert target.hits == {}


async def test_a_port_the_allowlist_does_not_name_is_refused(
    target: FileServer, tmp_path: Path
) -> None:
    with pytest.raises(PermanentError, match=f"port {target.port} is not allowlisted"):
        await _fetch(target.url("file"), ("127.0.0.2",), tmp_path)
    assert target.hits == {}
    assert await _fetch(target.url("file"), (f"127.0.0.2:{target.port}",), tmp_path) == (
        b"internal data"
    )


async def test_the_port_is_checked_for_host_names_too(tmp_path: Path) -> None:
    async with file_server() as files:
        files.add("file", b"data")
        url = f"http://localhost:{files.port}/file"
        with pytest.raises(PermanentError, match=f"port {files.port} is not allowlisted"):
            await _fetch(url, ("localhost",), tmp_path)
        assert files.hits == {}
        assert await _fetch(url, (f"localhost:{files.port}",), tmp_path) == b"data"


async def test_an_invalid_url_is_a_permanent_failure(tmp_path: Path) -> None:
    urls = (
        "http://[zz]/file",
        "http:///file",
        "ftp://127.0.0.1/file",
        "http://a b/",
        "http://user:pw@127.0.0.1:1/file",
    )
    for url in urls:
        with pytest.raises(PermanentError):
            await _fetch(url, ("127.0.0.1:*",), tmp_path)
