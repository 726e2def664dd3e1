"""Every Kafka client over TLS and SASL, against a real broker with secured listeners.

The broker is the tests' own (``tests/support/dedicated_kafka.py``): the
shared one has no secured listener and is never reconfigured. Its SASL_SSL
listener has a self-signed CA and the user ``conveyor`` for PLAIN,
SCRAM-SHA-256 and SCRAM-SHA-512; its SSL listener requires a client
certificate signed by the same CA (``scripts/services``).

The worker and each operator command that talks to Kafka (topics, submit,
lag, dlq replay, demo) run as real processes with the settings a deployment
would use. A wrong password, an untrusted broker certificate or a missing
client certificate make the worker and a command exit 1 within 30 s with one
line that says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.dedicated_kafka import DedicatedKafka
from tests.support.dlq import wait_dlq
from tests.support.probe import PROBE_ENV
from tests.support.services import Endpoints
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FAIL_WITHIN_S = 30.0
ENV = {**PROBE_ENV, "CONVEYOR_JOBS__PROBE__MAX_ATTEMPTS": "1"}


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[DedicatedKafka]:
    broker = DedicatedKafka("secure", secured=True).start()
    yield broker
    broker.close()


def secure_stack(services: Endpoints, broker: DedicatedKafka, listener: str, **extra: str) -> Stack:
    return Stack(services.bootstrap, services.dsn, extra={**broker.env(listener), **ENV, **extra})


def conveyor(stack: Stack, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """``conveyor <args>`` as an operator runs it, with the stack's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return subprocess.run(
        [sys.executable, "-m", "streams.commands.cli", *args],
        env={**env, **stack.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}: {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


async def probe_effects(db: asyncpg.Pool, prefix: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(DISTINCT job_id) FROM probe_effects WHERE job_id LIKE $1", f"{prefix}-%"
    )
    return count


async def test_worker_and_every_kafka_command_over_sasl_ssl(
    services: Endpoints, secure_kafka: DedicatedKafka, db: asyncpg.Pool, worker_factory: Any
) -> None:
    stack = secure_stack(services, secure_kafka, "sasl_ssl")
    assert stack.env["CONVEYOR_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
    created = ok(conveyor(stack, "topics", "create")).splitlines()
    assert len(created) == len(stack.registry().all_topics())
    assert all(line.startswith("created") for line in created), created
    listed = ok(conveyor(stack, "topics", "list")).splitlines()
    assert all(line.startswith("ok") for line in listed), listed

    worker = worker_factory(stack)
    worker.wait_ready()
    ok(conveyor(stack, "submit", "probe", '{"sleep_ms": 1}', "--id", stack.prefix, "--count", "20"))
    await eventually(lambda: probe_effects(db, stack.prefix), lambda n: n == 20, what="20 jobs")

    # A dead letter, mirrored by the worker's DLQ consumer, replayed by the CLI's producer.
    bad = f"{stack.prefix}-bad"
    ok(conveyor(stack, "submit", "probe", '{"fail": "permanent"}', "--id", bad))
    (row,) = await wait_dlq(db, stack, 1)
    assert row["job_id"] == bad
    replayed = ok(conveyor(stack, "dlq", "replay", "--id", str(row["id"])))
    assert "replayed 1 dead letter(s)" in replayed
    rows = await wait_dlq(db, stack, 2)  # the worker consumed the replayed job and failed it again
    assert [r["job_id"] for r in rows] == [bad, bad]

    ok(conveyor(stack, "demo", "--timeout", "120", timeout_s=180))
    assert worker.count("asset.indexed") == 4

    lag = ok(conveyor(stack, "lag"))
    assert "stable, 1 member(s); total lag 0" in lag, lag


@pytest.mark.parametrize(
    ("listener", "extra"),
    [
        ("sasl_ssl", {"CONVEYOR_KAFKA__SASL_MECHANISM": "PLAIN"}),
        ("sasl_ssl", {"CONVEYOR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256"}),
        ("ssl", {}),  # mutual TLS: a client certificate instead of a login
    ],
    ids=["sasl-plain", "sasl-scram-sha-256", "mutual-tls"],
)
async def test_worker_and_commands_with_each_mechanism(
    services: Endpoints,
    secure_kafka: DedicatedKafka,
    db: asyncpg.Pool,
    worker_factory: Any,
    listener: str,
    extra: dict[str, str],
) -> None:
    stack = secure_stack(services, secure_kafka, listener, **extra)
    ok(conveyor(stack, "topics", "create"))
    worker = worker_factory(stack)
    worker.wait_ready()
    ok(conveyor(stack, "submit", "probe", '{"sleep_ms": 1}', "--id", stack.prefix, "--count", "5"))
    await eventually(lambda: probe_effects(db, stack.prefix), lambda n: n == 5, what="5 jobs")
    assert "total lag 0" in ok(conveyor(stack, "lag"))


def other_ca(directory: Path) -> Path:
    """A CA that did not sign the broker's certificate."""
    cert = directory / "other-ca.crt"
    key = directory / "other-ca.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=Not the broker's CA",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert


def worker_run(stack: Stack) -> tuple[int, float, list[dict[str, Any]]]:
    """``conveyor run`` to its end: exit code, seconds, JSON log events."""
    started = time.monotonic()
    done = conveyor(stack, "run", timeout_s=FAIL_WITHIN_S + 30)
    elapsed = time.monotonic() - started
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, elapsed, events


@pytest.mark.parametrize("fault", ["wrong-password", "untrusted-certificate", "no-client-cert"])
def test_refused_connection_exits_1_fast_with_one_line(
    services: Endpoints, secure_kafka: DedicatedKafka, tmp_path: Path, fault: str
) -> None:
    if fault == "wrong-password":
        stack = secure_stack(
            services, secure_kafka, "sasl_ssl", CONVEYOR_KAFKA__SASL_PASSWORD="not-the-password"
        )
        expected = "login refused"
    elif fault == "untrusted-certificate":
        stack = secure_stack(
            services, secure_kafka, "sasl_ssl", CONVEYOR_KAFKA__SSL_CA_FILE=str(other_ca(tmp_path))
        )
        expected = "certificate verify failed"
    else:
        stack = secure_stack(services, secure_kafka, "ssl")
        for name in ("CONVEYOR_KAFKA__SSL_CERT_FILE", "CONVEYOR_KAFKA__SSL_KEY_FILE"):
            stack.extra.pop(name)
        expected = "bad certificate"
    password = secure_kafka.env("sasl_ssl")["CONVEYOR_KAFKA__SASL_PASSWORD"]

    code, elapsed, events = worker_run(stack)
    assert code == 1, events
    assert elapsed < FAIL_WITHIN_S
    (failed,) = [e for e in events if e.get("event") == "worker.preflight_failed"]
    assert expected in failed["reason"] and "\n" not in failed["reason"], failed
    assert not [e for e in events if e.get("level") == "error" and e is not failed]

    for command in (("submit", "probe", "{}"), ("topics", "list")):
        started = time.monotonic()
        done = conveyor(stack, *command, timeout_s=FAIL_WITHIN_S + 30)
        assert done.returncode == 1, done
        assert time.monotonic() - started < FAIL_WITHIN_S
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"conveyor {command[0]}: Kafka at ") and expected in line, line
        assert done.stdout == ""
        assert password not in done.stderr + done.stdout
