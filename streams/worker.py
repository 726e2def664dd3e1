"""The worker process: Faust's worker with Conveyor's signal handling and drain.

First SIGTERM/SIGINT: stop fetching, drain in-flight jobs up to
``drain_timeout_s``, commit, then let Faust stop (flush the producer, close
the consumer) and close pools and sessions; exit 0. A second signal, or the
hard deadline (drain timeout + ``hard_exit_after_s``), exits at once
without committing unfinished work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import faust
import structlog
from mode.utils.futures import maybe_cancel

from streams.app import ConveyorApp
from streams.settings import Settings

log = structlog.get_logger(__name__)

EXIT_FORCED = 1


class ConveyorWorker(faust.Worker):
    def __init__(self, app: ConveyorApp, settings: Settings, **kwargs: Any) -> None:
        super().__init__(
            app,
            quiet=True,
            redirect_stdouts=False,
            override_logging=False,
            loglevel=settings.logging.level,
            **kwargs,
        )
        self.spinner = None  # Faust's terminal spinner would mangle structured logs
        self._settings = settings
        self._conveyor = app.conveyor
        self._stopping = False

    def _on_sigint(self) -> None:
        self._on_stop_signal(signal.SIGINT)

    def _on_sigterm(self) -> None:
        self._on_stop_signal(signal.SIGTERM)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stopping:
            log.warning("worker.forced_exit", signal=sig.name, reason="second signal")
            _exit_now(EXIT_FORCED)
        self._stopping = True
        w = self._settings.worker
        self.loop.call_later(w.drain_timeout_s + w.hard_exit_after_s, self._hard_deadline)
        self._signal_stop_time = self.loop.time()
        self._signal_stop_future = asyncio.ensure_future(self._drain_then_stop(sig))

    def _hard_deadline(self) -> None:
        log.error("worker.forced_exit", reason="hard deadline passed during shutdown")
        _exit_now(EXIT_FORCED)

    async def _drain_then_stop(self, sig: signal.Signals) -> None:
        log.info("worker.stop_requested", signal=sig.name)
        try:
            await self._conveyor.drain()
        except Exception:
            log.exception("worker.drain_failed")
        await self.stop()
        log.info("worker.stopped")
        maybe_cancel(self._starting_fut)


def _exit_now(code: int) -> None:
    logging.shutdown()
    os._exit(code)
