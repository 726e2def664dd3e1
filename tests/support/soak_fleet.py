"""The soak's workers: a supervisor that keeps ``desired`` of them running, as Kubernetes would.

A worker the soak SIGKILLs or SIGTERMs is replaced at once (a Deployment's
controller starts a new pod); a worker that exits by itself — a preflight
that found the broker or Postgres down, a hard exit — is started again after
a back-off (2, 4, 8, then 10 s), like a crash loop. Every start and every end
is recorded (when, why, exit code), so the oracle can tell a dead letter
written twice because its writer was killed from one written twice for no
reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.worker import WorkerProcess

RESTART_BACKOFF_S = (2.0, 4.0, 8.0, 10.0)
TICK_S = 0.25


@dataclass
class Member:
    """One worker process of the fleet."""

    name: str
    process: WorkerProcess
    started_at: float  # wall clock (time.time())
    fate: str = ""  # what the soak did to it: "sigkill", "sigterm", "scale_down", "stop"
    fate_at: float | None = None
    exit_code: int | None = None
    ended_at: float | None = None
    closed: bool = False

    @property
    def alive(self) -> bool:
        proc = self.process.proc
        return proc is not None and proc.poll() is None

    @property
    def clean(self) -> bool:
        """It ended by a drain the soak asked for (SIGTERM, exit 0)."""
        return self.fate in ("sigterm", "scale_down", "stop") and self.exit_code == 0

    def ready(self) -> bool:
        return any(
            e.get("event") == "worker.partitions_assigned" for e in list(self.process.events)
        )


@dataclass
class Fleet:
    """Keeps ``desired`` workers running with ``env``; logs in ``log_dir``."""

    env: dict[str, str]
    log_dir: Path
    desired: int
    members: list[Member] = field(default_factory=list)
    own_exits: int = 0  # consecutive exits nobody asked for (for the back-off)
    next_start_at: float = 0.0

    # -- what the soak does ---------------------------------------------------------------

    def live(self) -> list[Member]:
        """Running workers the soak has not signalled, in start order."""
        return [m for m in self.members if m.alive and not m.fate]

    def choose(self, pick: float) -> Member | None:
        live = self.live()
        return live[min(int(pick * len(live)), len(live) - 1)] if live else None

    def kill(self, pick: float) -> str:
        """SIGKILL one worker (a replacement starts); its name."""
        return self._signal(pick, signal.SIGKILL, "sigkill")

    def terminate(self, pick: float, *, replace: bool = True) -> str:
        """SIGTERM one worker; without ``replace`` the fleet shrinks by one (scale down)."""
        if not replace:
            self.desired -= 1
        return self._signal(pick, signal.SIGTERM, "sigterm" if replace else "scale_down")

    def scale_up(self) -> str:
        self.desired += 1
        return f"desired={self.desired}"

    def _signal(self, pick: float, sig: signal.Signals, fate: str) -> str:
        member = self.choose(pick)
        if member is None:
            return "(no live worker)"
        member.fate, member.fate_at = fate, time.time()
        member.process.signal(sig)
        return member.name

    # -- supervision -----------------------------------------------------------------------

    def start_one(self) -> Member:
        name = f"w{len(self.members) + 1}"
        process = WorkerProcess(self.env, self.log_dir / f"{name}.log").start()
        member = Member(name, process, time.time())
        self.members.append(member)
        return member

    async def supervise(self, stop: asyncio.Event) -> None:
        """Reap ended workers and start replacements until ``stop`` is set."""
        while not stop.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)

    async def tick(self) -> None:
        now = time.monotonic()
        for member in self.members:
            if member.exit_code is None and not member.alive:
                await self._reap(member, now)
        # A SIGTERMed worker still drains while its replacement starts, as in a rollout.
        if len(self.live()) < self.desired and now >= self.next_start_at:
            self.start_one()

    async def _reap(self, member: Member, now: float) -> None:
        assert member.process.proc is not None
        member.exit_code = member.process.proc.returncode
        member.ended_at = time.time()
        if not member.fate:  # it ended by itself
            delay = RESTART_BACKOFF_S[min(self.own_exits, len(RESTART_BACKOFF_S) - 1)]
            self.own_exits += 1
            self.next_start_at = now + delay
        elif member.fate != "sigkill":
            self.own_exits = 0
        await asyncio.to_thread(self._close, member)

    @staticmethod
    def _close(member: Member) -> None:
        if not member.closed:
            member.closed = True
            member.process.wait_exit(timeout_s=10)

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until ``desired`` unsignalled workers run and each has been assigned partitions."""
        deadline = time.monotonic() + timeout_s
        while True:
            await self.tick()
            live = self.live()
            if len(live) >= self.desired and all(m.ready() for m in live):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name}\n{m.process.tail(15)}" for m in self.members)
                raise AssertionError(f"the fleet is not ready after {timeout_s} s:\n{tails}")
            await asyncio.sleep(0.5)

    async def stop_all(self) -> None:
        """SIGTERM every worker still running and wait for them (SIGKILL after 40 s)."""
        for member in self.members:
            if member.alive:
                member.fate, member.fate_at = member.fate or "stop", time.time()
        await asyncio.gather(*(asyncio.to_thread(m.process.stop) for m in self.members if m.alive))
        for member in self.members:
            if member.exit_code is None and member.process.proc is not None:
                member.exit_code = member.process.proc.returncode
                member.ended_at = time.time()
            await asyncio.to_thread(self._close, member)

    # -- what happened --------------------------------------------------------------------

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """Every log event of every worker, with the worker's name."""
        return [(m.name, e) for m in self.members for e in list(m.process.events)]

    def summary(self) -> dict[str, int]:
        ends: dict[str, int] = {"started": len(self.members)}
        for m in self.members:
            if m.exit_code is None:
                continue
            key = m.fate or f"exited_by_itself_{m.exit_code}"
            if m.fate in ("sigterm", "scale_down", "stop") and m.exit_code != 0:
                key = f"{m.fate}_exit_{m.exit_code}"
            ends[key] = ends.get(key, 0) + 1
        return ends
