"""Toxiproxy for tests: the server (``scripts/toxiproxy``) and a small client of its HTTP API.

The server is the pinned Go build of ``scripts/toxiproxy`` (built once into the
tools cache), started in its own services folder (``.services/test-<name>``)
on a free loopback port, reused when one already runs there, and stopped at
the end only if this object started it — like ``DedicatedKafka``.

The client speaks Toxiproxy's JSON API (v2.12: ``/proxies``, ``/populate``,
``/proxies/{name}/toxics``, ``/reset``): a proxy listens on a loopback port
and forwards to an upstream; ``enabled: false`` closes its connections and
refuses new ones (a service that is down); toxics act on the data of its
links — ``latency`` (``latency``/``jitter`` ms), ``reset_peer`` (a TCP RST
after ``timeout`` ms), ``timeout`` (data stops; closed after ``timeout`` ms,
never if 0), ``bandwidth`` (``rate`` KB/s) — in one direction
(``downstream``: server to client; ``upstream``: client to server).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.dedicated_kafka import free_ports

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "toxiproxy"
TOXICS = ("latency", "reset_peer", "timeout", "bandwidth", "slow_close", "slicer", "limit_data")


class ToxiproxyError(AssertionError):
    """The API refused a call (with its status and message)."""


@dataclass(frozen=True)
class Toxiproxy:
    """A client of one Toxiproxy server's API (``url``: ``http://127.0.0.1:<port>``)."""

    url: str
    timeout_s: float = 10.0

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                text = answer.read()
        except urllib.error.HTTPError as exc:
            raise ToxiproxyError(f"{method} {path}: HTTP {exc.code}: {exc.read()!r}") from exc
        return json.loads(text) if text.strip() else None

    def version(self) -> str:
        return str(self._call("GET", "/version")["version"])

    def reset(self) -> None:
        """Every proxy enabled again, every toxic removed."""
        self._call("POST", "/reset")

    def proxy(self, name: str, listen: str, upstream: str) -> dict[str, Any]:
        """Create the proxy, or keep it if one of that name has the same addresses (idempotent)."""
        body = [{"name": name, "listen": listen, "upstream": upstream, "enabled": True}]
        made = self._call("POST", "/populate", body)["proxies"]
        return dict(made[0]) if made else self.show(name)

    def show(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/proxies/{name}"))

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}")

    def set_enabled(self, name: str, enabled: bool) -> None:
        """``False``: the proxy closes its links and refuses new connections; ``True``: back."""
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    def add_toxic(
        self,
        proxy: str,
        kind: str,
        *,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        **attributes: float,
    ) -> str:
        """Add a toxic (``kind`` in ``TOXICS``) to every link of ``proxy``; its name."""
        if kind not in TOXICS or stream not in ("upstream", "downstream"):
            raise ValueError(f"unknown toxic {kind!r} or stream {stream!r}")
        body = {
            "name": name or f"{kind}_{stream}",
            "type": kind,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
        }
        return str(self._call("POST", f"/proxies/{proxy}/toxics", body)["name"])

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/proxies/{proxy}/toxics"))


@dataclass
class ToxiproxyServer:
    """``scripts/toxiproxy`` in ``.services/test-<name>`` on a free loopback port."""

    name: str
    started_here: bool = field(default=False, init=False)
    port: int = field(default=0, init=False)

    @property
    def directory(self) -> Path:
        return ROOT / ".services" / f"test-{self.name}"

    @property
    def client(self) -> Toxiproxy:
        return Toxiproxy(f"http://127.0.0.1:{self.port}")

    def _script(self, command: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env |= {
            "CONVEYOR_SERVICES_DIR": str(self.directory),
            "CONVEYOR_TOXIPROXY_PORT": str(self.port),
        }
        for name in ("CONVEYOR_TOOLS_DIR", "CONVEYOR_TOXIPROXY_VERSION"):
            if name in os.environ:
                env[name] = os.environ[name]
        return subprocess.run(
            [str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=600
        )

    def start(self) -> ToxiproxyServer:
        """Build if needed and start the server, unless one already runs in this folder."""
        port_file = self.directory / "toxiproxy-port"
        if port_file.exists():
            self.port = int(port_file.read_text())
            if self._script("status").returncode == 0:
                return self
        self.directory.mkdir(parents=True, exist_ok=True)
        [self.port] = free_ports(1)
        port_file.write_text(str(self.port))
        done = self._script("start")
        if done.returncode != 0:
            raise AssertionError(f"scripts/toxiproxy start failed:\n{done.stdout}{done.stderr}")
        self.started_here = True
        return self

    def close(self) -> None:
        """Stop the server if this object started it."""
        if self.started_here:
            self._script("stop")
