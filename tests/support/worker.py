"""The worker as a subprocess, with its JSON log lines readable as events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NO_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--"]


class WorkerProcess:
    """``conveyor run`` in a child process; log lines collected as dicts."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        hooks: Sequence[str] = (),
        command: Sequence[str] = ("run",),
        *,
        capabilities: bool = True,
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.command = list(command)  # the conveyor command: run, or e.g. console
        # Test-only delays (tests/support/hooked_worker.py), e.g. ["--commit-delay-s", "2"].
        self.hooks = list(hooks)
        # False: start it without any capability, as the chart's pod (drop: ["ALL"]) even
        # though tests run as root (util-linux's setpriv clears every capability set).
        self.capabilities = capabilities
        self.log_path = log_path
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> WorkerProcess:
        command = ["-m", "streams.commands.cli", *self.command]
        if self.hooks:
            command = ["-m", "tests.support.hooked_worker", *self.hooks, "--", *self.command]
        prefix = [] if self.capabilities else NO_CAPABILITIES
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, *command],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log_path.open("ab") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "raw", "line": line.decode("utf-8", "replace")}
                with self._cond:
                    self.events.append(event if isinstance(event, dict) else {"event": event})
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Block until a log event matches (or fail with the log's tail)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.proc is not None
                    and self.proc.poll() is not None
                    and self._reader is not None
                    and not self._reader.is_alive()
                ):
                    raise AssertionError(f"no matching worker event; log tail:\n{self.tail()}")
                self._cond.wait(timeout=min(remaining, 1.0))

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        self.wait_for(
            lambda e: e.get("event") == "worker.partitions_assigned" and e.get("partitions", 0) > 0,
            timeout_s,
        )

    def count(self, name: str) -> int:
        with self._cond:
            return sum(1 for e in self.events if e.get("event") == name)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout_s)
        self._close()
        return code

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
