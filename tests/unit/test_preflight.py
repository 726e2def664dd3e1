"""The worker's preflight waits out an unreachable Kafka or Postgres, not a wrong setup."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from streams.commands import run
from streams.commands.postgres import missing_table
from streams.kafka_config import Unreachable
from streams.settings import Settings


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "PREFLIGHT_FIRST_PAUSE_S", 0.01)
    monkeypatch.setattr(run, "PREFLIGHT_MAX_PAUSE_S", 0.02)


def answers(*problems: str | None) -> tuple[list[int], Callable[[Settings], str | None]]:
    calls: list[int] = []

    def check(_settings: Settings) -> str | None:
        calls.append(1)
        return problems[min(len(calls), len(problems)) - 1]

    return calls, check


def test_an_unreachable_service_is_tried_again_until_it_answers() -> None:
    down = Unreachable("cannot reach Postgres: ConnectionRefusedError: refused")
    calls, check = answers(down, down, None)
    with capture_logs() as logs:
        assert run.preflight_until(Settings(), 30.0, check) is None
    assert len(calls) == 3
    waits = [e for e in logs if e["event"] == "worker.preflight_waiting"]
    assert [e["tries"] for e in waits] == [1, 2]
    assert waits[0]["reason"] == str(down)


def test_a_wrong_setup_fails_at_once() -> None:
    calls, check = answers("topics missing: t.probe; run `conveyor topics create`")
    problem = run.preflight_until(Settings(), 30.0, check)
    assert problem is not None and problem.startswith("topics missing")
    assert len(calls) == 1


def test_the_wait_is_bounded() -> None:
    down = Unreachable("no answer from Kafka at 127.0.0.1:1 within 10 s")
    calls, check = answers(down)
    assert run.preflight_until(Settings(), 0.1, check) == down
    assert 2 <= len(calls) < 50
    calls, check = answers(down)
    assert run.preflight_until(Settings(), 0.0, check) == down
    assert len(calls) == 1


def test_a_closed_postgres_port_is_unreachable() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings.model_validate(
        {"postgres": {"dsn": f"postgresql://u:p@127.0.0.1:{port}/db", "connect_timeout_s": 2}}
    )
    problem = asyncio.run(missing_table(settings, "schema_migrations"))
    assert isinstance(problem, Unreachable) and "cannot reach Postgres" in problem
