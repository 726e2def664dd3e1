"""The console for a test: settings with a token per role, in-process or as `conveyor console`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from streams.console.app import build_app, close_console, open_console
from tests.support.dedicated_kafka import free_ports
from tests.support.stack import Stack
from tests.support.worker import WorkerProcess

VIEWER_TOKEN = "viewer-token-0123456789abcdef"
OPERATOR_TOKEN = "operator-token-0123456789abcdef"
TOKENS = f"vera:viewer:{VIEWER_TOKEN},otto:operator:{OPERATOR_TOKEN}"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def console_env(stack: Stack, **extra: str) -> dict[str, str]:
    return {
        **stack.env,
        "CONVEYOR_CONSOLE__TOKENS": TOKENS,
        "CONVEYOR_CONSOLE__SAMPLE_INTERVAL_S": "1",
        **extra,
    }


def with_env(stack: Stack, env: dict[str, str]) -> Stack:
    return Stack(stack.bootstrap, stack.dsn, {**stack.extra, **env}, stack.prefix)


@asynccontextmanager
async def console_client(stack: Stack, **extra: str) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    """The console app in this process, on a loopback port, with a cookie-keeping client."""
    settings = with_env(stack, console_env(stack, **extra)).settings()
    console = await open_console(settings)
    client = TestClient(TestServer(build_app(console), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await close_console(console)


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def login(client: TestClient, token: str) -> aiohttp.ClientResponse:  # type: ignore[type-arg]
    page = await client.get("/login")
    csrf = csrf_of(await page.text())
    return await client.post(
        "/login", data={"token": token, "csrf_token": csrf, "next": "/"}, allow_redirects=False
    )


@contextmanager
def running_console(stack: Stack, log_path: Path, **extra: str) -> Iterator[str]:
    """`conveyor console` as a subprocess on a free loopback port (its base URL), stopped after."""
    (port,) = free_ports(1)
    env = console_env(stack, CONVEYOR_CONSOLE__PORT=str(port), **extra)
    proc = WorkerProcess(env, log_path, command=["console"]).start()
    try:
        proc.wait_for(lambda e: e.get("event") == "console.serving", 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
