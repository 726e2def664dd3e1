"""The pinned Toxiproxy (scripts/toxiproxy) and the tests' client: each fault the soak uses.

A loopback echo server behind a proxy: latency delays a round trip, a
disabled proxy refuses connections, ``reset_peer`` resets a link, ``timeout``
stalls one and then closes it, ``bandwidth`` slows a transfer; removing a
toxic or enabling the proxy again restores the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.dedicated_kafka import free_ports
from tests.support.toxiproxy import Toxiproxy, ToxiproxyServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def toxi() -> Iterator[Toxiproxy]:
    server = ToxiproxyServer("toxiproxy-client").start()
    yield server.client
    server.close()


@pytest.fixture
async def echo(toxi: Toxiproxy) -> AsyncIterator[str]:
    """A proxy in front of a loopback echo server; its listen address."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # the proxy reset the link: what the test asked for
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    [port] = free_ports(1)
    proxy = toxi.proxy("echo", f"127.0.0.1:{port}", upstream)
    try:
        yield str(proxy["listen"])
    finally:
        toxi.delete("echo")
        server.close()
        await server.wait_closed()


async def round_trip(address: str, payload: bytes = b"ping", timeout_s: float = 5.0) -> float:
    """Seconds to send ``payload`` and read it back through ``address``."""
    host, port = address.rsplit(":", 1)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), timeout_s)
        assert got == payload
        return time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_latency_is_added_and_removed(toxi: Toxiproxy, echo: str) -> None:
    assert await round_trip(echo) < 0.2
    toxi.add_toxic("echo", "latency", stream="upstream", latency=300, jitter=0)
    assert [t["type"] for t in toxi.toxics("echo")] == ["latency"]
    assert await round_trip(echo) >= 0.3
    toxi.remove_toxic("echo", "latency_upstream")
    assert await round_trip(echo) < 0.2


async def test_a_disabled_proxy_refuses_and_comes_back(toxi: Toxiproxy, echo: str) -> None:
    toxi.set_enabled("echo", False)
    with pytest.raises(OSError):
        await round_trip(echo)
    toxi.set_enabled("echo", True)
    assert await round_trip(echo) < 0.5


async def test_reset_peer_and_timeout_break_links(toxi: Toxiproxy, echo: str) -> None:
    toxi.add_toxic("echo", "reset_peer", timeout=0)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await round_trip(echo)
    toxi.reset()
    toxi.add_toxic("echo", "timeout", timeout=500)
    started = time.monotonic()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await round_trip(echo, timeout_s=5)  # nothing comes back; closed after 0.5 s
    assert 0.4 < time.monotonic() - started < 4
    toxi.reset()
    assert await round_trip(echo) < 0.5


async def test_bandwidth_slows_a_transfer(toxi: Toxiproxy, echo: str) -> None:
    payload = b"x" * 64 * 1024
    fast = await round_trip(echo, payload)
    toxi.add_toxic("echo", "bandwidth", rate=32)  # KB/s, server to client
    slow = await round_trip(echo, payload, timeout_s=10)
    assert slow > 1.5 > fast, (fast, slow)


def test_the_pinned_version_answers(toxi: Toxiproxy) -> None:
    assert toxi.version() == "2.12.0"
