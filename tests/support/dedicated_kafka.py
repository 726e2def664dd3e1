"""A Kafka broker of the tests' own, started with ``scripts/services`` beside the shared one.

The shared broker (``make test``'s, often other people's) is never stopped or
reconfigured: tests that need a secured listener, or a broker they may stop,
get one here, in its own services folder (``.services/test-<name>``) on free
loopback ports; ``proxied`` adds a plain listener that advertises another
port (a Toxiproxy proxy's, which forwards to it), so clients that bootstrap
through the proxy stay behind it. ``start()`` is idempotent: a broker already running in that
folder (left by an interrupted session, or started by hand) is reused with
its ports, and only a broker this object started is stopped by ``close()``.
A broker it starts begins with an empty cluster.
Postgres stays the shared one.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "scripts" / "services"
PORT_NAMES = ("PORT", "CONTROLLER_PORT")
SECURED_PORT_NAMES = ("SASL_SSL_PORT", "SSL_PORT")
PROXIED_PORT_NAMES = ("PROXIED_PORT", "PROXIED_ADVERTISED_PORT")
START_TIMEOUT_S = 240


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nobody listens on now."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


@dataclass
class DedicatedKafka:
    """One broker in ``.services/test-<name>``; ``secured`` adds SASL_SSL and mTLS listeners,
    ``proxied`` a listener reached through a proxy (``proxied_bootstrap``, ``proxied_upstream``)."""

    name: str
    secured: bool = False
    proxied: bool = False
    started_here: bool = field(default=False, init=False)
    ports: dict[str, int] = field(default_factory=dict, init=False)

    @property
    def directory(self) -> Path:
        return ROOT / ".services" / f"test-{self.name}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['PORT']}"

    @property
    def proxied_bootstrap(self) -> str:
        """What clients behind the proxy bootstrap with: the advertised (the proxy's) address."""
        return f"127.0.0.1:{self.ports['PROXIED_ADVERTISED_PORT']}"

    @property
    def proxied_upstream(self) -> str:
        """Where the proxy forwards to: the address the PROXIED listener binds."""
        return f"127.0.0.1:{self.ports['PROXIED_PORT']}"

    def _script_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env["CONVEYOR_SERVICES_DIR"] = str(self.directory)
        env["CONVEYOR_SERVICES_TIMEOUT_S"] = "180"
        for name, port in self.ports.items():
            env[f"CONVEYOR_KAFKA_{name}"] = str(port)
        return env

    def _script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(SERVICES), *args],
            env=self._script_env(),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"scripts/services {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
        return done

    def _ports_file(self) -> Path:
        return self.directory / "test-ports.json"

    def _running(self) -> bool:
        """A broker of this folder runs with the recorded ports (then they are used)."""
        try:
            self.ports = json.loads(self._ports_file().read_text())
        except (OSError, ValueError):
            return False
        return self._script("status", "kafka", check=False).returncode == 0

    def start(self) -> DedicatedKafka:
        """Start the broker unless it already runs; return once every listener is ready."""
        if self._running():
            self._script("start", "kafka")  # waits for it if it is still starting
            return self
        names = PORT_NAMES + SECURED_PORT_NAMES * self.secured + PROXIED_PORT_NAMES * self.proxied
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        # A fresh cluster each time (the jars and certificates stay): the topics
        # of every past session would otherwise pile up until the broker's heap
        # runs out.
        shutil.rmtree(self.directory / "kafka" / "data", ignore_errors=True)
        (self.directory / "kafka" / "scram-users.done").unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ports_file().write_text(json.dumps(self.ports))
        self._script("start", "kafka")
        self.started_here = True
        return self

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 30 s); data is kept."""
        self._script("stop", "kafka")

    def restart(self) -> float:
        """Start it again after ``stop()``, on the same ports; seconds until ready."""
        started = time.monotonic()
        self._script("start", "kafka")
        return time.monotonic() - started

    def close(self) -> None:
        """Stop it at the end of the tests, if this object started it."""
        if self.started_here:
            self.stop()

    def env(self, listener: str = "") -> dict[str, str]:
        """The Conveyor settings for a listener: "" (PLAINTEXT), "sasl_ssl" or "ssl"."""
        out = self._script("env", *([listener] if listener else [])).stdout
        values = {}
        for line in out.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if key.startswith("CONVEYOR_KAFKA__"):  # Postgres stays the tests' own
                values[key] = shlex.split(value)[0]
        return values
