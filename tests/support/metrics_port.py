"""A worker's metrics port on loopback for a test: a free port, and what it serves."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.dedicated_kafka import free_ports

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def metrics_env() -> tuple[int, dict[str, str]]:
    """A free loopback port and the settings that make a worker serve /metrics on it."""
    (port,) = free_ports(1)
    env = {
        "CONVEYOR_WORKER__METRICS_PORT": str(port),
        "CONVEYOR_WORKER__METRICS_HOST": "127.0.0.1",
    }
    return port, env


async def scrape(port: int) -> Samples:
    """/metrics as {family: {sorted labels: value}}."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


async def readyz(port: int) -> int:
    """/readyz's status (0 when the worker does not answer)."""
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"http://127.0.0.1:{port}/readyz") as response,
        ):
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0
