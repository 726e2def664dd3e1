"""Find the real Kafka and Postgres the tests talk to.

Order: explicit environment (``make test`` exports ``scripts/services env``),
else testcontainers when a Docker engine answers, else the project's own
``scripts/services start``. A test that cannot get a service fails; it never
skips.
"""

from __future__ import annotations

import gc
import os
import shlex
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "scripts" / "services"


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str
    dsn: str


def _docker_available() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    # A failed docker client leaks its socket; collect it here, where its
    # ResourceWarning is expected, not in whichever test the GC next runs in.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # type: ignore[import-untyped]

            client = docker.from_env()
            try:
                client.ping()
            finally:
                client.close()
            return True
        except Exception:
            return False
        finally:
            gc.collect()


def _from_script() -> Endpoints:
    subprocess.run([str(SERVICES), "start"], check=True)
    env = subprocess.run([str(SERVICES), "env"], check=True, capture_output=True, text=True)
    values = {}
    for line in env.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return Endpoints(values["CONVEYOR_KAFKA__BOOTSTRAP_SERVERS"], values["CONVEYOR_POSTGRES__DSN"])


def _from_testcontainers() -> Endpoints:  # pragma: no cover - no Docker on CI here
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka = KafkaContainer().with_kraft()
    kafka.start()
    pg = PostgresContainer(
        "postgres:15", username="conveyor", password="conveyor", dbname="conveyor"
    )
    pg.start()
    dsn = pg.get_connection_url().replace("postgresql+psycopg2", "postgresql")
    return Endpoints(kafka.get_bootstrap_server(), dsn)


def endpoints() -> Endpoints:
    bootstrap = os.environ.get("CONVEYOR_KAFKA__BOOTSTRAP_SERVERS")
    dsn = os.environ.get("CONVEYOR_POSTGRES__DSN")
    if bootstrap and dsn:
        return Endpoints(bootstrap, dsn)
    if _docker_available():
        return _from_testcontainers()
    return _from_script()
